"""The simulator's shell: a remote, worker processes, faults, and the final state.

Theory of operation
-------------------
:func:`run` prepares a bare repository (served from the file system, by a
``git daemon``, by sshd or by smart HTTP on 127.0.0.1; see :func:`hosted_remote`),
starts one OS process per worker
(``python -m sim.worker``, each with its own local copy and journal), and
then loops -- at most until the duration cap -- reaping processes and
injecting faults drawn from one seeded :class:`random.Random`:

* kill: ``SIGKILL`` a running worker process (not the git commands it started),
  then restart it after a short delay
  with the same name and local copy (a new *life*, a new journal file); four
  kills in five only hit a worker whose current life has opened its Worker,
  so that slow restarts on a loaded machine cannot starve the fleet;
* pause: ``SIGSTOP`` a running worker for 1.5 to 3 leases, then ``SIGCONT``.

Each worker life also gets a wall clock of its own (``--clock-skew``): its
``time.time()`` is off by up to that many seconds either way and runs up to 5%
fast or slow (see :func:`sim.worker.skew_wall_clock`).  The library must
not care: it times leases on the monotonic clock only.

Kills, pauses, resumes and restarts go to the injector's journal.  When every
worker has left its loop (or the cap is hit) every process still there is
killed, the daemon or server stopped, and the remote read with git (by path: it is
on this machine whatever serves it): the ledgers on the
main branch, the lock ref's history, the job branches and which journalled
commits the main branch reaches.  That plain data and the journals go to the
pure :func:`sim.checker.check`.  Every process this module starts is killed
in a ``finally``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from distribute.core.ledger import DONE, DONE_PARTS, parts_in_order

from .checker import CheckResult, check, proc_key
from .coverage import Coverage, check_spec, count, evaluate
from .journal import Journal, read_journals
from .worker import CLONED_SUFFIX, RESULT_FILE, WorkerConfig

#: The folder holding the ``sim`` package, put on workers' ``PYTHONPATH``.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"
LOCK_REF = "refs/distribute/lock"

Progress = Callable[[int, "int | None", dict[str, int]], None]
#: The largest ``--clock-skew``: a day, so that commit dates stay plausible.
MAX_CLOCK_SKEW = 86400.0
#: How far a worker's wall clock may run fast or slow (``--clock-skew`` above zero).
MAX_CLOCK_DRIFT = 0.05
#: The share of kills that may hit a process still starting (see ``_Fleet.kill_targets``).
STARTUP_KILL_SHARE = 0.2
#: What ``--remote`` takes: a path, git daemon, sshd, smart HTTP (the last three on 127.0.0.1).
REMOTE_KINDS = ("file", "daemon", "ssh", "http")
#: The remotes served by the repository's test servers (``tests/servers.py``).
HOSTED_KINDS = ("ssh", "http")
#: How long a hosted server outlives the run's duration cap before it stops by itself
#: (it is stopped at the end of the run; this only bounds one left behind by ``kill -9``).
SERVER_GRACE = 600.0
#: How long to wait, after the servers stopped, for git processes still working in the
#: remote on their behalf (a push whose client was killed may still be landing).
QUIET_SECONDS = 15.0


@dataclass(slots=True)
class SimConfig:
    """One simulator run; the command-line options of ``python -m sim``."""

    workers: int = 8
    jobs: int = 80
    next_job_func: str = ""
    #: the queue's function goes the locked way (acquire, call, claim) instead of deciding
    #: from the files with the lock free and handing jobs to idle workers
    locked_claims: bool = False
    #: lines of done.txt sealed into a part (0: the library's 1,000); a few, so that a
    #: short run seals parts all the time
    done_part_lines: int = 0
    job_func: str = ""
    job_seconds: float = 0.3
    job_fail_rate: float = 0.0
    seed: int = 0
    duration: float = 120.0
    remote: str = "file"
    keep: bool = False
    lease: float = 2.0
    poll: float = 0.05
    max_attempts: int = 50
    # the default profile injects every fault (see sim.coverage.REFERENCE)
    kill_rate: float = 0.6
    pause_rate: float = 0.6
    push_fail_rate: float = 0.05
    unknown_rate: float = 0.08
    latency: float = 0.0
    lie_rate: float = 0.0
    out: str = ""
    restart_delay: float = 0.3
    clock_skew: float = 600.0
    #: ``auto`` (the minimums of sim.coverage, scaled to this run), ``off``, or
    #: ``NAME=N,...``: those minimums instead of the table's
    min_coverage: str = "auto"
    #: at most this many kills and this many pauses in a run (0: no cap).  Faults come at
    #: a rate per second while progress comes with CPU time: on a loaded machine an
    #: uncapped rate can restart workers faster than they get work done.
    max_faults: int = 40

    def validate(self) -> None:
        if self.workers < 1 or self.jobs < 0 or self.duration <= 0 or self.lease <= 0:
            raise ValueError("need --workers >= 1, --jobs >= 0, --duration > 0, --lease > 0")
        if self.remote not in REMOTE_KINDS:
            raise ValueError(f"--remote must be one of {', '.join(REMOTE_KINDS)}, "
                             f"not {self.remote!r}")
        rates = (self.push_fail_rate, self.unknown_rate, self.lie_rate, self.job_fail_rate)
        if any(not 0 <= r <= 1 for r in rates) or self.kill_rate < 0 or self.pause_rate < 0:
            raise ValueError("fault rates must be >= 0 (push and job rates at most 1)")
        if self.max_faults < 0:
            raise ValueError("--max-faults must be >= 0 (0: no cap)")
        if self.done_part_lines < 0:
            raise ValueError("--done-part-lines must be >= 0 (0: the library's default)")
        if not 0 <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise ValueError(f"--clock-skew must be between 0 and {MAX_CLOCK_SKEW:g} seconds")
        check_spec(self.min_coverage)

    @property
    def queue(self) -> list[str]:
        return [] if self.next_job_func else [f"job-{i:04d}" for i in range(self.jobs)]

    def command(self) -> str:
        """The ``python -m sim`` command line that repeats this run's settings and seed."""
        defaults = SimConfig()
        args = ["python", "-m", "sim"]
        for name, value in asdict(self).items():
            if name in ("keep", "out", "restart_delay") or value == getattr(defaults, name):
                continue
            args += [f"--{name.replace('_', '-')}", str(value)]
        if "--seed" not in args:
            args += ["--seed", str(self.seed)]
        return shlex.join(args)


@dataclass(slots=True)
class _Slot:
    """One worker name and its current process life."""

    name: str
    life: int = -1
    proc: subprocess.Popen[bytes] | None = None
    paused_until: float | None = None
    restart_at: float | None = None
    crashes: int = 0
    done: bool = False
    stderr: IO[bytes] | None = None


@dataclass(slots=True)
class RunOutcome:
    """Everything a run produced."""

    config: SimConfig
    workdir: Path
    journal_dir: Path
    url: str
    records: list[dict[str, Any]]
    final: dict[str, Any]
    result: CheckResult
    wall_seconds: float
    timed_out: bool
    kept: bool
    expected_jobs: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    coverage: Coverage = field(default_factory=lambda: Coverage({}, {}, checked=False))

    @property
    def ok(self) -> bool:
        """The checker found no violation (coverage aside: see :attr:`verdict`)."""
        return self.result.ok

    @property
    def verdict(self) -> str:
        """``ok``, ``violations``, or ``not enough coverage`` (guarantees kept, but the run
        saw fewer faults or events than :mod:`sim.coverage` asks for)."""
        if not self.result.ok:
            return "violations"
        return "ok" if self.coverage.ok else "not enough coverage"


def git(git_dir: Path, *args: str, check: bool = True, timeout: float = 120) -> str:
    """Run git on the bare remote; return its standard output."""
    proc = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", "--git-dir", str(git_dir), *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def prepare_remote(path: Path, jobs: list[str]) -> None:
    """A bare repository with empty ledgers and ``jobs`` queued in ``jobs.txt``."""
    from distribute.remote import init_remote

    init_remote(path, BRANCH, jobs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def git_daemon(base: Path, log: Path) -> Any:
    """Serve ``base`` with ``git daemon`` on 127.0.0.1 (pushes enabled); yield its URL prefix."""
    port = free_port()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["git", "daemon", "--listen=127.0.0.1", f"--port={port}", "--reuseaddr",
             "--enable=receive-pack", "--export-all", "--informative-errors",
             "--max-connections=0", f"--base-path={base}"],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"git daemon exited with {proc.returncode}; see {log}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("git daemon did not start listening") from None
                    time.sleep(0.05)
            yield f"git://127.0.0.1:{port}"
        finally:
            _kill_group(proc)


class RemoteUnavailable(RuntimeError):
    """The server a ``--remote`` kind needs could not be started: a program or the
    repository's ``tests/servers.py`` is missing, or the server did not come up.  The
    message says which, and for a missing program the Debian packages to install."""


def _test_servers() -> Any:
    """The repository's ``tests/servers.py`` (sshd and smart HTTP on 127.0.0.1; it needs
    no pytest), imported as the module ``servers`` the way the test suite and the
    benchmark import it, so that a test run shares one copy with its fixtures."""
    loaded = sys.modules.get("servers")
    if loaded is not None and hasattr(loaded, "SshServer") and hasattr(loaded, "HttpServer"):
        return loaded
    for folder in (PACKAGE_ROOT / "tests", Path.cwd() / "tests"):
        if (folder / "servers.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return importlib.import_module("servers")
    raise RemoteUnavailable(
        "the ssh and http remotes are served by tests/servers.py of the Distribute "
        "repository, which is not here: run the simulator from a checkout of the repository"
    )


@contextlib.contextmanager
def hosted_remote(
    kind: str, base: Path, jobs: list[str], lifetime: float
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """Start the ``kind`` server (``ssh``: sshd, key authentication only, for the user
    running this; ``http``: lighttpd and ``git http-backend`` behind basic authentication)
    on 127.0.0.1 with its files in ``base``, and a prepared bare repository in its folder
    of repositories; yield the repository's URL, its path on disk, and the environment
    variables git needs to reach it (for ssh, ``GIT_SSH_COMMAND`` with the throw-away
    keys).  Kills and pauses signal a worker process or its own session, never the
    server; it is stopped when the block ends, however it ends (errors, Ctrl-C)."""
    servers = _test_servers()
    try:
        if kind == "ssh":
            server = servers.SshServer(base, lifetime=lifetime)
        elif kind == "http":
            server = servers.HttpServer(base, lifetime=lifetime)
        else:
            raise ValueError(f"not a hosted remote: {kind!r}")
    except servers.Unavailable as err:
        raise RemoteUnavailable(f"--remote {kind}: {err}") from err
    try:
        server.start()
    except servers.ServerStartError as err:
        server.stop()
        raise RemoteUnavailable(f"--remote {kind}: {err}") from err
    try:
        url, path = server.remote("remote.git", init=lambda p: prepare_remote(p, jobs))
        env = {"GIT_SSH_COMMAND": server.ssh_command} if kind == "ssh" else {}
        yield url, path, env
    finally:
        server.stop()


def _busy_in(path: Path) -> list[int]:
    """Processes working in the repository at ``path`` (their current directory is in it,
    as for git's upload-pack and receive-pack); empty where ``/proc`` cannot tell."""
    root = path.resolve()
    pids: list[int] = []
    with contextlib.suppress(OSError):
        entries = os.listdir("/proc")
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            except OSError:
                continue
            if cwd == root or root in cwd.parents:
                pids.append(int(entry))
    return pids


def wait_until_quiet(path: Path, timeout: float = QUIET_SECONDS) -> bool:
    """Wait until no process works in the repository at ``path`` any more, at most
    ``timeout`` seconds; return whether it got quiet.  A server's git commands outlive
    the client that was killed: a push whose pack had arrived still updates its refs, and
    the final state must be read after that, not halfway through."""
    deadline = time.monotonic() + timeout
    while _busy_in(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` of the worker process alone, as a user or the OOM killer does it: a git
    command it started finishes what it began (a push may land after its worker died).
    Killing git as well could leave a ref's lock file in the remote, which no git ever
    removes (the library reports one it saw unchanged for two minutes, naming the file
    to delete): the run would then stall on that, not on the protocol."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class _Fleet:
    """The worker processes and the fault injector."""

    def __init__(
        self, config: SimConfig, url: str, workdir: Path, journal_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.url = url
        self.workdir = workdir
        self.journal_dir = journal_dir
        self.rng = random.Random(config.seed)
        self.injector = Journal(journal_dir / "injector.jsonl", "injector")
        self.slots = [_Slot(f"w{i:02d}") for i in range(config.workers)]
        self.exits: dict[str, int] = {}
        self.counts: dict[str, int] = {"kills": 0, "pauses": 0}
        self.deadline = 0.0
        env = {**os.environ, **(env or {})}
        paths = [str(PACKAGE_ROOT), os.getcwd(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.env = env

    def fault(self, fault: str, slot: _Slot, **fields: Any) -> None:
        pid = slot.proc.pid if slot.proc is not None else None
        self.injector.record("fault", fault=fault, worker=slot.name, life=slot.life, pid=pid,
                             **fields)

    def spawn(self, slot: _Slot) -> None:
        c = self.config
        slot.life += 1
        cfg = WorkerConfig(
            url=self.url, copy=str(self.workdir / "copies" / slot.name), name=slot.name,
            journal=str(self.journal_dir), life=slot.life, seed=c.seed, lease=c.lease,
            poll=c.poll, max_attempts=c.max_attempts, deadline=self.deadline,
            job_seconds=c.job_seconds, job_fail_rate=c.job_fail_rate, job_func=c.job_func,
            next_job_func=c.next_job_func, latency=c.latency, push_fail_rate=c.push_fail_rate,
            unknown_rate=c.unknown_rate, lie_rate=c.lie_rate, locked_claims=c.locked_claims,
            done_part_lines=c.done_part_lines,
        )
        if c.clock_skew > 0:
            # a generator of its own, so that the fault schedule of a seed stays the same
            clock = random.Random(f"{c.seed}/{slot.name}/{slot.life}/clock")
            cfg.clock_offset = round(clock.uniform(-c.clock_skew, c.clock_skew), 3)
            cfg.clock_rate = round(1 + clock.uniform(-MAX_CLOCK_DRIFT, MAX_CLOCK_DRIFT), 4)
        path = self.workdir / "configs" / f"{slot.name}.{slot.life:03d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cfg.to_json(), encoding="utf-8")
        if slot.stderr is not None:
            slot.stderr.close()
        slot.stderr = open(self.journal_dir / f"{slot.name}.{slot.life:03d}.stderr", "wb")  # noqa: SIM115
        slot.proc = subprocess.Popen(
            # this package's name: sim in the repository, distribute_sim when installed
            [sys.executable, "-m", f"{__package__}.worker", str(path)],
            stdout=subprocess.DEVNULL, stderr=slot.stderr, env=self.env, start_new_session=True,
        )
        slot.restart_at = None
        if slot.life > 0:
            self.fault("restart", slot)

    def running(self) -> list[_Slot]:
        return [s for s in self.slots if s.proc is not None and s.paused_until is None]

    def up(self, slot: _Slot) -> bool:
        """Has the slot's current life opened its Worker (journalled its session)?"""
        path = self.journal_dir / f"{slot.name}.{slot.life:03d}.jsonl"
        try:
            return '"kind": "session"' in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def kill_targets(self) -> list[_Slot]:
        """Who a kill may hit: mostly processes that are up and working.  Were every
        running process a target, a loaded machine (slow restarts) would let the kills
        catch the restarted lives while they start, again and again, and the fleet would
        stop making progress; one kill in :data:`STARTUP_KILL_SHARE` may still hit a
        process that is starting."""
        running = self.running()
        if self.rng.random() < STARTUP_KILL_SHARE:
            return running
        return [s for s in running if self.up(s)]

    def kill(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        self.counts["kills"] += 1
        self.fault("kill", slot)
        _kill_worker(slot.proc)
        slot.proc = None
        slot.restart_at = now + self.config.restart_delay * self.rng.uniform(0.5, 1.5)

    def pause(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        pause = self.config.lease * self.rng.uniform(1.5, 3.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(slot.proc.pid, signal.SIGSTOP)
        self.counts["pauses"] += 1
        self.fault("pause", slot, seconds=round(pause, 3))
        slot.paused_until = now + pause

    def resume(self, slot: _Slot) -> None:
        if slot.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(slot.proc.pid, signal.SIGCONT)
            self.fault("resume", slot)
        slot.paused_until = None

    def reap(self, now: float) -> None:
        for slot in self.slots:
            if slot.proc is None or slot.paused_until is not None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            self.exits[f"{slot.name}#{slot.life}"] = code
            slot.proc = None
            if code != 0 and slot.crashes < 3:
                slot.crashes += 1
                slot.restart_at = now + self.config.restart_delay
            else:
                slot.done = True

    def next_gap(self, rate: float) -> float:
        return self.rng.expovariate(rate) if rate > 0 else float("inf")

    def loop(self, progress: Callable[[], None]) -> bool:
        """Run until every worker is done or the cap; return ``True`` when the cap was hit."""
        c = self.config
        start = time.monotonic()
        warmup = min(2.0, c.lease)
        next_kill = start + warmup + self.next_gap(c.kill_rate)
        next_pause = start + warmup + self.next_gap(c.pause_rate)
        next_progress = start
        while True:
            now = time.monotonic()
            self.reap(now)
            if all(s.done for s in self.slots):
                return False
            if now >= self.deadline:
                return True
            for slot in self.slots:
                if slot.paused_until is not None and now >= slot.paused_until:
                    self.resume(slot)
                if slot.restart_at is not None and now >= slot.restart_at and not slot.done:
                    self.spawn(slot)
            # once a worker has left its loop the queue is drained: the faults stop, so that
            # kills cannot keep restarting the last workers on a loaded machine
            drained = any(s.done for s in self.slots)
            capped = c.max_faults > 0
            if now >= next_kill and (drained or capped and self.counts["kills"] >= c.max_faults):
                next_kill = float("inf")
            if now >= next_pause and (
                drained or capped and self.counts["pauses"] >= c.max_faults
            ):
                next_pause = float("inf")
            if now >= next_kill:
                targets = self.kill_targets()
                if targets:
                    self.kill(self.rng.choice(targets), now)
                next_kill = now + self.next_gap(c.kill_rate)
            if now >= next_pause:
                targets = self.running()
                if len(targets) > 1:
                    self.pause(self.rng.choice(targets), now)
                next_pause = now + self.next_gap(c.pause_rate)
            if now >= next_progress:
                progress()
                next_progress = now + 0.5
            time.sleep(0.02)

    def stop(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                if slot.paused_until is not None:
                    self.resume(slot)
                if slot.proc.poll() is None:
                    self.fault("kill", slot, at_end=True)
                _kill_group(slot.proc)
                slot.proc = None
            if slot.stderr is not None:
                slot.stderr.close()
                slot.stderr = None
        self.injector.close()


def read_final_state(
    remote: Path, records: list[dict[str, Any]], with_results: bool = False
) -> dict[str, Any]:
    """What the checker needs from the bare remote, read with git.

    ``with_results``: also note, per done job, whether the default job
    function's result file is on the main branch.
    """
    main = f"refs/heads/{BRANCH}"

    def show(path: str) -> str | None:
        out = subprocess.run(
            ["git", "--git-dir", str(remote), "show", f"{main}:{path}"],
            capture_output=True, text=True, timeout=60,
        )
        return out.stdout if out.returncode == 0 else None

    lock_log = git(remote, "log", "--first-parent", "--reverse", "--format=%x1e%B", LOCK_REF,
                   check=False)
    lock_history = [m.strip() for m in lock_log.split("\x1e") if m.strip()]
    subjects = git(remote, "log", "--first-parent", "--reverse", "--format=%s", main).splitlines()
    branches: dict[str, str] = {}
    for line in git(remote, "for-each-ref", "--format=%(objectname) %(refname)",
                    "refs/heads/jobs/").splitlines():
        oid, _, ref = line.partition(" ")
        branches[ref[len("refs/heads/"):]] = oid
    on_main = set(git(remote, "rev-list", main).split())
    # what job branches and the archives of failed jobs' branches keep
    on_kept = set(git(remote, "rev-list", "--glob=refs/heads/jobs/*",
                      "--glob=refs/distribute/archive/*").split())
    tips = {
        str(r["tip"]) for r in records
        if r.get("kind") == "event" and r.get("event") in ("update", "finish") and r.get("tip")
    }
    done = done_text(remote, main)
    final: dict[str, Any] = {
        "done": done,
        "running": show("running.txt") or "",
        "failed": show("failed.txt") or "",
        "jobs": show("jobs.txt"),
        "lock_history": lock_history,
        "main_subjects": subjects,
        "branches": branches,
        "reachable": {tip: tip in on_main for tip in tips},
        "kept": {tip: tip in on_main or tip in on_kept for tip in tips},
    }
    if with_results:
        from distribute.core.names import job_dir

        files = set(git(remote, "ls-tree", "-r", "--name-only", main, "--", "updates/")
                    .splitlines())
        jobs = [line.split("\t", 1)[0] for line in done.splitlines() if line.strip()]
        final["result_files"] = {job: f"{job_dir(job)}/{RESULT_FILE}" in files for job in jobs}
    return final


def done_text(remote: Path, main: str) -> str:
    """Every line of ``done.txt`` at ``main``: its sealed parts in order (``done/``, see
    :data:`distribute.core.ledger.DONE_PARTS`), then ``done.txt`` itself."""
    listed = subprocess.run(
        ["git", "--git-dir", str(remote), "ls-tree", "--name-only", "-z", main, "--",
         f"{DONE_PARTS}/"], capture_output=True, text=True, timeout=30,
    ).stdout.split("\0")
    names = [p.rpartition("/")[2] for p in listed if p]
    paths = [f"{DONE_PARTS}/{name}" for name in parts_in_order(names)]
    texts = []
    for path in [*paths, DONE]:
        out = subprocess.run(["git", "--git-dir", str(remote), "show", f"{main}:{path}"],
                             capture_output=True, text=True, timeout=60)
        texts.append(out.stdout if out.returncode == 0 else "")
    return "".join(texts)


def count_done(remote: Path) -> int:
    text = done_text(remote, f"refs/heads/{BRANCH}")
    return sum(1 for line in text.splitlines() if line.strip())


def run(config: SimConfig, progress: Progress | None = None) -> RunOutcome:
    """Run the simulation described by ``config`` and check its history.

    Args:
        config: the run's settings.
        progress: optional ``progress(done, total, counts)`` called about twice
            a second with the jobs in ``done.txt`` and the faults so far.
    """
    config.validate()
    workdir = Path(tempfile.mkdtemp(prefix="distribute-sim-"))
    out = Path(config.out) if config.out else None
    journal_dir = (out / "journal") if out else (workdir / "journal")
    if journal_dir.exists():
        shutil.rmtree(journal_dir)
    journal_dir.mkdir(parents=True)
    remote = workdir / "remote.git"
    queue = config.queue
    started = time.monotonic()
    timed_out = False
    fleet: _Fleet | None = None
    url = ""
    try:
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            if config.remote in HOSTED_KINDS:
                # the server's own folder of repositories holds the remote: smart HTTP
                # serves nothing else
                url, remote, env = stack.enter_context(hosted_remote(
                    config.remote, workdir / config.remote, queue,
                    lifetime=config.duration + SERVER_GRACE))
            else:
                prepare_remote(remote, queue)
            if config.remote == "daemon":
                prefix = stack.enter_context(git_daemon(workdir, journal_dir / "daemon.log"))
                url = f"{prefix}/{remote.name}"
            elif config.remote not in HOSTED_KINDS:
                url = str(remote)
            fleet = _Fleet(config, url, workdir, journal_dir, env)
            fleet.deadline = started + config.duration

            def tick() -> None:
                if progress is not None and fleet is not None:
                    progress(count_done(remote), len(queue) or None, dict(fleet.counts))

            try:
                for slot in fleet.slots:
                    fleet.spawn(slot)
                timed_out = fleet.loop(tick)
            finally:
                fleet.stop()
            if progress is not None:
                tick()
        notes: list[str] = []
        if config.remote in HOSTED_KINDS and not wait_until_quiet(remote):
            notes.append(f"git processes still worked in the remote {QUIET_SECONDS:g} s "
                         "after the server stopped; its final state was read regardless")
        records = read_journals(journal_dir)
        final = read_final_state(remote, records, with_results=not config.job_func)
        final["timed_out"] = timed_out
        final["exits"] = dict(fleet.exits)
        result = check(
            records, final, lease=config.lease, poll=config.poll,
            expected_jobs=queue if queue else None, allow_failed=config.job_fail_rate > 0,
        )
        result.stats["wall_s"] = round(time.monotonic() - started, 3)
        return RunOutcome(
            config=config, workdir=workdir, journal_dir=journal_dir, url=url, records=records,
            final=final, result=result, wall_seconds=time.monotonic() - started,
            timed_out=timed_out, kept=config.keep, expected_jobs=queue or None,
            coverage=evaluate(count(records), config), notes=notes,
        )
    finally:
        if fleet is not None:
            fleet.stop()
        if not config.keep:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "CLONED_SUFFIX",
    "HOSTED_KINDS",
    "REMOTE_KINDS",
    "RemoteUnavailable",
    "RunOutcome",
    "SimConfig",
    "count_done",
    "git_daemon",
    "hosted_remote",
    "proc_key",
    "read_final_state",
    "run",
    "wait_until_quiet",
]
