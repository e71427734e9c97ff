"""Large result files stay on the remote until a worker needs them (a partial clone).

A worker that joins a remote over a URL clones it with ``--filter=blob:limit=``: files
of :data:`~distribute.dist.LAZY_BLOB_BYTES` or more that other jobs wrote are not
downloaded.  git fetches such a file by itself when a checkout needs it: a retried
job's large checkpoint is on disk when the job starts again, also over HTTP with a
password that only the worker's memory holds.  A remote that allows no filters is
cloned whole, as before.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import make_bare_remote

from distribute.dist import LAZY_BLOB_BYTES, worker_from_url
from distribute.doctor import diagnose
from distribute.remote import init_remote
from distribute.transport.repository import PARTIAL_CLONE_SETTINGS

BIG = LAZY_BLOB_BYTES + 1024


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def big_bytes(seed: int) -> bytes:
    return random.Random(seed).randbytes(BIG)


def objects_bytes(copy: Path) -> int:
    return sum(p.stat().st_size for p in (copy / ".git" / "objects").rglob("*") if p.is_file())


def make(url: str, copy: Path, name: str, **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    kw.setdefault("wait_for_running", False)
    return worker_from_url(url, path=copy, name=name, **kw)


def run_job(worker, job: str, files: dict[str, bytes]) -> None:
    assert worker.get_next_job(lambda: job) == job
    folder = Path(worker.job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    worker.finish_job()


def test_a_new_worker_leaves_other_jobs_large_files_on_the_remote(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    with make(str(bare), tmp_path / "copy-a", "a") as a:
        run_job(a, "one", {"model.bin": big_bytes(1), "log.txt": b"one\n"})
        run_job(a, "two", {"model.bin": big_bytes(2), "log.txt": b"two\n"})
    copy = tmp_path / "copy-b"
    with make(f"file://{bare}", copy, "b") as b:
        assert objects_bytes(copy) < BIG  # neither model was downloaded
        run_job(b, "three", {"log.txt": b"three\n"})
        assert objects_bytes(copy) < BIG
        # the small files came along: the ledgers and logs read as before (from the
        # commit the worker's view shows: the view itself holds only its own job)
        assert git("show", f"{b.copy.head()}:updates/one/log.txt", cwd=copy) == "one\n"
    # a worker on the remote's path makes a local clone, which links every object:
    # nothing to leave behind, and git does not filter it
    with make(str(bare), tmp_path / "copy-c", "c") as c:
        assert objects_bytes(Path(c.path)) > 2 * BIG
        assert not list((Path(c.path) / ".git" / "objects" / "pack").glob("*.promisor"))
    # the finish that did not have the models did not lose them
    for job, seed in (("one", 1), ("two", 2)):
        shown = subprocess.run(["git", "show", f"main:updates/{job}/model.bin"], cwd=bare,
                               capture_output=True, check=True).stdout
        assert hashlib.sha256(shown).digest() == hashlib.sha256(big_bytes(seed)).digest()
    assert "three" in git("show", "main:done.txt", cwd=bare)


def retry_gets_its_checkpoint(first_url: str, second_url: str, tmp_path: Path) -> None:
    with make(first_url, tmp_path / "copy-a", "a") as a:
        assert a.get_next_job(lambda: "long") == "long"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "checkpoint.pt").write_bytes(big_bytes(7))
        a.commit_update()
        a.fail_job("the machine went away")
    copy = tmp_path / "copy-b"
    with make(second_url, copy, "b") as b:
        assert objects_bytes(copy) < BIG
        assert b.get_next_job(lambda: None) == "long"
        # fetched by git at the checkout, from the remote, for this job only
        assert (Path(b.job_dir) / "checkpoint.pt").read_bytes() == big_bytes(7)
        b.finish_job()


def test_a_retried_job_finds_its_large_checkpoint_on_disk(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    retry_gets_its_checkpoint(str(bare), f"file://{bare}", tmp_path)


@pytest.mark.hosted
@pytest.mark.parametrize("kind", ["http_remote", "ssh_remote"])
def test_a_retried_job_fetches_its_checkpoint_from_a_hosted_remote(request, tmp_path, kind):
    url, path = request.getfixturevalue(kind)
    assert not advice(url).ok  # the server's git defaults serve no filters
    for key in PARTIAL_CLONE_SETTINGS:
        git("--git-dir", str(path), "config", key, "true")
    assert advice(url).ok  # `distribute doctor` tells
    init_remote(url)
    # over HTTP the password is only in the URL given to the worker: git's own fetch of
    # the missing file must get it from the worker's process, never from a file
    retry_gets_its_checkpoint(url, url, tmp_path)
    password = urlsplit(url).password
    if password:
        assert password not in (tmp_path / "copy-b" / ".git" / "config").read_text()


def advice(url: str):
    return {c.name: c for c in diagnose(url)}["partial clones"]


def test_a_remote_that_allows_no_filters_is_cloned_whole(tmp_path):
    bare = make_bare_remote(tmp_path / "plain.git")  # git's defaults: no filters served
    init_remote(bare)
    with make(str(bare), tmp_path / "copy-a", "a") as a:
        run_job(a, "one", {"model.bin": big_bytes(1)})
    copy = tmp_path / "copy-b"
    with make(f"file://{bare}", copy, "b") as b:
        assert objects_bytes(copy) > BIG
        run_job(b, "two", {"log.txt": b"two\n"})
    assert "two" in git("show", "main:done.txt", cwd=bare)


def missing_in(copy: Path, commit: str) -> set[str]:
    """The objects reachable from ``commit`` that ``copy`` does not have (a partial
    clone's promised objects), without fetching any."""
    out = git("rev-list", "--objects", "--missing=print", commit, cwd=copy)
    return {line[1:] for line in out.splitlines() if line.startswith("?")}


def test_a_new_worker_downloads_no_small_file_of_the_history_only_what_it_needs(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    with make(str(bare), tmp_path / "copy-a", "a") as a:
        for job in ("one", "two", "three"):
            run_job(a, job, {"log.txt": f"{job} printed this\n".encode()})
    joined = git("rev-parse", "main", cwd=bare).strip()
    logs = {job: git("rev-parse", f"main:updates/{job}/log.txt", cwd=bare).strip()
            for job in ("one", "two", "three")}
    copy = tmp_path / "copy-b"
    with make(f"file://{bare}", copy, "b") as b:
        run_job(b, "four", {"log.txt": b"four\n"})
        # the history's small files stayed on the remote: b never needed them
        assert set(logs.values()) <= missing_in(copy, joined)
        with make(str(bare), tmp_path / "copy-a", "a") as a:
            run_job(a, "five", {"log.txt": b"five printed this\n"})
        # files that land later come with the fetches, as before (the ledgers each look
        # reads among them): after b's next look, the new log is here
        assert b.get_next_job(lambda: None) is None
        five = git("rev-parse", "main:updates/five/log.txt", cwd=bare).strip()
        assert five not in missing_in(copy, git("rev-parse", "main", cwd=bare).strip())
    assert "four" in git("show", "main:done.txt", cwd=bare)
