"""A worker killed hard, then started again: its job's command never runs twice side by side.

Real `distribute work` processes on real bare repositories.  A worker is
killed with SIGKILL (no handler runs); the parent-death signal ends the job's
command at once, and what that cannot reach (a grandchild) is stopped by the
next `work` on the same local copy before it opens the copy.  Without
``--name`` a worker takes the lowest free slot of this machine (<host>-1,
<host>-2, ...) and keeps its copy, so a restart finds it again.

Every wait is a bounded poll; leases are short so that nothing waits long.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_run import cli_env

PY = sys.executable
TIMEOUT = 30
PROC = Path("/proc")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (PROC / "self" / "stat").exists(),
    reason="watches processes through /proc",
)


# ---- processes and the command line -----------------------------------------------------------

def run(tmp_path, *args, timeout=TIMEOUT, env=None):
    return subprocess.run(
        [PY, "-m", "distribute", *map(str, args)], capture_output=True, text=True,
        timeout=timeout, env=cli_env(tmp_path, **(env or {})), cwd=tmp_path,
    )


def ok(tmp_path, *args, **kw):
    result = run(tmp_path, *args, **kw)
    assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stderr}"
    return result


def start(tmp_path, *args, env=None):
    return subprocess.Popen(
        [PY, "-m", "distribute", *map(str, args)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path, **(env or {})), cwd=tmp_path,
    )


def finish(proc, timeout=TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not finish in {timeout} s:\n{err}")
    return proc.returncode, out, err


def start_time(pid):
    """Field 22 of /proc/<pid>/stat, or None when the process is gone or a zombie."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else fields[19]


def alive(pid, started):
    return started is not None and start_time(pid) == started


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"waited {seconds} s: {what}"
        time.sleep(0.05)


def kill_if_alive(pids):
    for pid, started in pids:
        if alive(pid, started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def read_pids(copy):
    """(child pid, grandchild pid) that the job's command wrote into its job folder."""
    found = list(copy.glob("updates/*/pids.txt"))
    if not found:
        return None
    child, grandchild = found[0].read_text().split()
    return int(child), int(grandchild)


# The job's command: starts a grandchild (GRANDCHILD is its code) in its own process group,
# writes both pids into $DISTRIBUTE_JOB_DIR/pids.txt and sleeps.  A later attempt
# (DISTRIBUTE_ATTEMPT > 1) writes into $SEEN whether the process $OLD (the first attempt's
# grandchild) was still alive when it started, and exits 0.
COMMAND = textwrap.dedent("""
    import os, subprocess, sys, time
    if os.environ["DISTRIBUTE_ATTEMPT"] != "1":
        try:
            state = open(f"/proc/{os.environ['OLD']}/stat").read()
            seen = "gone" if state[state.rindex(")") + 2] in "ZX" else "alive"
        except OSError:
            seen = "gone"
        resumed = os.path.exists(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "pids.txt"))
        with open(os.environ["SEEN"], "w") as f:
            f.write(f"{seen} {'resumed' if resumed else 'fresh'} "
                    f"{os.environ.get('DISTRIBUTE_RESUMED_FROM') or '-'}")
        sys.exit(0)
    grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD], stdin=subprocess.PIPE)
    pids = os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "pids.txt")
    with open(pids + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}\\n")
    os.replace(pids + ".tmp", pids)
    time.sleep(60)
""")
# a grandchild that ends with its parent: it reads its stdin (a pipe from the child) to the end
FOLLOWS_PARENT = "import sys; sys.stdin.read()"
# a grandchild that does not care: only a signal to its process group ends it
IGNORES_PARENT = "import time; time.sleep(60)"


def command(grandchild):
    return [PY, "-c", f"GRANDCHILD = {grandchild!r}\n{COMMAND}"]


def start_and_kill_worker(tmp_path, remote, copy, grandchild):
    """A worker on ``copy`` runs the job until its command has written its pids and the
    worker its record of the command; then the worker gets SIGKILL.  Returns
    ((pid, start), (pid, start)) of the child and the grandchild."""
    worker = start(tmp_path, "work", remote, "--path", copy, "--name", "w1", "--lease", "5",
                   "--", *command(grandchild))
    record = copy / ".git" / "distribute-child.json"
    deadline = time.monotonic() + 15
    while ((pids := read_pids(copy)) is None or not record.exists()) and worker.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # both are alive now: the command wrote the file after starting the grandchild
    found = [(pid, start_time(pid)) for pid in pids] if pids is not None else []
    worker.kill()
    _, err = worker.communicate()
    assert found, f"the job's command never wrote its pids:\n{err}"
    assert None not in {started for _, started in found}, found
    return found[0], found[1]


@pytest.fixture
def remote(tmp_path):
    path = tmp_path / "remote.git"
    ok(tmp_path, "init", path, "train")
    return path


# ---- (1) a killed worker's command ---------------------------------------------------------------
def test_command_dies_with_its_worker(tmp_path, remote):
    """kill -9 of `work`: the command goes at once (parent-death signal), and with it a
    grandchild that follows its parent."""
    child, grandchild = start_and_kill_worker(tmp_path, remote, tmp_path / "copy", FOLLOWS_PARENT)
    try:
        wait_until(lambda: not alive(*child), 5, "the command outlived its killed worker")
        wait_until(lambda: not alive(*grandchild), 5, "the grandchild outlived the command")
    finally:
        kill_if_alive([child, grandchild])


def crash_and_restart(tmp_path, remote, leftovers):
    """A worker is killed while its command's grandchild ignores parent death; then `work`
    starts again with the same name and copy.  The grandchild is appended to ``leftovers``
    (for the test to clean up); returns the restart's (returncode, stderr)."""
    copy = tmp_path / "copy"
    child, grandchild = start_and_kill_worker(tmp_path, remote, copy, IGNORES_PARENT)
    leftovers += [child, grandchild]
    wait_until(lambda: not alive(*child), 5, "the command outlived its killed worker")
    # the parent-death signal reaches the worker's own child only
    assert alive(*grandchild), "the grandchild was expected to outlive the command"
    record = copy / ".git" / "distribute-child.json"
    assert json.loads(record.read_text())["pgid"] == child[0]
    env = {"OLD": str(grandchild[0]), "SEEN": str(tmp_path / "seen")}
    restart = start(tmp_path, "work", remote, "--path", copy, "--name", "w1", "--lease", "5",
                    "--", *command(IGNORES_PARENT), env=env)
    rc, _, err = finish(restart)
    print(err)  # shown when a test fails
    return rc, err


def test_restart_stops_what_the_killed_worker_left_running(tmp_path, remote):
    leftovers = []
    try:
        _, err = crash_and_restart(tmp_path, remote, leftovers)
        assert not alive(*leftovers[1]), err
        assert "left running" in err, err
        assert not (tmp_path / "copy" / ".git" / "distribute-child.json").exists()
    finally:
        kill_if_alive(leftovers)


def test_restart_runs_the_next_attempt_after_the_leftovers_are_gone(tmp_path, remote):
    """The restart with the same name and copy neither refuses the files the killed
    attempt left (its pids.txt, its log) nor waits a lease: the next attempt starts at
    once, with those files in its folder, after the old command's processes are gone;
    the killed attempt counts as interrupted."""
    leftovers = []
    try:
        rc, err = crash_and_restart(tmp_path, remote, leftovers)
        assert rc == 0, err
        seen, start, resumed_from = (tmp_path / "seen").read_text().split()
        assert (seen, start) == ("gone", "resumed")
        assert resumed_from.startswith("jobs/w1/train/")
        doc = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
        assert [(e["job"], e["attempt"]) for e in doc["done"]] == [("train", 2)]
        done = subprocess.run(["git", "show", "main:done.txt"], cwd=remote, text=True,
                              capture_output=True, check=True).stdout
        assert "interrupted=1" in done
    finally:
        kill_if_alive(leftovers)


# A job that notes each start in $STATE and then runs until it is stopped (bounded).
RUN_UNTIL_STOPPED = textwrap.dedent("""
    import os, time
    open(os.path.join(os.environ["STATE"], "attempt-" + os.environ["DISTRIBUTE_ATTEMPT"]),
         "w").close()
    if os.environ["DISTRIBUTE_ATTEMPT"] == os.environ["LAST"]:
        raise SystemExit(0)
    time.sleep(30)
""")


def test_three_sigterms_do_not_use_up_attempts(tmp_path, remote):
    """Preemption is not failure: with --max-attempts 1, a job stopped by SIGTERM three
    times is still queued for another attempt, and the fourth one finishes it."""
    state = tmp_path / "state"
    state.mkdir()
    env = {"STATE": str(state), "LAST": "4"}
    args = ["work", remote, "--path", tmp_path / "copy", "--name", "w1", "--lease", "5",
            "--max-attempts", "1", "--", PY, "-c", RUN_UNTIL_STOPPED]
    for attempt in (1, 2, 3):
        worker = start(tmp_path, *args, env=env)
        try:
            wait_until(lambda a=attempt: (state / f"attempt-{a}").exists(), 20,
                       f"attempt {attempt} did not start")
        finally:
            worker.send_signal(signal.SIGTERM)
        rc, _, err = finish(worker)
        assert rc == 128 + signal.SIGTERM, err
        doc = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
        assert doc["failed"] == [], err
        assert [e["job"] for e in doc["running"]] == ["train"]
    ok(tmp_path, *args, env=env)
    doc = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
    assert [(e["job"], e["attempt"]) for e in doc["done"]] == [("train", 4)]


# ---- (2) stable names without --name -----------------------------------------------------------
# Notes the worker's name in $STATE, then waits (bounded) until $STATE/go exists.
WAIT_FOR_GO = textwrap.dedent("""
    import os, time
    state = os.environ["STATE"]
    open(os.path.join(state, os.environ["DISTRIBUTE_WORKER"]), "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(state, "go")) and time.monotonic() < deadline:
        time.sleep(0.05)
""")


def test_workers_without_a_name_take_stable_slots_and_keep_their_copies(
    tmp_path, remote, monkeypatch
):
    from distribute.cli import default_copy_path, resolve_remote, slot_worker_name

    monkeypatch.setenv("XDG_CACHE_HOME", cli_env(tmp_path)["XDG_CACHE_HOME"])  # as the workers
    state = tmp_path / "state"
    state.mkdir()
    env = {"STATE": str(state)}
    ok(tmp_path, "add", remote, "second")
    workers = [
        start(tmp_path, "work", remote, "--lease", "5", "--", PY, "-c", WAIT_FOR_GO, env=env)
        for _ in range(2)
    ]
    names = {slot_worker_name(1), slot_worker_name(2)}
    try:
        wait_until(lambda: {p.name for p in state.iterdir()} == names, 20,
                   f"expected both slots to run a job: {names}")
    finally:
        (state / "go").touch()
        results = [finish(proc) for proc in workers]
    for rc, _, err in results:
        assert rc == 0, err
    url = resolve_remote(str(remote))
    first = default_copy_path(url, slot_worker_name(1))
    assert first.is_dir() and default_copy_path(url, slot_worker_name(2)).is_dir()
    marker = first / ".git" / "kept-by-the-test"
    marker.touch()
    # again, alone: the lowest slot, on the copy it had before
    ok(tmp_path, "add", remote, "third")
    (state / slot_worker_name(1)).unlink()
    again = ok(tmp_path, "work", remote, "--lease", "5", "--", PY, "-c", WAIT_FOR_GO, env=env)
    assert f"worker {slot_worker_name(1)} on" in again.stderr
    assert (state / slot_worker_name(1)).exists() and marker.exists()
