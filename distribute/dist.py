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

import atexit
import contextlib
import enum
import json
import os
import platform
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import filelock

from distribute.backoff import Backoff, retry_transport
from distribute.coordination import Coordinator, JobHolding, Snapshot
from distribute.core.errors import (
    DirtyWorkingTree,
    DistributeError,
    FileTooLarge,
    JobAlreadyRunning,
    LeaseLost,
    LocalCopyBusy,
    MergeConflict,
    NoRunningJob,
    TransportError,
    UsageError,
)
from distribute.core.events import FailOutcome, NotClaimed
from distribute.core.ledger import MAX_INTERRUPTIONS
from distribute.core.lock import Beat
from distribute.core.names import (
    LOCK_REF,
    WORKERS_PREFIX,
    check_name,
    handed_ref,
    job_dir,
    scrub_url,
    view_folders,
)
from distribute.core.pacing import (
    TURNS_WAITED,
    KeepWatching,
    LookAgain,
    Pacer,
    Watch,
    after_failed_try,
    after_look,
    after_peek,
    looks_in_full,
    marker_of,
    still_ahead,
    turn_wait,
)
from distribute.core.plan import CallNextJobFunction, GiveUp, Retry, others_running
from distribute.credentials import split_secret
from distribute.jobfolder import secure_job_folder
from distribute.orphans import kill_git_left_in, reap_leftover_command
from distribute.shared_peeks import SharedPeeks
from distribute.sources import (
    DecidesFromFiles,
    call_next_job_function,
    decides_from_files,
    is_repo_only,
)
from distribute.transport.base import Transport
from distribute.transport.git import DirectGitTransport
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.shared_objects import refresh_shared_objects

NextJobFunction = Callable[..., Any]
T = TypeVar("T")

_LOCK_FILE = "distribute.lock"
#: Finished jobs between two looks at whether the local copy needs packing.
_HOUSEKEEPING_EVERY = 100
_OWNER_FILE = "distribute-owner.json"
#: Present while the working tree holds a next-job function's edits that no job
#: branch checkout has replaced yet; a worker opening the copy after a crash
#: throws those edits away (they were committed with a landed claim, or never
#: claimed, and then the function runs again).
_FUNCTION_MARKER = "distribute-next-job"
#: Present while this copy runs a job: which job, under which token, on which branch, and
#: whether its finish had begun.  A worker opening the copy after a crash saves what the
#: dead attempt left in the job's folder to that branch, and completes a begun finish.
_JOB_MARKER = "distribute-job.json"
#: A new worker's clone leaves files of this size or more on the remote until a checkout
#: needs them (a partial clone, where the remote allows it): other jobs' large results are
#: not downloaded by every worker that joins.  Far above what a ledger holds (``done.txt``
#: passes it at tens of thousands of jobs), which every look reads.
LAZY_BLOB_BYTES = 4 << 20
#: The default largest file a job may commit (see ``Worker(max_file_bytes=...)``).
MAX_FILE_BYTES = 50 * 1024 * 1024



class _Step(enum.Enum):
    """What became of one try at a job, short of a claim."""

    NONE = "no job, and no other job running: return None"
    WAIT = "no job now, but other jobs run (one may come back): wait and ask again"
    LOST = "another worker claimed or finished first: look again almost at once"
    AGAIN = "our holding of the lock was lost: start over at once"


@dataclass(frozen=True, slots=True)
class _Pause:
    """Sleep this long before the next look or peek (``None``: not at all)."""

    seconds: float | None


@dataclass(frozen=True, slots=True)
class _Leave:
    """No job, and no other job running to wait for; ``snap`` is the last look."""

    snap: Snapshot


@dataclass(slots=True)
class _Waiting:
    """The state of one :meth:`Worker.get_next_job` call's wait."""

    backoff: Backoff  # while the queue is empty and others' jobs run
    watch: Watch | None = None  # set while waiting with peeks instead of full looks
    idle_main: str | None = None  # the main branch on which the function had no job


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
        max_poll_seconds: longest delay between looks while waiting for a turn
            at the lock.
        idle_poll_seconds: longest delay between looks while the queue is empty
            and other workers' jobs still run (a job that comes back has to wait
            for a lease to expire or a worker to fail, so looking much more often
            than a fraction of the lease buys nothing; the request budget of a
            hosted remote is the reason to look rarely).
        max_attempts: failed attempts per job before it moves to ``failed.txt``.
        max_interruptions: interrupted attempts per job (a signal, a restart, a
            lease that expired) before it moves to ``failed.txt``; interruptions
            do not use up ``max_attempts``.
        resume: a retried job starts with what its previous attempt wrote
            (the previous attempt's branch is merged into the new one), so a
            job can go on from its last checkpoint; ``resumed_from`` tells.
        wait_for_running: ``get_next_job`` waits while other workers still run
            jobs (they may fail or die and be offered to this one) instead of
            returning ``None`` at once.
        retry_seconds: how long transport errors are retried before raising.
        max_file_bytes: the largest file ``commit_update``/``finish_job`` will
            commit (50 MB by default: git hosts warn at 50 MB and refuse
            100 MB); a larger one is refused, naming it, before anything is
            pushed.  ``None`` for no limit.
        all_results: keep every job's folder under ``updates/`` on disk.  By
            default the working tree holds every file of the remote outside
            ``updates/`` and, in it, only the running job's own folder: a view of
            each commit (see :meth:`~distribute.transport.local_copy.GitLocalCopy.show`),
            so a remote with thousands of finished jobs costs a worker what a young
            one does.  The folders left out stay on the main branch; every commit a
            job makes is grafted back onto the whole tree, and loses none of them.
        hand_off: a claim made from the queue's files (``jobs.txt``, see
            :func:`~distribute.sources.queue_jobs_func`) also claims the next queued
            jobs for the idle workers it sees waiting, in the same push; each takes
            its job up at its next look instead of racing for a claim of its own, so
            claims no longer go one at a time.  ``False``: this worker neither hands
            jobs off nor is handed any (for a loop that spends long between
            ``finish_job()`` and its next ``get_next_job()``: a job handed to it
            would wait that long, up to a lease, for it to look).
        share_peeks: workers of this machine on the same remote share what their
            peeks at it read while they wait for a turn (see
            :mod:`distribute.shared_peeks`), so several workers on one machine cost
            the host about what one does.
        heartbeat: run the background heartbeat thread.
        journal: optional ``callback(event, **fields)`` for every protocol step.
        wrap_transport: optional function that wraps the git transport (the
            simulator injects latency and failed pushes this way).
        secret: the password of an http(s) remote, kept in this process's
            memory only (``worker_from_url`` takes it out of the URL you give).
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
        idle_poll_seconds: float | None = None,
        max_attempts: int = 3,
        max_interruptions: int = MAX_INTERRUPTIONS,
        resume: bool = True,
        wait_for_running: bool = True,
        retry_seconds: float = 60.0,
        max_file_bytes: int | None = MAX_FILE_BYTES,
        all_results: bool = False,
        share_peeks: bool = True,
        hand_off: bool = True,
        heartbeat: bool = True,
        margin_seconds: float | None = None,
        journal: Callable[..., None] | None = None,
        wrap_transport: Callable[[Transport], Transport] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        secret: str | None = None,
    ) -> None:
        self.name = check_name(name if name is not None else default_worker_name(), "worker")
        if lease_seconds <= 0 or poll_seconds <= 0 or max_attempts < 1 or max_interruptions < 1:
            raise UsageError(
                "lease_seconds and poll_seconds must be > 0, max_attempts and "
                "max_interruptions >= 1"
            )
        self.path = str(Path(path).resolve())
        self.all_results = all_results
        self._filelock = self._lock_local_copy()
        try:
            self.copy = GitLocalCopy.open(self.path, secret=secret)
            self.transport: Transport = self.copy.transport()
            # a remote written directly is peeked at by reading its ref files, which
            # costs less than sharing; every other way of reaching it asks git
            ref_files = isinstance(self.transport, DirectGitTransport)
            if wrap_transport is not None:
                self.transport = wrap_transport(self.transport)
            self.branch = branch or self.copy.default_branch() or "main"
            check_name(self.branch, "branch")
            self._shared_peeks = self._share_peeks(share_peeks and not ref_files)
            self._recover_from_crash()
            self._housekeeping()
        except BaseException:
            self._filelock.release()
            raise
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_poll_seconds = max_poll_seconds or max(poll_seconds, min(5.0, lease_seconds / 4))
        self.idle_poll_seconds = max(
            self.max_poll_seconds, idle_poll_seconds or min(20.0, lease_seconds / 6)
        )
        self.max_attempts = max_attempts
        self.hand_off = hand_off
        self.wait_for_running = wait_for_running
        self.retry_seconds = retry_seconds
        self.max_file_bytes = max_file_bytes
        self._clock = clock
        self._pacer = Pacer(self.poll_seconds, self.max_poll_seconds)
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
            max_interruptions=max_interruptions,
            resume=resume,
            hand_offs=hand_off,
            clock=clock,
            journal=journal,
        )
        # without the heartbeat thread nothing renews the record while a job runs: a
        # handed job's take-up then renews it at once, as a claim would have written it
        self.coord.renewed_in_background = heartbeat
        self._closed = False
        self._finished = 0  # jobs finished by this worker object
        self._leftovers_queued = False  # an earlier life's branches: see _prune
        #: links that came with the running job's folder and were removed at its claim
        #: (paths relative to the copy), for a runner to report
        self.removed_links: list[str] = []
        atexit.register(self._at_exit)
        self._stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.heartbeat_errors = 0
        if heartbeat:
            self._beat_thread = threading.Thread(
                target=self._heartbeat, name=f"distribute-heartbeat-{self.name}", daemon=True
            )
            self._beat_thread.start()

    def _share_peeks(self, share: bool) -> SharedPeeks | None:
        """The peeks this worker shares with the others of this machine, if ``share``."""
        if not share:
            return None
        try:
            return SharedPeeks(self.copy.remote_url(), self.branch)
        except OSError:
            return None  # no private temporary folder: every worker peeks for itself

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

    def _job_marker(self) -> Path:
        return Path(self.path) / ".git" / _JOB_MARKER

    def _mark_job(self, *, finishing: bool = False) -> None:
        """Record the running job in the copy (see ``_JOB_MARKER``), or clear the record."""
        job, path = self.coord.job, self._job_marker()
        if job is None:
            path.unlink(missing_ok=True)
            return
        data = {"job": job.job, "token": job.token, "attempt": job.attempt,
                "branch": job.branch, "finishing": finishing}
        scratch = path.with_name(path.name + ".new")
        scratch.write_text(json.dumps(data), encoding="utf-8")
        os.replace(scratch, path)

    def _recover_own_job(self) -> None:
        """Pick up what this copy's previous process left of its job, if it died in one.

        What the dead attempt wrote in the job's folder is committed onto the job's
        branch and pushed there (nothing is deleted, nothing blocks the restart); the
        next attempt then starts from it.  A finish that had begun (say, the remote was
        unreachable) is completed instead of running the job again.  Files outside the
        job's folder are left alone for ``get_next_job`` to report.
        """
        path = self._job_marker()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            job = str(data["job"])
            holding = JobHolding(job, int(data["token"]), int(data["attempt"]),
                                 str(data["branch"]), "")
            finishing = bool(data.get("finishing", False))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a torn record: the ledger still knows the job
            return
        remote_tip = self._retrying(partial(self.transport.fetch, [holding.branch_ref]))
        tip = remote_tip.get(holding.branch_ref)
        head = self.copy.head()
        if tip is None or head is None:
            path.unlink()
            return
        folder = job_dir(job)
        if any(p == folder or p.startswith(folder + "/") for p in self.copy.changed_paths()):
            head = self.copy.snapshot(
                head, f"what attempt {holding.attempt} of {job} left when its worker died",
                only=folder,
            )
            self.copy.advance(head, None)
        holding.tip = tip
        self.coord.adopt(holding)
        try:
            if head != tip:
                # commits the dead process made and did not push (it may have died between
                # a snapshot and its upload), and the one just made: their LFS content
                # goes first, as at every update
                self._upload_large(head, self.copy.changed_between(tip, head))
                self._retrying(partial(self.coord.update, head))
            if finishing:
                self._finish_adopted()
        except (LeaseLost, MergeConflict):
            pass  # the ledger now says what became of the job; its branch keeps the files
        finally:
            if self.coord.job is not None:
                self.coord.drop_job()
            path.unlink(missing_ok=True)

    def _finish_adopted(self) -> None:
        """Land the finish of the job this worker holds (a finish begun here, or by an
        earlier life of this worker that left a marker), retrying transport errors."""
        backoff = Backoff(self.poll_seconds / 4, self.max_poll_seconds, self._rng)
        # with other workers about, the finish is parked at once: a fetch to check the
        # merge, then one push of this worker's own record, no race for the main branch;
        # the next claim folds it in
        park_first = self.coord.others_about()
        self._retrying(partial(self.coord.finish, self._sleep, backoff.next,
                               park_first=park_first))

    def _housekeeping(self) -> None:
        """Pack the local copy when its loose objects pile up (best effort: a failure
        leaves it as it was, and the worker goes on)."""
        with contextlib.suppress(DistributeError):
            self.copy.housekeeping()
        with contextlib.suppress(DistributeError):
            self.copy.drop_branches("jobs")  # one per job, left by earlier versions

    def _function_marker(self) -> Path:
        return Path(self.path) / ".git" / _FUNCTION_MARKER

    def _checkout(self, commit: str, job: str | None) -> None:
        """Check out ``commit`` with ``job``'s folder and no other job's on disk (every
        job's with ``all_results``; see :func:`~distribute.core.names.view_folders` and
        :meth:`~distribute.transport.local_copy.GitLocalCopy.show`)."""
        self.copy.show(None if self.all_results else view_folders(job))
        self.copy.checkout(commit, None)

    def _checkout_clean(self, commit: str, job: str | None) -> None:
        """Check out ``commit``, replacing any next-job function edits, and say so."""
        self._checkout(commit, job)
        self._function_marker().unlink(missing_ok=True)

    def _recover_from_crash(self) -> None:
        """Undo what a killed earlier process left in this local copy.

        This process holds the copy's file lock, so no other worker runs here:
        git's lock files and Distribute's scratch indexes are leftovers of a
        process killed mid-command, and would make every git command fail.
        Edits of a next-job function that was running are dropped, and a job's
        command the dead process left running is stopped.  Files a job wrote are
        kept: ``get_next_job`` saves those in the job's folder to its branch.
        """
        git_dir = Path(self.path) / ".git"
        # a job's command the dead process left running would write beside the restart
        reap_leftover_command(git_dir)
        # and a git command it left running would race with the clean-up below
        kill_git_left_in(git_dir)
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
        """Stop the heartbeat, give back what this worker holds, say it is gone, and free
        the local copy.

        A job still running is given back as *interrupted* (it runs again, from what
        its last update pushed, without using up an attempt), so no one waits a lease
        for it; the lock, if held, is released; the liveness record says the worker
        left, so no waiting worker counts it in turn.  Called at interpreter exit for
        workers that were never closed.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
        try:
            if self.coord.job is not None:
                with contextlib.suppress(DistributeError):
                    self._end_job_attempt("the worker was closed while the job ran")
            if self.coord.holding is not None:
                with contextlib.suppress(TransportError):
                    self.coord.release()
            self._fold_own_parked()
            self.coord.prune_merged(at_least=1)
            self._say_gone()
        finally:
            if self._filelock.is_locked:
                self._filelock.release()

    def _fold_own_parked(self) -> None:
        """Closing: fold this worker's parked finishes into the main branch, so that a
        script that stops after ``finish_job()`` leaves ``done.txt`` complete (best
        effort: a few tries; whatever is left, the next worker to look folds)."""
        for _ in range(5):
            if not self.coord.beat.parked:
                return
            try:
                if self.coord.fold(self.coord.observe()):
                    return
            except DistributeError:
                return

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _end_job_attempt(self, reason: str) -> None:
        """One try to give the running job back as interrupted (no retries: closing)."""
        with contextlib.suppress(FileTooLarge):  # its branch keeps the last update
            self.commit_update(f"partial results of {self.running_job}")
        self.coord.fail_step(reason, interrupted=True)
        if self.coord.job is None:
            self._mark_job()

    def _say_gone(self) -> None:
        """Tell the others this worker asks for no more jobs (best effort)."""
        with contextlib.suppress(DistributeError):
            self.coord.say_gone()

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
    def resumed_from(self) -> str | None:
        """The earlier attempt's branch this attempt started from (its files were there
        when the job began), or ``None`` for a fresh start."""
        return self.coord.job.resumed_from if self.coord.job else None

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
        One that answers from files (``next_job_from_files``, as
        :class:`~distribute.sources.QueueJobs` does) reads the fetched main
        branch and leaves the working tree alone.

        Idle workers take turns at a free lock, least recently served first
        (:func:`~distribute.core.plan.ahead_in_turn`): the first in line tries
        at once, and each one further back gives each worker ahead of it a
        turn's time (:meth:`_slot`: a look and a claim as measured here), up to
        :data:`TURNS_WAITED` of them, so a worker that is busy elsewhere or
        gone holds the others up only briefly.

        Returns:
            The job name, or ``None`` when the function has no job and no
            other worker still runs one (with ``wait_for_running=False``: as
            soon as the function has none); the working tree then holds the
            main branch as the last look saw it.

        Raises:
            JobAlreadyRunning: finish or fail the running job first.
            DirtyWorkingTree: the local copy has uncommitted changes.
            InvalidName: the function returned a name a ledger cannot hold.
        """
        self._ready_to_ask()
        waiting = _Waiting(
            # while the queue is empty and others' jobs run: from poll_seconds up to the
            # idle ceiling, so a short wait ends fast and a long one costs few requests
            Backoff(self.poll_seconds, self.idle_poll_seconds, self._rng, spread=0.25)
        )
        self._waiting_since = self._clock()
        self._pacer.new_wait()
        while True:
            snap = self._wait_for_turn(waiting)
            got = snap if isinstance(snap, _Pause) else self._try_for_job(snap, next_job_func,
                                                                          waiting)
            if isinstance(got, JobHolding):
                return self._begin(got)
            if isinstance(got, _Leave):
                if self._leave(got.snap, next_job_func):
                    return None
                # the main branch moved: look again, then fold what is left
            elif got.seconds is not None:
                self._sleep(got.seconds)

    def _ready_to_ask(self) -> None:
        """Refuse to ask for a job while one runs or the copy has changes; take up what an
        earlier life of this worker left (:meth:`_recover_own_job`)."""
        if self.coord.job is not None:
            raise JobAlreadyRunning(
                f"this worker still runs {self.coord.job.job!r}; call finish_job() or "
                "fail_job(reason) first"
            )
        self._recover_own_job()
        changed = self.copy.changed_paths()
        if changed:
            raise DirtyWorkingTree(
                f"the local copy {self.path} has uncommitted changes ({', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}); commit, move or delete them before "
                "asking for a job",
                paths=changed,
            )

    def _wait_for_turn(self, waiting: _Waiting) -> Snapshot | _Pause:
        """Peek or look once: the snapshot on which to try for a job, or how long to
        pause first (waiting for our turn, or for the queue to change)."""
        if waiting.watch is not None:
            pacer = self._pacer
            if looks_in_full(waiting.watch, pacer.observe_seconds, pacer.peek_seconds):
                waiting.watch = None  # the next in turn: a look tells it all at once
            else:
                waiting.watch, delay = self._peek(waiting.watch)
                if waiting.watch is not None:
                    return _Pause(delay)
        snap = self._look()
        if (
            snap.main == waiting.idle_main
            and isinstance(self.coord.plan(snap), CallNextJobFunction)
            and others_running(snap.outlook, self.name)
        ):
            # draining: the function had no job on this very main branch, and no job is
            # orphaned; ask it again only once something changed (finishes parked
            # meanwhile are folded in, so done.txt does not wait for a claim)
            self._fold_parked(snap)
            return _Pause(waiting.backoff.next())
        if not self.coord.registered(snap):
            # a liveness record saying we are here, so that waiting workers count this
            # one in turn
            self._retrying(self.coord.renew_beat)
            snap = self._look()
        return snap

    def _try_for_job(
        self, snap: Snapshot, func: NextJobFunction, waiting: _Waiting
    ) -> JobHolding | _Leave | _Pause:
        """Try once, on ``snap``, to claim a job when it is our turn: the job, that there
        is none to wait for, or how long to pause before the next look."""
        if self.coord.handed(snap) is not None:
            # another worker's claim gave us a job: take it up (no turn, no claim)
            handed = self._retrying(partial(self.coord.take_handed, snap))
            return handed if handed is not None else _Pause(None)
        ahead = self.coord.ahead_in_turn(snap)
        watching = Watch(
            lock_free=snap.lock.free, lock_oid=snap.lock_oid, latest=snap.lock_oid,
            ahead=tuple(ahead), ahead_oids={
                **{r: snap.refs.get(r, "") for r in ahead},
                **{m: snap.refs[m] for r in ahead if (m := marker_of(r)) in snap.refs},
            },
            handed=snap.refs.get(handed_ref(self.coord.worker)),
        )
        verdict = after_look(watching, self._turn_wait(len(ahead)))
        if isinstance(verdict, KeepWatching):
            # idle workers take turns at a free lock; ours comes after those ``ahead``
            waiting.watch = verdict.watch
            return _Pause(min(verdict.wake_by or 0.0, self._poll_delay(len(ahead))))
        if self.coord.others_finishing(snap):
            # a finish that kept losing races asked for its turn: claim nothing (nor move
            # the main branch otherwise) until it has landed
            return _Pause(self._poll_delay(0))
        if self._may_claim_unlocked(snap, func):
            started = snap.at
            outcome = self._claim_unlocked(snap, func)
            if isinstance(outcome, JobHolding):
                # how long a claim takes here, from the fetch to the landed push
                self._pacer.claimed(self._clock() - started)
        elif self._retrying(partial(self.coord.try_acquire, snap)):
            outcome = self._under_lock(snap, func)
        else:
            # a held lock is watched cheaply; a free one (a lost race, a torn read) is
            # looked at in full again
            waiting.watch = after_failed_try(watching)
            return _Pause(self._poll_delay(len(ahead)))
        if isinstance(outcome, JobHolding):
            return outcome
        if outcome is _Step.NONE:
            return _Leave(snap)
        if outcome is _Step.WAIT:
            waiting.idle_main = snap.main
            self._fold_parked(snap)
            return _Pause(waiting.backoff.next())
        if outcome is _Step.LOST:
            # someone claimed or finished first; if the lock did not move it is still our
            # turn, so look again almost at once
            return _Pause(self._rng.uniform(0, self.poll_seconds / 4))
        return _Pause(None)  # _Step.AGAIN: the holding was lost; start over at once

    def _begin(self, job: JobHolding) -> str:
        """Check out the claimed job's branch and make its folder safe to write."""
        # detached: a local branch per job would pile up, and git reads them all at each
        # fetch (the job's branch is on the remote)
        self._retrying(partial(self._checkout_clean, job.tip, job.job))
        # links the remote put in the job's folder would lead writes out of the copy
        self.removed_links = secure_job_folder(self.path, self.job_dir, create=False)
        self._mark_job()
        return job.job

    def _leave(self, snap: Snapshot, func: NextJobFunction) -> bool:
        """No job, and none to wait for: fold every parked finish seen and say this worker
        is gone.  ``False``: the main branch moved first (look again)."""
        if not self._fold_parked(snap, everyone=True):
            return False
        if decides_from_files(func):
            # as after a function that ran on the working tree: it holds the main branch
            # the last look saw
            self._retrying(partial(self._checkout_clean, snap.main, None))
        self._say_gone()
        return True

    def _fold_parked(self, snap: Snapshot, everyone: bool = False) -> bool:
        """Fold the finishes parked on liveness records into the main branch (see
        :meth:`~distribute.coordination.Coordinator.fold`); a worker with no job to claim
        does it, so that ``done.txt`` lists them without waiting for the next claim, and
        one that leaves folds every one it sees, so the last to leave leaves none behind.
        ``False``: the main branch moved first."""
        return self._retrying(partial(self.coord.fold, snap, everyone))

    def _look(self) -> Snapshot:
        """A full look at the remote, timed for the pacer.

        Right after a finish of this worker's own (the usual loop: finish, then ask
        again), the finish's view serves instead
        (:attr:`~distribute.coordination.Coordinator.after_finish`): it is the fetch
        that finish made, with what it pushed since, no older than a look would take
        here.  A worker alone thus claims its next job without a fetch of its own, and
        one among others learns its place in turn without one."""
        recent = self.coord.take_after_finish(max(self.poll_seconds, self._pacer.observe_seconds))
        if recent is not None:
            return recent
        looked = self._clock()
        snap = self._retrying(self.coord.observe)
        self._pacer.looked(self._clock() - looked)
        return snap

    def _peek(self, watch: Watch) -> tuple[Watch | None, float | None]:
        """One peek while waiting (:func:`~distribute.core.pacing.after_peek`): the updated
        watch and how long to sleep before the next peek, or ``None`` when a full look
        is due at once."""
        looked = self._clock()
        refs, asked = self._peek_refs(len(watch.ahead))
        now = self._clock()
        if asked:  # another worker's answer took no time, which says nothing of a peek's
            self._pacer.peeked(now - looked)
        self._pacer.count_turns(refs, now, WORKERS_PREFIX)
        verdict = after_peek(
            watch, refs, LOCK_REF,
            expired=self.coord.watch.expired(LOCK_REF, now),
            wait=self._turn_wait(len(still_ahead(watch, refs))),
            handed_ref=handed_ref(self.coord.worker) if self.hand_off else None,
        )
        if isinstance(verdict, LookAgain):
            return None, None
        delay = self._poll_delay(len(verdict.watch.ahead))
        if verdict.wake_by is not None:
            delay = min(delay, verdict.wake_by)  # wake when it is our turn
        return verdict.watch, delay

    def _peek_refs(self, ahead: int) -> tuple[dict[str, str], bool]:
        """The refs a peek reads, and whether this worker asked the remote: workers of this
        machine share their peeks (:mod:`distribute.shared_peeks`) when they are no older
        than half the wait this worker would sleep between two peeks of its own."""
        if self._shared_peeks is None:
            return self._retrying(self.coord.peek), True
        max_age = self._pacer.poll_delay(ahead) / 2
        refs, asked = self._retrying(
            partial(self._shared_peeks.get, self.coord.peek, max_age))
        if not asked:
            refs = self.coord.peek(refs)
        return refs, asked

    def _turn_wait(self, ahead: int) -> float:
        """Seconds left before a free lock is ours to try (:func:`~distribute.core.pacing.
        turn_wait`; records of workers gone without saying so count as idle until seen
        unchanged for a lease)."""
        now = self._clock()
        return turn_wait(
            ahead, self._pacer.slot(),
            self.coord.watch.unchanged_for(LOCK_REF, now), now - self._waiting_since,
        )

    def _poll_delay(self, ahead: int) -> float:
        """A jittered wait between looks (:meth:`~distribute.core.pacing.Pacer.poll_delay`)."""
        delay = self._pacer.poll_delay(ahead)
        return self._rng.uniform(delay / 2, delay)

    def _may_claim_unlocked(self, snap: Snapshot, func: NextJobFunction) -> bool:
        """A repo-only function may decide with the lock free (see :mod:`distribute.sources`);
        orphaned jobs, a held lock and a torn view go the locked way."""
        return (
            is_repo_only(func)
            and snap.lock.free
            and not self.coord.torn(snap)
            and isinstance(self.coord.plan(snap), CallNextJobFunction)
        )

    def _claim_unlocked(self, snap: Snapshot, func: NextJobFunction) -> JobHolding | _Step:
        targets = self.coord.handoff_targets(snap)
        if targets and decides_from_files(func):
            job, edits, handed = self._next_jobs_from_files(snap, func, targets)
        else:
            (job, edits), handed = self._run_next_job_function(snap, func), []
        if job is None:
            return self._no_job(snap)
        got = self._claim_or_undo(
            snap, func, partial(self.coord.claim_unlocked_step, snap, job, edits, handed))
        # not claimed: someone claimed first (look again at once: the lock may still be
        # free and ours in turn), or the claim landed too late to run
        return got if isinstance(got, JobHolding) else _Step.LOST

    def _no_job(self, snap: Snapshot) -> _Step:
        """The function had no job: wait while other workers still run one (it may come
        back), else none."""
        waiting = self.wait_for_running and others_running(snap.outlook, self.name)
        return _Step.WAIT if waiting else _Step.NONE

    def _claim_or_undo(
        self, snap: Snapshot, func: NextJobFunction,
        claim: Callable[[], JobHolding | NotClaimed],
    ) -> JobHolding | NotClaimed:
        """Run ``claim``; if it did not claim, undo the next-job function's edits of the
        working tree (a function that decides from files made none)."""
        try:
            return self._retrying(claim)
        finally:
            if self.coord.job is None and not decides_from_files(func):
                self._checkout_clean(snap.main, None)

    def _under_lock(self, snap: Snapshot, func: NextJobFunction) -> JobHolding | _Step:
        coord = self.coord
        try:
            while True:
                if coord.holding is None:
                    return _Step.AGAIN
                plan = coord.plan(snap)
                if isinstance(plan, GiveUp):
                    snap = self._retrying(partial(coord.give_up, snap, plan))
                    continue
                if isinstance(plan, Retry):
                    got = self._retrying(partial(coord.claim_step, snap, plan, None))
                    # any NotClaimed: the holding or the plan is gone, start over at once
                    return got if isinstance(got, JobHolding) else _Step.AGAIN
                if not coord.keep_valid_holding():
                    # paused past the lease since the acquire: another worker may hold
                    # the lock now, so the function must not run on this holding (and
                    # the coordinator forgot it)
                    return _Step.AGAIN
                job, edits = self._run_next_job_function(snap, func)
                if job is None:
                    self._retrying(partial(coord.release, snap.main))
                    return self._no_job(snap)
                claim = partial(coord.claim_step, snap, CallNextJobFunction(), job, edits)
                got = self._claim_or_undo(snap, func, claim)
                return got if isinstance(got, JobHolding) else _Step.AGAIN
        except BaseException:
            if coord.holding is not None:
                with contextlib.suppress(TransportError):  # else the lease expires
                    coord.release(snap.main)
            raise

    def _next_jobs_from_files(
        self, snap: Snapshot, func: DecidesFromFiles, targets: list[Beat]
    ) -> tuple[str | None, str | None, list[tuple[Beat, str]]]:
        """Ask a function that decides from files for this worker's job, then again for
        one job per idle worker in ``targets`` (each answer reads the files as the
        answers before it left them): this worker's job, one commit of all the edits,
        and the (record, job) pairs to hand off (fewer when the queue runs out)."""
        read = partial(self.transport.read_file, snap.main)
        changes: dict[str, bytes | None] = {}

        def current(path: str) -> bytes | None:
            return changes[path] if path in changes else read(path)

        names: list[str] = []
        for _ in range(1 + len(targets)):
            answer = func.next_job_from_files(current)
            if answer is None:
                break
            names.append(check_name(answer[0], "job"))
            changes.update(answer[1])
        if not names:
            return None, None, []
        commit = self.transport.write_commit(
            parents=[snap.main], base=snap.main, changes=changes,
            message="distribute: next-job function edits",
        )
        return names[0], commit, list(zip(targets, names[1:], strict=False))

    def _run_next_job_function(
        self, snap: Snapshot, func: NextJobFunction
    ) -> tuple[str | None, str | None]:
        if decides_from_files(func):
            # the queue's answer comes from the fetched main branch's files, and its edit
            # is written as a commit straight away: no checkout, no snapshot
            answer = func.next_job_from_files(partial(self.transport.read_file, snap.main))
            if answer is None:
                return None, None
            name = check_name(answer[0], "job")
            commit = self.transport.write_commit(
                parents=[snap.main], base=snap.main, changes=answer[1],
                message="distribute: next-job function edits",
            )
            return name, commit
        self._checkout(snap.main, None)
        self._function_marker().touch()
        job = None
        try:
            job = call_next_job_function(func, self)
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
        try:
            changed = self.copy.changed_paths()
            if not changed:
                if self.coord.revoked:
                    self.coord.update(job.tip)  # raises LeaseLost
                return False
            self._check_sizes(changed)
            tip = self.copy.snapshot(job.tip, message or f"update {job.job}")
            # move the branch, HEAD and index only: files the job keeps open stay as they are
            self.copy.advance(tip, None)
            self._upload_large(tip, changed)
            inside = job_dir(job.job) + "/"
            self._retrying(partial(self.coord.update, tip,
                                   all(path.startswith(inside) for path in changed)))
            return True
        finally:
            if self.coord.job is None:
                self._mark_job()

    def _check_sizes(self, paths: list[str]) -> None:
        """Refuse files over ``max_file_bytes`` before anything is committed or pushed;
        files routed through Git LFS are exempt where git-lfs is installed (git stores a
        pointer of about 130 bytes for each), refused where it is not."""
        if self.max_file_bytes is None:
            return
        big = []
        for path in paths:
            try:
                size = os.lstat(os.path.join(self.path, path)).st_size
            except OSError:
                continue  # deleted: nothing to push
            if size > self.max_file_bytes:
                big.append((path, size))
        if not big:
            return
        routed = set(self.copy.lfs_routed([p for p, _ in big]))
        if routed and not self.copy.lfs:
            raise FileTooLarge(
                f"{', '.join(sorted(routed)[:5])}: .gitattributes routes "
                f"{'it' if len(routed) == 1 else 'them'} through Git LFS, but git-lfs is not "
                "installed on this machine; nothing was committed or pushed. Install it "
                "(apt-get install git-lfs, dnf install git-lfs, brew install git-lfs, or "
                "https://git-lfs.com) and run the job again",
                paths=sorted(routed),
            )
        big = [(p, size) for p, size in big if p not in routed]
        if big:
            names = ", ".join(f"{p} ({size / 1e6:.1f} MB)" for p, size in big[:5])
            raise FileTooLarge(
                f"{names} {'is' if len(big) == 1 else 'are'} larger than max_file_bytes "
                f"({self.max_file_bytes / 1e6:.1f} MB); nothing was committed or pushed. "
                "Git hosts refuse files over 100 MB: route such files through Git LFS "
                "(git lfs track '*.pt' in a clone, then commit and push .gitattributes to "
                "the main branch), or write them outside the local copy (or list them in "
                ".gitignore) and commit a small summary, or raise max_file_bytes if your "
                "remote takes them",
                paths=[p for p, _ in big],
            )

    def _upload_large(self, commit: str, paths: list[str]) -> None:
        """Upload the Git LFS objects that ``paths`` of ``commit`` point to, before the
        commit is pushed (git's own pre-push hook never runs here), and drop the copy's
        own copies of them (after ``advance``, whose index refresh may store them again)."""
        objects = self.copy.lfs_objects(commit, paths)
        if objects:
            self._retrying(partial(self.copy.upload_lfs, objects))

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

        Uncommitted changes are committed first.  When this returns, the results are
        on the remote and the job can no longer be taken over.  With other workers
        about, the finish is *parked* on this worker's liveness record and the next
        move of the main branch (any worker's claim, or this worker's next
        ``get_next_job``) merges it and lists the job in ``done.txt``; a job whose
        branch no longer merges by then (another job wrote the same file first) is
        recorded in ``failed.txt`` with its branch kept, as a conflict found here is.

        Raises:
            LeaseLost: the job was taken over; the main branch is unchanged.
            MergeConflict: the job is recorded in ``failed.txt``; its branch stays.
        """
        self._job()
        self.commit_update(f"final results of {self.running_job}")
        # from here a restarted worker completes this finish instead of running the job again
        self._mark_job(finishing=True)
        try:
            self._finish_adopted()
        finally:
            if self.coord.job is None:
                self._mark_job()
        self._finished += 1
        self._prune()
        if self._finished % _HOUSEKEEPING_EVERY == 0:
            self._housekeeping()

    def fail_job(self, reason: str = "failed", *, interrupted: bool = False) -> FailOutcome:
        """Record that the job failed; it is retried while attempts are left.

        Uncommitted changes are committed to the job branch first.

        Args:
            reason: why, for ``running.txt``/``failed.txt``.
            interrupted: the job did not fail, it was stopped (a signal, a
                shutdown); the attempt does not count toward ``max_attempts``
                (only toward the generous ``max_interruptions``).

        Returns:
            ``FailOutcome.RETRY`` or ``FailOutcome.FAILED`` (no attempts left; see
            ``failed.txt``), strings that equal ``"retry"`` and ``"failed"``.
        """
        self._job()
        try:
            self.commit_update(f"partial results of {self.running_job}")
        except FileTooLarge as exc:
            # the branch keeps the last update; the reason says what was left out
            reason = f"{reason} (not committed: {', '.join(exc.context['paths'][:3])} too large)"
        backoff = Backoff(self.poll_seconds / 4, self.max_poll_seconds, self._rng)
        try:
            outcome = self._retrying(
                partial(self.coord.fail, reason, self._sleep, backoff.next, interrupted)
            )
        finally:
            if self.coord.job is None:
                self._mark_job()
        # a job failed for good: its branch goes to this worker's archive with the next
        # batch of deletions (the archive's commits keep what it held)
        self._prune()
        return outcome

    def _prune(self) -> None:
        """After a job's end: every few jobs, the branches of the jobs finished here leave
        the remote (their commits stay: the main branch holds them), and those of the
        jobs that failed for good go to this worker's archive, so refs do not grow with
        the sweep."""
        if not self._leftovers_queued:
            # what an earlier life of this worker, killed before its batch, left behind
            # goes with this life's batches
            self._leftovers_queued = True
            with contextlib.suppress(DistributeError):
                self.coord.queue_leftovers()
        self.coord.prune_merged()

    # ---- plumbing --------------------------------------------------------------
    def _job(self) -> JobHolding:
        if self.coord.job is None:
            raise NoRunningJob("this worker runs no job; call get_next_job first")
        return self.coord.job

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run ``step``, retrying transport errors with backoff for ``retry_seconds``."""
        backoff = Backoff(max(0.05, self.poll_seconds), max(1.0, self.max_poll_seconds), self._rng)
        return retry_transport(step, seconds=self.retry_seconds, backoff=backoff,
                               clock=self._clock, sleep=self._sleep,
                               failed="the remote stayed unreachable",
                               answered=self.coord.answers_here)


def worker_from_url(
    url: str, path: str | os.PathLike[str], name: str | None = None, *,
    shared_objects: str | os.PathLike[str] | None = None, **options: Any
) -> Worker:
    """A worker on ``path``, cloning ``url`` there first if the path does not exist.

    An existing local copy is reused; it must be a clone of the same remote.
    ``shared_objects``: a folder for an object store that this machine's copies of
    the remote share (:mod:`distribute.transport.shared_objects`); a new copy then
    borrows the objects the store has instead of downloading and keeping its own.
    Options are those of :class:`Worker`.
    """
    target = Path(path)
    split = split_secret(url)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        # the first checkout already leaves other jobs' folders out (see ``all_results``)
        everything = bool(options.get("all_results", False))
        shown = None if everything else view_folders(None)
        if shared_objects is None:
            lazy = None if everything else LAZY_BLOB_BYTES
            GitLocalCopy.clone(url, target, shown=shown, lazy_blobs_from=lazy).close()
        else:
            with refresh_shared_objects(url, shared_objects, branch=options.get("branch")) as got:
                GitLocalCopy.clone(url, target, reference=got, shown=shown).close()
    else:
        # opening cleans a password an older copy kept in its config
        copy = GitLocalCopy.open(target, secret=split.secret)
        had = copy.remote_url()
        copy.close()
        if had != split.public:
            raise UsageError(
                f"{target} is a clone of another remote: {_difference(had, split.public)}; "
                "choose another path for this remote, or pass the URL that copy was made from"
            )
    return Worker(target, name, secret=split.secret, **options)


def _difference(had: str, wanted: str) -> str:
    """Where two remote URLs differ, in words, with no secret in them."""
    from urllib.parse import urlsplit

    a, b = urlsplit(had), urlsplit(wanted)
    parts = []
    if a.scheme == b.scheme and a.scheme:
        host_a, host_b = (f"{u.hostname}{f':{u.port}' if u.port else ''}" for u in (a, b))
        if host_a != host_b:
            parts.append(f"host {host_a} there, {host_b} asked for")
        if a.username != b.username:
            parts.append(f"user {a.username or '(none)'} there, {b.username or '(none)'} asked for")
        if a.path != b.path:
            parts.append(f"path {a.path} there, {b.path} asked for")
    return "; ".join(parts) or f"{scrub_url(had)} there, {scrub_url(wanted)} asked for"


__all__ = ["TURNS_WAITED", "Worker", "default_worker_name", "worker_from_url"]
