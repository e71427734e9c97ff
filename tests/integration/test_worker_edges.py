"""Bad input and awkward states: clear errors, nothing lost, nothing written outside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from distribute.core.errors import (
    DirtyWorkingTree,
    InvalidName,
    JobAlreadyRunning,
    LeaseLost,
    LocalCopyBusy,
    MergeConflict,
    NoRunningJob,
    RemoteStateError,
    TransportError,
)
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.sources import QueueJobs


def git(*args, cwd):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def show(bare, path, rev="main"):
    return git("show", f"{rev}:{path}", cwd=bare)


@pytest.fixture
def remote(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


def make(remote, tmp_path, name="w", **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name, **kw)


def constant(job):
    return lambda: job


def test_newline_or_tab_is_refused_before_anything_is_written(remote, tmp_path):
    before = git("rev-parse", "main", "refs/distribute/lock", cwd=remote)
    with make(remote, tmp_path) as w:
        for bad in ["a\nb", "a\tb"]:
            with pytest.raises(InvalidName, match="newline|tab"):
                w.get_next_job(constant(bad))
            assert w.running_job is None
    after_main = git("rev-parse", "main", cwd=remote)
    assert after_main.split()[0] == before.split()[0]
    lock = git("log", "-1", "--format=%B", "refs/distribute/lock", cwd=remote)
    assert "free" in lock  # released, not left held


NASTY = ["with space", "a/b/../c", "..", "ünïcødé ジョブ", "-leading-dash", "x@{1}",
         "name.lock", "y" * 300, "--upload-pack=touch pwned"]


@pytest.mark.parametrize("job", NASTY)
def test_nasty_names_run_end_to_end(remote, tmp_path, job):
    with make(remote, tmp_path) as w:
        assert w.get_next_job(constant(job)) == job
        out = Path(w.job_dir)
        assert Path(w.path) in out.parents
        out.mkdir(parents=True)
        (out / "result.txt").write_text(job)
        w.commit_update()
        w.finish_job()
    done = show(remote, "done.txt")
    assert done.split("\t")[0] == job
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    files = git("ls-tree", "-r", "--name-only", "main", cwd=remote).splitlines()
    assert len([f for f in files if f.startswith("updates/")]) == 1


def test_second_worker_on_one_local_copy_is_refused(remote, tmp_path):
    with make(remote, tmp_path, name="first"), pytest.raises(LocalCopyBusy, match="first"):
        make(remote, tmp_path, name="first")


def test_dirty_working_tree_is_refused_and_kept(remote, tmp_path):
    with make(remote, tmp_path) as w:
        Path(w.path, "stray.txt").write_text("precious")
        with pytest.raises(DirtyWorkingTree, match="stray.txt"):
            w.get_next_job(constant("j"))
        assert Path(w.path, "stray.txt").read_text() == "precious"


def test_api_misuse_errors(remote, tmp_path):
    with make(remote, tmp_path) as w:
        with pytest.raises(NoRunningJob):
            w.finish_job()
        w.get_next_job(constant("j"))
        with pytest.raises(JobAlreadyRunning):
            w.get_next_job(constant("k"))


def test_merge_conflict_keeps_branch_and_records_failure(remote, tmp_path):
    with make(remote, tmp_path, name="a") as a, make(remote, tmp_path, name="b") as b:
        a.get_next_job(constant("ja"))
        b.get_next_job(constant("jb"))
        for w, text in ((a, "from a"), (b, "from b")):
            Path(w.path, "shared.txt").write_text(text)
            w.commit_update()
        a.finish_job()
        branch = b.job_branch
        with pytest.raises(MergeConflict, match="shared.txt"):
            b.finish_job()
    assert show(remote, "shared.txt") == "from a"
    assert "jb\t" in show(remote, "failed.txt") and "merge conflict" in show(remote, "failed.txt")
    assert show(remote, "shared.txt", rev=branch) == "from b"  # nothing lost
    assert "jb" not in show(remote, "running.txt")


def test_remote_without_ledgers_names_the_fix(tmp_path):
    bare = tmp_path / "plain.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    seedrepo = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seedrepo), cwd=tmp_path)
    (seedrepo / "README").write_text("hi")
    git("add", "README", cwd=seedrepo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=seedrepo)
    git("push", "-q", str(bare), "main", cwd=seedrepo)
    with make(bare, tmp_path) as w, pytest.raises(RemoteStateError, match="distribute init"):
        w.get_next_job(constant("j"))


def test_queue_source_and_fail_then_retry(remote, tmp_path):
    init_remote(remote, jobs=["q1", "q2"])
    with make(remote, tmp_path, max_attempts=2) as w:
        assert w.get_next_job(QueueJobs()) == "q1"
        assert w.fail_job("boom") == "retry"
        # the released job is offered before the queue
        assert w.get_next_job(QueueJobs()) == "q1" and w.attempt == 2
        assert w.fail_job("boom again") == "failed"
        assert w.get_next_job(QueueJobs()) == "q2"
        w.finish_job()
        assert w.get_next_job(QueueJobs()) is None
    assert "q1\t" in show(remote, "failed.txt") and "boom again" in show(remote, "failed.txt")
    assert show(remote, "jobs.txt").strip() == ""


def test_late_finish_after_takeover_is_refused(remote, tmp_path):
    clock = [0.0]
    slow = make(remote, tmp_path, name="slow", heartbeat=False, lease_seconds=1)
    fast = make(remote, tmp_path, name="fast", lease_seconds=1, margin_seconds=0.1,
                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    try:
        assert slow.get_next_job(constant("j")) == "j"
        Path(slow.job_dir).mkdir(parents=True)
        Path(slow.job_dir, "late.txt").write_text("late")
        slow.commit_update()
        branch = slow.job_branch
        # fast waits (fake clock) until slow's liveness expires, then takes j over
        assert fast.get_next_job(lambda: None) == "j" and fast.attempt == 2
        main_before = git("rev-parse", "main", cwd=remote)
        with pytest.raises(LeaseLost, match="lost it"):
            slow.finish_job()
        assert git("rev-parse", "main", cwd=remote) == main_before
        assert show(remote, "updates/j/late.txt", rev=branch) == "late"
        fast.finish_job()
        assert show(remote, "done.txt").count("j\t") == 1
    finally:
        slow.close()
        fast.close()


def test_nothing_written_outside_the_local_copy(remote, tmp_path):
    before = set(os.listdir(tmp_path))
    with make(remote, tmp_path) as w:
        w.get_next_job(constant("../../escape"))
        Path(w.job_dir).mkdir(parents=True)
        Path(w.job_dir, "x").write_text("x")
        w.finish_job()
    assert set(os.listdir(tmp_path)) - before == {"copy-w"}


def test_a_file_kept_open_across_updates_loses_nothing(remote, tmp_path):
    """commit_update must not rewrite the working tree: a job appending to an open log
    keeps writing to the file that is committed next."""
    with make(remote, tmp_path) as w:
        assert w.get_next_job(constant("j")) == "j"
        Path(w.job_dir).mkdir(parents=True)
        with open(Path(w.job_dir, "log.txt"), "a", encoding="utf-8") as log:
            for step in range(3):
                log.write(f"step {step}\n")
                log.flush()
                assert w.commit_update(f"step {step}")
        w.finish_job()
    expected = "step 0\nstep 1\nstep 2\n"
    # the job branch's tip: the finish commit's second parent (the branch itself is gone)
    assert show(remote, "updates/j/log.txt", rev="main^2") == expected
    assert show(remote, "updates/j/log.txt") == expected


def test_a_worker_whose_job_was_taken_over_carries_on(remote, tmp_path):
    """After LeaseLost the worker runs no job and takes the next one."""
    clock = [0.0]
    slow = make(remote, tmp_path, name="slow", heartbeat=False, lease_seconds=1)
    fast = make(remote, tmp_path, name="fast", lease_seconds=1, margin_seconds=0.1,
                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    try:
        assert slow.get_next_job(constant("j")) == "j"
        assert fast.get_next_job(lambda: None) == "j"  # taken over once slow's lease expires
        fast.finish_job()
        Path(slow.job_dir).mkdir(parents=True)
        Path(slow.job_dir, "late.txt").write_text("late")
        with pytest.raises(LeaseLost):
            slow.finish_job()
        assert slow.running_job is None
        slow.discard_changes()
        assert slow.get_next_job(constant("k")) == "k"
        slow.finish_job()  # parked: fast is about; closing folds it into done.txt
        slow.close()
        assert [line.split("\t")[0] for line in show(remote, "done.txt").splitlines()] == ["j", "k"]
    finally:
        slow.close()
        fast.close()


def test_a_draining_worker_asks_the_function_again_only_when_main_moves(remote, tmp_path):
    """While another job runs and the function has none, polling must not take the lock
    (two pushes) on every poll: the function is asked again once the main branch moved."""
    import threading
    import time

    calls = []

    def nothing():
        calls.append(1)

    with make(remote, tmp_path, name="a") as a, \
            make(remote, tmp_path, name="b", poll_seconds=0.02, max_poll_seconds=0.05) as b:
        assert a.get_next_job(constant("j")) == "j"
        got = []
        waiter = threading.Thread(target=lambda: got.append(b.get_next_job(nothing)))
        waiter.start()
        time.sleep(1.5)  # some 30 polls
        asked_while_j_ran = len(calls)
        a.finish_job()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and got == [None]
    assert asked_while_j_ran == 1, f"asked {asked_while_j_ran} times while main did not move"
    assert len(calls) == 2  # and once more after j finished


def test_git_lock_files_left_by_a_killed_process_are_cleared_on_open(remote, tmp_path):
    """kill -9 in the middle of a git command leaves index.lock and friends; the next
    worker on that copy (it holds the copy's file lock) removes them and works."""
    with make(remote, tmp_path):
        pass
    git_dir = tmp_path / "copy-w" / ".git"
    for name in ("index.lock", "HEAD.lock", "refs/heads/main.lock"):
        (git_dir / name).write_text("")
    (git_dir / "distribute-snapshot-0123.index").write_text("")
    with make(remote, tmp_path) as w:
        assert w.get_next_job(constant("j")) == "j"
        Path(w.job_dir).mkdir(parents=True)
        Path(w.job_dir, "x").write_text("x")
        w.finish_job()
    assert show(remote, "updates/j/x") == "x"
    assert not any((git_dir / name).exists() for name in ("index.lock", "HEAD.lock"))
    assert not list(git_dir.glob("distribute-snapshot-*"))


def lock_history(bare):
    return git("log", "--format=%s", "refs/distribute/lock", cwd=bare).splitlines()


def test_a_repo_only_function_claims_with_one_push_and_a_plain_one_takes_the_lock(
        remote, tmp_path):
    from distribute.remote import add_jobs
    from distribute.sources import queue_jobs_func

    add_jobs(str(remote), ["a", "b", "c", "d"])
    calls = []

    def plain(worker):  # the original project's style: not marked repo-only
        calls.append(git("log", "-1", "--format=%s", "refs/distribute/lock", cwd=remote))
        return QueueJobs.__call__(QueueJobs(), worker)

    with make(remote, tmp_path) as w:
        for func in (queue_jobs_func, QueueJobs(), plain, plain):
            before = w.coord.stats.pushes
            assert w.get_next_job(func) is not None
            w.finish_job()
            spent = w.coord.stats.pushes - before
            assert spent == (3 if func is plain else 2) + (1 if before == 0 else 0)
    # the plain function ran while its worker held the lock; the others left no holding
    assert calls and all(line.startswith("distribute lock: held by w") for line in calls)
    held = [line for line in lock_history(remote) if "held by w " in line]
    assert len(held) == 2
    assert git("show", "main:done.txt", cwd=remote).count("\n") == 4


def test_a_worker_behind_gone_workers_waits_a_few_turns_only(remote, tmp_path):
    """Liveness records of workers that are gone count as idle until seen unchanged for a
    lease; a free lock is tried after at most TURNS_WAITED of them, not all."""
    from distribute.dist import TURNS_WAITED
    from distribute.remote import add_jobs

    _ghosts(remote, 10)
    add_jobs(str(remote), ["a"])
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    with make(remote, tmp_path, clock=lambda: now[0], sleep=sleep, heartbeat=False,
              poll_seconds=0.1, max_poll_seconds=1.0, lease_seconds=60) as w:
        assert w.get_next_job(QueueJobs()) == "a"
    # it waited its turn behind the first few (a turn is poll_seconds here) ...
    assert sum(slept) >= (TURNS_WAITED - 1) * 0.1
    # ... and not behind all ten
    assert sum(slept) <= (TURNS_WAITED + 2) * 0.1


def _beat(remote, worker, note=""):
    """Move ``worker``'s liveness record to a new beat commit, as its process would."""
    from distribute.core.lock import Beat, beat_message

    run = dict(cwd=remote, capture_output=True, text=True, check=True)
    tree = subprocess.run(["git", "mktree"], input="", **run).stdout.strip()
    message = beat_message(Beat(worker=worker, session="gone")) + note
    oid = subprocess.run(["git", "commit-tree", tree], input=message, **run).stdout.strip()
    git("update-ref", f"refs/distribute/workers/{worker}", oid, cwd=remote)


def _ghosts(remote, count):
    """Liveness records of ``count`` workers that never claimed and are named before "w":
    all ahead of it in turn, and silent."""
    for i in range(count):
        _beat(remote, f"ghost-{i}")


def _look_slowly(worker, advance, seconds):
    """Make each full look at the remote take ``seconds`` on the fake clock (a loaded
    machine), by calling ``advance`` after it."""
    observe = worker.coord.observe

    def slow_observe():
        snap = observe()
        advance(seconds)
        return snap

    worker.coord.observe = slow_observe


def _noting_queue(now, calls):
    """A repo-only ``jobs.txt`` function that notes the fake time of each call."""
    from distribute.sources import repo_only

    source = QueueJobs()

    def function(worker):
        calls.append(now[0])
        return source(worker)

    return repo_only(function)


def test_on_a_slow_machine_a_waiter_gives_those_ahead_time_to_look(remote, tmp_path):
    """A turn's length includes the look at the remote, which a loaded machine makes slow
    (here each look takes 0.15 s).  While the lock keeps moving every half second
    (turns taken by others), a worker behind two silent workers must not try: their
    silence is not yet longer than their turns would take.  Trying once poll-sized slots
    had passed is what made 16 workers stampede a loaded machine.  Once the lock stops
    moving, it takes its turn after about two turns' time."""
    from distribute.remote import add_jobs

    _ghosts(remote, 2)
    add_jobs(str(remote), ["a"])
    now, moves, calls = [0.0], [], []

    def move_lock():
        """Another commit with the same lock state: a new value, as after a turn."""
        old = git("rev-parse", "refs/distribute/lock", cwd=remote).strip()
        message = git("log", "-1", "--format=%B", old, cwd=remote) + "\n"
        tree = git("rev-parse", f"{old}^{{tree}}", cwd=remote).strip()
        new = subprocess.run(["git", "commit-tree", tree, "-p", old], cwd=remote,
                             input=message, capture_output=True, text=True,
                             check=True).stdout.strip()
        git("update-ref", "refs/distribute/lock", new, old, cwd=remote)
        moves.append(now[0])

    def advance(seconds):
        before = now[0]
        now[0] += seconds
        for tick in range(1, 9):  # the lock moves at 0.5, 1.0, ... 4.0 s
            if before < tick * 0.5 <= now[0]:
                move_lock()

    with make(remote, tmp_path, clock=lambda: now[0], sleep=advance, heartbeat=False,
              poll_seconds=0.05, max_poll_seconds=2.0, lease_seconds=60) as w:
        _look_slowly(w, advance, 0.15)
        assert w.get_next_job(_noting_queue(now, calls)) == "a"
    assert len(moves) == 8
    assert calls and calls[0] >= moves[-1]  # never while turns were being taken
    assert calls[0] <= moves[-1] + 2.0  # and soon after they stopped


def test_the_next_in_line_looks_often_when_looking_is_cheap(remote, tmp_path):
    """Waiting for the one worker ahead, a worker must notice its claim quickly: that
    delay is on every job's path.  With a remote read in no time (as a bare repository on
    this machine is, nearly), it looks every quarter of poll_seconds."""
    from distribute.remote import add_jobs

    _ghosts(remote, 1)
    add_jobs(str(remote), ["a"])
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    def advance(seconds):
        now[0] += seconds

    with make(remote, tmp_path, clock=lambda: now[0], sleep=sleep, heartbeat=False,
              poll_seconds=0.2, max_poll_seconds=2.0, lease_seconds=60) as w:
        _look_slowly(w, advance, 0.3)  # a full look is slow, so the turn wait is long
        assert w.get_next_job(QueueJobs()) == "a"
    assert len(slept) >= 10
    assert max(slept) <= 0.2 / 4 + 1e-9


def test_a_worker_far_back_in_turn_wakes_in_time_for_its_turn(remote, tmp_path):
    """Eight workers ahead claim one after another, one every 0.1 s.  A worker behind
    them must not sleep through its turn: a look at the remote is slow here, which once
    made waiters far back sleep a second or more, and the workers before them had all
    claimed long before they woke.  It learns how fast turns go from how many liveness
    records moved between its looks."""
    from distribute.remote import add_jobs

    _ghosts(remote, 8)
    add_jobs(str(remote), ["a"])
    now, calls = [0.0], []
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "ghost.index")}

    def claim_by(i):
        """ghost-i claims (and at once finishes) a job: the ledger says it was served,
        and its liveness record moves, as a claim moves it."""
        old = git("rev-parse", "main", cwd=remote).strip()
        done = subprocess.run(["git", "show", "main:done.txt"], cwd=remote,
                              capture_output=True, text=True).stdout
        done += f"ghost-job-{i}\tworker=ghost-{i}\ttoken=0\tattempt=1\n"
        run = dict(cwd=remote, env=env, capture_output=True, text=True, check=True)
        blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], input=done,
                              **run).stdout.strip()
        subprocess.run(["git", "read-tree", "main"], **run)
        subprocess.run(["git", "update-index", "--add", "--cacheinfo",
                        f"100644,{blob},done.txt"], **run)
        new_tree = subprocess.run(["git", "write-tree"], **run).stdout.strip()
        new = subprocess.run(["git", "commit-tree", new_tree, "-p", old, "-m", "ghost"],
                             **run).stdout.strip()
        git("update-ref", "refs/heads/main", new, old, cwd=remote)
        _beat(remote, f"ghost-{i}", "claimed\n")

    def advance(seconds):
        before = now[0]
        now[0] += seconds
        for i in range(8):  # ghost-i claims at 0.1 * (i + 1) s
            if before < 0.1 * (i + 1) <= now[0]:
                claim_by(i)

    with make(remote, tmp_path, clock=lambda: now[0], sleep=advance, heartbeat=False,
              poll_seconds=0.05, max_poll_seconds=2.0, lease_seconds=60) as w:
        _look_slowly(w, advance, 0.15)
        assert w.get_next_job(_noting_queue(now, calls)) == "a"
    assert calls and 0.8 <= calls[0] <= 1.1


def test_time_passing_between_two_readings_never_asks_for_a_negative_sleep(remote, tmp_path):
    """The turn wait is read from the clock; read twice, it can cross zero in between,
    and time.sleep refuses a negative length.  Here every clock reading is a step later."""
    from distribute.remote import add_jobs

    _ghosts(remote, 3)
    add_jobs(str(remote), ["a"])
    now, slept = [0.0], []

    def clock():
        now[0] += 0.007
        return now[0]

    def sleep(seconds):
        assert seconds >= 0, seconds
        slept.append(seconds)
        now[0] += seconds

    import random

    for i in range(12):
        with make(remote, tmp_path, name=f"w{i}", clock=clock, sleep=sleep, heartbeat=False,
                  rng=random.Random(i),
                  poll_seconds=0.05, max_poll_seconds=1.0, lease_seconds=600) as w:
            job = w.get_next_job(QueueJobs())
            if job is not None:
                w.finish_job()
                add_jobs(str(remote), ["a"])
    assert slept


def test_a_file_over_the_size_limit_is_refused_before_anything_is_pushed(remote, tmp_path):
    from distribute.core.errors import FileTooLarge
    from distribute.remote import add_jobs

    add_jobs(str(remote), ["big"])
    with make(remote, tmp_path, max_file_bytes=1_000_000) as w:
        assert w.get_next_job(QueueJobs()) == "big"
        before = git("rev-parse", f"refs/heads/{w.job_branch}", cwd=remote)
        out = Path(w.job_dir)
        out.mkdir(parents=True)
        (out / "small.txt").write_text("fine\n")
        (out / "weights.bin").write_bytes(b"\0" * 2_000_000)
        with pytest.raises(FileTooLarge, match=r"updates/big/weights.bin \(2.0 MB\)"):
            w.commit_update()
        with pytest.raises(FileTooLarge, match="max_file_bytes"):
            w.finish_job()
        assert git("rev-parse", f"refs/heads/{w.job_branch}", cwd=remote) == before
        assert w.fail_job("oversized output") == "retry"
    running = show(remote, "running.txt")
    assert "not committed: updates/big/weights.bin too large" in running


class _PushesFail:
    """A transport whose fetches work and whose pushes of the main branch fail before
    anything is sent (the remote cannot store objects: a full disk)."""

    def __init__(self, inner):
        self.inner = inner
        self.failing = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def push(self, updates):
        if self.failing and any(u.ref == "refs/heads/main" for u in updates):
            raise TransportError("the remote could not store the pushed objects: disk full")
        return self.inner.push(updates)


def test_a_remote_that_answers_reads_but_takes_no_push_ends_the_retries(remote, tmp_path):
    """Retries restart their window only when the remote took a push meanwhile (a finish
    that lost races for long, see tests/unit/test_retry_transport.py); a remote that
    answers reads but stores no push (a full disk) ends a finish's retries within
    retry_seconds, with the reason."""
    now = [0.0]
    wrapped = []

    def wrap(transport):
        wrapped.append(_PushesFail(transport))
        return wrapped[-1]

    init_remote(remote, jobs=["j"])
    with make(remote, tmp_path, clock=lambda: now[0],
              sleep=lambda s: now.__setitem__(0, now[0] + s), heartbeat=False,
              retry_seconds=20, wrap_transport=wrap) as w:
        assert w.get_next_job(QueueJobs()) == "j"
        wrapped[0].failing = True
        started = now[0]
        with pytest.raises(TransportError, match="stayed unreachable for 20 s"):
            w.finish_job()
        assert now[0] - started < 60
