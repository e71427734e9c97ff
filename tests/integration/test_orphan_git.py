"""A git command that outlived its worker (the worker was killed with SIGKILL, which does
not reach git) is stopped when a worker opens that copy again, before git's lock files
are removed: the two would otherwise race in one repository."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from distribute.dist import worker_from_url
from distribute.orphans import kill_git_left_in
from distribute.remote import init_remote

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/environ").exists(),
    reason="finds processes through /proc",
)


def orphan_git(git_dir: Path) -> subprocess.Popen[bytes]:
    """A long git command running in ``git_dir`` as a worker runs git there (GIT_DIR in
    its environment), which holds git's index lock the whole time."""
    env = {"PATH": "/usr/bin:/bin", "GIT_DIR": str(git_dir.resolve())}
    script = f"touch {git_dir}/index.lock; sleep 60"
    return subprocess.Popen(["git", "-c", f"alias.slow=!sh -c '{script}'", "slow"], env=env,
                            start_new_session=True)


def wait_for(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_reopening_a_copy_stops_the_git_its_dead_worker_left_running(tmp_path):
    remote = tmp_path / "remote.git"
    init_remote(remote, jobs=["j"])
    copy = tmp_path / "copy"
    worker_from_url(str(remote), path=copy, name="w").close()
    git_dir = copy / ".git"
    orphan = orphan_git(git_dir)
    try:
        wait_for(lambda: (git_dir / "index.lock").exists(), "the orphan took the index lock")
        with worker_from_url(str(remote), path=copy, name="w") as worker:
            assert orphan.wait(timeout=30) == -9  # stopped before the copy was touched
            assert worker.get_next_job(lambda w: "j") == "j"
            worker.finish_job()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_only_processes_of_that_copy_are_stopped(tmp_path):
    mine, other = tmp_path / "mine.git", tmp_path / "other.git"
    for folder in (mine, other):
        subprocess.run(["git", "init", "-q", "--bare", str(folder)], check=True, timeout=30)
    theirs = orphan_git(other)
    try:
        wait_for(lambda: (other / "index.lock").exists(), "the other git took its lock")
        assert kill_git_left_in(mine) == []
        assert theirs.poll() is None
        found = kill_git_left_in(other)  # git, and the shell and sleep of its alias
        assert theirs.pid in found and theirs.wait(timeout=30) == -9
    finally:
        if theirs.poll() is None:
            theirs.kill()
        theirs.wait(timeout=30)
