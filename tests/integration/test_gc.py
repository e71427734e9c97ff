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


def test_work_leaves_no_branch_of_a_done_job_and_gc_removes_old_ones(tmp_path):
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
    refs = job_refs(remote)
    # the failed attempt keeps its branch; every done job's branch is gone, its commits kept
    assert list(refs) == ["refs/heads/jobs/w/bad/" + str(status["failed"][0]["token"])], refs
    ok(tmp_path, "logs", remote, "j3")  # a done job's log is read from the main branch
    main = git(remote, "rev-parse", "main").strip()
    entry = next(e for e in status["done"] if e["job"] == "j7")
    merged = git(remote, "rev-parse", "main^{/finish j7 }^2").strip()
    assert git(remote, "merge-base", "--is-ancestor", merged, main) == ""
    # a remote filled by an older version: the branch of a done job is still there
    git(remote, "update-ref", "refs/heads/" + entry["branch"], merged)
    assert "1 branch(es) of done jobs would be deleted, 1 archived" in ok(
        tmp_path, "gc", remote, "--dry-run").stdout
    assert "deleted 1 branch(es)" in ok(tmp_path, "gc", remote, "--keep-failed").stdout
    assert list(job_refs(remote)) == list(refs)
    # the failed job's branch is archived: its ref goes, its commits stay reachable
    [(failed_ref, failed_tip)] = refs.items()
    assert "deleted 0 branch(es) of done jobs, archived 1" in ok(tmp_path, "gc", remote).stdout
    assert job_refs(remote) == {}
    listing = git(remote, "show", "refs/distribute/archive:archived.txt")
    assert listing == failed_ref.removeprefix("refs/heads/") + "\t" + failed_tip + "\n"
    git(remote, "gc", "--prune=now", "--quiet")
    assert '"loss": 0.5' in git(remote, "show", failed_tip + ":updates/bad/metrics.json")
    # and what reads a failed job's branch reads it from the archive
    assert "said by bad" in ok(tmp_path, "logs", remote, "bad").stdout
    rows = json.loads(ok(tmp_path, "results", remote, "--format", "json").stdout)
    assert {r["job"]: r.get("loss") for r in rows if r["state"] == "failed"} == {"bad": 0.5}
    assert "nothing to do" in ok(tmp_path, "gc", remote).stdout


def test_gc_archives_over_the_pack_protocol(tmp_path):
    """Over a URL the archive commit is built in gc's own copy, from the fetched tips, and
    pushed with the deletions in one atomic push."""
    remote = tmp_path / "remote.git"
    ok(tmp_path, "init", remote, "good", "bad1", "bad2")
    script = ("import os, sys; open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'o.txt'), "
              "'w').write('x'); sys.exit(os.environ['DISTRIBUTE_JOB'].startswith('bad'))")
    done = run(tmp_path, "work", remote, "--name", "w", "--max-attempts", "1", "--breaker", "0",
               "--", PY, "-c", script)
    assert done.returncode == 0, done.stderr
    before = job_refs(remote)
    assert len(before) == 2
    out = ok(tmp_path, "gc", remote.as_uri()).stdout
    assert "archived 2 under refs/distribute/archive" in out, out
    assert job_refs(remote) == {}
    archive = git(remote, "rev-parse", "refs/distribute/archive").strip()
    for tip in before.values():
        git(remote, "merge-base", "--is-ancestor", tip, archive)  # raises when it is not
    listing = git(remote, "show", "refs/distribute/archive:archived.txt").splitlines()
    assert sorted(listing) == sorted(f"{ref.removeprefix('refs/heads/')}\t{tip}"
                                     for ref, tip in before.items())
