"""Faults with real worker processes over real git: kill -9, SIGSTOP, an unreachable remote,
a restart.  Each test stops a worker (tests/integration/fault_worker.py) at a precise point,
lets the others carry on, and checks the remote afterwards: every job in ``done.txt`` once,
nothing left in ``running.txt``, every job's results on the main branch.

Recovery times are measured from the moment of the kill to the survivor's journal event
(written with ``time.time()`` on this machine) that takes the victim's lock or job over,
and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from distribute.core.ledger import Ledger
from distribute.core.lock import parse_lock_message
from distribute.core.names import job_dir
from distribute.remote import init_remote

HERE = Path(__file__).parent
SCRIPT = HERE / "fault_worker.py"

LEASE = 2.0
POLL = 0.05
MARGIN = max(0.5, LEASE / 10)  # the Worker's default margin
MAX_POLL = max(POLL, min(5.0, LEASE / 4))  # the Worker's default longest poll
SLACK = 3.0  # process start-up of git, a loaded 2-core machine
START_SECONDS = 30.0  # bound on a worker reaching a given point
RUN_SECONDS = 90.0  # bound on a worker process ending by itself


def git(*args, cwd):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def ledger_of(bare, rev="main"):
    files = {}
    for name in ("running.txt", "done.txt", "failed.txt"):
        try:
            files[name] = git("show", f"{rev}:{name}", cwd=bare).encode()
        except subprocess.CalledProcessError:
            files[name] = None
    return Ledger.from_files(files)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Proc:
    """One fault_worker.py process; its stdout, stderr and journal go to files."""

    def __init__(self, url, tmp_path, name, *options, copy=None):
        self.name = name
        self.dir = tmp_path / "procs"
        self.dir.mkdir(exist_ok=True)
        life = len(list(self.dir.glob(f"{name}-life*.out")))
        base = f"{name}-life{life}"
        self.out_path, self.err_path = self.dir / f"{base}.out", self.dir / f"{base}.err"
        self.journal_path = self.dir / f"{base}.jsonl"
        copy = copy or tmp_path / f"copy-{name}"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(SCRIPT), url, str(copy), name,
                 "--journal", str(self.journal_path), *map(str, options)],
                stdout=out, stderr=err,
            )

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        os.kill(self.popen.pid, sig)

    def kill9(self):
        """``kill -9``; returns the time of the kill."""
        at = time.time()
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        return at

    def wait(self, timeout=RUN_SECONDS):
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait()
            raise AssertionError(
                f"{self.name} did not end within {timeout:g} s:\n{self.report()}") from None

    def lines(self, kind):
        text = self.out_path.read_text(encoding="utf-8")
        return [line.split("\t")[1:] for line in text.splitlines() if line.split("\t")[0] == kind]

    def journal(self):
        if not self.journal_path.exists():
            return []
        records = []
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a killed process may cut its last line
                records.append(json.loads(line))
        return records

    def events(self, event, **match):
        return [r for r in self.journal()
                if r["event"] == event and all(r.get(k) == v for k, v in match.items())]

    def report(self):
        return (f"--- {self.name} (exit {self.popen.poll()})\nstdout:\n"
                f"{self.out_path.read_text(errors='replace')}\nstderr:\n"
                f"{self.err_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def procs():
    """Every worker process a test starts; those still running at the end are killed."""
    started = []
    yield started
    for proc in started:
        if proc.alive():
            proc.signal(signal.SIGKILL)
            proc.popen.wait(timeout=10)


def start(procs, url, tmp_path, name, *options, copy=None):
    proc = Proc(url, tmp_path, name, *options, copy=copy)
    procs.append(proc)
    return proc


def read_marker(path, proc):
    def ready():
        if not proc.alive():
            raise AssertionError(f"{proc.name} ended before reaching its stop point:\n"
                                 f"{proc.report()}")
        return path.exists() and json.loads(path.read_text(encoding="utf-8"))

    return wait_until(ready, START_SECONDS, f"{path.name} from {proc.name}")


def wait_observing(proc):
    """Until ``proc`` has fetched the remote once (its lease watch has started)."""
    wait_until(lambda: proc.events("first-fetch") or not proc.alive(), START_SECONDS,
               f"{proc.name}'s first fetch")
    assert proc.alive(), proc.report()


def finish_all(survivors):
    for proc in survivors:
        assert proc.wait() == 0, proc.report()


def check_remote(bare, jobs):
    """Every job done exactly once, nothing running or failed, results on main, lock free."""
    ledger = ledger_of(bare)
    done = Counter(e.job for e in ledger.done)
    assert done == Counter(jobs), f"done.txt: {dict(done)}"
    assert ledger.running == (), f"running.txt: {ledger.running}"
    assert ledger.failed == (), f"failed.txt: {ledger.failed}"
    assert git("show", "main:jobs.txt", cwd=bare).strip() == ""
    for job in jobs:  # both updates of every job reached the main branch
        assert git("show", f"main:{job_dir(job)}/final.txt", cwd=bare) == f"{job} final\n"
        progress = git("show", f"main:{job_dir(job)}/progress.txt", cwd=bare)
        assert progress.startswith(f"{job} attempt "), progress
    lock = parse_lock_message(git("log", "-1", "--format=%B", "refs/distribute/lock", cwd=bare))
    assert lock.free, lock
    return ledger


def ran_counter(procs):
    return Counter(fields[0] for p in procs for fields in p.lines("RAN"))


def options(*extra, lease=LEASE):
    return ["--lease", lease, "--poll", POLL, *extra]


# ---- 1. kill -9 at a precise point; the others finish every job ---------------------------

KILL_POINTS = ["next-job", "running", "claim-push", "finish-push"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_a_point_then_survivors_finish_every_job(tmp_path, procs, point):
    """kill -9 (a) inside the next-job function holding the lock, (b) while running a job,
    (c) right after the claim push or the finish push landed, before the worker knew:
    two other workers finish every job, each exactly once, within lease + margin + polls."""
    bare = tmp_path / "remote.git"
    jobs = [f"j{i}" for i in range(4)]
    url = init_remote(bare, jobs=jobs)
    marker = tmp_path / "victim.marker"
    victim = start(procs, url, tmp_path, "victim",
                   *options("--hang", point, "--marker", marker))
    read_marker(marker, victim)
    ledger = ledger_of(bare)
    held = [e.job for e in ledger.running if e.worker == "victim"]
    lock = parse_lock_message(git("log", "-1", "--format=%B", "refs/distribute/lock", cwd=bare))
    assert lock.holder == ("victim" if point == "next-job" else ""), lock
    survivors = [start(procs, url, tmp_path, f"s{i}", *options()) for i in range(2)]
    for s in survivors:
        wait_observing(s)
    killed_at = victim.kill9()
    finish_all(survivors)

    check_remote(bare, jobs)
    # the victim's finish of j0 landed unannounced at finish-push; every other job was run
    # (to its finish) once, by a survivor
    assert victim.lines("RAN") == []
    assert ran_counter(survivors) == Counter(jobs[1:] if point == "finish-push" else jobs)

    takeovers = [r for s in survivors for r in s.events("lock-acquire", takeover=True)]
    retries = [r for s in survivors for r in s.journal()
               if r["event"] == "claim" and r["attempt"] > 1]
    if point == "next-job":
        # the victim held the lock: one survivor takes it over once its lease expired
        assert held == []
        assert [r["previous"] for r in takeovers] == ["victim"], takeovers
        recovered_at = takeovers[0]["t"]
        assert retries == []
    elif point in ("running", "claim-push"):
        # the victim held one job: a survivor runs it again as attempt 2 and revokes it
        assert len(held) == 1, ledger
        assert [(r["job"], r["attempt"], r["revoked"]) for r in retries] == [
            (held[0], 2, "victim")], retries
        recovered_at = retries[0]["t"]
        assert takeovers == []
        done = {e.job: e for e in ledger_of(bare).done}
        assert done[held[0]].attempt == 2 and done[held[0]].worker != "victim"
    else:
        # the finish landed: nothing is orphaned, nobody waits a lease
        assert held == [] and takeovers == [] and retries == []
        done = {e.job: e for e in ledger_of(bare).done}
        assert [j for j, e in done.items() if e.worker == "victim"] == ["j0"]
        print(f"\nkill -9 at {point}: nothing to recover (the finish had landed)")
        return
    recovery = recovered_at - killed_at
    bound = LEASE + MARGIN + 2 * MAX_POLL + SLACK
    print(f"\nkill -9 at {point}: recovered {recovery:.2f} s after the kill "
          f"(lease {LEASE:g} + margin {MARGIN:g}; bound {bound:g})")
    assert 0 < recovery <= bound


# ---- 2. SIGSTOP past the lease, takeover, SIGCONT: the late holder is fenced off -----------

def test_paused_past_its_lease_a_late_finish_is_refused(tmp_path, procs):
    """A job's holder stopped (SIGSTOP) past its lease: another worker takes the job over
    and finishes it; after SIGCONT the late finish is refused with LeaseLost, the main
    branch is not changed by it, and the late worker's branch stays on the remote."""
    bare = tmp_path / "remote.git"
    url = init_remote(bare, jobs=["j0"])
    marker, go = tmp_path / "victim.paused", tmp_path / "victim.go"
    victim = start(procs, url, tmp_path, "victim", *options(
        "--pause", "running", "--marker", marker, "--go", go, "--exit-on-lost"))
    paused = read_marker(marker, victim)
    victim.signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        other = start(procs, url, tmp_path, "other", *options())
        assert other.wait() == 0, other.report()
        assert other.lines("RAN") == [["j0", "2"]], other.report()
        took = other.events("claim", job="j0")
        assert [(r["attempt"], r["revoked"]) for r in took] == [(2, "victim")]
        print(f"\nSIGSTOP while running: job taken over {took[0]['t'] - stopped_at:.2f} s "
              "after the stop")
        main_before = git("rev-parse", "main", cwd=bare).strip()
        go.touch()
    finally:
        victim.signal(signal.SIGCONT)
    assert victim.wait() == 3, victim.report()  # fault_worker's exit status for LeaseLost
    assert victim.lines("LOST") == [["j0", paused["branch"]]], victim.report()
    assert victim.lines("RAN") == []
    # the main branch did not move; j0 is done once, by the other worker's attempt 2
    assert git("rev-parse", "main", cwd=bare).strip() == main_before
    ledger = check_remote(bare, ["j0"])
    assert [(e.worker, e.attempt) for e in ledger.done] == [("other", 2)]
    # the late worker's branch, with what it wrote after the pause, is kept on the remote
    folder = job_dir("j0")
    assert git("show", f"{paused['branch']}:{folder}/late.txt", cwd=bare) == "j0 late, by victim\n"
    assert git("show", f"{paused['branch']}:{folder}/progress.txt", cwd=bare) == "j0 attempt 1\n"
    on_main = subprocess.run(["git", "cat-file", "-e", f"main:{folder}/late.txt"], cwd=bare,
                             capture_output=True)
    assert on_main.returncode != 0


def test_paused_in_the_next_job_function_past_its_lease_claims_nothing(tmp_path, procs):
    """The lock's holder stopped (SIGSTOP) inside its next-job function past its lease:
    another worker takes the lock over and runs every job; after SIGCONT the late
    function's answer is not claimed and the main branch is not changed by it."""
    bare = tmp_path / "remote.git"
    jobs = ["j0", "j1"]
    url = init_remote(bare, jobs=jobs)
    marker, go = tmp_path / "victim.paused", tmp_path / "victim.go"
    victim = start(procs, url, tmp_path, "victim", *options(
        "--pause", "next-job", "--marker", marker, "--go", go))
    read_marker(marker, victim)
    victim.signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        other = start(procs, url, tmp_path, "other", *options())
        assert other.wait() == 0, other.report()
        assert other.lines("RAN") == [["j0", "1"], ["j1", "1"]], other.report()
        took = other.events("lock-acquire", takeover=True)
        assert [r["previous"] for r in took] == ["victim"]
        print(f"\nSIGSTOP in the next-job function: lock taken over "
              f"{took[0]['t'] - stopped_at:.2f} s after the stop")
        main_before = git("rev-parse", "main", cwd=bare).strip()
        go.touch()
    finally:
        victim.signal(signal.SIGCONT)
    assert victim.wait() == 0, victim.report()
    # the function returned j0 from the queue it saw, but nothing was claimed with it
    assert victim.lines("CLAIM") == [] and victim.events("claim") == []
    assert victim.lines("END") == [["0"]]
    assert git("rev-parse", "main", cwd=bare).strip() == main_before
    ledger = check_remote(bare, jobs)
    assert [(e.job, e.worker, e.attempt) for e in ledger.done] == [
        ("j0", "other", 1), ("j1", "other", 1)]


# ---- 3. the remote unreachable for a while ---------------------------------------------------

OUTAGE = 3.0
#: far longer than the outage plus a renewal period: nobody's lease may expire meanwhile
OUTAGE_LEASE = 15.0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Daemon:
    """``git daemon`` on 127.0.0.1 that a test can stop and start again on the same port."""

    def __init__(self, base, log):
        self.base, self.log, self.proc = base, log, None
        self.port = _free_port()

    def start(self):
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}",
                 f"--base-path={self.base}", "--export-all", "--enable=receive-pack",
                 str(self.base)],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        wait_until(lambda: self.proc.poll() is not None or _accepts(self.port), 10,
                   "git daemon to listen")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        wait_until(lambda: not _accepts(self.port), 10, "git daemon to stop listening")


def _outage_run(tmp_path, procs, url, bare, cut, restore):
    jobs = [f"j{i}" for i in range(5)]
    init_remote(url, jobs=jobs)
    # --max-poll 0.5: transport errors are retried at least every second
    workers = [start(procs, url, tmp_path, f"w{i}", *options(
        "--work", 0.3, "--retry", 30, "--max-poll", 0.5, lease=OUTAGE_LEASE)) for i in range(2)]
    wait_until(lambda: any(w.events("ran") for w in workers) or
               not all(w.alive() for w in workers), START_SECONDS, "a first finished job")
    cut_at = time.time()
    cut()
    time.sleep(OUTAGE)
    restore()
    restored_at = time.time()
    finish_all(workers)
    check_remote(bare, jobs)
    assert ran_counter(workers) == Counter(jobs)  # nothing lost, nothing run twice
    assert all(w.lines("LOST") == [] for w in workers)
    # no takeover, no claim repeated: each job was claimed once, as attempt 1
    assert [e.attempt for e in ledger_of(bare).done] == [1] * len(jobs), ledger_of(bare).done
    errors = [r for w in workers for r in w.events("transport-error")
              if cut_at <= r["t"] <= restored_at]
    assert errors, "no worker noticed the outage"
    resumed = min(r["t"] for w in workers for r in w.journal()
                  if r["event"] in ("claim", "finish", "update") and r["t"] > restored_at)
    print(f"\noutage of {OUTAGE:g} s: {len(errors)} transport errors, first protocol step "
          f"{resumed - restored_at:.2f} s after the remote came back")


@pytest.mark.daemon
def test_workers_resume_after_git_daemon_was_down(tmp_path, procs):
    base = tmp_path / "daemon"
    base.mkdir()
    bare = base / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    daemon = Daemon(base, tmp_path / "daemon.log")
    daemon.start()
    try:
        url = f"git://127.0.0.1:{daemon.port}/remote.git"
        _outage_run(tmp_path, procs, url, bare, daemon.stop, daemon.start)
    finally:
        daemon.stop()


def test_workers_resume_after_the_bare_repo_was_moved_away(tmp_path, procs):
    """While the repository is away, no worker may make anything at its path (git once
    made the folders of a ref's lock file there, so moving it back failed with "Directory
    not empty"): the path must still be free when the repository is moved back."""
    bare = tmp_path / "remote.git"
    away = tmp_path / "remote.git.away"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)

    def move_back():
        made = sorted(str(p.relative_to(bare)) for p in bare.rglob("*")) if bare.exists() else None
        assert made is None, f"a worker wrote at the remote's path while it was away: {made}"
        away.rename(bare)

    try:
        _outage_run(tmp_path, procs, str(bare.resolve()), bare,
                    lambda: bare.rename(away), move_back)
    finally:
        if away.exists() and not bare.exists():
            away.rename(bare)


# ---- 4. a restarted worker takes its own lock or job back at once ---------------------------

RESTART_LEASE = 30.0
@pytest.mark.parametrize("point", [
    "next-job",
    "running",
    # killed after the function edited jobs.txt: the new life drops those edits first
    "next-job-edited",
    "claim-push",
])
def test_restarted_worker_takes_its_own_lock_or_job_back_at_once(tmp_path, procs, point):
    """kill -9, then the same name on the same local copy: the new life takes its old life's
    lock (next-job) or claimed job (running, claim-push: as attempt 2) back at once, long
    before the 30 s lease would let anyone else, and then runs the rest of the queue."""
    bare = tmp_path / "remote.git"
    jobs = ["j0", "j1"]
    url = init_remote(bare, jobs=jobs)
    marker = tmp_path / "w.marker"
    copy = tmp_path / "copy-w"
    first = start(procs, url, tmp_path, "w",
                  *options("--hang", point, "--marker", marker, lease=RESTART_LEASE), copy=copy)
    read_marker(marker, first)
    killed_at = first.kill9()
    again = start(procs, url, tmp_path, "w", *options(lease=RESTART_LEASE), copy=copy)
    code = again.wait()
    assert "DirtyWorkingTree" not in again.report(), again.report()
    assert code == 0, again.report()
    check_remote(bare, jobs)
    journal = again.journal()
    if point.startswith("next-job"):
        acquires = [r for r in journal if r["event"] == "lock-acquire"]
        assert (acquires[0]["takeover"], acquires[0]["previous"]) == (True, "w"), acquires
        back_at, what = acquires[0]["t"], "lock"
        assert again.lines("RAN") == [["j0", "1"], ["j1", "1"]]
    else:
        claims = [r for r in journal if r["event"] == "claim"]
        assert (claims[0]["job"], claims[0]["attempt"], claims[0]["revoked"]) == ("j0", 2, "")
        back_at, what = claims[0]["t"], "job"
        assert again.lines("RAN") == [["j0", "2"], ["j1", "1"]]
    delay = back_at - killed_at
    print(f"\nrestart after kill -9 at {point}: own {what} back {delay:.2f} s after the kill "
          f"(lease {RESTART_LEASE:g} s)")
    assert delay < RESTART_LEASE / 3
