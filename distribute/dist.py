"""The worker: the seed's API on top of the coordinator and a local git copy.

Theory of operation
-------------------
A :class:`Worker` owns one local copy (a clone with a working tree that the
user's code writes into) and one :class:`~distribute.coordination.Coordinator`.
``get_next_job`` polls the lock with backoff and jitter, takes it, offers an
orphaned job first or runs the next-job function with the working tree at the
freshly fetched main branch, claims, and checks out the job branch.
``commit_update`` snapshots the working tree onto the job branch and pushes
it.  ``finish_job`` merges the job branch into the main branch without a
checkout.  A background heartbeat renews the lock while the next-job function
runs and the worker's liveness ref while a job runs.

A file lock on the local copy refuses a second worker there.  Transport
errors are retried with backoff for ``retry_seconds``, then raised with the
URL's credentials removed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import platform
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import filelock

from distribute.backoff import Backoff
from distribute.coordination import Coordinator, JobHolding, Snapshot
from distribute.core.errors import (
    DirtyWorkingTree,
    JobAlreadyRunning,
    LocalCopyBusy,
    NoRunningJob,
    OutcomeUnknown,
    TransportError,
    UsageError,
)
from distribute.core.names import LOCK_REF, WORKERS_PREFIX, check_name, job_dir, scrub_url
from distribute.core.plan import CallNextJobFunction, GiveUp, Retry, others_running
from distribute.sources import is_repo_only
from distribute.transport.base import Transport
from distribute.transport.git import GitLocalCopy

NextJobFunction = Callable[..., Any]
T = TypeVar("T")

_LOCK_FILE = "distribute.lock"
_OWNER_FILE = "distribute-owner.json"
#: Present while the working tree holds a next-job function's edits that no job
#: branch checkout has replaced yet; a worker opening the copy after a crash
#: throws those edits away (they were committed with a landed claim, or never
#: claimed, and then the function runs again).
_FUNCTION_MARKER = "distribute-next-job"


#: At a free lock, a worker waits for at most this many workers before it in turn.
TURNS_WAITED = 4
#: How long what a waiting worker saw of the pace of turns keeps counting.
TURN_MEMORY_SECONDS = 5.0


def default_worker_name() -> str:
    """``<host>-<pid>-<random>``: unique per process, even across hosts with one name."""
    host = platform.node() or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Worker:
    """One worker on one local copy of the remote.

    Args:
        path: the local copy (an existing clone).
        name: unique worker name; default :func:`default_worker_name`.
        branch: the main branch; default the remote's default branch.
        lease_seconds: lease period of the lock and of running jobs.
        poll_seconds: delay between looks at the lock for the next worker in turn;
            workers further back look less often (see ``get_next_job``), and a
            worker waiting for running jobs backs off from it, doubling with jitter.
        max_poll_seconds: longest delay between looks.
        max_attempts: attempts per job before it moves to ``failed.txt``.
        wait_for_running: ``get_next_job`` waits while other workers still run
            jobs (they may fail or die and be offered to this one) instead of
            returning ``None`` at once.
        retry_seconds: how long transport errors are retried before raising.
        heartbeat: run the background heartbeat thread.
        journal: optional ``callback(event, **fields)`` for every protocol step.
        wrap_transport: optional function that wraps the git transport (the
            simulator injects latency and failed pushes this way).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        branch: str | None = None,
        lease_seconds: float = 120.0,
        poll_seconds: float = 0.1,
        max_poll_seconds: float | None = None,
        max_attempts: int = 3,
        wait_for_running: bool = True,
        retry_seconds: float = 60.0,
        heartbeat: bool = True,
        margin_seconds: float | None = None,
        journal: Callable[..., None] | None = None,
        wrap_transport: Callable[[Transport], Transport] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = check_name(name if name is not None else default_worker_name(), "worker")
        if lease_seconds <= 0 or poll_seconds <= 0 or max_attempts < 1:
            raise UsageError("lease_seconds and poll_seconds must be > 0, max_attempts >= 1")
        self.path = str(Path(path).resolve())
        self._filelock = self._lock_local_copy()
        try:
            self.copy = GitLocalCopy.open(self.path)
            self.transport: Transport = self.copy.transport()
            if wrap_transport is not None:
                self.transport = wrap_transport(self.transport)
            self.branch = branch or self.copy.default_branch() or "main"
            check_name(self.branch, "branch")
            self._recover_from_crash()
        except BaseException:
            self._filelock.release()
            raise
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_poll_seconds = max_poll_seconds or max(poll_seconds, min(5.0, lease_seconds / 4))
        self.max_attempts = max_attempts
        self.wait_for_running = wait_for_running
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._claim_seconds = 0.0  # how long claims take here (moving average)
        self._observe_seconds = 0.0  # how long a look at the remote takes here
        self._peek_seconds = 0.0  # how long a look at the lock alone takes
        self._turns = (0.0, 0.0)  # turns seen taken, and in how long (both fading)
        self._last_look: tuple[float, dict[str, str]] | None = None
        self._waiting_since = 0.0
        # a wait computed from two clock readings can come out a hair below zero
        self._sleep: Callable[[float], None] = lambda seconds: sleep(max(0.0, seconds))
        self._rng = rng or random.Random()
        self.session = uuid.uuid4().hex
        self.coord = Coordinator(
            self.transport,
            worker=self.name,
            session=self.session,
            branch=self.branch,
            lease=lease_seconds,
            margin=margin_seconds if margin_seconds is not None else max(0.5, lease_seconds / 10),
            max_attempts=max_attempts,
            clock=clock,
            journal=journal,
        )
        self._stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.heartbeat_errors = 0
        if heartbeat:
            self._beat_thread = threading.Thread(
                target=self._heartbeat, name=f"distribute-heartbeat-{self.name}", daemon=True
            )
            self._beat_thread.start()

    # ---- local copy ownership ------------------------------------------------
    def _lock_local_copy(self) -> filelock.BaseFileLock:
        git_dir = Path(self.path) / ".git"
        if not git_dir.is_dir():
            raise UsageError(
                f"{self.path} is not a local copy made by Distribute (no .git folder); "
                "use worker_from_url(url, path=...) to clone one"
            )
        lock = filelock.FileLock(str(git_dir / _LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            owner = "unknown"
            with contextlib.suppress(OSError):
                owner = (git_dir / _OWNER_FILE).read_text(encoding="utf-8").strip()
            raise LocalCopyBusy(
                f"another worker already uses the local copy {self.path} ({owner}); give each "
                "worker its own path",
                path=self.path,
            ) from None
        info = {"worker": self.name, "pid": os.getpid(), "host": platform.node()}
        (git_dir / _OWNER_FILE).write_text(json.dumps(info), encoding="utf-8")
        return lock

    def _function_marker(self) -> Path:
        return Path(self.path) / ".git" / _FUNCTION_MARKER

    def _checkout_clean(self, commit: str, branch: str | None) -> None:
        """Check out ``commit``, replacing any next-job function edits, and say so."""
        self.copy.checkout(commit, branch)
        self._function_marker().unlink(missing_ok=True)

    def _recover_from_crash(self) -> None:
        """Undo what a killed earlier process left in this local copy.

        This process holds the copy's file lock, so no other worker runs here:
        git's lock files and Distribute's scratch indexes are leftovers of a
        process killed mid-command, and would make every git command fail.
        Edits of a next-job function that was running are dropped.  Files a
        job wrote are kept (``get_next_job`` then reports them).
        """
        git_dir = Path(self.path) / ".git"
        names = ("index.lock", "HEAD.lock", "config.lock", "packed-refs.lock", "shallow.lock")
        stale = [git_dir / name for name in names]
        stale += git_dir.glob("distribute-snapshot-*")
        stale += (git_dir / "refs").rglob("*.lock")
        for path in stale:
            path.unlink(missing_ok=True)
        marker = self._function_marker()
        if marker.exists():
            self.copy.discard_changes()
            marker.unlink()

    def close(self) -> None:
        """Stop the heartbeat, release the lock if held, free the local copy."""
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
        try:
            if self.coord.holding is not None:
                self.coord.release()
        except TransportError:
            pass
        finally:
            if self._filelock.is_locked:
                self._filelock.release()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _heartbeat(self) -> None:
        interval = max(0.05, min(1.0, self.lease_seconds / 6))
        while not self._stop.wait(interval):
            try:
                self.coord.renew()
            except Exception:  # noqa: BLE001 - a failed renewal is retried next tick
                self.heartbeat_errors += 1

    # ---- the seed's API ----------------------------------------------------
    @property
    def running_job(self) -> str | None:
        """The job this worker runs, or ``None``."""
        return self.coord.job.job if self.coord.job else None

    @property
    def attempt(self) -> int | None:
        return self.coord.job.attempt if self.coord.job else None

    @property
    def job_branch(self) -> str | None:
        return self.coord.job.branch if self.coord.job else None

    @property
    def job_dir(self) -> str:
        """Absolute folder for the running job's updates (``updates/<encoded job>``)."""
        job = self.running_job
        if job is None:
            raise NoRunningJob("this worker runs no job; call get_next_job first")
        return os.path.join(self.path, *job_dir(job).split("/"))

    def get_running(self) -> list[str]:
        """Jobs in the remote's ``running.txt`` right now."""
        snap = self._retrying(self.coord.observe)
        return [e.job for e in snap.ledger.running]

    def get_next_job(self, next_job_func: NextJobFunction) -> str | None:
        """Claim the next job and check out its branch.

        Orphaned jobs (released for a retry, or whose holder's lease expired)
        are offered first; otherwise ``next_job_func`` runs, alone among all
        workers, with the working tree at the freshly fetched main branch.
        Its file edits (say, a shortened ``jobs.txt``) are committed with the
        claim.  A :func:`~distribute.sources.repo_only` function instead runs
        with the lock free and claims in the same push that moves the lock on.

        Idle workers take turns at a free lock, least recently served first
        (:func:`~distribute.core.plan.ahead_in_turn`): the first in line tries
        at once, and each one further back gives each worker ahead of it a
        turn's time (:meth:`_slot`: a look and a claim as measured here), up to
        :data:`TURNS_WAITED` of them, so a worker that is busy elsewhere or
        gone holds the others up only briefly.

        Returns:
            The job name, or ``None`` when the function has no job and no
            other worker still runs one (with ``wait_for_running=False``: as
            soon as the function has none).

        Raises:
            JobAlreadyRunning: finish or fail the running job first.
            DirtyWorkingTree: the local copy has uncommitted changes.
            InvalidName: the function returned a name a ledger cannot hold.
        """
        if self.coord.job is not None:
            raise JobAlreadyRunning(
                f"this worker still runs {self.coord.job.job!r}; call finish_job() or "
                "fail_job(reason) first"
            )
        changed = self.copy.changed_paths()
        if changed:
            raise DirtyWorkingTree(
                f"the local copy {self.path} has uncommitted changes ({', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}); commit, move or delete them before "
                "asking for a job",
                paths=changed,
            )
        backoff = Backoff(self.poll_seconds, self.max_poll_seconds, self._rng)
        self._waiting_since = self._clock()
        self._last_look = None  # turns are counted while waiting, not across jobs
        watching: Snapshot | None = None  # the lock as last observed, while we wait on it
        watched: str | None = None  # the lock's value at the latest look
        ahead: list[str] = []  # liveness refs of the idle workers before us in turn
        idle_main: str | None = None
        while True:
            if watching is not None:
                # waiting: a look at the lock and liveness refs (Coordinator.peek), not a
                # fetch, until the lock moves or, on a free lock, those before us in turn
                # had their chance
                looked = self._clock()
                refs = self._retrying(self.coord.peek)
                self._peek_seconds = _average(self._peek_seconds, self._clock() - looked)
                self._count_turns(refs)
                value = refs.get(LOCK_REF)
                # a worker before us that claimed has moved its liveness ref
                ahead = [r for r in ahead if refs.get(r) == watching.refs.get(r)]
                expired = self.coord.watch.expired(LOCK_REF, self._clock())
                if not expired and (
                    (value == watched and (not watching.lock.free or self._turn_wait(ahead) > 0))
                    or (value != watched and ahead)
                ):
                    watched = value
                    delay = self._poll_delay(ahead)
                    if watching.lock.free and value == watching.lock_oid:
                        delay = min(delay, self._turn_wait(ahead))  # wake when it is our turn
                    self._sleep(delay)
                    continue
            watching = None
            looked = self._clock()
            snap = self._retrying(self.coord.observe)
            self._observe_seconds = _average(self._observe_seconds, self._clock() - looked)
            if (
                snap.main == idle_main
                and isinstance(self.coord.plan(snap), CallNextJobFunction)
                and others_running(snap.ledger, self.name)
            ):
                # draining: the function had no job on this very main branch, and no
                # job is orphaned; ask it again only once something changed
                self._sleep(backoff.next())
                continue
            if self.coord.own_ref not in snap.refs:
                # a first liveness record, so that waiting workers count this one in turn
                self._retrying(self.coord.renew_beat)
                snap = self._retrying(self.coord.observe)
            ahead = self.coord.ahead_in_turn(snap)
            if snap.lock.free and self._turn_wait(ahead) > 0:
                # idle workers take turns at a free lock; ours comes after those ``ahead``
                watching, watched = snap, snap.lock_oid
                self._sleep(min(self._turn_wait(ahead), self._poll_delay(ahead)))
                continue
            if self._may_claim_unlocked(snap, next_job_func):
                started = snap.at
                outcome = self._claim_unlocked(snap, next_job_func)
                if isinstance(outcome, JobHolding):
                    # how long a claim takes here, from the fetch to the landed push
                    self._claim_seconds = _average(self._claim_seconds, self._clock() - started)
            elif self._retrying(partial(self.coord.try_acquire, snap)):
                outcome = self._under_lock(snap, next_job_func)
            else:
                # a held lock is watched cheaply; a free one (a lost race, a torn read)
                # is looked at in full again
                watching, watched = (None, None) if snap.lock.free else (snap, snap.lock_oid)
                self._sleep(self._poll_delay(ahead))
                continue
            if isinstance(outcome, JobHolding):
                self._retrying(partial(self._checkout_clean, outcome.tip, outcome.branch))
                return outcome.job
            if outcome == "none":
                return None
            if outcome == "wait":
                idle_main = snap.main
                self._sleep(backoff.next())
            elif outcome == "lost":
                # someone claimed or finished first; if the lock did not move it is still
                # our turn, so look again almost at once
                self._sleep(self._rng.uniform(0, self.poll_seconds / 4))
            # "again": the holding was lost; start over at once

    def _turn_wait(self, ahead: list[str]) -> float:
        """Seconds left before a free lock is ours to try, counted from when we first saw
        it free: each idle worker before us in turn gets one :meth:`_slot`, up to
        :data:`TURNS_WAITED` of them (those may be gone: a dead worker's liveness record
        counts as idle until this worker has seen it unchanged for a lease)."""
        now = self._clock()
        # counted from when this call began waiting at the latest: a value seen long
        # before (say, when the worker started) says nothing about the others' turns
        seen = min(self.coord.watch.unchanged_for(LOCK_REF, now), now - self._waiting_since)
        return min(len(ahead), TURNS_WAITED) * self._slot() - seen

    def _slot(self) -> float:
        """The time one worker's turn takes: time to notice the free lock (``poll_seconds``),
        to look at the remote and to claim, with a margin: twice what claims, or else looks,
        take here.  Both grow on a loaded machine or with a slow remote, so waiters further
        back give those ahead longer instead of stampeding."""
        work = max(2 * self._claim_seconds, 2 * self._observe_seconds)
        return min(self.poll_seconds + self._observe_seconds + work, self.max_poll_seconds)

    def _poll_delay(self, ahead: list[str]) -> float:
        """How long to wait between looks at the lock.

        The first two in turn (the second takes over as soon as the first claims) look
        every ``poll_seconds``, or more often when a look is cheap here -- down to a
        quarter of it, while looking stays under a tenth of the time (a bare repository
        on this machine is read in about a millisecond; an ``ls-remote`` takes tens).
        Each one further back waits a turn's time more.
        """
        if len(ahead) <= 1:
            cheap = max(self.poll_seconds / 4, 10 * self._peek_seconds)
            delay = min(self.poll_seconds, cheap, self.max_poll_seconds)
        else:
            # a turn's time more per place; but wake again by half the time the places
            # ahead take at the pace turns go now, so as not to sleep through our turn
            pace = max(self.poll_seconds, (len(ahead) - 1) * self._turn_pace() / 2)
            delay = self.poll_seconds + self._slot() * (len(ahead) - 1)
            delay = min(self.max_poll_seconds, delay, pace)
        return self._rng.uniform(delay / 2, delay)

    def _count_turns(self, refs: Mapping[str, str]) -> None:
        """Learn how fast turns go: each claim moves its worker's liveness record, so the
        records that moved between two looks count the turns taken meanwhile.  Counts and
        time fade over :data:`TURN_MEMORY_SECONDS`, however often this worker looks."""
        now = self._clock()
        if self._last_look is not None:
            then, before = self._last_look
            fade = math.exp(-(now - then) / TURN_MEMORY_SECONDS)
            moved = sum(
                1 for ref, oid in refs.items()
                if ref.startswith(WORKERS_PREFIX) and before.get(ref, oid) != oid
            )  # fmt: skip
            self._turns = (self._turns[0] * fade + moved, self._turns[1] * fade + now - then)
        self._last_look = (now, dict(refs))

    def _turn_pace(self) -> float:
        """Seconds per turn as last seen (``poll_seconds`` before any turn was seen)."""
        turns, seconds = self._turns
        return seconds / turns if turns >= 1 else self.poll_seconds

    def _may_claim_unlocked(self, snap: Snapshot, func: NextJobFunction) -> bool:
        """A repo-only function may decide with the lock free (see :mod:`distribute.sources`);
        orphaned jobs, a held lock and a torn view go the locked way."""
        return (
            is_repo_only(func)
            and snap.lock.free
            and not self.coord.torn(snap)
            and isinstance(self.coord.plan(snap), CallNextJobFunction)
        )

    def _claim_unlocked(self, snap: Snapshot, func: NextJobFunction) -> JobHolding | str:
        job, edits = self._run_next_job_function(snap, func)
        if job is None:
            return self._no_job(snap)
        got = self._claim_or_undo(snap, partial(self.coord.claim_unlocked, snap, job, edits))
        return got if got is not None else "lost"

    def _no_job(self, snap: Snapshot) -> str:
        """The function had no job: ``"wait"`` while other workers still run one (it may
        come back), else ``"none"``."""
        waiting = self.wait_for_running and others_running(snap.ledger, self.name)
        return "wait" if waiting else "none"

    def _claim_or_undo(
        self, snap: Snapshot, claim: Callable[[], JobHolding | None]
    ) -> JobHolding | None:
        """Run ``claim``; if it did not claim, undo the next-job function's edits."""
        try:
            return self._retrying(claim)
        finally:
            if self.coord.job is None:
                self._checkout_clean(snap.main, None)

    def _under_lock(self, snap: Snapshot, func: NextJobFunction) -> JobHolding | str:
        coord = self.coord
        try:
            while True:
                if coord.holding is None:
                    return "again"
                plan = coord.plan(snap)
                if isinstance(plan, GiveUp):
                    snap = self._retrying(partial(coord.give_up, snap, plan))
                    continue
                if isinstance(plan, Retry):
                    got = self._retrying(partial(coord.claim, snap, plan, None))
                    return got if got is not None else "again"
                if not coord.holding_valid():
                    # paused past the lease since the acquire: another worker may hold
                    # the lock now, so the function must not run on this holding
                    coord.holding = None
                    return "again"
                job, edits = self._run_next_job_function(snap, func)
                if job is None:
                    self._retrying(partial(coord.release, snap.main))
                    return self._no_job(snap)
                claim = partial(coord.claim, snap, CallNextJobFunction(), job, edits)
                got = self._claim_or_undo(snap, claim)
                return got if got is not None else "again"
        except BaseException:
            if coord.holding is not None:
                with contextlib.suppress(TransportError):  # else the lease expires
                    coord.release(snap.main)
            raise

    def _run_next_job_function(
        self, snap: Snapshot, func: NextJobFunction
    ) -> tuple[str | None, str | None]:
        self.copy.checkout(snap.main, None)
        self._function_marker().touch()
        job = None
        try:
            job = _call_next_job_function(func, self)
            if job is not None:
                job = check_name(str(job) if not isinstance(job, str) else job, "job")
            edits = None
            if job is not None:
                edits = self.copy.edits(snap.main, "distribute: next-job function edits")
            return job, edits
        finally:
            if job is None:
                # no claim follows (none, or an error): undo the function's edits now;
                # after a claim, checking out the job branch does it
                self._checkout_clean(snap.main, None)

    def commit_update(self, message: str | None = None) -> bool:
        """Commit the working tree's changes to the job branch and push them.

        Returns:
            ``False`` when there was nothing to commit.

        Raises:
            NoRunningJob: call get_next_job first.
            LeaseLost: the job was taken over (the update is still pushed to
                this worker's branch, where it stays).
        """
        job = self._job()
        if not self.copy.changed_paths():
            if self.coord.revoked:
                self.coord.update(job.tip)  # raises LeaseLost
            return False
        tip = self.copy.snapshot(job.tip, message or f"update {job.job}")
        # move the branch, HEAD and index only: files the job keeps open stay as they are
        self.copy.advance(tip, job.branch)
        self._retrying(partial(self.coord.update, tip))
        return True

    def discard_changes(self) -> None:
        """Throw away the local copy's uncommitted changes and untracked files.

        For after a ``LeaseLost``: what the lost job wrote since its last
        update belongs to a job another worker now runs, and ``get_next_job``
        refuses a local copy with changes.  Ignored files are kept.

        Raises:
            JobAlreadyRunning: a running job's changes are never discarded.
        """
        if self.coord.job is not None:
            raise JobAlreadyRunning(
                f"this worker runs {self.coord.job.job!r}; its changes are not thrown away"
            )
        self.copy.discard_changes()

    def finish_job(self) -> None:
        """Merge the job branch into the main branch; move the job to ``done.txt``.

        Uncommitted changes are committed first.

        Raises:
            LeaseLost: the job was taken over; the main branch is unchanged.
            MergeConflict: the job is recorded in ``failed.txt``; its branch stays.
        """
        self._job()
        self.commit_update(f"final results of {self.running_job}")
        backoff = Backoff(self.poll_seconds / 4, self.max_poll_seconds, self._rng)
        self._retrying(partial(self.coord.finish, self._sleep, backoff.next))

    def fail_job(self, reason: str = "failed") -> str:
        """Record that the job failed; it is retried while attempts are left.

        Uncommitted changes are committed to the job branch first.

        Returns:
            ``"retry"`` or ``"failed"`` (no attempts left; see ``failed.txt``).
        """
        self._job()
        self.commit_update(f"partial results of {self.running_job}")
        backoff = Backoff(self.poll_seconds / 4, self.max_poll_seconds, self._rng)
        return self._retrying(partial(self.coord.fail, reason, self._sleep, backoff.next))

    # ---- plumbing --------------------------------------------------------------
    def _job(self) -> JobHolding:
        if self.coord.job is None:
            raise NoRunningJob("this worker runs no job; call get_next_job first")
        return self.coord.job

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run ``step``, retrying transport errors with backoff for ``retry_seconds``."""
        backoff = Backoff(max(0.05, self.poll_seconds), max(1.0, self.max_poll_seconds), self._rng)
        deadline = self._clock() + self.retry_seconds
        while True:
            try:
                return step()
            except OutcomeUnknown:
                raise
            except TransportError as exc:
                if self._clock() >= deadline:
                    raise TransportError(
                        f"the remote stayed unreachable for {self.retry_seconds:.0f} s: "
                        f"{scrub_url(str(exc))}"
                    ) from None
                self._sleep(backoff.next())


def _average(mean: float, sample: float) -> float:
    """A moving average of durations that starts at the first sample, not at zero."""
    return sample if mean == 0 else mean + (sample - mean) / 4


def _call_next_job_function(func: NextJobFunction, worker: Worker) -> Any:
    """Call ``func()`` (the seed's style) or ``func(worker)`` if it takes one argument."""
    try:
        params = [
            p for p in inspect.signature(func).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return func(worker) if params else func()


def worker_from_url(
    url: str, path: str | os.PathLike[str], name: str | None = None, **options: Any
) -> Worker:
    """A worker on ``path``, cloning ``url`` there first if the path does not exist.

    An existing local copy is reused; it must be a clone of the same remote.
    Options are those of :class:`Worker`.
    """
    target = Path(path)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        GitLocalCopy.clone(url, target)
    else:
        copy = GitLocalCopy.open(target)
        if copy.remote_url() != url:
            raise UsageError(
                f"{target} is a clone of {scrub_url(copy.remote_url())}, not of {scrub_url(url)}; "
                "choose another path"
            )
    return Worker(target, name, **options)


__all__ = ["Worker", "default_worker_name", "worker_from_url"]
