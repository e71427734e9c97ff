"""Benchmark: Distribute's cost per job against raw git on the same machine, in one run.

Prints:
  * the raw git compare-and-swap cycle (fetch + write objects + push with a lease),
    done with plain git commands, one sample between each two jobs of the next line
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
    the last worker process, told there was no job left, had closed its worker.

Usage:
    python bench/bench.py                 # the full run (about three minutes on 2 cores)
    python bench/bench.py --workers 4 --jobs 60 --single-jobs 20
    python bench/bench.py --remote file-url  # the same folder through git push and fetch
    python bench/bench.py --remote daemon    # the same over git daemon on 127.0.0.1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distribute.dist import worker_from_url  # noqa: E402
from distribute.remote import init_remote  # noqa: E402
from distribute.sources import QueueJobs  # noqa: E402
from distribute.transport.base import RefUpdate  # noqa: E402
from distribute.transport.git import GitLocalCopy  # noqa: E402


def git(*args: str, cwd: Path | None = None, inp: str | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, input=inp, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class RawCycle:
    """Fetch, write a commit with plumbing, push it with --force-with-lease: plain git.

    One sample at a time, so that samples can be taken between Distribute's jobs: a
    shared machine's speed drifts within minutes, and a ratio is only fair between
    figures measured at the same time.
    """

    ref = "refs/bench/raw"

    def __init__(self, url: str, work: Path) -> None:
        self.clone = work / "raw"
        git("init", "-q", str(self.clone))
        git("remote", "add", "origin", url, cwd=self.clone)
        self.old = ""
        self.count = 0
        self.wire: list[float] = []  # the fetch and the push of each sample, without the writes

    def sample(self) -> float:
        clone, i = self.clone, self.count
        t0 = time.perf_counter()
        git("fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main", cwd=clone)
        t1 = time.perf_counter()
        parent = git("rev-parse", "refs/remotes/origin/main", cwd=clone)
        blob = git("hash-object", "-w", "--stdin", cwd=clone, inp=f"sample {i}\n")
        tree = git("mktree", cwd=clone, inp=f"100644 blob {blob}\tsample.txt\n")
        commit = git("commit-tree", tree, "-p", parent, "-m", f"raw {i}", cwd=clone)
        t2 = time.perf_counter()
        git("push", "-q", "--atomic", f"--force-with-lease={self.ref}:{self.old}", "origin",
            f"{commit}:{self.ref}", cwd=clone)
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
#: The workers' lease: long enough that nothing expires while the machine is busy, and that
#: a worker stalled on a lease at the end stands out in the idle tail.
LEASE = 30.0
MAIN = "refs/heads/main"


def worker_loop(
    url: str, path: str, name: str, start: float, out: mp.Queue, poll: tuple[float, float] = POLL
) -> None:
    done = 0
    claimed: list[float] = []
    finished: list[float] = []  # when each finish had landed (finish_job returned)
    # the clone is set-up, not work: made before the clock starts
    with worker_from_url(url, path=path, name=name, lease_seconds=LEASE, poll_seconds=poll[0],
                         max_poll_seconds=poll[1]) as worker:
        while time.time() < start:
            time.sleep(0.005)
        source = QueueJobs()
        while worker.get_next_job(source) is not None:
            claimed.append(time.time())
            worker.finish_job()
            finished.append(time.time())
            done += 1
        no_job = time.time()  # get_next_job returned None: this worker leaves its loop
        st = worker.coord.stats
        stats = Counter(pushes=st.pushes, lost=st.lost_races, replays=st.replays,
                        fetches=st.fetches, **st.extra)
    out.put((name, done, time.time(), stats, claimed, finished, no_job))


def run_workers(
    url: str, work: Path, n: int, poll: tuple[float, float] = POLL
) -> tuple[float, Counter[str], Counter[str], dict[str, float]]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start = time.time() + 3.0 + 0.3 * n  # time to start and clone
    procs = [
        ctx.Process(target=worker_loop, args=(url, str(work / f"w{i}"), f"w{i}", start, out, poll))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    claims: list[float] = []
    ends: list[float] = []  # each worker's finishes, landed
    left = start  # the last get_next_job that returned None
    end = start
    while time.time() < start:
        time.sleep(0.01)
    cpu_before = cpu_ticks()
    for _ in procs:
        name, done, closed, stats, claimed, finished, no_job = out.get(timeout=600)
        counts[name] = done
        totals.update(stats)
        claims += claimed
        ends += finished
        left = max(left, no_job)
        end = max(end, closed)
    cpu_after = cpu_ticks()
    for p in procs:
        p.join(timeout=30)
    claims.sort()
    gaps = [b - a for a, b in zip(claims, claims[1:], strict=False)]
    busy = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
    shape = {"gap": statistics.median(gaps) if gaps else float("nan"), "busy": busy,
             "first": claims[0] - start if claims else float("nan"),
             "last": claims[-1] - start if claims else float("nan")}
    # the idle tail: from the last job's finish landing (or, with no finish, the last
    # claim; or the start) until the last worker had left its loop and closed
    settled = max(ends + claims, default=start)
    shape.update(finished=settled - start, left=left - start, tail=end - settled)
    return end - start, counts, totals, shape


def cpu_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far (Linux; zeros elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


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
    raise RuntimeError("git daemon did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--raw-samples", type=int, default=20,
                    help="raw cycles measured around each multi-worker run")
    ap.add_argument("--single-jobs", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="*", default=[4, 16])
    ap.add_argument("--jobs", type=int, default=160, help="jobs per multi-worker run")
    ap.add_argument("--remote", choices=["path", "file-url", "daemon"], default="path",
                    help="the bare repository's path (written directly), its file:// URL "
                         "(git push and fetch), or git daemon on 127.0.0.1")
    ap.add_argument("--poll", type=float, nargs=2, default=list(POLL), metavar=("FIRST", "MAX"),
                    help="the workers' poll_seconds and max_poll_seconds")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="distribute-bench-"))
    daemon = None
    try:
        def new_remote(name: str, jobs: int) -> str:
            path = work / "remotes" / f"{name}.git"
            init_remote(path, jobs=[f"job-{i:05d}" for i in range(jobs)])
            if daemon is not None:
                return f"git://127.0.0.1:{port}/{name}.git"
            return path.as_uri() if args.remote == "file-url" else str(path)

        if args.remote == "daemon":
            (work / "remotes").mkdir(parents=True)
            daemon, port = serve_daemon(work / "remotes")

        raw_url = new_remote("raw", 0)
        raw, own = RawCycle(raw_url, work), OwnCycle(raw_url, work)
        url = new_remote("single", args.single_jobs)
        raw.median(3)  # warm up, not counted
        raw.wire.clear()
        per_job, cycles, own_cycles = [], [], []
        with worker_from_url(url, path=work / "single", name="solo", lease_seconds=30) as w:
            source = QueueJobs()
            while True:
                # interleaved: all three see the machine as it is now
                cycles.append(raw.sample())
                own_cycles.append(own.sample())
                t0 = time.perf_counter()
                if w.get_next_job(source) is None:
                    break
                w.finish_job()
                per_job.append(time.perf_counter() - t0)
        own.transport.close()
        cycle = statistics.median(cycles)
        how = ("written directly" if own.transport.direct
               else "through git push and fetch")
        print(f"remote: {args.remote} ({how})")
        print(f"raw git CAS cycle (fetch + write + push), median of {len(cycles)}, taken "
              f"between the jobs below: {cycle * 1000:.1f} ms")
        own_cycle = statistics.median(own_cycles)
        print(f"the same cycle through Distribute's transport: {own_cycle * 1000:.1f} ms = "
              f"{own_cycle / cycle:.2f} raw cycles")
        med = statistics.median(per_job)
        print(f"1 worker: get_next_job + finish_job, median of {len(per_job)}: "
              f"{med * 1000:.1f} ms = {med / cycle:.2f} raw cycles "
              f"({1 / med:.1f} jobs/s)")
        wire, own_wire = statistics.median(raw.wire), statistics.median(own.wire)
        print(f"    ceiling: a job moves the main branch twice (claim, finish), each time by a "
              f"worker that must first fetch it; a fetch and a push take "
              f"{own_wire * 1000:.1f} ms through Distribute's transport "
              f"({wire * 1000:.1f} ms with raw git), so at most {1 / (2 * own_wire):.1f} "
              f"jobs/s ({1 / (2 * wire):.1f} with raw git) with any number of workers, even "
              f"if nothing else took time")

        for n in args.workers:
            url = new_remote(f"many{n}", args.jobs)
            before = raw.median(args.raw_samples // 2)
            elapsed, counts, totals, shape = run_workers(url, work / f"many{n}", n,
                                                         tuple(args.poll))
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
            print(f"    a claim landed every {shape['gap']:.3f} s (median); the machine's CPU "
                  f"was {shape['busy']:.0%} busy")
            print(f"    first claim {shape['first']:.2f} s after the start, last claim at "
                  f"{shape['last']:.2f} s, every worker done at {elapsed:.2f} s")
            print(f"    idle tail {shape['tail']:.2f} s: the last finish landed at "
                  f"{shape['finished']:.2f} s, the last worker got no job at {shape['left']:.2f} s "
                  f"and its process was done at {elapsed:.2f} s (lease {LEASE:g} s: a worker "
                  "stalled on a lease shows here)")
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    raise SystemExit(main())
