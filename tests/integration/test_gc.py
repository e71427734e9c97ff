"""The remote's refs do not grow with the jobs done: `work` deletes the branches of the
jobs it finished (their commits stay on the main branch), and `distribute gc` deletes
those left behind, over a real bare repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_run import PY, ok, run


def git(remote: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def job_refs(remote: Path) -> dict[str, str]:
    lines = git(remote, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/jobs/")
    return dict(line.split(" ") for line in lines.splitlines())


def archived(remote: Path, worker: str = "w") -> list[str]:
    return git(remote, "show", f"refs/distribute/archive/{worker}:archived.txt").splitlines()


def test_work_leaves_no_branch_of_a_done_or_failed_job_and_gc_removes_old_ones(tmp_path):
    remote = tmp_path / "remote.git"
    jobs = [f"j{i}" for i in range(20)] + ["bad"]
    ok(tmp_path, "init", remote, *jobs)
    script = ("import os, sys; d = os.environ['DISTRIBUTE_JOB_DIR']; "
              "open(os.path.join(d, 'metrics.json'), 'w').write('{\"loss\": 0.5}'); "
              "print('said by', os.environ['DISTRIBUTE_JOB']); "
              "sys.exit(os.environ['DISTRIBUTE_JOB'] == 'bad')")
    done = run(tmp_path, "work", remote, "--name", "w", "--max-attempts", "1", "--breaker", "0",
               "--", PY, "-c", script)
    assert done.returncode == 0, done.stderr
    status = json.loads(ok(tmp_path, "status", remote, "--json").stdout)
    assert len(status["done"]) == 20 and [e["job"] for e in status["failed"]] == ["bad"]
    # every done job's branch is gone, its commits kept by the main branch; the failed
    # job's branch is in the worker's archive, its commits kept by the archive
    assert job_refs(remote) == {}
    failed = status["failed"][0]["branch"]
    [line] = archived(remote)
    name, tip = line.split("\t")
    assert name == failed
    git(remote, "gc", "--prune=now", "--quiet")
    assert '"loss": 0.5' in git(remote, "show", tip + ":updates/bad/metrics.json")
    # what reads a failed job's branch reads it from the archive
    assert "said by bad" in ok(tmp_path, "logs", remote, "bad").stdout
    rows = json.loads(ok(tmp_path, "results", remote, "--format", "json").stdout)
    assert {r["job"]: r.get("loss") for r in rows if r["state"] == "failed"} == {"bad": 0.5}
    ok(tmp_path, "logs", remote, "j3")  # a done job's log is read from the main branch
    main = git(remote, "rev-parse", "main").strip()
    entry = next(e for e in status["done"] if e["job"] == "j7")
    merged = git(remote, "rev-parse", "main^{/finish j7 }^2").strip()
    assert git(remote, "merge-base", "--is-ancestor", merged, main) == ""
    # a remote filled by an older version: the branches of a done job and of a failed
    # one are still there, and no archive
    git(remote, "update-ref", "refs/heads/" + entry["branch"], merged)
    git(remote, "update-ref", "refs/heads/" + failed, tip)
    git(remote, "update-ref", "-d", "refs/distribute/archive/w")
    assert "1 branch(es) of done jobs would be deleted, 1 archived" in ok(
        tmp_path, "gc", remote, "--dry-run").stdout
    assert "deleted 1 branch(es)" in ok(tmp_path, "gc", remote, "--keep-failed").stdout
    assert list(job_refs(remote)) == ["refs/heads/" + failed]
    assert "deleted 0 branch(es) of done jobs, archived 1" in ok(tmp_path, "gc", remote).stdout
    assert job_refs(remote) == {} and archived(remote) == [line]
    assert "nothing to do" in ok(tmp_path, "gc", remote).stdout


def test_workers_and_gc_archive_over_the_pack_protocol(tmp_path):
    """Over a URL an archive commit is built in the local copy, from the fetched tips, and
    pushed with the deletions in one atomic push: by the worker whose jobs failed, and by
    gc for branches an older version left."""
    remote = tmp_path / "remote.git"
    ok(tmp_path, "init", remote, "good", "bad1", "bad2")
    script = ("import os, sys; open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'o.txt'), "
              "'w').write('x'); sys.exit(os.environ['DISTRIBUTE_JOB'].startswith('bad'))")
    done = run(tmp_path, "work", remote.as_uri(), "--name", "w", "--max-attempts", "1",
               "--breaker", "0", "--", PY, "-c", script)
    assert done.returncode == 0, done.stderr
    assert job_refs(remote) == {}
    listed = dict(line.split("\t") for line in archived(remote))
    assert sorted(name.rsplit("/", 1)[0] for name in listed) == ["jobs/w/bad1", "jobs/w/bad2"]
    head = git(remote, "rev-parse", "refs/distribute/archive/w").strip()
    for tip in listed.values():
        git(remote, "merge-base", "--is-ancestor", tip, head)  # raises when it is not
    # an older version's leftovers, archived by gc over the URL
    for name, tip in listed.items():
        git(remote, "update-ref", "refs/heads/" + name, tip)
    git(remote, "update-ref", "-d", "refs/distribute/archive/w")
    out = ok(tmp_path, "gc", remote.as_uri()).stdout
    assert "archived 2 under refs/distribute/archive/" in out, out
    assert job_refs(remote) == {}
    assert dict(line.split("\t") for line in archived(remote)) == listed
