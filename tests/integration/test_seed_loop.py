"""The seed README's loop with several worker processes over real git."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from distribute.core.ledger import Ledger
from distribute.core.names import job_dir
from distribute.remote import init_remote

HERE = Path(__file__).parent
JOBS = [f"job {i:02d}" for i in range(9)] + ["a/b", "ünï", "-dash", "x@{1}", "end.lock"]


def git(*args, cwd):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def run_workers(url, tmp_path, n=3):
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "seed_loop.py"), url, str(tmp_path / f"copy{i}"), f"w{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(n)
    ]
    ran = Counter()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        ran.update(line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("RAN\t"))
    return ran


def check_remote(bare: Path, ran: Counter):
    assert sorted(ran) == sorted(JOBS) and set(ran.values()) == {1}, ran
    show = lambda p: git("show", f"main:{p}", cwd=bare)  # noqa: E731
    ledger = Ledger.from_files({"running.txt": show("running.txt").encode(),
                                "done.txt": show("done.txt").encode()})
    assert ledger.running == ()
    assert sorted(e.job for e in ledger.done) == sorted(JOBS)
    assert show("jobs.txt").strip() == ""
    for job in JOBS:
        assert show(f"{job_dir(job)}/final.txt") == f"{job} final\n"
        assert show(f"{job_dir(job)}/progress.txt") == f"{job} progress\n"
    # every job's branch was merged into main (a finish commit with the branch's tip as its
    # second parent), and then deleted by its worker: refs do not grow with the jobs done
    assert git("for-each-ref", "refs/heads/jobs/", cwd=bare).strip() == ""
    merges = git("log", "--first-parent", "--merges", "--format=%s", "main", cwd=bare)
    finishes = [s for s in merges.splitlines() if s.startswith("distribute: finish ")]
    assert len(finishes) == len(JOBS), merges


def test_three_workers_over_a_bare_repo(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare, jobs=JOBS)
    check_remote(bare, run_workers(str(bare), tmp_path))


@pytest.mark.daemon
def test_three_workers_over_git_daemon(tmp_path, daemon):
    url, bare = daemon
    init_remote(url, jobs=JOBS)
    check_remote(Path(bare), run_workers(url, tmp_path))
