"""The research workflow's commands: `logs --follow`, `work --gpus`, `cancel`, and
`requeue --done`, driven as subprocesses against real bare repositories.

Every wait has a generous bound (a loaded machine is slow) and no assertion depends on
how long anything took; a job that must stay running waits for a file the test creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cli_run import TIMEOUT, cli_env, ok, run

from distribute.core.names import job_dir

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
WAIT = 60  # seconds any one thing may take on a loaded machine before the test fails





class Proc:
    """A `distribute` subprocess whose stdout and stderr are read line by line by threads,
    so that a test can wait (with a bound) for a line while the process runs on."""

    def __init__(self, tmp_path, *args, **popen):
        self.proc = subprocess.Popen(
            [PY, "-m", "distribute", *map(str, args)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path), cwd=tmp_path, **popen,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, "out"),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, "err"),
                             daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, sink, name):
        for line in stream:
            sink.append(line)
            self.lines.put((name, line))

    def wait_for(self, text, stream="out", timeout=WAIT):
        """Block until a line of ``stream`` holds ``text``; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            if any(text in line for line in (self.out if stream == "out" else self.err)):
                return
            left = deadline - time.monotonic()
            ended = self.proc.poll() is not None and not any(r.is_alive() for r in self.readers)
            if left <= 0 or (ended and self.lines.empty()):
                self.kill()
                pytest.fail(f"no {text!r} on {stream} (exit {self.proc.poll()})\n"
                            f"stdout: {''.join(self.out)}\nstderr: {''.join(self.err)}")
            with contextlib.suppress(queue.Empty):
                self.lines.get(timeout=min(left, 1.0))

    def finish(self, timeout=TIMEOUT):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not end within {timeout} s\nstderr: {''.join(self.err)}")
        for reader in self.readers:
            reader.join(timeout=30)
        return self.proc.returncode, "".join(self.out), "".join(self.err)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def remote(tmp_path):
    return tmp_path / "remote.git"


def gated(go: Path, before: str = "first line", after: str = "last line") -> str:
    """A job command: prints ``before``, waits (at most WAIT s) for the file ``go``, then
    prints ``after``.  The texts are split in the source, because the log also holds the
    command line."""
    return textwrap.dedent(f"""
        import os, sys, time
        print(*{before.split()!r}, flush=True)
        deadline = time.monotonic() + {WAIT}
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(*{after.split()!r}, flush=True)
    """)


def status(tmp_path, remote):
    return json.loads(ok(tmp_path, "status", remote, "--json").stdout)


# ---- logs --follow ----------------------------------------------------------------------
def test_follow_prints_the_log_as_it_grows_and_stops_when_the_job_is_done(tmp_path, remote):
    ok(tmp_path, "init", remote, "lr=0.1 seed=0")
    go = tmp_path / "go"
    follower = Proc(tmp_path, "logs", remote, "lr=0.1 seed=0", "--follow", "--interval", "0.2")
    try:
        # the job is only queued: the follower says so and waits
        follower.wait_for("queued", stream="err")
        worker = Proc(tmp_path, "work", remote, "--name", "w", "--lease", "5",
                      "--commit-every", "0.3", "--", PY, "-c", gated(go))
        # the first line reaches the follower while the job still runs (it waits for `go`)
        follower.wait_for("first line")
        assert follower.proc.poll() is None
        assert not any("last line" in line for line in follower.out)
        go.touch()
        rc, out, err = follower.finish()
    finally:
        go.touch()
        follower.kill()
    assert rc == 0, err
    assert worker.finish()[0] == 0
    # every byte of the final log once, in order
    assert out == ok(tmp_path, "logs", remote, "lr=0.1 seed=0").stdout
    assert out.count("first line") == 1 and out.count("last line") == 1
    assert "done" in err.splitlines()[-1]


def test_follow_waits_for_a_running_job_without_a_log_yet(tmp_path, remote):
    ok(tmp_path, "init", remote, "j1")
    go = tmp_path / "go"
    # no commit of the log before the job ends: the job branch has no log.txt meanwhile
    worker = Proc(tmp_path, "work", remote, "--name", "w", "--lease", "5",
                  "--commit-every", "600", "--", PY, "-c", gated(go))
    try:
        worker.wait_for("started", stream="err")
        follower = Proc(tmp_path, "logs", remote, "j1", "--follow", "--interval", "0.2")
        follower.wait_for("no log.txt yet", stream="err")
        assert follower.proc.poll() is None
        go.touch()
        rc, out, err = follower.finish()
    finally:
        go.touch()
    assert rc == 0, err
    assert "first line" in out and "last line" in out
    assert worker.finish()[0] == 0


def test_follow_ends_with_exit_1_for_a_failed_job(tmp_path, remote):
    ok(tmp_path, "init", remote, "bad")
    r = run(tmp_path, "work", remote, "--name", "w", "--max-attempts", "1", "--breaker", "0",
            "--", PY, "-c", "import sys; print('boom', flush=True); sys.exit(3)")
    assert r.returncode == 4, r.stderr  # every job it ran failed
    r = run(tmp_path, "logs", remote, "bad", "--follow", "--interval", "0.2")
    assert r.returncode == 1, r.stderr
    assert "boom" in r.stdout
    assert "failed" in r.stderr and "requeue" in r.stderr


def test_follow_refuses_an_unknown_job_and_interval_alone(tmp_path, remote):
    ok(tmp_path, "init", remote, "j1")
    r = run(tmp_path, "logs", remote, "nope", "--follow")
    assert r.returncode == 1 and "not known" in r.stderr
    r = run(tmp_path, "logs", remote, "j1", "--interval", "1")
    assert r.returncode == 2 and "--follow" in r.stderr
    assert "--interval" in ok(tmp_path, "logs", "--help").stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_follow_stops_on_a_signal_and_leaves_no_scratch_clone(tmp_path, remote, signum):
    ok(tmp_path, "init", remote, "j1")
    follower = Proc(tmp_path, "logs", remote, "j1", "--follow", "--interval", "0.2")
    try:
        follower.wait_for("queued", stream="err")
        assert list((tmp_path / "tmp").glob("distribute-view-*")), "no scratch clone in use"
        follower.proc.send_signal(signum)
        rc, _, err = follower.finish()
    finally:
        follower.kill()
    assert rc == 128 + signum, err
    assert "Traceback" not in err
    assert not list((tmp_path / "tmp").glob("distribute-view-*"))


# ---- work --gpus ------------------------------------------------------------------------------
def barrier_job(folder: Path, count: int, go: Path | None = None) -> str:
    """A job command: records its pid and CUDA_VISIBLE_DEVICES, waits (at most WAIT s)
    until ``count`` jobs have started, then (with ``go``) until that file exists."""
    return textwrap.dedent(f"""
        import os, sys, time
        folder, job = {str(folder)!r}, os.environ["DISTRIBUTE_JOB"]
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "gpu.txt"), "w") as f:
            f.write(gpu)
        with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "slot.txt"), "w") as f:
            f.write(os.environ["DISTRIBUTE_SLOT"] + " " + " ".join(sys.argv[1:]))
        with open(os.path.join(folder, "pid-" + job), "w") as f:
            f.write(str(os.getpid()))
        open(os.path.join(folder, "started-" + job), "w").close()
        deadline = time.monotonic() + {WAIT}
        def started():
            return sum(n.startswith("started-") for n in os.listdir(folder))
        while started() < {count} and time.monotonic() < deadline:
            time.sleep(0.05)
        go = {str(go) if go else ""!r}
        while go and not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("ran", job, "on gpu", gpu, flush=True)
    """)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_until(check, what, timeout=WAIT, proc=None):
    """Wait (at most ``timeout`` s) for ``check()``; with ``proc``, fail at once if it ended."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.proc.poll() is not None:
            rc, _, err = proc.finish()
            pytest.fail(f"ended (exit {rc}) before {what}:\n{err}")
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def test_gpus_runs_one_slot_worker_per_gpu_each_with_its_device(tmp_path, remote):
    ok(tmp_path, "init", remote, "a", "b", "c")
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = Proc(tmp_path, "work", remote, "--gpus", "0,2", "--lease", "5", "--",
                PY, "-c", barrier_job(marks, 2), "slot={slot}")
    rc, out, err = proc.finish()
    assert rc == 0, err
    doc = status(tmp_path, remote)
    assert sorted(e["job"] for e in doc["done"]) == ["a", "b", "c"]
    gpus = {job: (remote_file(remote, job, "gpu.txt")) for job in "abc"}
    # the first two jobs ran at once, so each worker ran at least one of them
    assert set(gpus.values()) == {"0", "2"}, gpus
    # the slot follows the order of the GPUs, in the environment and in {slot}
    slots = {job: remote_file(remote, job, "slot.txt") for job in "abc"}
    assert all(slots[j] == {"0": "0 slot=0", "2": "1 slot=1"}[gpus[j]] for j in "abc"), slots
    workers = {e["worker"] for e in doc["done"]}
    assert len(workers) == 2 and all(w.rsplit("-", 1)[1] in ("1", "2") for w in workers)
    lines = err.splitlines()
    assert any(line.startswith("[gpu 0") for line in lines), err
    assert any(line.startswith("[gpu 2") for line in lines), err
    assert any("2 workers" in line for line in lines), err


def remote_file(remote, job, name):
    return subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{job_dir(job)}/{name}"],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def test_gpus_sigterm_stops_every_worker_cleanly(tmp_path, remote):
    ok(tmp_path, "init", remote, "a", "b")
    marks = tmp_path / "marks"
    marks.mkdir()
    never = tmp_path / "never"
    proc = Proc(tmp_path, "work", remote, "--gpus", "2", "--lease", "5", "--grace", "5",
                "--", PY, "-c", barrier_job(marks, 2, go=never))
    try:
        wait_until(lambda: len(list(marks.glob("started-*"))) == 2, "both jobs started",
                   proc=proc)
        pids = [int(p.read_text()) for p in marks.glob("pid-*")]
        proc.proc.send_signal(signal.SIGTERM)
        rc, _, err = proc.finish()
    finally:
        proc.kill()
    assert rc == 128 + signal.SIGTERM, err
    wait_until(lambda: not any(alive(p) for p in pids), "the job commands ended")
    doc = status(tmp_path, remote)
    assert doc["lock"]["held"] is False
    assert sorted(e["job"] for e in doc["running"]) == ["a", "b"]
    assert all(e["worker"] is None and e["reason"] == "interrupted" for e in doc["running"])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
def test_gpus_killed_parent_leaves_no_worker_or_command_running(tmp_path, remote):
    ok(tmp_path, "init", remote, "a", "b")
    marks = tmp_path / "marks"
    marks.mkdir()
    never = tmp_path / "never"
    proc = Proc(tmp_path, "work", remote, "--gpus", "2", "--lease", "5",
                "--", PY, "-c", barrier_job(marks, 2, go=never))
    try:
        wait_until(lambda: len(list(marks.glob("started-*"))) == 2, "both jobs started",
                   proc=proc)
        pid = proc.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        workers = [int(c) for c in children]
        commands = [int(p.read_text()) for p in marks.glob("pid-*")]
        assert len(workers) == 2 and len(commands) == 2
        proc.proc.kill()
        proc.finish()
    finally:
        never.touch()
        proc.kill()
    wait_until(lambda: not any(alive(p) for p in workers + commands),
               "the workers and their commands died with their parent")


def test_slots_start_workers_without_gpus_sharing_one_object_store(tmp_path, remote):
    ok(tmp_path, "init", remote, "a", "b")
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = Proc(tmp_path, "work", f"file://{remote}", "--slots", "2", "--lease", "5", "--",
                PY, "-c", barrier_job(marks, 2), "{slot}")
    rc, _, err = proc.finish()
    assert rc == 0, err
    assert {remote_file(remote, job, "gpu.txt") for job in "ab"} == {"unset"}
    assert {remote_file(remote, job, "slot.txt") for job in "ab"} == {"0 0", "1 1"}
    assert any(line.startswith("[slot 1: ") for line in err.splitlines()), err
    copies = [p for p in (tmp_path / "cache" / "distribute").glob("*/*") if p.is_dir()]
    store = [p for p in copies if p.name == ".objects.git"]
    assert len(store) == 1 and len(copies) == 3, copies
    for copy in set(copies) - set(store):
        alternates = (copy / ".git" / "objects" / "info" / "alternates").read_text()
        assert Path(alternates.strip()) == store[0] / "objects"


def test_gpus_usage_errors_name_the_fix(tmp_path, remote):
    ok(tmp_path, "init", remote)
    for args, text in ((["--gpus", "0"], "--gpus 3,"), (["--gpus", "a b"], "GPU"),
                       (["--gpus", "1,1"], "twice"),
                       (["--gpus", "2", "--slots", "2"], "give one"),
                       (["--slots", "0"], "--slots"),
                       (["--slots", "2", "--path", "x"], "--path"),
                       (["--gpus", "2", "--name", "x"], "--name")):
        r = run(tmp_path, "work", remote, *args, "--", PY, "-c", "pass")
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)
    assert "CUDA_VISIBLE_DEVICES" in ok(tmp_path, "work", "--help").stdout


# ---- cancel -----------------------------------------------------------------------------------
def test_cancel_removes_queued_jobs_stops_a_running_one_and_explains_the_others(
    tmp_path, remote
):
    ok(tmp_path, "init", remote, "d", "f")
    ended = ("import os, sys\n"
             "sys.exit(3 if os.environ['DISTRIBUTE_JOB'] == 'f' else 0)")
    ok(tmp_path, "work", remote, "--name", "w0", "--max-attempts", "1", "--breaker", "0",
       "--", PY, "-c", ended)
    ok(tmp_path, "add", remote, "r", "q1", "q2", "--", "-x")
    marks = tmp_path / "marks"
    marks.mkdir()
    worker = Proc(tmp_path, "work", remote, "--name", "w1", "--lease", "3", "--max-jobs", "1",
                  "--commit-every", "0.5", "--grace", "5",
                  "--", PY, "-c", barrier_job(marks, 1, go=tmp_path / "never"))
    try:
        wait_until(lambda: (marks / "started-r").exists(), "job r started", proc=worker)
        r = run(tmp_path, "cancel", remote, "q1", "r", "d", "f", "nope", "--", "-x")
        assert r.returncode == 1, r.stderr
        said = {line.split("'")[1]: line for line in r.stdout.splitlines() if "'" in line}
        assert said["q1"].startswith("cancelled") and said["-x"].startswith("cancelled")
        assert said["r"].startswith("cancelled") and "running on worker 'w1'" in said["r"]
        assert "done" in said["d"] and "requeue --done" in said["d"]
        assert "failed" in said["f"]
        assert "not known" in said["nope"]
        assert "3 of 6" in r.stderr
        doc = status(tmp_path, remote)
        assert doc["queued"] == ["q2"]  # q1 and -x are gone, the rest in order
        assert doc["running"] == []
        assert {e["job"]: e["reason"] for e in doc["failed"]}["r"].startswith("cancelled")
        # the worker learns it from its revoked record, stops the command and goes on
        rc, _, err = worker.finish()
        assert rc == 0, err
        assert "job 'r': cancelled (cli@" in err, err
    finally:
        worker.kill()
    pid_file = marks / "pid-r"
    if pid_file.exists():
        wait_until(lambda: not alive(int(pid_file.read_text())), "r's command stopped")
    r = ok(tmp_path, "cancel", remote, "q2")
    assert "cancelled 'q2'" in r.stdout
    doc = status(tmp_path, remote)
    assert doc["queued"] == [] and doc["running"] == []
    assert doc["lock"]["held"] is False
    assert "Examples" in ok(tmp_path, "cancel", "--help").stdout


# ---- requeue --done ---------------------------------------------------------------------------
COUNT_RUNS = textwrap.dedent("""
    import os
    with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "runs.txt"), "a") as f:
        f.write("run by " + os.environ["DISTRIBUTE_WORKER"] + "\\n")
""")


def test_requeue_done_runs_a_done_job_again(tmp_path, remote):
    ok(tmp_path, "init", remote, "a", "b")
    ok(tmp_path, "work", remote, "--name", "w1", "--", PY, "-c", COUNT_RUNS)
    first = {e["job"]: e for e in status(tmp_path, remote)["done"]}
    # without --done a done job is refused, naming the option
    r = run(tmp_path, "requeue", remote, "a")
    assert r.returncode == 1 and "--done" in r.stderr
    r = run(tmp_path, "requeue", remote, "--done", "a", "nope")
    assert r.returncode == 1 and "not known" in r.stderr
    r = run(tmp_path, "requeue", remote, "--done", "--failed")
    assert r.returncode == 2
    assert "requeued 1 job(s)" in ok(tmp_path, "requeue", remote, "--done", "a").stdout
    doc = status(tmp_path, remote)
    assert doc["queued"] == ["a"] and [e["job"] for e in doc["done"]] == ["b"]
    ok(tmp_path, "work", remote, "--name", "w2", "--", PY, "-c", COUNT_RUNS)
    doc = status(tmp_path, remote)
    again = {e["job"]: e for e in doc["done"]}
    assert sorted(again) == ["a", "b"] and doc["queued"] == [] and doc["running"] == []
    assert again["a"]["worker"] == "w2" and again["a"]["attempt"] == 1
    assert again["a"]["token"] > first["a"]["token"]
    # the new run started with the files of the first one, and both runs' commits stay on
    # the main branch: each finish commit has its run's branch tip as second parent (the
    # branches themselves go once merged)
    assert remote_file(remote, "a", "runs.txt") == "run by w1\nrun by w2\n"
    merges = subprocess.run(
        ["git", "--git-dir", str(remote), "log", "--first-parent", "--merges", "--format=%s",
         "main"], capture_output=True, text=True, timeout=30, check=True).stdout
    for run_of in (first["a"], again["a"]):
        assert f"finish a by {run_of['worker']} (token {run_of['token']}," in merges, merges
