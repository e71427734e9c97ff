"""Bounded waiting: a worker returns or claims promptly once there is a reason to.

Each test runs a real worker against a real bare repository, with a fake monotonic clock
whose ``sleep`` moves time on and plays what other workers do at given moments (their lock
holdings, finishes and exits are written with git plumbing).  Bounds are asserted in that
model time, so they hold however loaded the machine is.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from distribute.core.lock import Beat, LockState, beat_message, lock_message
from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import QueueJobs, queue_jobs_func


def git(*args: str, cwd: Path, input: str | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


def commit(remote: Path, message: str, parent: str | None = None) -> str:
    tree = git("mktree", cwd=remote, input="")
    args = ["commit-tree", tree] + (["-p", parent] if parent else [])
    return git(*args, cwd=remote, input=message)


def set_lock(remote: Path, state: LockState) -> None:
    old = git("rev-parse", "refs/distribute/lock", cwd=remote)
    git("update-ref", "refs/distribute/lock", commit(remote, lock_message(state), old), old,
        cwd=remote)


def lock_state(remote: Path) -> LockState:
    from distribute.core.lock import parse_lock_message

    return parse_lock_message(git("log", "-1", "--format=%B", "refs/distribute/lock", cwd=remote))


def set_beat(remote: Path, beat: Beat) -> None:
    git("update-ref", f"refs/distribute/workers/{beat.worker}",
        commit(remote, beat_message(beat)), cwd=remote)


class Script:
    """A fake clock whose sleep runs the actions due meanwhile (``at(t, action)``)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.actions: list[tuple[float, Callable[[], None]]] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.actions.append((when, action))
        self.actions.sort(key=lambda pair: pair[0])

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        while self.actions and self.actions[0][0] <= self.now:
            self.actions.pop(0)[1]()


def make(remote: Path, tmp_path: Path, script: Script, name: str = "w", **kw):
    kw.setdefault("lease_seconds", 60)
    kw.setdefault("poll_seconds", 0.1)
    kw.setdefault("max_poll_seconds", 1.0)
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name,
                           clock=script.clock, sleep=script.sleep, heartbeat=False, **kw)


def plain_queue(worker):
    """The original project's style of next-job function: not marked repo-only, so it
    runs under the lock."""
    return QueueJobs()(worker)


@pytest.mark.parametrize("function", [queue_jobs_func, plain_queue], ids=["repo-only", "plain"])
def test_a_waiter_behind_others_claims_soon_after_a_held_lock_is_released(
        remote, tmp_path, function):
    """The lease-long stall users saw: a worker waits on a held lock while another idle
    worker is ahead of it in turn; the holder releases.  The waiter must notice the free
    lock and claim within a few polls, not wait until the released lock looks expired
    (a lease plus the margin: 66 s here)."""
    add_jobs(str(remote), ["a"])
    set_beat(remote, Beat(worker="ahead", session="s"))  # idle, never claimed: first in turn
    token = lock_state(remote).token
    set_lock(remote, LockState(token=token + 1, holder="x", session="sx"))
    script = Script()
    main = git("rev-parse", "main", cwd=remote)
    script.at(1.0, lambda: set_lock(remote, LockState(token=token + 1, main=main, last="x")))
    with make(remote, tmp_path, script) as w:
        assert w.get_next_job(function) == "a"
        claimed_at = script.now
    assert claimed_at < 5.0, f"claimed only at {claimed_at:.1f} s of model time"


def test_a_worker_that_said_it_is_gone_is_not_waited_for(remote, tmp_path):
    """A liveness record that says its worker left (it returned None, was closed or its
    process exited) does not count in turn: the waiter behind it tries at once."""
    add_jobs(str(remote), ["a"])
    set_beat(remote, Beat(worker="ahead", session="s", gone=True))
    script = Script()
    with make(remote, tmp_path, script) as w:
        assert w.get_next_job(queue_jobs_func) == "a"
    assert script.now == 0.0, f"waited {script.slept} for a worker that left"


def test_the_same_record_not_gone_is_waited_for(remote, tmp_path):
    """The control for the test above: a silent record that did not say it left costs
    the waiter a few turns."""
    add_jobs(str(remote), ["a"])
    set_beat(remote, Beat(worker="ahead", session="s"))
    script = Script()
    with make(remote, tmp_path, script) as w:
        assert w.get_next_job(queue_jobs_func) == "a"
    assert script.now > 0.0


def beat_of(remote: Path, worker: str) -> Beat:
    from distribute.core.lock import parse_beat_message

    ref = f"refs/distribute/workers/{worker}"
    return parse_beat_message(git("log", "-1", "--format=%B", ref, cwd=remote))


def test_returning_none_and_closing_say_gone(remote, tmp_path):
    script = Script()
    w = make(remote, tmp_path, script)
    try:
        assert w.get_next_job(queue_jobs_func) is None
        assert beat_of(remote, "w").gone
        add_jobs(str(remote), ["a"])
        assert w.get_next_job(queue_jobs_func) == "a"  # back: a live record again
        assert not beat_of(remote, "w").gone
        w.finish_job()
    finally:
        w.close()
    assert beat_of(remote, "w").gone
    import json
    import sys

    status = subprocess.run([sys.executable, "-m", "distribute", "status", str(remote), "--json"],
                            capture_output=True, text=True, check=True, timeout=120)
    assert [(w["name"], w["gone"]) for w in json.loads(status.stdout)["workers"]] == [("w", True)]


def test_a_script_that_never_closes_its_worker_says_gone_at_exit(remote, tmp_path):
    code = (
        "import sys\n"
        "from distribute.dist import worker_from_url\n"
        "w = worker_from_url(sys.argv[1], path=sys.argv[2], name='forgetful')\n"
        "assert w.get_next_job(lambda: 'a') == 'a'\n"
        "w.commit_update()\n"
    )
    import sys

    subprocess.run([sys.executable, "-c", code, str(remote), str(tmp_path / "copy")],
                   check=True, timeout=120)
    assert beat_of(remote, "forgetful").gone
    running = git("show", "main:running.txt", cwd=remote)
    # its job was given back as interrupted, for anyone to take at once
    assert running.startswith("a\tworker=\t") and "interrupted=1" in running


def abandon(w) -> None:
    """Leave a worker as ``kill -9`` leaves it: nothing more is written to the remote, and
    the local copy is free for the next process."""
    import atexit

    w._stop.set()
    atexit.unregister(w._at_exit)
    w._closed = True
    w._filelock.release()


def test_a_job_closed_midway_is_taken_at_once_and_resumes_from_its_files(remote, tmp_path):
    add_jobs(str(remote), ["a"])
    script = Script()
    first = make(remote, tmp_path, script, name="first")
    assert first.get_next_job(queue_jobs_func) == "a"
    Path(first.job_dir).mkdir(parents=True)
    Path(first.job_dir, "checkpoint.txt").write_text("epoch 7\n")
    first.close()  # e.g. the script raised; the with-block closed the worker
    second = make(remote, tmp_path, script, name="second")
    try:
        assert second.get_next_job(queue_jobs_func) == "a"
        assert script.now < 1.0  # no lease waited
        assert second.attempt == 2 and second.resumed_from is not None
        assert Path(second.job_dir, "checkpoint.txt").read_text() == "epoch 7\n"
        second.finish_job()
    finally:
        second.close()
    done = git("show", "main:done.txt", cwd=remote)
    assert done.startswith("a\tworker=second\t") and "attempt=2" in done


def test_resume_can_be_turned_off(remote, tmp_path):
    add_jobs(str(remote), ["a"])
    script = Script()
    with make(remote, tmp_path, script, name="first") as first:
        assert first.get_next_job(queue_jobs_func) == "a"
        Path(first.job_dir).mkdir(parents=True)
        Path(first.job_dir, "checkpoint.txt").write_text("epoch 7\n")
        assert first.fail_job("boom") == "retry"
    with make(remote, tmp_path, script, name="second", resume=False) as second:
        assert second.get_next_job(queue_jobs_func) == "a"
        assert second.resumed_from is None
        assert not Path(second.job_dir, "checkpoint.txt").exists()
        second.finish_job()


def test_a_killed_worker_restarts_at_once_saving_and_resuming_what_its_job_wrote(
        remote, tmp_path):
    """kill -9 while the job had written files: the same worker started again neither
    refuses the copy nor waits a lease.  The files are committed to the dead attempt's
    branch, and the next attempt starts with them; the dead attempt counts as
    interrupted, not failed."""
    add_jobs(str(remote), ["a"])
    script = Script()
    dead = make(remote, tmp_path, script, name="w1", max_attempts=1)
    assert dead.get_next_job(queue_jobs_func) == "a"
    first_branch = dead.job_branch
    Path(dead.job_dir).mkdir(parents=True)
    Path(dead.job_dir, "log.txt").write_text("half way\n")
    abandon(dead)
    with make(remote, tmp_path, script, name="w1", max_attempts=1) as again:
        assert again.get_next_job(queue_jobs_func) == "a"
        assert script.now < 1.0
        assert again.attempt == 2 and again.resumed_from == first_branch
        assert Path(again.job_dir, "log.txt").read_text() == "half way\n"
        again.finish_job()
    # the dead attempt's commit is in the main branch's history (its branch, merged,
    # may be gone: the restarted worker deletes the branches of its earlier life's
    # finished jobs)
    saved = git("show", "main^{/what attempt 1 of a left when its worker died}:"
                "updates/a/log.txt", cwd=remote)
    assert saved == "half way"
    done = git("show", "main:done.txt", cwd=remote)
    assert "attempt=2" in done and "interrupted=1" in done


def test_files_outside_the_job_folder_still_stop_a_restart(remote, tmp_path):
    from distribute.core.errors import DirtyWorkingTree

    add_jobs(str(remote), ["a"])
    script = Script()
    dead = make(remote, tmp_path, script, name="w1")
    assert dead.get_next_job(queue_jobs_func) == "a"
    Path(dead.path, "stray.txt").write_text("mine\n")
    abandon(dead)
    with make(remote, tmp_path, script, name="w1") as again, \
            pytest.raises(DirtyWorkingTree, match="stray.txt"):
        again.get_next_job(queue_jobs_func)


def test_a_finish_cut_off_by_the_network_is_completed_by_the_restart(remote, tmp_path):
    """The job ran to the end, but its finish could not reach the remote and the process
    gave up.  Started again, the worker completes that finish: the job is not run again."""
    from distribute.core.errors import TransportError

    add_jobs(str(remote), ["a", "b"])
    script = Script()
    dead = make(remote, tmp_path, script, name="w1", retry_seconds=0)
    assert dead.get_next_job(queue_jobs_func) == "a"
    Path(dead.job_dir).mkdir(parents=True)
    Path(dead.job_dir, "result.txt").write_text("42\n")

    def unreachable(*args, **kwargs):
        raise TransportError("the remote is unreachable")

    dead.coord._finish_try = unreachable
    with pytest.raises(TransportError):
        dead.finish_job()
    abandon(dead)
    calls = []

    def counting(worker):
        calls.append(1)
        return queue_jobs_func(worker)

    with make(remote, tmp_path, script, name="w1") as again:
        assert again.get_next_job(counting) == "b"
        again.finish_job()
    done = git("show", "main:done.txt", cwd=remote)
    assert done.splitlines()[0].startswith("a\tworker=w1\t") and "attempt=1" in done
    assert git("show", "main:updates/a/result.txt", cwd=remote) == "42"


def test_an_idle_worker_beside_a_long_job_looks_a_few_times_a_minute(remote, tmp_path):
    """The request budget: while another worker's job runs (its holder renews its record),
    an idle worker with the default lease may look often at first, but once it has waited
    20 s it makes at most four looks at the remote a minute."""
    from distribute.core.lock import Beat

    add_jobs(str(remote), ["long"])
    script = Script()
    looks: list[float] = []
    with make(remote, tmp_path, script, name="x", lease_seconds=120) as x:
        assert x.get_next_job(queue_jobs_func) == "long"
        for t in range(30, 400, 30):  # x's heartbeat, as its thread would renew it
            script.at(t, lambda t=t: set_beat(remote, Beat(worker="x", session="live", seq=t,
                                                           jobs=("long",))))
        script.at(390.0, x.finish_job)
        w = make(remote, tmp_path, script, name="w", lease_seconds=120,
                 max_poll_seconds=None)
        w.max_poll_seconds = 5.0  # the defaults for a 120 s lease
        observe, peek = w.coord.observe, w.coord.peek

        def counted(step):
            def look():
                looks.append(script.now)
                return step()
            return look

        w.coord.observe, w.coord.peek = counted(observe), counted(peek)
        try:
            assert w.get_next_job(queue_jobs_func) is None
        finally:
            w.close()
    late = [t for t in looks if 20.0 <= t < 380.0]
    per_minute = len(late) / (360.0 / 60.0)
    assert per_minute <= 4.0, f"{per_minute:.1f} looks a minute: {late}"
    assert looks and max(looks) >= 390.0  # and it saw the end


def test_a_restarted_worker_that_finds_no_job_still_says_gone(remote, tmp_path):
    """The restart's first record write is its goodbye: it must replace the record its
    killed earlier life left, or the others count the dead life as idle for a lease."""
    add_jobs(str(remote), ["a"])
    script = Script()
    first = make(remote, tmp_path, script, name="w1")
    assert first.get_next_job(queue_jobs_func) == "a"
    first.finish_job()
    abandon(first)
    assert not beat_of(remote, "w1").gone
    with make(remote, tmp_path, script, name="w1") as again:
        assert again.get_next_job(queue_jobs_func) is None
        assert beat_of(remote, "w1").gone
