"""Workers of one machine share their peeks at a remote (``distribute.shared_peeks``)."""

from __future__ import annotations

import stat
import threading
import time

from distribute.shared_peeks import SharedPeeks

URL = "https://user:hunter2@git.example.com/me/runs.git"
REFS = {"refs/distribute/lock": "a" * 40, "refs/distribute/workers/w1": "b" * 40}


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



def test_a_peek_held_up_too_long_elsewhere_is_made_here(tmp_path, monkeypatch):
    """The wait for another worker's peek is bounded (PEEK_WAIT_SECONDS): past it, this
    worker asks the remote itself rather than wait on, say, a process stopped mid-peek."""
    import filelock

    import distribute.shared_peeks as shared_peeks

    monkeypatch.setattr(shared_peeks, "PEEK_WAIT_SECONDS", 0.2)
    shared = SharedPeeks(URL, "main", folder=tmp_path)
    remote = Remote(REFS)
    with filelock.FileLock(str(shared.path) + ".lock"):  # held by someone else
        got: list[tuple[dict[str, str], bool]] = []
        asker = threading.Thread(target=lambda: got.append(shared.get(remote.peek, 1.0)))
        asker.start()
        asker.join(5)
    assert got == [(REFS, True)] and remote.calls == 1
    assert not shared.path.exists()  # not under the lock: nothing written for others
