"""Large result files through Git LFS (real git, real git-lfs).

The experiment's ``.gitattributes`` on the main branch routes ``*.pt`` through LFS.
A job's checkpoint then lands on the main branch as a pointer, its content on the LFS
server, uploaded by the worker before the commit that points at it is pushed (git's
own pre-push hook never runs for a worker).  A retried job gets its checkpoint back
as a file; a worker running another job never downloads it.  Over a remote given as a
path, git-lfs keeps the contents in the bare repository's ``lfs/objects``; over HTTP,
in the LFS server the tests run beside ``git http-backend`` (``tests/lfs_cgi.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from distribute.core.errors import FileTooLarge
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.transport import local_copy
from distribute.transport.lfs import git_lfs_installed, parse_pointer


@pytest.fixture(autouse=True)
def _git_lfs() -> None:
    """Skip without git-lfs, except under CI, which installs it (``.ci/run``)."""
    if not git_lfs_installed():
        if os.environ.get("CI"):
            pytest.fail("git-lfs is not installed -- CI is set, and CI must provide it")
        pytest.skip("git-lfs is not installed (apt-get install git-lfs)")


ATTRIBUTES = "*.pt filter=lfs diff=lfs merge=lfs -text\n"
LIMIT = 1_000_000  # max_file_bytes of these workers: each .pt below is over it


def git(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                          check=True).stdout


def route_through_lfs(url: str, scratch: Path) -> None:
    """Commit ``.gitattributes`` with ``*.pt`` through LFS onto the remote's main branch,
    as a user does once with ``git lfs track`` in a clone of their experiment."""
    clone = scratch / "setup"
    git("clone", "--quiet", "--", url, str(clone), cwd=scratch)
    (clone / ".gitattributes").write_text(ATTRIBUTES)
    git("add", ".gitattributes", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "lfs",
        cwd=clone)
    git("push", "--quiet", "origin", "HEAD:main", cwd=clone)


def content(seed: int, size: int = 2 * LIMIT) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make(url: str, copy: Path, name: str, **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    kw.setdefault("wait_for_running", False)
    kw.setdefault("max_file_bytes", LIMIT)
    return worker_from_url(url, path=copy, name=name, **kw)


def pointer_on_main(bare: Path, path: str):
    pointer = parse_pointer(git("show", f"main:{path}", cwd=bare))
    assert pointer is not None, f"main:{path} is not an LFS pointer"
    return pointer


def lfs_objects_of(copy: Path) -> set[str]:
    return {p.name for p in (copy / ".git" / "lfs" / "objects").rglob("*") if p.is_file()}


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    route_through_lfs(str(bare), tmp_path)
    return bare


def test_a_checkpoint_lands_as_a_pointer_and_its_content_beside_the_remote(remote, tmp_path):
    data = content(1)
    with make(str(remote), tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "train") == "train"
        folder = Path(a.job_dir)
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(data)  # over max_file_bytes, but routed: allowed
        (folder / "log.txt").write_text("loss 0.1\n")
        a.finish_job()
    pointer = pointer_on_main(remote, "updates/train/model.pt")
    assert (pointer.oid, pointer.size) == (sha(data), len(data))
    kept = remote / "lfs" / "objects" / pointer.oid[:2] / pointer.oid[2:4] / pointer.oid
    assert kept.read_bytes() == data
    # plain files are untouched
    assert git("show", "main:updates/train/log.txt", cwd=remote) == b"loss 0.1\n"


def test_a_retried_job_gets_its_checkpoint_back_and_others_never_download_it(
    remote, tmp_path
):
    data = content(2)
    with make(str(remote), tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "long") == "long"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "ckpt.pt").write_bytes(data)
        assert a.commit_update()
        a.fail_job("preempted")
    with make(str(remote), tmp_path / "b", "b") as b:
        assert b.get_next_job(lambda: None) == "long"
        assert (Path(b.job_dir) / "ckpt.pt").read_bytes() == data
        b.finish_job()
    with make(str(remote), tmp_path / "c", "c") as c:
        assert c.get_next_job(lambda: "other") == "other"
        assert not (tmp_path / "c" / "updates" / "long").exists()
        c.finish_job()
    assert sha(data) not in lfs_objects_of(tmp_path / "c")


def test_each_checkpoint_leaves_the_workers_disk_once_uploaded(remote, tmp_path):
    epochs = [content(10 + epoch) for epoch in range(3)]
    with make(str(remote), tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "train") == "train"
        ckpt = Path(a.job_dir) / "ckpt.pt"
        ckpt.parent.mkdir(parents=True)
        for data in epochs:
            ckpt.write_bytes(data)
            assert a.commit_update()
            # on the remote's LFS store, not twice on this disk
            assert sha(data) not in lfs_objects_of(tmp_path / "a")
            assert a.copy.changed_paths() == []
        a.finish_job()
    assert pointer_on_main(remote, "updates/train/ckpt.pt").oid == sha(epochs[-1])
    store = remote / "lfs" / "objects"
    assert {sha(data) for data in epochs} <= {p.name for p in store.rglob("*") if p.is_file()}


def test_a_large_file_not_routed_is_refused_and_the_message_names_lfs(remote, tmp_path):
    with make(str(remote), tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "j") == "j"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "model.bin").write_bytes(content(3))
        with pytest.raises(FileTooLarge, match="git lfs track") as err:
            a.commit_update()
        assert err.value.context["paths"] == ["updates/j/model.bin"]
        a.fail_job("too large")
    assert b"model.bin" not in git("ls-tree", "-r", "--name-only", "main", cwd=remote)


def test_without_git_lfs_a_routed_large_file_is_refused_with_how_to_install(
    remote, tmp_path, monkeypatch
):
    monkeypatch.setattr(local_copy, "git_lfs_installed", lambda: False)
    with make(str(remote), tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "j") == "j"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "model.pt").write_bytes(content(4))
        with pytest.raises(FileTooLarge, match="git-lfs is not installed.*Install it"):
            a.commit_update()
        a.fail_job("no git-lfs")


@pytest.mark.hosted
def test_over_http_the_content_goes_to_the_lfs_server_with_the_urls_password(
    http_lfs_server, tmp_path
):
    url, bare = http_lfs_server.remote("remote.git", init=init_remote)
    route_through_lfs(url, tmp_path)
    data = content(5)
    with make(url, tmp_path / "a", "a") as a:
        assert a.get_next_job(lambda: "train") == "train"
        Path(a.job_dir).mkdir(parents=True)
        (Path(a.job_dir) / "model.pt").write_bytes(data)
        assert a.commit_update()
        a.fail_job("preempted")
    oid = sha(data)
    assert f"put {oid}" in http_lfs_server.lfs_requests()
    stored = http_lfs_server.lfs_store / oid[:2] / oid[2:4] / oid
    assert stored.read_bytes() == data
    with make(url, tmp_path / "b", "b") as b:
        assert b.get_next_job(lambda: None) == "train"
        assert (Path(b.job_dir) / "model.pt").read_bytes() == data
        b.finish_job()
    assert f"get {oid}" in http_lfs_server.lfs_requests()
    assert pointer_on_main(bare, "updates/train/model.pt").oid == oid
    # the password is in no file of either copy
    password = http_lfs_server.password.encode()
    for copy in (tmp_path / "a", tmp_path / "b"):
        for path in (copy / ".git").rglob("*"):
            if path.is_file() and path.stat().st_size < 1_000_000:
                assert password not in path.read_bytes(), path


def test_a_worker_killed_between_its_snapshot_and_the_upload_uploads_when_restarted(
    remote, tmp_path, monkeypatch
):
    data = content(30)
    dead = make(str(remote), tmp_path / "a", "a", lease_seconds=60)
    assert dead.get_next_job(lambda: "train") == "train"
    Path(dead.job_dir).mkdir(parents=True)
    (Path(dead.job_dir) / "ckpt.pt").write_bytes(data)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # the process dies after the snapshot, before the upload

    monkeypatch.setattr(type(dead), "_upload_large", killed)
    with pytest.raises(KeyboardInterrupt):
        dead.commit_update()
    # left as kill -9 leaves it: nothing more reaches the remote
    import atexit

    dead._stop.set()
    atexit.unregister(dead._at_exit)
    dead._closed = True
    dead._filelock.release()
    monkeypatch.undo()
    oid = sha(data)
    stored = remote / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    assert not stored.exists()
    with make(str(remote), tmp_path / "a", "a", lease_seconds=60) as again:
        # taking its job back, the restart pushes the dead process's commit, content first
        assert again.get_next_job(lambda: None) == "train"
        assert stored.read_bytes() == data
        assert (Path(again.job_dir) / "ckpt.pt").read_bytes() == data
        again.finish_job()
    assert pointer_on_main(remote, "updates/train/ckpt.pt").oid == oid
