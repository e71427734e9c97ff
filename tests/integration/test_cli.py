"""The `distribute` command line, driven as a subprocess against real bare repositories.

Every subprocess call has a timeout; leases are short (2-5 s) so that a test
that goes wrong fails in seconds rather than hanging.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_run import cli_env, ok, run

from distribute.core.lock import LockState, lock_message
from distribute.core.names import job_dir

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TIMEOUT = 90


def start(tmp_path, *args, **popen):
    return subprocess.Popen(
        [PY, "-m", "distribute", *map(str, args)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path), cwd=tmp_path, **popen,
    )


def finish(proc, timeout=TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not finish in {timeout} s:\n{err}")
    return proc.returncode, out, err


def status(tmp_path, remote):
    return json.loads(ok(tmp_path, "status", remote, "--json").stdout)


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def remote(tmp_path):
    """A fresh bare repository path (not created yet: `init` creates it)."""
    return tmp_path / "remote.git"


# A job command: writes its job name (argv[1], one argument whatever it holds) into
# $DISTRIBUTE_JOB_DIR/out.txt and prints what it got.
WRITE = textwrap.dedent("""
    import os, sys, time
    job = sys.argv[1]
    assert job == os.environ["DISTRIBUTE_JOB"], (job, os.environ["DISTRIBUTE_JOB"])
    with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "out.txt"), "w") as f:
        f.write(job)
    print("ran", job, "attempt", os.environ["DISTRIBUTE_ATTEMPT"], "on",
          os.environ["DISTRIBUTE_WORKER"], flush=True)
    time.sleep(0.2)
""")

STATUS_KEYS = {"schema", "remote", "branch", "main", "watched_seconds", "counts", "queued",
               "running", "done", "failed", "lock", "workers", "compared_with_last_look"}


def test_full_flow_two_workers(tmp_path, remote):
    jobs = ["a", "b c", "x/y", "ü-ñ", "--flag-like", "it's $HOME"]
    ok(tmp_path, "init", remote, *jobs[:2])
    added = ok(tmp_path, "add", remote, "--", *jobs[2:], "a")  # `--`: a job may start with -
    assert "queued 4 job(s) (1 already known" in added.stdout
    workers = [
        start(tmp_path, "work", remote, "--name", f"w{i}", "--path", tmp_path / f"copy{i}",
              "--lease", "5", "--commit-every", "1", "--", PY, "-c", WRITE, "{job}")
        for i in (1, 2)
    ]
    for proc in workers:
        rc, _, err = finish(proc)
        assert rc == 0, err
    doc = status(tmp_path, remote)
    assert set(doc) == STATUS_KEYS and doc["schema"] == 1
    assert sorted(e["job"] for e in doc["done"]) == sorted(jobs)
    assert doc["queued"] == [] and doc["running"] == [] and doc["failed"] == []
    assert doc["counts"] == {"queued": 0, "running": 0, "done": 6, "failed": 0}
    assert doc["lock"]["held"] is False
    assert {e["worker"] for e in doc["done"]} <= {"w1", "w2"}
    assert {w["name"] for w in doc["workers"]} == {"w1", "w2"}
    assert git("show", "main:jobs.txt", cwd=remote) == ""
    for job in jobs:
        assert git("show", f"main:{job_dir(job)}/out.txt", cwd=remote) == job
    log = ok(tmp_path, "logs", remote, "it's $HOME").stdout
    assert "ran it's $HOME attempt 1 on w" in log
    table = ok(tmp_path, "status", remote).stdout
    assert "done 6" in table and "lock: free" in table


def test_failing_command_ends_failed_with_its_log(tmp_path, remote):
    ok(tmp_path, "init", remote, "bad", "slow")
    fail = "import sys; print('boom: bad lr', flush=True); sys.exit(3)"
    rc, _, err = finish(start(
        tmp_path, "work", remote, "--lease", "5", "--max-attempts", "2", "--timeout", "1",
        "--breaker", "0",
        "--", PY, "-c", f"import sys, time\nif sys.argv[1] == 'slow': time.sleep(30)\n{fail}",
        "{job}",
    ))
    assert rc == 4, err  # every job it ran failed
    doc = status(tmp_path, remote)
    failed = {e["job"]: e for e in doc["failed"]}
    assert set(failed) == {"bad", "slow"} and doc["running"] == []
    assert failed["bad"]["attempt"] == 2
    assert failed["bad"]["reason"] == "exit code 3: boom: bad lr"
    assert failed["slow"]["reason"] == "timed out after 1 s"
    log = ok(tmp_path, "logs", remote, "bad").stdout
    assert "boom: bad lr" in log and "attempt 2" in log
    # requeue puts them back at the front of the queue, attempts reset
    ok(tmp_path, "add", remote, "later")
    assert "requeued 2 job(s)" in ok(tmp_path, "requeue", remote, "--failed").stdout
    doc = status(tmp_path, remote)
    assert doc["queued"] == ["bad", "slow", "later"] and doc["failed"] == []
    assert "no failed jobs" in ok(tmp_path, "requeue", remote, "--failed").stdout


def test_sigterm_mid_job_leaves_no_lock_and_the_job_runnable(tmp_path, remote):
    ok(tmp_path, "init", remote, "long job")
    started = tmp_path / "started"
    got_term = tmp_path / "got-term"
    child = textwrap.dedent(f"""
        import signal, sys, time
        def on_term(*_):
            open({str(got_term)!r}, "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("working", flush=True)
        open({str(started)!r}, "w").close()
        time.sleep(60)
    """)
    proc = start(tmp_path, "work", remote, "--name", "victim", "--lease", "2",
                 "--commit-every", "0.5", "--", PY, "-c", child)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, timeout=30)
    assert rc == 128 + signal.SIGTERM, err
    assert got_term.exists(), "SIGTERM was not forwarded to the command"
    doc = status(tmp_path, remote)
    assert doc["lock"]["held"] is False
    [entry] = doc["running"]
    assert entry["job"] == "long job" and entry["worker"] is None
    assert entry["lease"] == "released" and entry["reason"] == "interrupted"
    assert "working" in ok(tmp_path, "logs", remote, "long job").stdout
    # a second worker finishes it, as attempt 2
    rc, _, err = finish(start(tmp_path, "work", remote, "--lease", "2", "--",
                              PY, "-c", "print('second run')"))
    assert rc == 0, err
    doc = status(tmp_path, remote)
    assert [(e["job"], e["attempt"]) for e in doc["done"]] == [("long job", 2)]
    assert doc["lock"]["held"] is False and doc["running"] == []


def test_paused_worker_whose_job_was_taken_over_carries_on(tmp_path, remote):
    """A worker stopped past its lease (a laptop lid closed) loses its job, then goes on."""
    ok(tmp_path, "init", remote, "j1")
    started = tmp_path / "started"
    code = f"import sys, time\nopen({str(started)!r}, 'w').close()\ntime.sleep(8)"
    paused = start(tmp_path, "work", remote, "--name", "A", "--lease", "2", "--commit-every",
                   "0.5", "--", PY, "-c", code)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert paused.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    paused.send_signal(signal.SIGSTOP)
    try:
        # B waits while A's job runs, sees A's liveness unchanged for a lease, takes over
        taker = ok(tmp_path, "work", remote, "--name", "B", "--lease", "2", "--",
                   PY, "-c", "print('taken over')")
        assert "attempt 2" in taker.stderr
    finally:
        paused.send_signal(signal.SIGCONT)
    rc, _, err = finish(paused, timeout=60)
    assert rc == 0, err
    assert "lost" in err and "JobAlreadyRunning" not in err and "still runs" not in err
    doc = status(tmp_path, remote)
    assert [(e["job"], e["worker"], e["attempt"]) for e in doc["done"]] == [("j1", "B", 2)]
    assert doc["running"] == [] and doc["lock"]["held"] is False
    assert "taken over" in ok(tmp_path, "logs", remote, "j1").stdout


def test_shell_mode_quotes_the_job(tmp_path, remote):
    job = "it's a \"quoted\" $job; `x`"
    ok(tmp_path, "init", remote, job)
    ok(tmp_path, "work", remote, "--lease", "5", "--shell", "--",
       'printf "%s" {job} > "$DISTRIBUTE_JOB_DIR/out.txt"')
    assert git("show", f"main:{job_dir(job)}/out.txt", cwd=remote) == job


def test_bad_input_is_one_clear_line(tmp_path, remote):
    r = run(tmp_path, "status", tmp_path / "nowhere.git")
    assert r.returncode == 1 and "no remote at" in one_error_line(r)

    empty = tmp_path / "empty.git"
    git("init", "--bare", "-q", "-b", "main", str(empty), cwd=tmp_path)
    r = run(tmp_path, "status", empty)
    assert r.returncode == 1 and "distribute init" in one_error_line(r)

    # a repository with history but no ledgers
    plain = tmp_path / "plain"
    git("init", "-q", "-b", "main", str(plain), cwd=tmp_path)
    (plain / "README").write_text("hi\n")
    git("add", "README", cwd=plain)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c", cwd=plain)
    bare = tmp_path / "plain.git"
    git("clone", "-q", "--bare", str(plain), str(bare), cwd=tmp_path)
    for args in (["status", bare], ["add", bare, "j"], ["logs", bare, "j"],
                 ["work", bare, "--", PY, "-c", "pass"]):
        r = run(tmp_path, *args)
        assert r.returncode == 1 and "running.txt" in one_error_line(r), args
    assert not any((tmp_path / "cache").rglob("*.git")), "the scratch clone was left behind"

    ok(tmp_path, "init", remote)
    before = git("rev-parse", "main", cwd=remote)
    r = run(tmp_path, "add", remote, "fine", "a\tb")
    assert r.returncode == 1 and "tab" in one_error_line(r)
    r = run(tmp_path, "add", remote, "--file", "-", input="fine\nx\ny\n bad\n")
    assert r.returncode == 1 and "white space" in one_error_line(r)
    assert git("rev-parse", "main", cwd=remote) == before  # nothing was written

    r = run(tmp_path, "work", remote, "--")
    assert r.returncode == 2 and "no command given" in one_error_line(r)
    r = run(tmp_path, "work", remote, "python", "x.py")
    assert r.returncode == 2 and "after `--`" in one_error_line(r)
    r = run(tmp_path, "logs", remote, "never-queued")
    assert r.returncode == 1 and "not known" in one_error_line(r)
    r = run(tmp_path, "requeue", remote, "never-queued")
    assert r.returncode == 1 and "not known" in one_error_line(r)


def test_unlock_breaks_a_dead_holders_lock(tmp_path, remote):
    ok(tmp_path, "init", remote, "a")
    # a dead worker's lock: a commit on the lock ref naming it, as a worker would write
    old = git("rev-parse", "refs/distribute/lock", cwd=remote).strip()
    message = lock_message(LockState(token=41, holder="dead-worker", session="s1"))
    held = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit-tree", "-p", old,
         "4b825dc642cb6eb9a060e54bf8d69288fbee4904"],
        input=message, capture_output=True, text=True, cwd=remote, check=True, timeout=30,
    ).stdout.strip()
    git("update-ref", "refs/distribute/lock", held, old, cwd=remote)
    doc = status(tmp_path, remote)
    assert doc["lock"] == {"held": True, "holder": "dead-worker", "token": 41,
                           "session": "s1", "renewal": 0, "changed": None}
    # queue edits wait for the lock, then say what to do
    r = run(tmp_path, "add", remote, "b", "--wait", "1")
    assert r.returncode == 1 and "distribute unlock" in one_error_line(r)
    out = ok(tmp_path, "unlock", remote).stdout
    assert "'dead-worker'" in out and "token 41" in out
    lock = status(tmp_path, remote)["lock"]
    assert lock["held"] is False and lock["token"] == 42
    assert git("rev-parse", "refs/distribute/lock^", cwd=remote).strip() == held
    assert "free already" in ok(tmp_path, "unlock", remote).stdout
    ok(tmp_path, "add", remote, "b")
    assert status(tmp_path, remote)["queued"] == ["a", "b"]


def test_remote_from_environment_and_quiet(tmp_path, remote):
    ok(tmp_path, "init", remote, "a")
    env = cli_env(tmp_path, DISTRIBUTE_REMOTE=str(remote))
    r = ok(tmp_path, "status", "--json", env=env)
    assert json.loads(r.stdout)["queued"] == ["a"]
    r = ok(tmp_path, "-q", "work", "--lease", "5", "--", PY, "-c", "pass", env=env)
    assert r.stdout == "" and r.stderr == ""
    assert json.loads(ok(tmp_path, "status", "--json", env=env).stdout)["counts"]["done"] == 1


def test_demo_runs_and_summarises(tmp_path):
    r = ok(tmp_path, "demo", "--workers", "2", "--jobs", "4", timeout=120)
    assert "4 of 4 jobs done by 2 workers" in r.stdout
    assert "git --git-dir" in r.stdout and "log --oneline --graph main" in r.stdout
    root = next(line for line in r.stdout.splitlines() if line.startswith("The remote is "))
    demo_remote = Path(root[len("The remote is "):].strip())
    assert demo_remote.is_dir() and demo_remote.is_relative_to(tmp_path)
    assert "epoch" in ok(tmp_path, "logs", demo_remote, "mlp lr=0.1 seed=0").stdout


# ---- over git daemon ----------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon_url(tmp_path):
    """An empty bare repository served read-write by `git daemon` on 127.0.0.1."""
    base = tmp_path / "served"
    base.mkdir()
    git("init", "--bare", "-q", "-b", "main", str(base / "r.git"), cwd=tmp_path)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
         "--listen=127.0.0.1", f"--port={port}", f"--base-path={base}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"git://127.0.0.1:{port}/r.git"
    deadline = time.monotonic() + 15
    while True:
        probe = subprocess.run(["git", "ls-remote", url], capture_output=True, timeout=10)
        if probe.returncode == 0:
            break
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            pytest.skip(f"git daemon did not start: {daemon.stderr.read().decode()[-300:]}")
        time.sleep(0.1)
    yield url
    daemon.terminate()
    try:
        daemon.wait(timeout=10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


@pytest.mark.daemon
def test_flow_over_git_daemon(tmp_path, daemon_url):
    ok(tmp_path, "init", daemon_url, "d1", "d 2")
    ok(tmp_path, "add", daemon_url, "d3")
    rc, _, err = finish(start(tmp_path, "work", daemon_url, "--lease", "5", "--name", "net",
                              "--", PY, "-c", WRITE, "{job}"))
    assert rc == 0, err
    doc = status(tmp_path, daemon_url)
    assert sorted(e["job"] for e in doc["done"]) == ["d 2", "d1", "d3"]
    assert doc["queued"] == [] and doc["lock"]["held"] is False
    assert "ran d 2" in ok(tmp_path, "logs", daemon_url, "d 2").stdout


def test_seed_example_runs_as_written(tmp_path):
    r = subprocess.run([PY, str(REPO / "examples" / "seed_example.py")], capture_output=True,
                       text=True, timeout=TIMEOUT, env=cli_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split()[-1] for line in r.stdout.splitlines() if "finished" in line] == [
        f"job-{i}" for i in range(5)]


def test_a_command_appending_to_an_open_file_loses_nothing_across_commits(tmp_path, remote):
    """`work` commits every --commit-every seconds while the command keeps a file open
    and appends to it: every line reaches the main branch."""
    ok(tmp_path, "init", remote, "j")
    code = textwrap.dedent("""\
        import os, time
        with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "metrics.csv"), "a") as f:
            for i in range(12):
                f.write(f"{i}\\n"); f.flush(); time.sleep(0.1)
        """)
    rc, _, err = finish(start(
        tmp_path, "work", remote, "--lease", "5", "--commit-every", "0.25", "--", PY, "-c", code,
    ))
    assert rc == 0, err
    shown = git("show", f"main:{job_dir('j')}/metrics.csv", cwd=remote)
    assert shown.split() == [str(i) for i in range(12)]
    history = git("log", "--format=%s", "--all", cwd=remote)
    assert history.count("progress of j") >= 2  # it was committed while open


def test_clean_removes_unused_cached_copies_and_keeps_those_in_use(tmp_path, remote):
    from distribute.dist import worker_from_url

    ok(tmp_path, "init", remote, "a")
    cache = tmp_path / "cache" / "distribute"
    for name in ("idle", "busy", "resumable"):
        worker_from_url(str(remote), path=cache / "remote-0123" / name, name=name).close()
    (cache / "remote-0123" / "resumable" / ".git" / "distribute-job.json").write_text("{}")
    env = cli_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    with worker_from_url(str(remote), path=cache / "remote-0123" / "busy", name="busy"):
        dry = ok(tmp_path, "clean", "--dry-run", "--keep-running-jobs", env=env).stdout
        assert "would remove" in dry and (cache / "remote-0123" / "idle").exists()
        out = ok(tmp_path, "clean", "--keep-running-jobs", env=env)
    assert not (cache / "remote-0123" / "idle").exists()
    assert (cache / "remote-0123" / "busy").exists()  # in use while clean ran
    assert (cache / "remote-0123" / "resumable").exists()
    assert "1 copy" in out.stdout and "2 kept" in out.stdout
