"""A worker's working tree holds the remote's files except other jobs' folders.

Every finished job's folder (``updates/<job>/``) is merged into the main branch, so a
remote that ran thousands of jobs has thousands of folders.  A worker checks out a
*view* of each commit that holds, of ``updates/``, only its own job's folder: the
others are neither on its disk nor in its index, and stay on the main branch
untouched, so checkouts, ``git status`` and snapshots cost what they cost on a young
remote.
These tests check both halves: what is on disk, and that nothing is lost on the
remote because a worker did not have it on disk.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distribute.dist import worker_from_url
from distribute.remote import init_remote


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def files_on_main(bare: Path) -> set[str]:
    return set(git("ls-tree", "-r", "--name-only", "main", cwd=bare).split("\n")) - {""}


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


def make(remote: Path, tmp_path: Path, name: str, **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    kw.setdefault("wait_for_running", False)
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name, **kw)


def run_one(worker, job: str, text: str = "result") -> None:
    """Claim ``job``, write ``log.txt`` in its folder and finish it."""
    assert worker.get_next_job(lambda: job) == job
    folder = Path(worker.job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.txt").write_text(f"{text} of {job}\n")
    worker.finish_job()


def on_disk(copy: Path) -> set[str]:
    return {str(p.relative_to(copy)) for p in copy.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(copy).parts}


def test_a_worker_has_its_own_job_folder_on_disk_and_no_other(remote, tmp_path):
    with make(remote, tmp_path, "a") as a:
        run_one(a, "first")
    with make(remote, tmp_path, "b") as b:
        copy = Path(b.path)
        # a fresh copy of a remote with a done job: the job's folder is not on disk
        assert "updates/first/log.txt" not in on_disk(copy)
        assert "done.txt" in on_disk(copy)
        assert b.get_next_job(lambda: "second") == "second"
        assert "updates/first/log.txt" not in on_disk(copy)
        Path(b.job_dir).mkdir(parents=True)
        (Path(b.job_dir) / "log.txt").write_text("b's result\n")
        assert b.copy.changed_paths() == ["updates/second/log.txt"]
        b.finish_job()
        run_one(b, "third")
        # the finished job's folder leaves the disk at the next job; it is on main
        assert "updates/second/log.txt" not in on_disk(copy)
        assert "updates/third/log.txt" in on_disk(copy)
        assert b.copy.changed_paths() == []
    # nothing a worker did not have on disk was lost on the remote
    assert {"updates/first/log.txt", "updates/second/log.txt",
            "updates/third/log.txt"} <= files_on_main(remote)
    assert git("show", "main:updates/first/log.txt", cwd=remote) == "result of first\n"


def test_the_next_job_function_sees_every_file_outside_updates(remote, tmp_path):
    with make(remote, tmp_path, "a") as a:
        run_one(a, "done-before")
    # an experiment's own files, committed to main by a person
    with make(remote, tmp_path, "person", all_results=True) as p:
        copy = Path(p.path)
        (copy / "experiment").mkdir()
        (copy / "experiment" / "grid.json").write_text("[1, 2]\n")
        (copy / "updates" / "README").write_text("results live here\n")
        git("add", "-A", cwd=copy)
        git("-c", "user.name=p", "-c", "user.email=p@invalid", "commit", "-qm", "grid",
            cwd=copy)
        git("push", "-q", "origin", "HEAD:main", cwd=copy)
    seen: dict[str, bool] = {}

    def next_job(worker) -> str | None:
        root = Path(worker.path)
        for name in ("jobs.txt", "done.txt", "experiment/grid.json", "updates/README",
                     "updates/done-before/log.txt"):
            seen[name] = (root / name).exists()
        return "next" if not seen.get("asked") else None

    with make(remote, tmp_path, "b") as b:
        assert b.get_next_job(next_job) == "next"
        b.finish_job()
    # updates/ holds the jobs' results: of what is in it, a worker has only its own job's
    assert seen == {"jobs.txt": True, "done.txt": True, "experiment/grid.json": True,
                    "updates/README": False, "updates/done-before/log.txt": False}
    # and what it did not have is still on the main branch after its finish
    assert {"updates/done-before/log.txt", "updates/README"} <= files_on_main(remote)


def test_a_retried_job_has_what_its_last_attempt_wrote_on_disk(remote, tmp_path):
    with make(remote, tmp_path, "a") as a:
        assert a.get_next_job(lambda: "long") == "long"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "checkpoint").write_text("epoch 3\n")
        a.commit_update()
        a.fail_job("out of memory")
    with make(remote, tmp_path, "b") as b:
        assert b.get_next_job(lambda: None) == "long"
        assert b.resumed_from is not None
        assert (Path(b.job_dir) / "checkpoint").read_text() == "epoch 3\n"
        b.finish_job()
    assert git("show", "main:updates/long/checkpoint", cwd=remote) == "epoch 3\n"


def test_all_results_checks_out_every_job_folder(remote, tmp_path):
    with make(remote, tmp_path, "a") as a:
        run_one(a, "one")
    with make(remote, tmp_path, "b", all_results=True) as b:
        assert "updates/one/log.txt" in on_disk(Path(b.path))
        run_one(b, "two")
        assert b.get_next_job(lambda: None) is None
        assert {"updates/one/log.txt", "updates/two/log.txt"} <= on_disk(Path(b.path))


def test_a_copy_with_every_folder_narrows_at_its_next_job_and_back(remote, tmp_path):
    with make(remote, tmp_path, "a") as a:
        run_one(a, "one")
    with make(remote, tmp_path, "b", all_results=True) as b:
        run_one(b, "two")
    copy = tmp_path / "copy-b"
    assert {"updates/one/log.txt", "updates/two/log.txt"} <= on_disk(copy)
    # the same copy opened the default way: other folders leave the disk, nothing is
    # taken for an edit of the working tree
    with make(remote, tmp_path, "b") as b:
        run_one(b, "three")
        assert not {"updates/one/log.txt", "updates/two/log.txt"} & on_disk(copy)
        assert b.copy.changed_paths() == []
    with make(remote, tmp_path, "b", all_results=True) as b:
        run_one(b, "four")
        assert {"updates/one/log.txt", "updates/two/log.txt",
                "updates/three/log.txt"} <= on_disk(copy)
        assert b.copy.changed_paths() == []
    assert {f"updates/{j}/log.txt" for j in ("one", "two", "three", "four")} <= files_on_main(
        remote)


def test_a_job_writing_outside_its_folder_still_commits_it(remote, tmp_path):
    """Files a job writes into another job's folder or at the top are committed, as
    before: only what is checked out changes, not what a snapshot takes."""
    with make(remote, tmp_path, "a") as a:
        run_one(a, "one")
    with make(remote, tmp_path, "b") as b:
        assert b.get_next_job(lambda: "two") == "two"
        root = Path(b.path)
        (root / "updates" / "one").mkdir(parents=True, exist_ok=True)
        (root / "updates" / "one" / "note.txt").write_text("seen by two\n")
        (root / "summary.txt").write_text("two ran\n")
        b.finish_job()
    on_main = files_on_main(remote)
    assert {"updates/one/log.txt", "updates/one/note.txt", "summary.txt"} <= on_main


def test_a_retried_job_in_the_original_style_finds_its_raw_named_folder(remote, tmp_path):
    """The original project's example writes to ``updates/<job>`` with the raw name;
    a retry of such a job has that folder on disk too."""
    job = "lr=0.1 bs=32"
    with make(remote, tmp_path, "a") as a:
        assert a.get_next_job(lambda: job) == job
        folder = Path(a.path) / "updates" / job
        folder.mkdir(parents=True)
        (folder / "checkpoint").write_text("epoch 2\n")
        a.commit_update()
        a.fail_job("preempted")
    with make(remote, tmp_path, "b") as b:
        assert b.get_next_job(lambda: None) == job
        assert (Path(b.path) / "updates" / job / "checkpoint").read_text() == "epoch 2\n"
        b.finish_job()
