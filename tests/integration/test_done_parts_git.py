"""``done.txt`` in sealed parts over real git: workers writing through a path and through
the pack protocol seal full parts, a person's commands read every part, and taking a
done job's line out of a sealed part (`requeue --done`) writes the parts anew."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from unittest import mock

from cli_run import ok

from distribute.core import ledger as ledger_module
from distribute.dist import worker_from_url
from distribute.sources import QueueJobs


def git(remote: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def run_jobs(url: str, copy: Path, name: str, count: int) -> list[str]:
    ran = []
    with worker_from_url(url, path=copy, name=name, branch="main") as worker:
        for _ in range(count):
            job = worker.get_next_job(QueueJobs())
            assert job is not None
            ran.append(job)
            worker.finish_job()
    return ran


def test_workers_seal_full_parts_and_every_reader_sees_every_done_job(tmp_path):
    remote = tmp_path / "remote.git"
    jobs = [f"j{i:02d}" for i in range(12)]
    ok(tmp_path, "init", remote, *jobs)
    with mock.patch.object(ledger_module, "DONE_PART_LINES", 4):
        ran = run_jobs(str(remote), tmp_path / "a", "a", 6)  # written directly
        ran += run_jobs(remote.as_uri(), tmp_path / "b", "b", 6)  # pushed by git
    assert sorted(ran) == jobs
    parts = git(remote, "ls-tree", "--name-only", "main", "done/").split()
    assert parts == ["done/000001.txt", "done/000002.txt", "done/000003.txt"]
    assert git(remote, "show", "main:done.txt") == ""
    lines = [line.split("\t")[0] for p in parts
             for line in git(remote, "show", f"main:{p}").splitlines()]
    assert lines == ran  # in the order the jobs finished, each once
    # a part is sealed once: the commit that wrote part 1 is the only one that touched it
    assert len(git(remote, "log", "--format=%H", "main", "--", "done/000001.txt").split()) == 1
    status = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
    assert sorted(e["job"] for e in status["done"]) == jobs

    # a person's requeue (1000 lines a part) takes a line out of part 1: the parts are
    # written anew, and no job is listed twice or lost
    ok(tmp_path, "requeue", remote, "--done", ran[1])
    status = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
    assert sorted(e["job"] for e in status["done"]) == sorted(set(jobs) - {ran[1]})
    assert git(remote, "ls-tree", "--name-only", "main", "done/").split() == []
    assert ran[1] in git(remote, "show", "main:jobs.txt").split()
    assert run_jobs(remote.as_uri(), tmp_path / "c", "c", 1) == [ran[1]]
    status = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
    assert sorted(e["job"] for e in status["done"]) == jobs
