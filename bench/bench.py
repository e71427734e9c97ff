"""Benchmark: Distribute's cost per job against raw git on the same machine, in one run.

Prints:
  * the raw git compare-and-swap cycle (fetch + write objects + push with a lease),
    done with plain git commands, one sample while each job of the next line runs
    (a shared machine's speed drifts within minutes, so ratios compare figures taken
    at the same time);
  * the same cycle through Distribute's own transport (for a path: objects linked and
    refs read in-process, one `git update-ref` to swap), and from it the ceiling one
    main branch puts on jobs/s;
  * the per-job cost of get_next_job + finish_job for one worker with no-op jobs,
    as a multiple of the raw cycle;
  * jobs/s for several worker processes (default 4 and 16), as jobs per raw cycle
    (the cycle measured --raw-samples times around each run), and the jobs done by
    the busiest and the least busy worker;
  * for each of those runs, its idle tail: from the last finish landing to the moment
    the last worker process, told there was no job left, had closed its worker;
  * for the single worker and each multi-worker run: git operations per job (fetches,
    pushes, peeks: an ls-remote, or a read of ref files on a path) and lost races per
    job, counted by the workers themselves, and each run's jobs/s as a multiple of the
    single worker's;
  * CPU per job, for the single worker and each multi-worker run: the whole machine's
    busy CPU time (every process: workers, git, ssh, the server on 127.0.0.1) per job.
    Where the workers and the server share this machine, a run whose CPU is all busy
    does at most (CPUs / CPU per job) jobs/s, whatever the number of workers: that is
    what a loopback ratio of 16 workers to 1 measures once one worker keeps a CPU busy;
  * idle workers: one worker runs a job of --idle-seconds while --idle-workers others
    wait for it; their git operations per idle worker-minute once the first
    --idle-warmup seconds of waiting are over (what a hosted remote's request budget
    sees from workers that have nothing to do).

Usage:
    python bench/bench.py                 # the full run (about four minutes on 2 cores)
    python bench/bench.py --workers 4 --jobs 60 --single-jobs 20
    python bench/bench.py --remote file-url  # the same folder through git push and fetch
    python bench/bench.py --remote daemon    # the same over git daemon on 127.0.0.1
    python bench/bench.py --remote ssh       # sshd on 127.0.0.1 (tests/servers.py)
    python bench/bench.py --remote http      # smart HTTP: lighttpd + git http-backend
    python bench/bench.py --remote ssh-latency --latency-ms 40   # ssh over a slow line
    python bench/bench.py --remote http-latency --latency-ms 40  # HTTP over a slow line
    python bench/bench.py --remote git@host:me/scratch.git       # a remote you own:
        # REWRITTEN before each run (main branch replaced by force, refs/distribute/* and
        # refs/heads/jobs/* deleted); asks first unless --yes is given

The hosted kinds start real servers on 127.0.0.1 from the repository's tests/servers.py
(sshd: openssh-server; http: lighttpd) and stop them at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distribute.core.names import scrub_url  # noqa: E402
from distribute.credentials import git_env, git_options, split_secret  # noqa: E402
from distribute.dist import worker_from_url  # noqa: E402
from distribute.remote import LAYOUT_FILE, LAYOUT_TEXT, init_remote, is_local_path  # noqa: E402
from distribute.sources import JOBS_FILE, QueueJobs, format_queue  # noqa: E402
from distribute.transport.base import RefUpdate  # noqa: E402
from distribute.transport.local_copy import GitLocalCopy  # noqa: E402

#: who the benchmark's own plumbing commits are by (so that a machine with no git identity
#: can run it)
IDENTITY = {
    "GIT_AUTHOR_NAME": "distribute-bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "distribute-bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def git(*args: str, cwd: Path | None = None, inp: str | None = None,
        env: Mapping[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, input=inp, capture_output=True, text=True, check=True,
        env={**os.environ, **env} if env else None,
    )
    return out.stdout.strip()


class RawCycle:
    """Fetch, write a commit with plumbing, push it with --force-with-lease: plain git.

    One sample at a time, so that samples can be taken between Distribute's jobs: a
    shared machine's speed drifts within minutes, and a ratio is only fair between
    figures measured at the same time.  A password in an http(s) URL reaches git the
    way Distribute hands it over (:mod:`distribute.credentials`): never in a file or on
    a command line.
    """

    ref = "refs/bench/raw"

    def __init__(self, url: str, work: Path) -> None:
        split = split_secret(url)
        self.auth = git_options(split.secret)
        self.env = {**IDENTITY, **git_env(split.secret)}
        self.clone = work / "raw"
        git("init", "-q", str(self.clone))
        git("remote", "add", "origin", split.public, cwd=self.clone)
        self.old = ""
        self.count = 0
        self.wire: list[float] = []  # the fetch and the push of each sample, without the writes

    def sample(self) -> float:
        clone, i, auth, env = self.clone, self.count, self.auth, self.env
        t0 = time.perf_counter()
        git(*auth, "fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main",
            cwd=clone, env=env)
        t1 = time.perf_counter()
        parent = git("rev-parse", "refs/remotes/origin/main", cwd=clone)
        blob = git("hash-object", "-w", "--stdin", cwd=clone, inp=f"sample {i}\n")
        tree = git("mktree", cwd=clone, inp=f"100644 blob {blob}\tsample.txt\n")
        commit = git("commit-tree", tree, "-p", parent, "-m", f"raw {i}", cwd=clone, env=env)
        t2 = time.perf_counter()
        git(*auth, "push", "-q", "--atomic", f"--force-with-lease={self.ref}:{self.old}",
            "origin", f"{commit}:{self.ref}", cwd=clone, env=env)
        t3 = time.perf_counter()
        self.old, self.count = commit, i + 1
        self.wire.append((t1 - t0) + (t3 - t2))
        return t3 - t0

    def median(self, samples: int) -> float:
        return statistics.median(self.sample() for _ in range(samples))


class OwnCycle:
    """The raw cycle's three steps through Distribute's transport on the same remote:
    fetch the main branch, write a commit, compare-and-swap a ref to it."""

    ref = "refs/bench/own"

    def __init__(self, url: str, work: Path) -> None:
        self.copy = GitLocalCopy.clone(url, work / "own")
        self.transport = self.copy.transport()
        self.old: str | None = None
        self.wire: list[float] = []

    def sample(self) -> float:
        t0 = time.perf_counter()
        main = self.transport.fetch([MAIN])[MAIN]
        t1 = time.perf_counter()
        commit = self.transport.write_commit(parents=[main], message="own", base=main,
                                             changes={"sample.txt": str(t0).encode()})
        t2 = time.perf_counter()
        if not self.transport.push([RefUpdate(self.ref, self.old, commit)]):
            raise RuntimeError("the benchmark's own ref moved")
        t3 = time.perf_counter()
        self.old = commit
        self.wire.append((t1 - t0) + (t3 - t2))
        return t3 - t0


POLL = (0.05, 1.0)
#: The workers' lease (``--lease``): by default long enough that nothing expires while the
#: machine is busy, and that a worker stalled on a lease at the end stands out in the idle
#: tail.  Worker processes, started by spawn, import this module again and read it from the
#: environment the benchmark set.
LEASE_VARIABLE = "DISTRIBUTE_BENCH_LEASE"
LEASE = float(os.environ.get(LEASE_VARIABLE, "30"))
BRANCH = "main"
MAIN = f"refs/heads/{BRANCH}"
#: the kinds of --remote that are not a URL
KINDS = ("path", "file-url", "daemon", "ssh", "http", "ssh-latency", "http-latency")
#: seconds after which a server started here stops by itself, even if this script was
#: killed without a chance to stop it (it is stopped at the end in any other case)
SERVER_LIFETIME = 3 * 3600.0


def stats_counts(st: Any) -> Counter[str]:
    """A worker's Coordinator.stats as counts: pushes, lost races, replays, fetches, and the
    extra counters (``peeks``: a look at the refs with no fetch)."""
    for _ in range(5):  # another thread may add a key to ``extra`` meanwhile
        try:
            extra = dict(st.extra)
            break
        except RuntimeError:
            time.sleep(0.001)
    else:
        extra = {}
    return Counter(pushes=st.pushes, lost=st.lost_races, replays=st.replays,
                   fetches=st.fetches, **extra)


def git_ops(stats: Mapping[str, int]) -> int:
    """Operations on the remote: fetches, pushes and peeks (ls-remote, or a ref-file read)."""
    return stats.get("fetches", 0) + stats.get("pushes", 0) + stats.get("peeks", 0)


def ops_line(stats: Mapping[str, int], per: float, unit: str) -> str:
    """Git operations and lost races per ``unit`` (``per`` of them in ``stats``)."""
    per = max(per, 1e-9)
    return (f"git operations per {unit}: {git_ops(stats) / per:.1f} (fetches "
            f"{stats.get('fetches', 0) / per:.1f}, pushes {stats.get('pushes', 0) / per:.1f}, "
            f"peeks {stats.get('peeks', 0) / per:.1f}); lost races per {unit}: "
            f"{stats.get('lost', 0) / per:.2f} (replays {stats.get('replays', 0) / per:.2f})")


def _quiet_child() -> None:
    """A worker process leaves Ctrl-C to the benchmark, which ends it and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_loop(
    url: str, path: str, name: str, start: float, out: mp.Queue, poll: tuple[float, float] = POLL,
    options: Mapping[str, Any] | None = None,
) -> None:
    _quiet_child()
    done = 0
    claimed: list[float] = []
    finished: list[float] = []  # when each finish had landed (finish_job returned)
    # the clone is set-up, not work: made before the clock starts
    with worker_from_url(url, path=path, name=name, branch=BRANCH, lease_seconds=LEASE,
                         poll_seconds=poll[0], max_poll_seconds=poll[1],
                         **(options or {})) as worker:
        while time.time() < start:
            time.sleep(0.005)
        source = QueueJobs()
        while worker.get_next_job(source) is not None:
            claimed.append(time.time())
            worker.finish_job()
            finished.append(time.time())
            done += 1
        no_job = time.time()  # get_next_job returned None: this worker leaves its loop
        stats = stats_counts(worker.coord.stats)
    out.put((name, done, time.time(), stats, claimed, finished, no_job))


def _end(procs: list[Any]) -> None:
    """End the worker processes this run started that are still there (Ctrl-C, a failure)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def collect(out: mp.Queue, procs: list[Any], timeout: float) -> list[Any]:
    """One result from each worker process; a process that failed (its traceback is on
    stderr) or a run that takes over ``timeout`` seconds ends the wait at once."""
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        failed = [p.name for p in procs if p.exitcode not in (None, 0)]
        if failed:
            raise RuntimeError(f"worker process {', '.join(failed)} failed (see above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers took over {timeout:g} s")
    return results


def run_workers(
    url: str, work: Path, n: int, poll: tuple[float, float] = POLL,
    options: Mapping[str, Any] | None = None,
) -> tuple[float, Counter[str], Counter[str], dict[str, float]]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start = time.time() + 3.0 + 0.3 * n  # time to start and clone
    procs = [
        ctx.Process(target=worker_loop, name=f"w{i}",
                    args=(url, str(work / f"w{i}"), f"w{i}", start, out, poll, options))
        for i in range(n)
    ]
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    claims: list[float] = []
    ends: list[float] = []  # each worker's finishes, landed
    left = start  # the last get_next_job that returned None
    end = start
    try:
        for p in procs:
            p.start()
        while time.time() < start:
            time.sleep(0.01)
        cpu_before = cpu_ticks()
        for name, done, closed, stats, claimed, finished, no_job in collect(out, procs, 600):
            counts[name] = done
            totals.update(stats)
            claims += claimed
            ends += finished
            left = max(left, no_job)
            end = max(end, closed)
        cpu_after = cpu_ticks()
        for p in procs:
            p.join(timeout=30)
    finally:
        _end(procs)
    claims.sort()
    gaps = [b - a for a, b in zip(claims, claims[1:], strict=False)]
    busy = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
    shape = {"gap": statistics.median(gaps) if gaps else float("nan"), "busy": busy,
             "cpu_ms": busy_ms(cpu_after[0] - cpu_before[0]),
             "first": claims[0] - start if claims else float("nan"),
             "last": claims[-1] - start if claims else float("nan")}
    # the idle tail: from the last job's finish landing (or, with no finish, the last
    # claim; or the start) until the last worker had left its loop and closed
    settled = max(ends + claims, default=start)
    shape.update(finished=settled - start, left=left - start, tail=end - settled)
    return end - start, counts, totals, shape


# ---- idle workers: one runs a long job, the others wait for it ------------------------------


def idle_worker(
    url: str, path: str, name: str, runner: bool, start: float, seconds: float, warmup: float,
    claimed: Any, done: Any, out: mp.Queue, poll: tuple[float, float] = POLL,
) -> None:
    """The runner claims the one job, holds it ``seconds`` and finishes it; a waiter asks
    for a job once the runner has claimed it, and so waits until the finish.  A waiter
    counts its own git operations at three moments: when it starts waiting, ``warmup``
    seconds later, and when the runner is about to finish (``done``)."""
    _quiet_child()
    report: dict[str, Any] = {"name": name, "runner": runner}
    try:
        with worker_from_url(url, path=path, name=name, branch=BRANCH, lease_seconds=LEASE,
                             poll_seconds=poll[0], max_poll_seconds=poll[1]) as worker:
            report["ceiling"] = worker.idle_poll_seconds
            while time.time() < start:
                time.sleep(0.005)
            source = QueueJobs()
            if runner:
                try:
                    report["job"] = worker.get_next_job(source)
                    claimed.set()
                    if report["job"] is not None:
                        time.sleep(seconds)
                        done.set()
                        report["ended"] = time.time()
                        worker.finish_job()
                        report["finished"] = time.time()
                        report["next"] = worker.get_next_job(source)
                finally:
                    claimed.set()
                    done.set()
            else:
                if not claimed.wait(timeout=300):
                    raise RuntimeError("the running worker never claimed its job")
                marks: dict[str, tuple[float, Counter[str]]] = {}
                report["marks"] = marks
                began = time.time()
                marks["began"] = (began, stats_counts(worker.coord.stats))

                def mark() -> None:
                    if not done.wait(max(0.0, began + warmup - time.time())):
                        marks["warm"] = (time.time(), stats_counts(worker.coord.stats))
                    if done.wait(seconds + 300):
                        marks["done"] = (time.time(), stats_counts(worker.coord.stats))

                marker = threading.Thread(target=mark, name="idle-marks", daemon=True)
                marker.start()
                report["job"] = worker.get_next_job(source)
                report["left"] = time.time()
                marker.join(timeout=10)
    except Exception as err:  # noqa: BLE001 - reported to the benchmark, which fails
        report["error"] = f"{type(err).__name__}: {scrub_url(str(err))}"
    out.put(report)


def run_idle(
    url: str, work: Path, waiters: int, seconds: float, warmup: float,
    poll: tuple[float, float] = POLL,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    claimed, done = ctx.Event(), ctx.Event()
    start = time.time() + 3.0 + 0.3 * (waiters + 1)
    procs = [
        ctx.Process(target=idle_worker, name=f"i{i}",
                    args=(url, str(work / f"i{i}"), f"i{i}", i == 0, start, seconds, warmup,
                          claimed, done, out, poll))
        for i in range(waiters + 1)
    ]
    reports: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        reports += collect(out, procs, seconds + 600)
        for p in procs:
            p.join(timeout=30)
    finally:
        _end(procs)
    errors = [f"{r['name']}: {r['error']}" for r in reports if "error" in r]
    if errors:
        raise RuntimeError("idle run failed: " + "; ".join(errors))
    run = next(r for r in reports if r["runner"])
    if run.get("job") is None or run.get("next") is not None:
        raise RuntimeError(f"idle run: the running worker got {run.get('job')!r} first and "
                           f"{run.get('next')!r} after its job, not one job then none")
    waiting = [r for r in reports if not r["runner"]]
    if any(r.get("job") is not None for r in waiting):
        raise RuntimeError("idle run: a waiting worker got a job")
    after: Counter[str] = Counter()  # operations after the warm-up, until the finish began
    whole: Counter[str] = Counter()  # the same from the first moment of waiting
    after_s = whole_s = 0.0
    for r in waiting:
        marks = r["marks"]
        if "done" not in marks:
            raise RuntimeError(f"idle run: {r['name']} never saw the job end")
        (t_began, c_began), (t_done, c_done) = marks["began"], marks["done"]
        whole.update(c_done - c_began)
        whole_s += t_done - t_began
        if "warm" in marks:
            t_warm, c_warm = marks["warm"]
            after.update(c_done - c_warm)
            after_s += t_done - t_warm
    return {"after": after, "after_minutes": after_s / 60, "whole": whole,
            "whole_minutes": whole_s / 60, "ceiling": run["ceiling"],
            "left": [r["left"] - run["finished"] for r in waiting]}


def cpu_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far (Linux; zeros elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_ms(ticks: int) -> float:
    """Busy CPU ticks (:func:`cpu_ticks`, summed over the machine's CPUs) in milliseconds."""
    try:
        per_second = os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        per_second = 100
    return ticks * 1000.0 / per_second


# ---- where each run's remote comes from ----------------------------------------------------


def serve_daemon(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
         f"--base-path={base}", "--export-all", "--enable=receive-pack", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("git daemon did not start")


def job_names(count: int) -> list[str]:
    return [f"job-{i:05d}" for i in range(count)]


def _prepared(jobs: int) -> Callable[[Path], object]:
    """What makes a new bare repository at a path a prepared remote with ``jobs`` queued."""
    return lambda path: init_remote(path, jobs=job_names(jobs))


class OwnedRemote:
    """One remote of the user's, rewritten to a fresh state before each run.

    A reset force-pushes a new main branch (one commit: ``jobs.txt`` with the run's jobs,
    empty ledgers, ``DISTRIBUTE.md``), deletes every ref under ``refs/distribute/`` and
    ``refs/heads/jobs/`` (on the first reset also the benchmark's own refs, left by an
    earlier run), then lets :func:`init_remote` write the lock as workers expect it.
    """

    PREFIXES = ("refs/distribute/", "refs/heads/jobs/")
    BENCH_REFS = (RawCycle.ref, OwnCycle.ref)
    BATCH = 200  # refspecs per push: a remote with many job branches needs several

    def __init__(self, url: str, work: Path) -> None:
        self.url = url
        split = split_secret(url)
        self.public = split.public
        self.auth = git_options(split.secret)
        self.env = {**IDENTITY, **git_env(split.secret)}
        self.scratch = work / "reset.git"
        git("init", "-q", "--bare", str(self.scratch))
        self.resets = 0

    def _git(self, *args: str, inp: str | None = None) -> str:
        return git(*self.auth, *args, cwd=self.scratch, inp=inp, env=self.env)

    def refs(self) -> list[str]:
        out = self._git("ls-remote", "--", self.public)
        return [line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line]

    def _push(self, specs: list[str]) -> None:
        for i in range(0, len(specs), self.BATCH):
            self._git("push", "-q", "--", self.public, *specs[i:i + self.BATCH])

    def reset(self, jobs: int) -> str:
        files = {
            JOBS_FILE: format_queue(job_names(jobs)), "running.txt": "", "done.txt": "",
            "failed.txt": "", LAYOUT_FILE: LAYOUT_TEXT,
        }
        entries = "".join(
            f"100644 blob {self._git('hash-object', '-w', '--stdin', inp=text)}\t{name}\n"
            for name, text in sorted(files.items())
        )
        tree = self._git("mktree", inp=entries)
        commit = self._git("commit-tree", tree, "-m", f"distribute bench: {jobs} jobs")
        doomed = [
            ref for ref in self.refs()
            if ref.startswith(self.PREFIXES) or (self.resets == 0 and ref in self.BENCH_REFS)
        ]
        self._push([f"+{commit}:{MAIN}", *(f":{ref}" for ref in doomed)])
        init_remote(self.url, branch=BRANCH)  # the lock; nothing else is missing
        self.resets += 1
        return self.url

    def remove_bench_refs(self) -> None:
        mine = [ref for ref in self.refs() if ref in self.BENCH_REFS]
        if mine:
            self._push([f":{ref}" for ref in mine])


class Remotes:
    """Makes each run's remote (``new(name, jobs)`` gives its URL), starting what serves
    them first; ``close()`` stops all of it."""

    def __init__(self, kind: str, work: Path, latency_ms: float) -> None:
        self.kind, self.work = kind, work
        self.stack = contextlib.ExitStack()
        self.owned: OwnedRemote | None = None
        self.label = kind
        self._new: Callable[[str, int], str]
        try:
            self._open(latency_ms)
        except BaseException:
            self.stack.close()
            raise

    def _open(self, latency_ms: float) -> None:
        kind, work = self.kind, self.work
        if kind not in KINDS:
            self.owned = OwnedRemote(kind, work)
            self.label = f"{scrub_url(kind)}, yours, reset before each run"
            self._new = lambda name, jobs: self.owned.reset(jobs)  # type: ignore[union-attr]
            return
        folder = work / "remotes"
        folder.mkdir(parents=True)

        def local(name: str, jobs: int) -> str:
            path = folder / f"{name}.git"
            _prepared(jobs)(path)
            return path.as_uri() if kind == "file-url" else str(path)

        self._new = local
        if kind == "daemon":
            proc, port = serve_daemon(folder)
            self.stack.callback(_stop, proc)

            def served(name: str, jobs: int) -> str:
                local(name, jobs)
                return f"git://127.0.0.1:{port}/{name}.git"

            self._new = served
        elif kind in ("ssh", "ssh-latency"):
            self._open_ssh(latency_ms if kind == "ssh-latency" else None)
        elif kind in ("http", "http-latency"):
            self._open_http(latency_ms if kind == "http-latency" else None)

    def _open_http(self, latency_ms: float | None) -> None:
        servers = _servers()
        server = servers.HttpServer(self.work / "http", lifetime=SERVER_LIFETIME)
        http = self.stack.enter_context(server)
        self.label = "http: smart HTTP (lighttpd + git http-backend, basic auth) on 127.0.0.1"
        if latency_ms is None:
            self._new = lambda name, jobs: http.remote(f"{name}.git", init=_prepared(jobs))[0]
            return
        proxy = self.stack.enter_context(
            servers.LatencyProxy(http.port, latency_ms, lifetime=SERVER_LIFETIME))
        self.label = (f"http-latency: smart HTTP on 127.0.0.1 behind a proxy adding "
                      f"{latency_ms:g} ms each way")

        def slow(name: str, jobs: int) -> str:
            http.remote(f"{name}.git", init=_prepared(jobs))
            return http.url(f"{name}.git", port=proxy.port)

        self._new = slow

    def _open_ssh(self, latency_ms: float | None) -> None:
        servers = _servers()
        server = servers.SshServer(self.work / "sshd", lifetime=SERVER_LIFETIME)
        sshd = self.stack.enter_context(server)
        # git, here and in every worker process started from now on, reaches it with its
        # throw-away keys, as the tests do
        before = os.environ.get("GIT_SSH_COMMAND")
        os.environ["GIT_SSH_COMMAND"] = sshd.ssh_command
        self.stack.callback(_restore_env, "GIT_SSH_COMMAND", before)
        self.label = "ssh: sshd on 127.0.0.1"
        if latency_ms is None:
            self._new = lambda name, jobs: sshd.remote(f"{name}.git", init=_prepared(jobs))[0]
            return
        proxy = self.stack.enter_context(
            servers.LatencyProxy(sshd.port, latency_ms, lifetime=SERVER_LIFETIME))
        self.label = f"ssh-latency: sshd on 127.0.0.1 behind a proxy adding {latency_ms:g} ms " \
                     "each way"

        def slow(name: str, jobs: int) -> str:
            _, path = sshd.remote(f"{name}.git", init=_prepared(jobs))
            return sshd.url(path, port=proxy.port)

        self._new = slow

    def new(self, name: str, jobs: int) -> str:
        return self._new(name, jobs)

    def close(self) -> None:
        try:
            if self.owned is not None and self.owned.resets:
                with contextlib.suppress(subprocess.CalledProcessError, OSError):
                    self.owned.remove_bench_refs()
        finally:
            self.stack.close()


def _servers() -> Any:
    """The repository's tests/servers.py (real sshd, smart HTTP and a latency proxy on
    127.0.0.1; it needs no pytest)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import servers

    return servers


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def confirm_rewrite(url: str, runs: int, assume_yes: bool) -> bool:
    """Say what a run does to the user's remote; ask unless ``assume_yes``."""
    print(
        f"WARNING: this benchmark REWRITES the remote {scrub_url(url)}.\n"
        f"It resets it {runs} times, before each of its runs: each time it force-pushes a new "
        f"'{BRANCH}' branch (the run's jobs.txt and empty ledgers: the branch's history there "
        f"is lost) and deletes every "
        f"ref under refs/distribute/ and refs/heads/jobs/ (the lock, liveness records, job "
        f"branches); it also writes refs/bench/raw and refs/bench/own, and deletes them at "
        f"the end. Other branches and tags are left alone.", file=sys.stderr, flush=True)
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("not confirmed (no terminal to ask on): pass --yes to rewrite it",
              file=sys.stderr)
        return False
    try:
        answer = input("Rewrite it? Type 'yes' to go on: ")
    except (EOFError, KeyboardInterrupt):
        answer = ""
        print(file=sys.stderr)
    return answer.strip().lower() == "yes"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run the way Ctrl-C does: cleaned up


# ---- the run -------------------------------------------------------------------------------


def main() -> int:
    global LEASE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--raw-samples", type=int, default=20,
                    help="raw cycles measured around each multi-worker run")
    ap.add_argument("--single-jobs", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="*", default=[4, 16])
    ap.add_argument("--jobs", type=int, default=160, help="jobs per multi-worker run")
    ap.add_argument("--remote", default="path", metavar="KIND_OR_URL",
                    help="path: the bare repository's path (written directly); file-url: its "
                         "file:// URL (git push and fetch);\ndaemon: git daemon on 127.0.0.1; "
                         "ssh: sshd on 127.0.0.1; http: smart HTTP (lighttpd) on 127.0.0.1;\n"
                         "ssh-latency, http-latency: ssh or HTTP through a proxy adding "
                         "--latency-ms each way;\n"
                         "or a git URL of a remote you own (ssh://, https://, git@host:path): "
                         "one remote for all runs,\nREWRITTEN before each (see --yes)")
    ap.add_argument("--latency-ms", type=float, default=40.0,
                    help="ssh-latency, http-latency: delay added in each direction "
                         "(default 40)")
    ap.add_argument("--yes", action="store_true",
                    help="with a URL: rewrite that remote without asking")
    ap.add_argument("--poll", type=float, nargs=2, default=list(POLL), metavar=("FIRST", "MAX"),
                    help="the workers' poll_seconds and max_poll_seconds")
    ap.add_argument("--no-hand-off", action="store_true",
                    help="workers claim only for themselves (Worker(hand_off=False)): the "
                         "claims of several workers then go one at a time")
    ap.add_argument("--lease", type=float, default=LEASE,
                    help=f"the workers' lease_seconds (default {LEASE:g}; a worker's longest "
                         "wait between looks while others' jobs run is a sixth of it, at most "
                         "20 s: the library's default lease, 120, gives the idle budget users "
                         "get)")
    ap.add_argument("--idle-seconds", type=float, default=30.0,
                    help="how long the idle measurement's one job runs (0: skip it)")
    ap.add_argument("--idle-workers", type=int, default=4,
                    help="workers waiting in the idle measurement")
    ap.add_argument("--idle-warmup", type=float, default=20.0,
                    help="seconds of waiting left out of the idle figure")
    args = ap.parse_args()
    if args.lease <= 0:
        ap.error("--lease must be > 0")
    LEASE = args.lease
    os.environ[LEASE_VARIABLE] = repr(args.lease)  # for the worker processes
    if args.remote not in KINDS and is_local_path(args.remote):
        ap.error(f"--remote takes one of {', '.join(KINDS)} or a git URL (ssh://..., "
                 "https://..., git@host:path)")
    if args.latency_ms < 0:
        ap.error("--latency-ms must be >= 0")
    idle = args.idle_seconds > 0
    if idle and (args.idle_workers < 1 or args.idle_seconds <= args.idle_warmup
                 or args.idle_warmup < 0):
        ap.error("the idle measurement needs --idle-workers >= 1 and --idle-seconds longer "
                 "than --idle-warmup (>= 0); --idle-seconds 0 skips it")
    runs = 2 + len(args.workers) + (1 if idle else 0)
    if args.remote not in KINDS and not confirm_rewrite(args.remote, runs, args.yes):
        return 1
    signal.signal(signal.SIGTERM, _interrupt)

    work = Path(tempfile.mkdtemp(prefix="distribute-bench-"))
    remotes: Remotes | None = None
    try:
        try:
            remotes = Remotes(args.remote, work, args.latency_ms)
        except (ImportError, RuntimeError) as err:  # a missing program, a server that failed
            print(f"cannot serve --remote {args.remote}: {err}", file=sys.stderr)
            return 2
        run(args, remotes, work, idle)
    except KeyboardInterrupt:
        print("interrupted: workers and servers stopped", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as err:
        said = scrub_url((err.stderr or "").strip()) or "(nothing on stderr)"
        print(f"a git command of the benchmark failed (exit status {err.returncode}): {said}",
              file=sys.stderr)
        return 1
    finally:
        if remotes is not None:
            remotes.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, remotes: Remotes, work: Path, idle: bool) -> None:
    poll = (args.poll[0], args.poll[1])
    raw_url = remotes.new("raw", 0)
    raw, own = RawCycle(raw_url, work), OwnCycle(raw_url, work)
    url = remotes.new("single", args.single_jobs)
    raw.median(3)  # warm up, not counted
    raw.wire.clear()
    per_job, cycles, own_cycles = [], [], []
    solo_ticks = 0  # the machine's busy CPU while the worker's calls ran (not the samples')
    with worker_from_url(url, path=work / "single", name="solo", branch=BRANCH,
                         lease_seconds=30) as w:
        source = QueueJobs()
        while True:
            t0, c0 = time.perf_counter(), cpu_ticks()[0]
            if w.get_next_job(source) is None:
                break
            claimed, solo_ticks = time.perf_counter() - t0, solo_ticks + cpu_ticks()[0] - c0
            # interleaved, while the job "runs": all three see the machine as it is now,
            # and the worker asks for its next job right after its finish, as a loop does
            cycles.append(raw.sample())
            own_cycles.append(own.sample())
            t1, c1 = time.perf_counter(), cpu_ticks()[0]
            w.finish_job()
            per_job.append(claimed + time.perf_counter() - t1)
            solo_ticks += cpu_ticks()[0] - c1
        solo_stats = stats_counts(w.coord.stats)
    own.transport.close()
    own.copy.close()
    cycle = statistics.median(cycles)
    how = ("written directly" if own.transport.direct
           else "through git push and fetch")
    print(f"remote: {remotes.label} ({how})")
    print(f"raw git CAS cycle (fetch + write + push), median of {len(cycles)}, taken "
          f"while the jobs below ran: {cycle * 1000:.1f} ms")
    own_cycle = statistics.median(own_cycles)
    print(f"the same cycle through Distribute's transport: {own_cycle * 1000:.1f} ms = "
          f"{own_cycle / cycle:.2f} raw cycles")
    med = statistics.median(per_job)
    print(f"1 worker: get_next_job + finish_job, median of {len(per_job)}: "
          f"{med * 1000:.1f} ms = {med / cycle:.2f} raw cycles "
          f"({1 / med:.1f} jobs/s)")
    print(f"    {ops_line(solo_stats, len(per_job), 'job')}")
    wire, own_wire = statistics.median(raw.wire), statistics.median(own.wire)
    print(f"    one claim at a time: with other workers about a job moves the main branch "
          f"once (its claim; the finish parks on the worker's own record and the next claim "
          f"folds it in), by a worker that must first fetch it; a fetch and a push take "
          f"{own_wire * 1000:.1f} ms through Distribute's transport "
          f"({wire * 1000:.1f} ms with raw git), so claims one at a time carry at most "
          f"{1 / own_wire:.1f} jobs/s ({1 / wire:.1f} with raw git) with any number of "
          f"workers; a claim that hands jobs to idle workers claims for up to 16 at once "
          f"(--no-hand-off: one at a time)")
    solo_rate, solo_per_cycle = 1 / med, cycle / med
    solo_cpu = busy_ms(solo_ticks) / max(1, len(per_job))
    cores = os.cpu_count() or 1
    print(f"    CPU per job: {solo_cpu:.0f} ms, every process of the machine counted (the "
          f"worker's, git's, ssh's, the server's); this machine has {cores} "
          f"CPU{'s' if cores != 1 else ''}")

    for n in args.workers:
        url = remotes.new(f"many{n}", args.jobs)
        before = raw.median(args.raw_samples // 2)
        options = {"hand_off": False} if args.no_hand_off else None
        elapsed, counts, totals, shape = run_workers(url, work / f"many{n}", n, poll, options)
        cycle = statistics.median([before, raw.median(args.raw_samples // 2)])
        total = sum(counts.values())
        rate = total / elapsed
        busiest, least = max(counts.values()), min(counts.values())
        print(f"{n} workers: {total} jobs in {elapsed:.1f} s = {rate:.1f} jobs/s "
              f"= {rate * cycle:.2f} jobs per raw cycle ({cycle * 1000:.1f} ms, before "
              f"and after); busiest {busiest}, least busy "
              f"{least} (ratio {busiest / max(least, 1):.1f})")
        per = ", ".join(f"{k} {v / max(total, 1):.1f}" for k, v in sorted(totals.items()))
        print(f"    per job: {per}")
        print(f"    {ops_line(totals, total, 'job')}")
        print(f"    {n} workers / 1 worker: {rate / solo_rate:.2f}x the jobs/s "
              f"({rate * cycle / solo_per_cycle:.2f}x in jobs per raw cycle, each against the "
              f"raw cycles of its own run)")
        print(f"    a claim landed every {shape['gap']:.3f} s (median); the machine's CPU "
              f"was {shape['busy']:.0%} busy")
        cpu = shape["cpu_ms"] / max(1, total)
        print(f"    CPU per job: {cpu:.0f} ms ({cpu / max(solo_cpu, 1e-9):.2f}x one worker's); "
              f"with all {cores} CPU{'s' if cores != 1 else ''} busy this machine could do "
              f"{cores * 1000 / max(cpu, 1e-9):.1f} jobs/s at that cost (where workers, git "
              "and the server share the machine, that bounds the jobs/s of any number of "
              "workers)")
        print(f"    first claim {shape['first']:.2f} s after the start, last claim at "
              f"{shape['last']:.2f} s, every worker done at {elapsed:.2f} s")
        print(f"    idle tail {shape['tail']:.2f} s: the last finish landed at "
              f"{shape['finished']:.2f} s, the last worker got no job at {shape['left']:.2f} s "
              f"and its process was done at {elapsed:.2f} s (lease {LEASE:g} s: a worker "
              "stalled on a lease shows here)")

    if idle:
        k, seconds, warmup = args.idle_workers, args.idle_seconds, args.idle_warmup
        url = remotes.new("idle", 1)
        got = run_idle(url, work / "idle", k, seconds, warmup, poll)
        print(f"idle workers: 1 worker ran one job for {seconds:g} s while {k} other"
              f"{'s' if k != 1 else ''} waited "
              f"for it (lease {LEASE:g} s, poll {poll[0]:g}-{poll[1]:g} s, waits between "
              f"looks back off up to {got['ceiling']:g} s)")
        after, minutes = got["after"], got["after_minutes"]
        if minutes > 0:
            print(f"    after the first {warmup:g} s of waiting: "
                  f"{ops_line(after, minutes, 'idle worker-minute')}, over {minutes:.2f} "
                  f"worker-minutes")
        else:
            print(f"    after the first {warmup:g} s of waiting: no waiting left to count")
        print(f"    the whole wait: {git_ops(got['whole']) / max(got['whole_minutes'], 1e-9):.1f} "
              f"git operations per idle worker-minute, over {got['whole_minutes']:.2f} "
              f"worker-minutes")
        left = got["left"]
        print(f"    the waiting workers left {min(left):.2f} to {max(left):.2f} s after the "
              f"job's finish landed")


if __name__ == "__main__":
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    raise SystemExit(main())
