"""A local copy checks out views: the real commit with other jobs' folders cut out.

The view is what the index and the working tree hold; every commit the copy makes is
grafted back onto the real tree.  These tests drive :class:`GitLocalCopy` on a real
repository and compare each commit it makes with the tree a plain git checkout of the
whole commit would have given for the same edits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distribute.core.errors import UsageError
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.transport.local_copy import GitLocalCopy

ID = ["-c", "user.name=t", "-c", "user.email=t@invalid"]


def git(*args: str, cwd: Path, data: bytes | None = None) -> str:
    out = subprocess.run(["git", *ID, *args], cwd=cwd, input=data, capture_output=True,
                         check=True)
    return out.stdout.decode()


def listing(commit: str, cwd: Path) -> dict[str, str]:
    """path -> blob id of every file of ``commit``."""
    out = git("ls-tree", "-r", commit, cwd=cwd)
    return {line.split("\t")[1]: line.split()[2] for line in out.splitlines()}


def blob(text: str, cwd: Path) -> str:
    return git("hash-object", "-w", "--stdin", cwd=cwd, data=text.encode()).strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[GitLocalCopy, str]:
    """A copy whose one commit has three job folders, a file in updates/ and a ledger."""
    path = tmp_path / "copy"
    git("init", "-q", "-b", "main", str(path), cwd=tmp_path)
    for rel, text in {"jobs.txt": "a\nb\nc\n", "updates/README": "results\n",
                      "updates/a/log.txt": "a\n", "updates/b/log.txt": "b\n",
                      "updates/b/deep/x.txt": "x\n", "updates/c/log.txt": "c\n"}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git("add", "-A", cwd=path)
    git("commit", "-qm", "start", cwd=path)
    copy = GitLocalCopy.open(path)
    yield copy, git("rev-parse", "HEAD", cwd=path).strip()
    copy.close()


def write(copy: GitLocalCopy, texts: dict[str, str]) -> dict[str, str]:
    """Write ``texts`` (path -> text) into the working tree; return path -> blob id."""
    for rel, text in texts.items():
        (copy.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy.path / rel).write_text(text)
    return {rel: blob(text, copy.path) for rel, text in texts.items()}


def files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(path).parts}


def test_the_view_holds_the_shown_folder_and_everything_outside_updates(repo):
    copy, start = repo
    copy.show(["a"])
    copy.checkout(start, "jobs/w/a")
    assert files(copy.path) == {"jobs.txt", "updates/a/log.txt"}
    assert git("ls-files", cwd=copy.path).split() == ["jobs.txt", "updates/a/log.txt"]
    assert copy.head() == start  # the real commit, not the view
    assert copy.changed_paths() == []


def test_a_snapshot_is_the_real_tree_with_the_edits_laid_in(repo):
    copy, start = repo
    copy.show(["a"])
    copy.checkout(start, "jobs/w/a")
    written = write(copy, {"updates/a/log.txt": "a, again\n",
                           "updates/a/model.txt": "weights\n", "jobs.txt": "b\nc\n"})
    commit = copy.snapshot(start, "update a")
    expected = {**listing(start, copy.path), **written}
    assert listing(commit, copy.path) == expected
    assert git("rev-parse", f"{commit}^", cwd=copy.path).strip() == start
    copy.advance(commit, "jobs/w/a")
    assert copy.head() == commit
    assert copy.changed_paths() == []
    # a second round, with a file deleted in the job's own folder: the deletion lands
    (copy.path / "updates" / "a" / "model.txt").unlink()
    second = copy.snapshot(commit, "update a")
    del expected["updates/a/model.txt"]
    assert listing(second, copy.path) == expected


def test_a_job_deleting_its_whole_folder_removes_only_that_folder(repo):
    copy, start = repo
    copy.show(["a"])
    copy.checkout(start, None)
    git("rm", "-rq", "updates/a", cwd=copy.path)
    commit = copy.snapshot(start, "drop a")
    before = listing(start, copy.path)
    expected = {p: b for p, b in before.items() if not p.startswith("updates/a/")}
    assert listing(commit, copy.path) == expected


def test_writing_into_a_folder_the_view_left_out_adds_to_it(repo):
    copy, start = repo
    copy.show(["a"])
    copy.checkout(start, "jobs/w/a")
    written = write(copy, {"updates/b/deep/y.txt": "y\n",
                           "updates/b/log.txt": "b, overwritten by a\n",
                           "updates/new-file": "beside the folders\n"})
    commit = copy.snapshot(start, "a writes into b")
    expected = {**listing(start, copy.path), **written}
    assert listing(commit, copy.path) == expected
    # the next snapshot, after the view moved to that commit, loses none of b's files
    # (its view now holds b's two written files, not b's others) and adds a third
    copy.advance(commit, "jobs/w/a")
    assert copy.changed_paths() == []
    expected.update(write(copy, {"updates/b/z.txt": "z\n"}))
    second = copy.snapshot(commit, "a writes into b again")
    assert listing(second, copy.path) == expected


def test_nothing_to_commit_gives_back_the_real_tree_and_edits_says_none(repo):
    copy, start = repo
    copy.show([])
    copy.checkout(start, None)
    assert files(copy.path) == {"jobs.txt"}
    assert copy.edits(start, "nothing") is None
    commit = copy.snapshot(start, "empty")
    assert git("rev-parse", f"{commit}^{{tree}}", cwd=copy.path) == git(
        "rev-parse", f"{start}^{{tree}}", cwd=copy.path)
    (copy.path / "jobs.txt").write_text("c\n")
    edited = copy.edits(start, "queue")
    assert edited is not None
    assert set(listing(edited, copy.path)) == set(listing(start, copy.path))


def test_a_reopened_copy_still_knows_the_real_commit(repo):
    """A worker killed mid-job reopens its copy: HEAD is a view, and head() reads the
    real commit from it (the view commit names it, and has it as its one parent)."""
    copy, start = repo
    copy.show(["b"])
    copy.checkout(start, "jobs/w/b")
    again = GitLocalCopy.open(copy.path)
    try:
        assert again.head() == start
        (copy.path / "updates" / "b" / "log.txt").write_text("b, later\n")
        commit = again.snapshot(start, "after a restart", only="updates/b")
        assert listing(commit, copy.path)["updates/b/deep/x.txt"] == listing(
            start, copy.path)["updates/b/deep/x.txt"]
        assert listing(commit, copy.path)["updates/c/log.txt"]
    finally:
        again.close()


def test_updates_turned_into_a_file_is_refused(repo):
    copy, start = repo
    copy.show(["a"])
    copy.checkout(start, None)
    git("rm", "-rq", "updates", cwd=copy.path)
    (copy.path / "updates").write_text("oops\n")
    with pytest.raises(UsageError, match="must stay a folder"):
        copy.snapshot(start, "bad")


@pytest.mark.parametrize("bad", ["", "a/b", "..", "line\nbreak"])
def test_a_shown_name_must_be_one_folder(repo, bad):
    with pytest.raises(UsageError):
        repo[0].show([bad])


def test_a_sparse_copy_of_an_older_version_is_widened_at_its_next_checkout(repo):
    copy, start = repo
    path = copy.path
    git("config", "core.sparseCheckout", "true", cwd=path)
    git("config", "core.sparseCheckoutCone", "false", cwd=path)
    (path / ".git" / "info").mkdir(exist_ok=True)
    (path / ".git" / "info" / "sparse-checkout").write_text("/*\n!/updates/*/\n")
    git("read-tree", "-mu", "HEAD", cwd=path)
    assert "updates/b/log.txt" not in files(path)  # the older narrowing at work
    old = GitLocalCopy.open(path)
    try:
        old.show(["b"])
        old.checkout(start, "jobs/w/b")
        assert files(path) == {"jobs.txt", "updates/b/log.txt", "updates/b/deep/x.txt"}
        assert git("config", "--type=bool", "core.sparseCheckout", cwd=path).strip() == "false"
        flags = git("ls-files", "-t", cwd=path).split("\n")
        assert all(line.startswith("H ") for line in flags if line)  # no skip-worktree left
    finally:
        old.close()


def test_a_workers_index_does_not_grow_with_the_jobs_done(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    sizes = []
    with worker_from_url(str(bare), tmp_path / "copy", "w", lease_seconds=5,
                         poll_seconds=0.05, wait_for_running=False) as worker:
        for number in range(12):
            job = f"job-{number:02d}"
            assert worker.get_next_job(lambda job=job: job) == job
            Path(worker.job_dir).mkdir(parents=True, exist_ok=True)
            (Path(worker.job_dir) / "log.txt").write_text(f"{job}\n")
            worker.finish_job()
            held = git("ls-files", cwd=Path(worker.path)).split()
            assert [p for p in held if p.startswith("updates/")] == [f"updates/{job}/log.txt"]
            sizes.append(len(held))
    done = git("ls-tree", "--name-only", "main:updates", cwd=bare).split()
    assert len(done) == 12
    # the index holds the files outside updates/ and the last job's own folder
    assert max(sizes) == min(sizes), sizes


def test_a_worker_keeps_no_local_branch_per_job(tmp_path):
    """git reads every local branch at each fetch: 10,000 loose ones made a fetch 20 times
    slower here.  A worker checks its jobs out detached, and drops the branches an
    earlier version left, but the one checked out."""
    bare = tmp_path / "remote.git"
    init_remote(bare)
    copy = tmp_path / "copy"
    options = dict(lease_seconds=5, poll_seconds=0.05, wait_for_running=False)
    with worker_from_url(str(bare), copy, "w", **options) as worker:
        for job in ("one", "two", "three"):
            assert worker.get_next_job(lambda job=job: job) == job
            (Path(worker.job_dir)).mkdir(parents=True, exist_ok=True)
            (Path(worker.job_dir) / "log.txt").write_text(f"{job}\n")
            assert worker.commit_update()
            worker.finish_job()
        assert git("for-each-ref", "refs/heads/jobs/", cwd=copy) == ""
    head = git("rev-parse", "HEAD", cwd=copy).strip()
    for name in ("jobs/w/old-1/1", "jobs/w/current/3"):
        git("update-ref", f"refs/heads/{name}", head, cwd=copy)
    git("pack-refs", "--all", cwd=copy)  # the old branches are in packed-refs, or loose:
    git("update-ref", "refs/heads/jobs/w/old-2/2", head, cwd=copy)
    git("symbolic-ref", "HEAD", "refs/heads/jobs/w/current/3", cwd=copy)
    with worker_from_url(str(bare), copy, "w", **options):
        left = git("for-each-ref", "--format=%(refname)", "refs/heads/jobs/", cwd=copy)
        assert left.split() == ["refs/heads/jobs/w/current/3"]
