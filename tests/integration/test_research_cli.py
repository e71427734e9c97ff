"""Sweep, run, collect: `add --grid/--random`, `work` with parameters, the breaker, waiting
for jobs, and `results`, driven as subprocesses against real bare repositories."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_run import cli_env as env_for
from cli_run import ok, run

from distribute.core.lock import parse_lock_message
from distribute.core.names import job_dir
from distribute.remote import init_remote
from distribute.sweeps import random_search

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable





def start(tmp_path, *args):
    return subprocess.Popen([PY, "-m", "distribute", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(tmp_path),
                            cwd=tmp_path)


def show(remote, path):
    return subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{path}"],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def ledger(remote, name):
    """``job -> fields`` of one ledger file on the main branch."""
    return {line.split("\t")[0]: dict(f.split("=", 1) for f in line.split("\t")[1:])
            for line in show(remote, name).splitlines() if line}


def queued(remote):
    return show(remote, "jobs.txt").splitlines()


@pytest.fixture
def remote(tmp_path):
    return tmp_path / "remote.git"


# A training script: checks that the parameters arrive as placeholders, as separate
# arguments ({args}) and in the environment, then writes metrics.json.
TRAIN = textwrap.dedent("""
    import json, math, os, sys
    lr, rest = sys.argv[1], sys.argv[2:]
    assert rest == [f"--lr={lr}", "--seed=" + os.environ["DISTRIBUTE_PARAM_SEED"]], rest
    assert os.environ["DISTRIBUTE_PARAM_LR"] == lr
    loss = (math.log10(float(lr)) + 2) ** 2 + int(os.environ["DISTRIBUTE_PARAM_SEED"]) / 100
    with open(os.path.join(os.environ["DISTRIBUTE_JOB_DIR"], "metrics.json"), "w") as f:
        json.dump({"loss": loss, "val": {"acc": 1 - loss / 10}}, f)
    print("trained", lr)
""")


def test_grid_sweep_runs_and_its_results_come_back_as_one_table(tmp_path, remote):
    init_remote(remote)
    dry = ok(tmp_path, "add", remote, "--grid", "lr=0.1,0.01,0.001", "--grid", "seed=0..1",
             "--dry-run")
    jobs = dry.stdout.splitlines()
    assert jobs == [f"lr={lr} seed={s}" for lr in ("0.1", "0.01", "0.001") for s in (0, 1)]
    assert queued(remote) == []  # a dry run queues nothing
    added = ok(tmp_path, "add", remote, "--grid", "lr=0.1,0.01,0.001", "--grid", "seed=0..1")
    assert "queued 6 job(s)" in added.stdout
    assert queued(remote) == jobs

    ok(tmp_path, "work", remote, "--lease", "5", "--", PY, "-c", TRAIN, "{lr}", "{args}")
    assert sorted(ledger(remote, "done.txt")) == sorted(jobs)
    assert "trained 0.01" in show(remote, f"{job_dir('lr=0.01 seed=1')}/log.txt")

    rows = json.loads(ok(tmp_path, "results", remote, "--format", "json", "--sort", "loss",
                         "--where", "state=done").stdout)
    assert [r["job"] for r in rows][:2] == ["lr=0.01 seed=0", "lr=0.01 seed=1"]
    assert list(rows[0])[:6] == ["job", "lr", "seed", "state", "attempt", "worker"]
    assert rows[0]["loss"] == 0 and rows[0]["val.acc"] == 1 and rows[0]["lr"] == "0.01"
    worst = json.loads(ok(tmp_path, "results", remote, "--format", "json", "--sort=-loss",
                          "--where", "seed=1", "--where", "lr<0.05").stdout)
    assert [r["job"] for r in worst] == ["lr=0.001 seed=1", "lr=0.01 seed=1"]
    csv = ok(tmp_path, "results", remote, "--format", "csv", "--sort", "job").stdout
    assert csv.splitlines()[0] == "job,lr,seed,state,attempt,worker,loss,val.acc"
    assert len(csv.splitlines()) == 7
    table = ok(tmp_path, "results", remote, "--sort", "loss").stdout
    assert "lr=0.001 seed=1" in table and "val.acc" in table

    if importlib.util.find_spec("matplotlib") is None:
        r = run(tmp_path, "results", remote, "--plot", "loss")
        assert r.returncode == 1 and "pip install 'distribute-jobs[plot]'" in r.stderr
        return
    r = ok(tmp_path, "results", remote, "--plot", "loss", "--by", "lr", "--out", "p/loss.png")
    assert r.stdout.strip() == f"wrote {Path('p') / 'loss.png'}"
    assert (tmp_path / "p" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_search_is_reproducible_and_bad_values_queue_nothing(tmp_path, remote):
    init_remote(remote)
    args = ["add", remote, "--random", "5", "--seed", "3", "--param", "lr=loguniform:1e-5:1e-1",
            "--param", "layers=int:1:4", "--param", "opt=choice:adam,sgd", "--dry-run"]
    first = ok(tmp_path, *args).stdout.splitlines()
    assert first == random_search(5, {"lr": "loguniform:1e-5:1e-1", "layers": "int:1:4",
                                      "opt": "choice:adam,sgd"}, seed=3)
    crossed = ok(tmp_path, *args, "--grid", "seed=0..1").stdout.splitlines()
    assert crossed[:2] == [f"{first[0]} seed=0", f"{first[0]} seed=1"] and len(crossed) == 10
    unseeded = run(tmp_path, "add", remote, "--random", "2", "--param", "x=uniform:0:1")
    assert unseeded.returncode == 0 and "--seed" in unseeded.stderr  # the seed to repeat it

    before = queued(remote)
    assert len(before) == 2
    for bad, why in ((["--grid", "tag=a b,c"], "white space"),
                     (["--grid", "lr=0.1..0.5"], "integers"),
                     (["--param", "lr=uniform:0:1"], "--random"),
                     (["--random", "2", "--param", "lr=loguniform:0:1"], "0 < LOW")):
        r = run(tmp_path, "add", remote, *bad)
        assert r.returncode in (1, 2) and why in r.stderr, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert queued(remote) == before


@pytest.mark.parametrize("command, error", [
    (["no-such-trainer", "{job}"], "No such file or directory"),
    ([PY, "-c", "import sys; print('ModuleNotFoundError: torch'); sys.exit(1)"],
     "exit code 1: ModuleNotFoundError: torch"),
], ids=["missing-executable", "exits-1-at-once"])
def test_the_breaker_stops_the_worker_and_keeps_the_queue(tmp_path, remote, command, error):
    jobs = [f"lr=0.{i} seed=0" for i in range(1, 11)]
    init_remote(remote, "main", jobs)
    r = run(tmp_path, "work", remote, "--lease", "5", "--", *command)
    assert r.returncode == 3, r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert "3 attempts in a row" in line and error in line
    assert command[0] in line  # names the command
    assert queued(remote) == jobs[1:]
    assert show(remote, "failed.txt") == "" and show(remote, "done.txt") == ""
    fields = ledger(remote, "running.txt")[jobs[0]]
    assert fields["worker"] == ""  # released: any worker may take it
    assert fields["attempt"] == "3" and fields["interrupted"] == "3"  # no attempt used up


def test_work_exits_4_when_every_job_it_ran_failed_and_idle_exit(tmp_path, remote):
    init_remote(remote, "main", ["a", "b"])
    r = run(tmp_path, "work", remote, "--lease", "5", "--max-attempts", "1", "--breaker", "0",
            "--idle-exit", "0.5", "--", PY, "-c", "raise SystemExit(5)")
    assert r.returncode == 4, r.stderr
    assert "no job for 0.5 s: stopping" in r.stderr
    assert "every job this worker ran failed" in r.stderr
    assert set(ledger(remote, "failed.txt")) == {"a", "b"}


def test_a_job_without_the_parameter_fails_alone(tmp_path, remote):
    init_remote(remote, "main", ["lr=0.1", "plain", "lr=0.2"])
    code = "import sys; print('lr is', sys.argv[1], 'literal', sys.argv[2])"
    r = run(tmp_path, "work", remote, "--lease", "5", "--max-attempts", "1", "--",
            PY, "-c", code, "{lr}", "{{lr}}")
    assert r.returncode == 0, r.stderr
    assert sorted(ledger(remote, "done.txt")) == ["lr=0.1", "lr=0.2"]
    failed = ledger(remote, "failed.txt")
    assert list(failed) == ["plain"] and "has no parameter lr" in failed["plain"]["reason"]
    assert "lr is 0.2 literal {lr}" in show(remote, f"{job_dir('lr=0.2')}/log.txt")


def _wait_until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_wait_for_jobs_runs_jobs_queued_later_until_sigterm(tmp_path, remote):
    init_remote(remote)
    proc = start(tmp_path, "work", remote, "--name", "w", "--lease", "2", "--wait-for-jobs",
                 "--", PY, "-c", "print('ran')")
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        ok(tmp_path, "add", remote, "late-1", "late-2")
        _wait_until(lambda: len(ledger(remote, "done.txt")) == 2, "the late jobs")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "waiting for new jobs" in err and "stopped by SIGTERM" in err
    assert ledger(remote, "running.txt") == {}
    lock = subprocess.run(["git", "--git-dir", str(remote), "log", "-1", "--format=%B",
                           "refs/distribute/lock"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert parse_lock_message(lock).free, lock


def test_demo_ends_with_the_results_table(tmp_path):
    r = ok(tmp_path, "demo", "--workers", "2", "--jobs", "4", "--seconds", "0", timeout=120)
    tail = r.stdout[r.stdout.index("Results"):]
    assert "loss" in tail and "mlp lr=0.1 seed=0" in tail and "epochs" in tail


def test_work_shows_each_jobs_output_after_its_name_and_q_hides_it(tmp_path, remote):
    init_remote(remote, "main", ["a", "b"])
    script = "import sys; print('hello from', sys.argv[1]); print('to stderr', file=sys.stderr)"
    shown = ok(tmp_path, "work", remote, "--name", "w", "--", PY, "-c", script, "{job}")
    assert "a | hello from a" in shown.stderr and "b | to stderr" in shown.stderr
    assert "hello" not in shown.stdout
    init_remote(remote, "main", ["c"])
    quiet = ok(tmp_path, "-q", "work", remote, "--name", "w", "--", PY, "-c", script, "{job}")
    assert "hello from" not in quiet.stderr + quiet.stdout
    log = subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{job_dir('c')}/log.txt"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "hello from c" in log  # the log has it either way
