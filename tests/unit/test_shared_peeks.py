"""Workers of one machine share their peeks at a remote (``distribute.shared_peeks``)."""

from __future__ import annotations

import stat
import subprocess
import threading
import time

import pytest

from distribute.core.lock import LockState, lock_message
from distribute.core.names import LOCK_REF
from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.shared_peeks import SharedPeeks
from distribute.sources import QueueJobs

URL = "https://user:hunter2@git.example.com/me/runs.git"
REFS = {"refs/distribute/lock": "a" * 40, "refs/distribute/workers/w1": "b" * 40}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Remote:
    """Counts the peeks that reached it."""

    def __init__(self, refs: dict[str, str]) -> None:
        self.refs, self.calls = refs, 0

    def peek(self) -> dict[str, str]:
        self.calls += 1
        return dict(self.refs)


def test_a_recent_peek_by_another_worker_is_used_and_an_old_one_is_not(tmp_path):
    clock = Clock()
    one = SharedPeeks(URL, "main", folder=tmp_path, clock=clock)
    two = SharedPeeks(URL, "main", folder=tmp_path, clock=clock)
    remote = Remote(REFS)
    assert one.get(remote.peek, max_age=1.0) == (REFS, True)
    clock.now += 0.5
    assert two.get(remote.peek, max_age=1.0) == (REFS, False)  # one's answer, no peek
    assert remote.calls == 1
    clock.now += 0.6  # 1.1 s old: older than two accepts
    remote.refs = {**REFS, "refs/distribute/lock": "c" * 40}
    assert two.get(remote.peek, max_age=1.0) == (remote.refs, True)
    assert remote.calls == 2
    # a worker that peeks often accepts only a very recent answer
    clock.now += 0.2
    assert one.get(remote.peek, max_age=0.05)[1] is True


def test_other_remotes_and_branches_do_not_share(tmp_path):
    clock = Clock()
    remote = Remote(REFS)
    SharedPeeks(URL, "main", folder=tmp_path, clock=clock).get(remote.peek, 10)
    for url, branch in ((URL, "other"), ("ssh://git@host/x.git", "main")):
        assert SharedPeeks(url, branch, folder=tmp_path, clock=clock).get(remote.peek, 10)[1]
    # the password is not part of what names a remote: the same remote shares
    same = "https://user:other@git.example.com/me/runs.git"
    assert SharedPeeks(same, "main", folder=tmp_path, clock=clock).get(remote.peek, 10)[1] is False


def test_the_file_holds_refs_only_and_only_this_user_reads_the_folder(tmp_path):
    shared = SharedPeeks(URL, "main", folder=tmp_path / "peeks")
    shared.get(Remote(REFS).peek, 1.0)
    text = shared.path.read_text()
    assert "hunter2" not in text and "example.com" not in text
    assert stat.S_IMODE((tmp_path / "peeks").stat().st_mode) == 0o700


def test_a_torn_or_future_file_counts_as_absent(tmp_path):
    clock = Clock()
    shared = SharedPeeks(URL, "main", folder=tmp_path, clock=clock)
    remote = Remote(REFS)
    for text in ("{", '{"at": 1000}', '{"at": "x", "refs": {}}', '{"at": 1e9, "refs": {}}'):
        shared.path.write_text(text)
        assert shared.get(remote.peek, 10)[1] is True
    assert remote.calls == 4


def test_a_worker_waits_for_a_peek_under_way_instead_of_peeking_too(tmp_path):
    first = SharedPeeks(URL, "main", folder=tmp_path)
    second = SharedPeeks(URL, "main", folder=tmp_path)
    started, release = threading.Event(), threading.Event()
    remote = Remote(REFS)

    def slow_peek() -> dict[str, str]:
        started.set()
        release.wait(5)
        return remote.peek()

    got: list[tuple[dict[str, str], bool]] = []
    peeker = threading.Thread(target=lambda: got.append(first.get(slow_peek, 1.0)))
    peeker.start()
    assert started.wait(5)
    waiter = threading.Thread(target=lambda: got.append(second.get(remote.peek, 1.0)))
    waiter.start()
    time.sleep(0.2)
    release.set()
    peeker.join(5)
    waiter.join(5)
    assert sorted(ours for _, ours in got) == [False, True]
    assert remote.calls == 1


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
