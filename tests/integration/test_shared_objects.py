"""Workers of one machine share one object store for a remote (distribute.transport.shared_objects):
real clones over file:// (so that objects travel as packs, as over a network) and the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cli_run import PY, ok, run

from distribute.dist import worker_from_url
from distribute.sources import QueueJobs
from distribute.transport.shared_objects import (
    STORE_NAME,
    missing_alternates,
    refresh_shared_objects,
)

MB = 1_000_000


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def heavy(tmp_path):
    """A remote with three jobs queued and 3 MB of earlier results on its main branch."""
    remote = tmp_path / "remote.git"
    ok(tmp_path, "init", remote, "a", "b", "c")
    work = tmp_path / "seed"
    git("clone", "-q", str(remote), str(work))
    for i in range(3):
        folder = work / "updates" / f"old{i}"
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(os.urandom(MB))
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "old results", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    return remote


def cache_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "cache" / "distribute").iterdir()
    return folder


def test_a_second_worker_borrows_the_history_instead_of_downloading_it(tmp_path, heavy):
    url = f"file://{heavy}"
    for name in ("w1", "w2"):
        ok(tmp_path, "work", url, "--name", name, "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    store = folder / STORE_NAME
    assert size(store / "objects") > 3 * MB
    for name in ("w1", "w2"):
        objects = folder / name / ".git" / "objects"
        assert size(objects) < MB // 2, f"{name} keeps {size(objects)} bytes of objects"
        assert (objects / "info" / "alternates").read_text().strip() == str(store / "objects")
        # and git finds every object of the history through the store
        git("fsck", "--connectivity-only", "--no-dangling", cwd=folder / name)


def test_a_copy_whose_store_was_deleted_says_to_delete_it_and_then_works_again(tmp_path, heavy):
    url = f"file://{heavy}"
    ok(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    for path in sorted((folder / STORE_NAME).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder / STORE_NAME).rmdir()
    assert missing_alternates(folder / "w1" / ".git") == [str(folder / STORE_NAME / "objects")]
    failed = run(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    assert failed.returncode == 1
    assert "no longer exists" in failed.stderr and "delete the copy's folder" in failed.stderr
    subprocess.run(["rm", "-rf", str(folder / "w1")], check=True, timeout=60)
    ok(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    assert (folder / STORE_NAME / "objects").is_dir()


def test_a_copy_at_a_path_of_the_users_choice_borrows_nothing(tmp_path, heavy):
    copy = tmp_path / "mine"
    ok(tmp_path, "work", f"file://{heavy}", "--path", copy, "--max-jobs", "1", "--", PY, "-c",
       "pass")
    assert not (copy / ".git" / "objects" / "info" / "alternates").exists()
    # its own objects: the history's commits and trees, in a partial clone that left
    # the earlier results on the remote (no file of the history comes with a clone)
    assert list((copy / ".git" / "objects" / "pack").glob("*.promisor"))
    assert 0 < size(copy / ".git" / "objects") < MB


def test_the_store_of_an_empty_remote_gives_nothing_to_borrow_and_keeps_every_object(tmp_path):
    remote = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(remote))
    store = tmp_path / "store"
    with refresh_shared_objects(f"file://{remote}", store) as got:
        assert got is None
    assert git("--git-dir", str(store), "config", "gc.auto").strip() == "0"
    assert git("--git-dir", str(store), "config", "gc.pruneExpire").strip() == "never"


def test_the_python_api_shares_objects_too(tmp_path, heavy):
    store = tmp_path / "shared"
    worker = worker_from_url(f"file://{heavy}", tmp_path / "copy", "w1", shared_objects=store)
    try:
        assert worker.get_next_job(QueueJobs()) == "a"
        worker.finish_job()
    finally:
        worker.close()
    assert size(tmp_path / "copy" / ".git" / "objects") < MB // 2
    assert size(store / "objects") > 3 * MB


def test_clean_removes_the_store_with_the_last_copy_that_borrows_from_it(tmp_path, heavy):
    url = f"file://{heavy}"
    ok(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    dry = ok(tmp_path, "clean", "--dry-run").stdout
    assert f"would remove {folder / STORE_NAME}" in dry and (folder / STORE_NAME).is_dir()
    ok(tmp_path, "work", url, "--name", "w2", "--max-jobs", "1", "--", PY, "-c", "pass")
    # a copy that still borrows keeps the store: here w2, kept for a job to resume
    (folder / "w2" / ".git" / "distribute-job.json").write_text("{}")
    kept = ok(tmp_path, "clean", "--keep-running-jobs").stdout
    assert not (folder / "w1").exists() and (folder / STORE_NAME).is_dir(), kept
    ok(tmp_path, "clean")
    assert not (folder / "w2").exists() and not (folder / STORE_NAME).exists()
    ok(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")


@pytest.mark.hosted
def test_workers_over_http_with_a_password_share_the_store_and_write_no_secret(
    http_remote, tmp_path
):
    url, _ = http_remote
    password = url.split("@", 1)[0].rsplit(":", 1)[1]
    ok(tmp_path, "init", url, "a", "b")
    for name in ("w1", "w2"):
        ok(tmp_path, "work", url, "--name", name, "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    assert (folder / STORE_NAME / "objects").is_dir()
    for name in ("w1", "w2"):
        alternates = folder / name / ".git" / "objects" / "info" / "alternates"
        assert alternates.read_text().strip() == str(folder / STORE_NAME / "objects")
    leaked = [p for p in (tmp_path / "cache").rglob("*")
              if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_remote_given_as_a_path_gets_no_store(tmp_path, heavy):
    ok(tmp_path, "work", heavy, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    assert not (folder / STORE_NAME).exists()  # the clone hard-links the remote's objects
    assert not (folder / "w1" / ".git" / "objects" / "info" / "alternates").exists()


def test_a_copy_that_borrows_objects_is_never_written_to_a_path_remote_directly(tmp_path, heavy):
    from distribute.transport.git import DirectGitTransport, open_transport
    from distribute.transport.local_copy import GitLocalCopy

    with refresh_shared_objects(f"file://{heavy}", tmp_path / "store") as store:
        copy = GitLocalCopy.clone(str(heavy), tmp_path / "copy", reference=store)
    try:
        # the in-process object reader of direct writes does not follow alternates
        with open_transport(copy.path, str(heavy)) as t:
            assert not isinstance(t, DirectGitTransport)
        with open_transport(copy.path, str(heavy), direct=False) as t:
            assert t.fetch(["refs/heads/main"])
    finally:
        copy.close()


def test_a_store_whose_making_was_cut_short_is_made_again(tmp_path, heavy):
    store = tmp_path / "store"
    git("init", "-q", "--bare", str(store))  # no settings: a making killed after git init
    with refresh_shared_objects(f"file://{heavy}", store) as got:
        assert got == store
    assert git("--git-dir", str(store), "config", "gc.pruneExpire").strip() == "never"
    assert not store.with_name("store.new").exists()


def test_a_store_locked_for_too_long_is_not_waited_for(tmp_path, heavy):
    from distribute.transport.shared_objects import store_lock

    store = tmp_path / "store"
    other = store_lock(store)
    other.acquire()
    try:
        with refresh_shared_objects(f"file://{heavy}", store, timeout=0.2) as got:
            assert got is None  # the clone then goes its own way
    finally:
        other.release()


def test_clean_keeps_a_store_that_a_copy_made_again_meanwhile_borrows_from(tmp_path, heavy):
    from distribute.cli import _drop_unborrowed_store

    url = f"file://{heavy}"
    ok(tmp_path, "work", url, "--name", "w1", "--max-jobs", "1", "--", PY, "-c", "pass")
    folder = cache_folder(tmp_path)
    # clean removed w1, and a worker cloned w1 again before clean reached the store
    assert _drop_unborrowed_store(folder / STORE_NAME, {folder / "w1"}) is None
    assert (folder / STORE_NAME).is_dir()
    # a dry run counts the copies it would remove as gone
    assert _drop_unborrowed_store(folder / STORE_NAME, {folder / "w1"}, dry_run=True)
    assert (folder / STORE_NAME).is_dir()
