"""distribute.orphans: the record of a job's running command, and stopping what a dead worker left.

Real processes in process groups of their own, watched through /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distribute import orphans
from distribute.core.names import job_dir
from distribute.runner import JobRunner

PY = sys.executable
PROC = Path("/proc")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (PROC / "self" / "stat").exists(),
    reason="watches processes through /proc",
)

# A command in a process group of its own with one grandchild; prints the grandchild's pid.
GROUP = (
    "import signal, subprocess, sys, time\n"
    "if len(sys.argv) > 1: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def start_time(pid):
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else fields[19]


def alive(pid, started):
    return started is not None and start_time(pid) == started


def wait_gone(pid, started, seconds=5.0):
    deadline = time.monotonic() + seconds
    while alive(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def group():
    """``(Popen of the leader, (grandchild pid, its start time))``; killed afterwards."""
    started = []

    def make(ignore_term=False):
        args = [PY, "-c", GROUP] + (["ignore"] if ignore_term else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        grandchild = int(proc.stdout.readline())
        return proc, (grandchild, start_time(grandchild))

    yield make
    for proc in started:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def git_dir(tmp_path):
    path = tmp_path / "copy" / ".git"
    path.mkdir(parents=True)
    return path


def test_record_round_trip(git_dir, group):
    proc, _ = group()
    written = orphans.record_child(git_dir, proc.pid, job="j", worker="w")
    raw = json.loads((git_dir / orphans.CHILD_RECORD).read_text())
    assert raw["pid"] == raw["pgid"] == proc.pid and raw["job"] == "j"
    assert str(raw["start"]) == start_time(proc.pid)
    assert orphans.read_child_record(git_dir) == written
    orphans.clear_child_record(git_dir)
    assert not (git_dir / orphans.CHILD_RECORD).exists()
    orphans.clear_child_record(git_dir)  # nothing there: fine
    assert orphans.read_child_record(git_dir) is None


def test_no_record_or_a_broken_one_is_nothing_to_reap(git_dir):
    assert orphans.reap_leftover_command(git_dir) is None
    (git_dir / orphans.CHILD_RECORD).write_text("{not json")
    assert orphans.reap_leftover_command(git_dir) is None
    assert not (git_dir / orphans.CHILD_RECORD).exists()


def test_a_leftover_group_is_stopped_and_the_record_removed(git_dir, group):
    proc, grandchild = group()
    orphans.record_child(git_dir, proc.pid, job="train", worker="w1")
    note = orphans.reap_leftover_command(git_dir, grace=3)
    assert note is not None and "left running" in note and "'train'" in note
    assert "SIGTERM" in note
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert wait_gone(*grandchild)
    assert not (git_dir / orphans.CHILD_RECORD).exists()
    assert orphans.reap_leftover_command(git_dir) is None


def test_the_grandchildren_alone_are_stopped_too(git_dir, group):
    """The command itself is gone (the parent-death signal took it); its group lives on."""
    proc, grandchild = group()
    orphans.record_child(git_dir, proc.pid)
    proc.kill()
    proc.wait()
    assert alive(*grandchild)
    assert orphans.reap_leftover_command(git_dir, grace=3) is not None
    assert wait_gone(*grandchild)


def test_a_group_that_ignores_sigterm_gets_sigkill(git_dir, group):
    proc, grandchild = group(ignore_term=True)
    orphans.record_child(git_dir, proc.pid)  # the grandchild inherits the ignored SIGTERM
    started = time.monotonic()
    note = orphans.reap_leftover_command(git_dir, grace=0.5)
    assert note is not None and "SIGKILL" in note
    assert time.monotonic() - started < 5
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert wait_gone(*grandchild)


def test_a_recycled_pid_is_left_alone(git_dir, group):
    proc, grandchild = group()
    orphans.record_child(git_dir, proc.pid)
    path = git_dir / orphans.CHILD_RECORD
    raw = json.loads(path.read_text())
    raw["start"] = int(raw["start"]) - 1  # another process once had this pid
    path.write_text(json.dumps(raw))
    assert orphans.reap_leftover_command(git_dir, grace=0.5) is None
    assert proc.poll() is None and alive(*grandchild)
    assert not path.exists()


def test_a_record_from_another_boot_or_host_is_left_alone(git_dir, group):
    proc, grandchild = group()
    for key, value in (("boot", "another-boot"), ("host", "another-host")):
        orphans.record_child(git_dir, proc.pid)
        path = git_dir / orphans.CHILD_RECORD
        raw = json.loads(path.read_text())
        raw[key] = value
        path.write_text(json.dumps(raw))
        assert orphans.reap_leftover_command(git_dir, grace=0.5) is None
        assert proc.poll() is None and alive(*grandchild)


@pytest.mark.skipif(shutil.which("ps") is None, reason="needs ps")
def test_without_proc_the_process_table_comes_from_ps(git_dir, group, monkeypatch, tmp_path):
    monkeypatch.setattr(orphans, "_PROC", tmp_path / "no-proc")
    proc, grandchild = group()
    orphans.record_child(git_dir, proc.pid)
    assert json.loads((git_dir / orphans.CHILD_RECORD).read_text())["clock"] == "ps"
    note = orphans.reap_leftover_command(git_dir, grace=3)
    assert note is not None
    proc.wait(timeout=5)
    assert wait_gone(*grandchild)


def test_parent_death_guard_is_there_on_linux():
    guard = orphans.parent_death_guard()
    assert guard is not None
    code = "import time; time.sleep(60)"
    # the guard kills the child whose expected parent is not its parent
    proc = subprocess.Popen([PY, "-c", code], preexec_fn=orphans.parent_death_guard(parent=1))
    assert proc.wait(timeout=10) == -signal.SIGKILL


# ---- the runner keeps the record and clears the group -------------------------------------------


class FakeWorker:
    """Enough of distribute.dist.Worker for JobRunner."""

    def __init__(self, path, jobs):
        self.name = "fake"
        self.path = str(path)
        self.jobs = list(jobs)
        self.running_job = None
        self.attempt = None
        self.job_branch = None
        self.resumed_from = None
        self.removed_links = []
        self.calls = []

    @property
    def job_dir(self):
        return os.path.join(self.path, *job_dir(self.running_job).split("/"))

    def get_next_job(self, func):
        if not self.jobs:
            return None
        self.running_job, self.attempt = self.jobs.pop(0), 1
        return self.running_job

    def commit_update(self, message=None):
        return True

    def finish_job(self):
        self.calls.append(("finish", self.running_job))
        self.running_job = None

    def fail_job(self, reason="failed", *, interrupted=False):
        self.calls.append(("fail", self.running_job, reason, interrupted))
        self.running_job = None
        return "retry"


# Leaves a grandchild behind, writes the record it finds and the grandchild's pid, exits 0.
LEAVES_A_GRANDCHILD = (
    "import os, subprocess, sys\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "record = os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], '..', '..', '.git', {name!r})\n"
    "out = os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'seen.txt')\n"
    "open(out, 'w').write(f'{{g.pid}}\\n' + open(record).read())\n"
)


@pytest.mark.parametrize("waitid", [True, False], ids=["waitid", "reaped-first"])
def test_runner_records_the_child_and_kills_its_leftovers(tmp_path, monkeypatch, waitid):
    import distribute.runner as runner

    if not waitid:
        monkeypatch.setattr(runner, "_WAITID", False)
    (tmp_path / ".git").mkdir()
    w = FakeWorker(tmp_path, ["j"])
    code = LEAVES_A_GRANDCHILD.format(name=orphans.CHILD_RECORD)
    summary = JobRunner(w, [PY, "-c", code], lambda: None).run()
    assert [o.status for o in summary.outcomes] == ["done"]
    w.running_job = "j"
    pid, record = (Path(w.job_dir) / "seen.txt").read_text().split("\n", 1)
    assert json.loads(record)["job"] == "j"
    grandchild = int(pid)
    try:
        assert wait_gone(grandchild, start_time(grandchild), seconds=2)
    finally:
        with contextlib.suppress(OSError):
            os.kill(grandchild, signal.SIGKILL)
    assert not (tmp_path / ".git" / orphans.CHILD_RECORD).exists()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_runner_stopping_the_command_stops_its_group(tmp_path):
    """A timeout stops the command; a grandchild that ignores SIGTERM goes with it at once."""
    (tmp_path / ".git").mkdir()
    w = FakeWorker(tmp_path, ["j"])
    stubborn = ("import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n")
    code = ("import os, subprocess, sys, time\n"
            f"g = subprocess.Popen([sys.executable, '-c', {stubborn!r}], stdout=subprocess.PIPE)\n"
            "g.stdout.readline()\n"
            "open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'g.txt'), 'w')"
            ".write(str(g.pid))\n"
            "time.sleep(60)\n")
    started = time.monotonic()
    summary = JobRunner(w, [PY, "-c", code], lambda: None, timeout=1.5, grace=5).run()
    assert time.monotonic() - started < 4  # not the grace period: the command left at once
    assert w.calls[-1] == ("fail", "j", "timed out after 1.5 s", False)
    assert summary.outcomes[0].status == "retry"
    w.running_job = "j"
    grandchild = int((Path(w.job_dir) / "g.txt").read_text())
    try:
        assert wait_gone(grandchild, start_time(grandchild), seconds=2)
    finally:
        with contextlib.suppress(OSError):
            os.kill(grandchild, signal.SIGKILL)
    assert not (tmp_path / ".git" / orphans.CHILD_RECORD).exists()
