"""Workers of one machine share their peeks at a remote, over real git (the mechanism
itself: tests/unit/test_shared_peeks.py)."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from distribute.core.lock import LockState, lock_message
from distribute.core.names import LOCK_REF
from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import QueueJobs


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.daemon
def test_workers_waiting_on_one_machine_share_their_peeks(daemon, tmp_path):
    """Two workers on a git:// remote wait while another holds the lock: their peeks at
    the refs are shared, and both still claim once the lock is free.  A worker on the
    remote's path peeks by reading its ref files and shares nothing; one on its
    file:// URL asks git, and shares."""
    url, bare = daemon
    init_remote(url)
    add_jobs(url, ["a", "b"])
    lock = git("--git-dir", str(bare), "rev-parse", LOCK_REF)
    held = LockState(token=7, holder="someone", session="s")
    commit = git("--git-dir", str(bare), "commit-tree", "-p", lock, "-m", lock_message(held),
                 git("--git-dir", str(bare), "rev-parse", f"{lock}^{{tree}}"))
    git("--git-dir", str(bare), "update-ref", LOCK_REF, commit, lock)
    workers = [worker_from_url(url, path=tmp_path / f"copy-{n}", name=n, lease_seconds=60,
                               poll_seconds=0.05, heartbeat=False) for n in ("w1", "w2")]
    with worker_from_url(str(bare), path=tmp_path / "copy-p", name="p",
                         heartbeat=False) as by_path:
        assert by_path._shared_peeks is None  # it reads the remote's ref files
    # a file:// URL is reached through git's pack protocol: its peeks ask git, and share
    with worker_from_url(bare.as_uri(), path=tmp_path / "copy-f", name="f",
                         heartbeat=False) as by_url:
        assert by_url._shared_peeks is not None
    got: dict[str, str | None] = {}
    threads = [threading.Thread(target=lambda w=w: got.update({w.name: w.get_next_job(
        QueueJobs())})) for w in workers]
    for t in threads:
        t.start()
    time.sleep(2.0)  # both watch the held lock with peeks
    free = git("--git-dir", str(bare), "commit-tree", "-p", commit, "-m",
               lock_message(held.released()), git("--git-dir", str(bare), "rev-parse",
                                                  f"{commit}^{{tree}}"))
    git("--git-dir", str(bare), "update-ref", LOCK_REF, free, commit)
    for t in threads:
        t.join(60)
    assert sorted(got.values()) == ["a", "b"]
    stats = [w.coord.stats.extra for w in workers]
    for w in workers:
        w.finish_job()
        w.close()
    assert sum(s.get("shared_peeks", 0) for s in stats) > 0, stats
    assert sum(s.get("peeks", 0) for s in stats) > 0, stats
