"""The benchmark script runs end to end on a tiny budget and prints every figure it promises
(its numbers are not judged here: speed is read from its output, never asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import HttpServer, SshServer, Unavailable

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
#: the idle measurement on a tiny budget: one job of 2 s, one worker waiting for it
TINY_IDLE = ["--idle-seconds", "2", "--idle-warmup", "1", "--idle-workers", "1"]
NUMBER = r"[\d.]+"


def bench(*args: str, timeout: float = 300, check: bool = False,
          stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, check=check, stdin=stdin)


def check_operation_lines(out: str, workers: int) -> None:
    """The git-operation, ratio and idle lines are printed, and their parts add up."""
    ops = (rf"git operations per (?P<unit>job|idle worker-minute): (?P<all>{NUMBER}) \(fetches "
           rf"(?P<fetches>{NUMBER}), pushes (?P<pushes>{NUMBER}), peeks (?P<peeks>{NUMBER})\); "
           rf"lost races per (?P=unit): {NUMBER} \(replays {NUMBER}\)")
    solo = re.search(rf"1 worker: .*\n    {ops}", out)
    assert solo and solo["unit"] == "job", out
    many = re.search(rf"{workers} workers: .*\n    per job: .*\n    {ops}", out)
    assert many and many["unit"] == "job", out
    assert re.search(rf"{workers} workers / 1 worker: {NUMBER}x the jobs/s \({NUMBER}x in jobs "
                     r"per raw cycle", out), out
    # the machine's CPU per job, for the single worker and for the run
    assert re.search(rf"1 worker: .*\n(    .*\n)*?    CPU per job: {NUMBER} ms, every process",
                     out), out
    assert re.search(rf"{workers} workers: .*\n(    .*\n)*?    CPU per job: {NUMBER} ms "
                     rf"\({NUMBER}x one worker's\); with all \d+ CPUs? busy this machine could "
                     rf"do {NUMBER} jobs/s", out), out
    assert re.search(r"idle workers: 1 worker ran one job for 2 s while 1 other waited for it "
                     rf"\(lease {NUMBER} s, poll {NUMBER}-{NUMBER} s", out), out
    idle = re.search(rf"after the first 1 s of waiting: {ops}, over {NUMBER} worker-minutes",
                     out)
    assert idle, out
    assert re.search(rf"the whole wait: {NUMBER} git operations per idle worker-minute", out)
    assert re.search(rf"the waiting workers left -?{NUMBER} to -?{NUMBER} s after the job's "
                     "finish landed", out), out
    # The total is the sum of its parts. Each of the four figures is rounded to one decimal
    # on its own, so they may disagree by up to 4 x 0.05 (4.75 + 3.75 + 2.75 = 11.25 prints
    # as 4.8 + 3.8 + 2.8 against 11.2).
    for found in (solo, many, idle):
        parts = sum(float(found[k]) for k in ("fetches", "pushes", "peeks"))
        assert float(found["all"]) == pytest.approx(parts, abs=0.2 + 1e-9), found[0]
    # no password of a URL is ever printed
    assert not re.search(r"://[^/\s:@]+:(?!\*\*\*@)[^/\s@]+@", out), out


def test_the_benchmark_prints_its_figures():
    out = bench("--single-jobs", "3", "--workers", "2", "--jobs", "4", "--raw-samples", "2",
                *TINY_IDLE, check=True).stdout
    assert re.search(r"remote: path \(written directly\)", out)
    assert re.search(r"raw git CAS cycle .*: [\d.]+ ms", out)
    assert re.search(r"through Distribute's transport: [\d.]+ ms = [\d.]+ raw cycles", out)
    assert re.search(r"1 worker: .* = [\d.]+ raw cycles", out)
    assert re.search(r"at most [\d.]+ jobs/s", out)
    assert re.search(r"2 workers: 4 jobs in .* busiest \d+, least busy \d+", out)
    assert re.search(r"per job: .*pushes [\d.]+", out)
    assert re.search(r"a claim landed every [\d.]+ s \(median\); the machine's CPU was \d+% busy",
                     out)
    assert re.search(r"first claim [\d.]+ s after the start, last claim at [\d.]+ s, every "
                     r"worker done at [\d.]+ s", out)
    tail = re.search(r"idle tail ([\d.]+) s: the last finish landed at ([\d.]+) s, the last "
                     r"worker got no job at ([\d.]+) s and its process was done at ([\d.]+) s",
                     out)
    assert tail, out
    # the figures hang together (they are read, not judged: no bound here)
    finished, left, exited = (float(tail[i]) for i in (2, 3, 4))
    assert finished <= exited and left <= exited
    assert float(tail[1]) == pytest.approx(exited - finished, abs=0.02)
    check_operation_lines(out, 2)


@pytest.mark.hosted
@pytest.mark.parametrize("kind", ["http", "ssh"])
def test_the_benchmark_runs_over_a_hosted_remote(kind: str):
    """``--remote http`` and ``--remote ssh`` start their servers, run every measurement over
    them and stop them; skipped without the programs (failed under CI), like the fixtures
    of tests/conftest.py."""
    try:
        {"http": HttpServer, "ssh": SshServer}[kind].check_available()
    except Unavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} -- CI is set, and CI must provide it")
        pytest.skip(str(err))
    done = bench("--remote", kind, "--single-jobs", "2", "--workers", "2", "--jobs", "3",
                 "--raw-samples", "2", *TINY_IDLE, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(rf"remote: {kind}: .* on 127\.0\.0\.1 .*\(through git push and fetch\)",
                     out), out
    assert re.search(r"2 workers: 3 jobs in .* busiest \d+, least busy \d+", out), out
    check_operation_lines(out, 2)


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(path)],
                   check=True)
    return path


def _refs(repo: Path) -> dict[str, str]:
    out = subprocess.run(["git", "--git-dir", str(repo), "for-each-ref",
                          "--format=%(refname) %(objectname)"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}


def test_a_remote_given_by_url_is_asked_for_then_reset_before_each_run(tmp_path: Path):
    """``--remote URL`` uses that one remote: it asks first (and without a terminal or
    ``--yes`` does nothing), then rewrites it before each run and keeps other refs."""
    remote = _bare(tmp_path / "mine.git")
    env = _git_env()
    tree = subprocess.run(["git", "--git-dir", str(remote), "mktree"], input="", env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    keep = subprocess.run(["git", "--git-dir", str(remote), "commit-tree", tree, "-m", "mine"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    for ref in ("refs/heads/keep", "refs/heads/main", "refs/distribute/stale",
                "refs/heads/jobs/old/job/1", "refs/bench/raw"):
        subprocess.run(["git", "--git-dir", str(remote), "update-ref", ref, keep], check=True)
    url = remote.as_uri()

    refused = bench("--remote", url, "--idle-seconds", "0", stdin=subprocess.DEVNULL,
                    timeout=60)
    assert refused.returncode == 1
    assert "REWRITES the remote" in refused.stderr and "--yes" in refused.stderr
    assert refused.stdout == ""
    assert _refs(remote)["refs/heads/main"] == keep  # untouched

    done = bench("--remote", url, "--yes", "--single-jobs", "2", "--workers", "2", "--jobs",
                 "3", "--raw-samples", "2", "--idle-seconds", "0", stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REWRITES the remote" in done.stderr
    assert re.search(r"remote: file://.*, yours, reset before each run", done.stdout)
    assert re.search(r"2 workers: 3 jobs in ", done.stdout), done.stdout
    refs = _refs(remote)
    assert refs["refs/heads/keep"] == keep  # other branches are left alone
    for gone in ("refs/distribute/stale", "refs/heads/jobs/old/job/1", "refs/bench/raw",
                 "refs/bench/own"):
        assert gone not in refs
    assert "refs/distribute/lock" in refs
    # the main branch is the last run's: its three jobs done, none left in the queue
    show = ["git", "--git-dir", str(remote), "show"]
    done_txt = subprocess.run([*show, "main:done.txt"], capture_output=True, text=True,
                              check=True).stdout
    assert len(done_txt.splitlines()) == 3
    assert subprocess.run([*show, "main:jobs.txt"], capture_output=True, text=True,
                          check=True).stdout == ""


HISTORY = BENCH.with_name("history.py")


def test_the_growth_table_prints_a_row_per_history_size():
    out = subprocess.run(
        [sys.executable, str(HISTORY), "--sizes", "0", "30", "--big", "2", "0.1", "--jobs", "2",
         "--rounds", "1", "--gc", "--job-log"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "2 of them with a 0.1 MB model.bin" in out, out
    assert "each measured job writes a log.txt" in out, out
    header = re.search(r"done +ms/job +ratio +start s +ratio +file:// s +ratio +status s +ratio "
                       r"+refs +MB", out)
    assert header, out
    rows = {int(m[1]): m[2].split() for m in re.finditer(r"^ +(\d+) +([\d. ]+)$", out, re.M)}
    assert set(rows) == {0, 30}, out
    assert all(len(cells) == 10 for cells in rows.values()), rows
    assert rows[0][1] == "1.00"  # ratios are to the empty remote
    assert rows[30][8] == "2"  # no branches left: refs are the lock and the main branch
