"""Edits of the queue and the ledgers from outside a worker, fenced by the remote lock.

A worker's next-job function reads ``jobs.txt`` while it holds the lock; an
edit made beside it (queueing, requeueing) would make its claim conflict.  So
every such edit takes the lock like a worker does (compare-and-swap from the
observed value), then pushes ``{main branch: the edit, lock: released}`` in
one atomic push.  If the lock was broken meanwhile (``distribute unlock``)
the push is refused whole and the edit is redone on what is there now.
An edit is a pure function ``edit(ledger, queue) -> (ledger, queue,
message) | None`` so that it can run again on a newer state.

An edit that takes a job from a live holding (``cancel`` of a running job,
``requeue --force``) revokes that holder's liveness record in the same atomic
push, as a takeover by another worker does: the holder learns it at its next
heartbeat, stops the job's command, and can no longer finish or update it (its
ledger line is gone).  If the holder wrote its record meanwhile the push is
refused and the edit is made again on the new values.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from distribute.backoff import Backoff
from distribute.core.errors import DistributeError, RemoteStateError, UsageError
from distribute.core.ledger import Entry, Ledger
from distribute.core.lock import Beat, LockState, beat_message, lock_message, parse_beat_message
from distribute.core.names import LOCK_REF, worker_ref
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate

if TYPE_CHECKING:
    from distribute.remote import RemoteView

Edit = Callable[[Ledger, list[str]], "tuple[Ledger, list[str], str] | None"]


class _LockLost(Exception):
    """Internal: the lock was broken while we edited under it."""


class FencedEdit:
    """Edit ``jobs.txt`` and the ledgers under the remote lock, in one atomic push.

    Args:
        view: the remote.
        who: the lock holder name written to the lock record.
        wait: seconds to wait for a lock whose record does not change before
            giving up (a dead holder's lock; ``distribute unlock`` breaks it).
    """

    def __init__(
        self,
        view: RemoteView,
        who: str,
        wait: float = 60.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.who = who
        self.wait = wait
        self.session = uuid.uuid4().hex
        self._sleep = sleep
        self._clock = clock

    def apply(self, edit: Edit) -> bool:
        """Apply ``edit(ledger, queue) -> (ledger, queue, message) | None``.

        ``edit`` may run more than once (on newer states after lost races); it
        must be a pure function of its arguments.  Returns ``True`` when a
        commit was pushed, ``False`` when ``edit`` had nothing to change.
        """
        self.view.ledger(self.view.main())  # a remote without ledgers: say so before locking
        backoff = Backoff(0.05, 1.0)
        for _ in range(100):
            held = self._acquire()
            try:
                return self._edit(held, edit)
            except _LockLost:
                self._sleep(backoff.next())
            except BaseException:
                self._release(held)
                raise
        raise RemoteStateError("the lock kept being broken while editing; try again")

    def _acquire(self) -> tuple[Oid, LockState]:
        transport = self.view.transport
        backoff = Backoff(0.05, 1.0)
        seen: str | None = None
        since = started = self._clock()
        while True:
            if self._clock() - started > 5 * self.wait:
                raise RemoteStateError(
                    f"the lock stayed busy for {5 * self.wait:.0f} s (workers kept taking it); "
                    "try again"
                )
            oid, state = self.view.lock()
            if oid is None:
                raise RemoteStateError(
                    "the remote has no lock (refs/distribute/lock); prepare it with "
                    "`distribute init REMOTE`"
                )
            if state.free:
                held = state.acquired_by(self.who, self.session, uuid.uuid4().hex[:12])
                new = transport.write_commit(parents=[oid], message=lock_message(held), changes={})
                if transport.push([_update(LOCK_REF, oid, new)]):
                    return new, held
                continue
            now = self._clock()
            if oid != seen:
                seen, since = oid, now
            elif now - since >= self.wait:
                raise RemoteStateError(
                    f"the lock is held by {state.holder!r} (token {state.token}) and has not "
                    f"changed for {self.wait:.0f} s; if that worker is dead, break the lock "
                    "with `distribute unlock REMOTE`, or try again later"
                )
            self._sleep(backoff.next())

    def _edit(self, held: tuple[Oid, LockState], edit: Edit) -> bool:
        transport = self.view.transport
        held_oid, state = held
        for _ in range(50):
            main = self.view.main()
            ledger = self.view.ledger(main)
            queue = read_queue((transport.read_file(main, JOBS_FILE) or b"").decode("utf-8"))
            out = edit(ledger, queue)
            changes: dict[str, bytes | None] = {}
            if out is not None:
                new_ledger, new_queue, message = out
                changes = new_ledger.changed_files(ledger)
                if new_queue != queue:
                    changes[JOBS_FILE] = format_queue(new_queue).encode("utf-8")
            if not changes:
                self._release(held)
                return False
            assert out is not None
            new_main = transport.write_commit(
                parents=[main], base=main, changes=changes, message=out[2]
            )
            released = transport.write_commit(
                parents=[held_oid], message=lock_message(state.released(new_main)), changes={}
            )
            revocations = self._revocations(ledger, out[0], state.token)
            if transport.push(
                [_update(self.view.main_ref, main, new_main), _update(LOCK_REF, held_oid, released),
                 *revocations]
            ):
                return True
            if transport.list_refs(LOCK_REF).get(LOCK_REF) != held_oid:
                raise _LockLost()
        raise RemoteStateError("the main branch kept moving; try again")

    def _revocations(self, before: Ledger, after: Ledger, token: int) -> list[RefUpdate]:
        """The liveness records to revoke: those of workers whose live holding of a job
        ``after`` no longer shows (compare-and-swap from their current values)."""
        taken = sorted({
            e.worker for e in before.running
            if not e.released and not _same_holding(after.running_entry(e.job), e)
        })
        transport = self.view.transport
        current = transport.fetch([worker_ref(w) for w in taken]) if taken else {}
        updates = []
        for worker in taken:
            ref = worker_ref(worker)
            old = current.get(ref)
            record = None
            if old is not None:
                with contextlib.suppress(DistributeError):
                    record = parse_beat_message(transport.commit_message(old))
            revoked = Beat.revoking(record, worker, self.who, token)
            new = transport.write_commit(parents=[], message=beat_message(revoked), changes={})
            updates.append(_update(ref, old, new))
        return updates

    def _release(self, held: tuple[Oid, LockState]) -> None:
        transport = self.view.transport
        held_oid, state = held
        with contextlib.suppress(DistributeError):
            released = transport.write_commit(
                parents=[held_oid], message=lock_message(state.released()), changes={}
            )
            transport.push([_update(LOCK_REF, held_oid, released)])


def _update(ref: str, old: Oid | None, new: Oid | None) -> RefUpdate:
    return RefUpdate(ref, old, new)


def _same_holding(entry: Entry | None, held: Entry) -> bool:
    return entry is not None and (entry.worker, entry.token) == (held.worker, held.token)


def cli_holder() -> str:
    """The lock holder name the command line writes: ``cli@<host>-<pid>``."""
    return f"cli@{platform.node() or 'host'}-{os.getpid()}"


def queue_edit(jobs: Sequence[str], result: dict[str, list[str]]) -> Edit:
    """An edit that appends the jobs not yet queued, running, done or failed."""

    def edit(ledger: Ledger, queue: list[str]) -> tuple[Ledger, list[str], str] | None:
        known = set(queue) | {e.job for e in (*ledger.running, *ledger.done, *ledger.failed)}
        added = [j for j in dict.fromkeys(jobs) if j not in known]
        result["added"] = added
        result["skipped"] = [j for j in dict.fromkeys(jobs) if j in known]
        if not added:
            return None
        return ledger, queue + added, f"distribute: queue {len(added)} job(s)"

    return edit


def requeue_edit(
    jobs: Sequence[str] | None, force: bool, result: dict[str, list[str]],
    done: bool = False, seen: Mapping[str, tuple[str, int]] | None = None,
) -> Edit:
    """An edit that forgets failed (or released) jobs and puts them at the front of the queue.

    ``jobs=None`` means every failed job.  A job a live worker holds needs
    ``force``; a done job needs ``done`` (its line in ``done.txt`` is removed in
    the same commit that queues it, so that a worker claims it as a new job; its
    files stay on the main branch and its branch on the remote); an unknown job
    is an error.  Nothing changes unless every job can be requeued.

    ``seen``: for ``force``, the holding (worker, token) of each job when the
    operator decided that its worker was gone.  A job held under another holding
    by the time the edit runs (the worker came back and retried it while the
    command waited for the lock) is not taken: that is a live worker's job.
    """

    def edit(ledger: Ledger, queue: list[str]) -> tuple[Ledger, list[str], str] | None:
        targets = [e.job for e in ledger.failed] if jobs is None else list(dict.fromkeys(jobs))
        problems: list[str] = []
        chosen: list[str] = []
        skipped: list[str] = []
        for job in targets:
            state = ledger.state_of(job)
            entry = ledger.running_entry(job)
            rerun = state == "done" and done
            changed = (
                entry is not None and not entry.released and seen is not None
                and seen.get(job) != (entry.worker, entry.token)
            )
            if rerun or state == "failed" or (
                entry is not None and (entry.released or (force and not changed))
            ):
                chosen.append(job)
            elif entry is not None and changed:
                problems.append(
                    f"{job!r} is held by worker {entry.worker!r} under token {entry.token} now, "
                    "not by the holding this command saw when it started (that worker came "
                    "back, or another took the job over); run it again if that one is gone too"
                )
            elif entry is not None:
                problems.append(
                    f"{job!r} is running on worker {entry.worker!r} (attempt {entry.attempt}); "
                    "pass --force only if that worker is gone"
                )
            elif state == "done":
                problems.append(f"{job!r} is done (pass --done to run it again)")
            elif job in queue:
                skipped.append(job)
            else:
                problems.append(f"{job!r} is not known to this remote")
        if problems:
            raise UsageError("cannot requeue: " + "; ".join(problems) + "; nothing was changed")
        result["requeued"], result["skipped"] = chosen, skipped
        if not chosen:
            return None
        again = {job for job in chosen if ledger.is_done(job)}
        # a done job leaves done.txt as it enters the queue: claimed, it is a new job
        new = replace(ledger, done=tuple(e for e in ledger.done if e.job not in again))
        for job in chosen:
            if job not in again:
                new = new.requeue(job)
        rest = [j for j in queue if j not in set(chosen)]
        return new, chosen + rest, f"distribute: requeue {len(chosen)} job(s)"

    return edit


def cancel_edit(jobs: Sequence[str], result: dict[str, list[str]], who: str = "") -> Edit:
    """An edit that takes queued jobs out of ``jobs.txt``, and running ones out of the run.

    A running job, or one released for another attempt (its worker stopped or
    failed it), is moved to ``failed.txt`` with the reason ``cancelled``, so that
    ``requeue`` can bring it back; a worker running it learns it from its revoked
    liveness record (see the module docstring) and stops its command.  Any other
    job is left alone, and
    ``result["refused"]`` holds one line per such job saying why and what to do
    instead; ``result["cancelled"]`` and ``result["notes"]`` (what each
    cancellation did) are in the order the jobs were named.
    """

    def edit(ledger: Ledger, queue: list[str]) -> tuple[Ledger, list[str], str] | None:
        queued = set(queue)
        cancelled: list[str] = []
        notes: list[str] = []
        refused: list[str] = []
        new = ledger
        for job in dict.fromkeys(jobs):
            entry = ledger.running_entry(job)
            if job in queued:
                cancelled.append(job)
                notes.append(f"cancelled {job!r} (it was queued; it is no longer)")
            elif entry is not None and entry.released:
                cancelled.append(job)
                new = new.expire(job, "cancelled" + (f" by {who}" if who else ""))
                notes.append(
                    f"cancelled {job!r} (it was waiting for attempt {entry.attempt + 1}); "
                    "it is in failed.txt now, and `distribute requeue` runs it again"
                )
            elif entry is not None:
                cancelled.append(job)
                new = new.expire(job, "cancelled" + (f" by {who}" if who else ""))
                notes.append(
                    f"cancelled {job!r} (it was running on worker {entry.worker!r}, attempt "
                    f"{entry.attempt}): that worker stops its command at its next heartbeat; "
                    "the job is in failed.txt, and `distribute requeue` runs it again"
                )
            elif ledger.is_done(job):
                refused.append(
                    f"not cancelled {job!r}: it is done already; its results stay on the main "
                    "branch (`distribute requeue --done` runs it again)"
                )
            elif any(e.job == job for e in ledger.failed):
                refused.append(
                    f"not cancelled {job!r}: it has failed for good already, and nothing runs "
                    "it (`distribute requeue` would run it again)"
                )
            else:
                refused.append(f"not cancelled {job!r}: it is not known to this remote (not "
                               "queued, running, done or failed)")
        result["cancelled"], result["notes"], result["refused"] = cancelled, notes, refused
        if not cancelled:
            return None
        gone = set(cancelled)
        rest = [j for j in queue if j not in gone]
        return new, rest, f"distribute: cancel {len(cancelled)} job(s)"

    return edit


__all__ = ["Edit", "FencedEdit", "cancel_edit", "cli_holder", "queue_edit", "requeue_edit"]
