"""The edits of the queue and the ledgers that commands make from outside a worker.

Each is a pure function ``edit(ledger, queue) -> (ledger, queue, message) |
None``, so that it can run again on a newer state; it is applied under the
remote lock, in one atomic push with the lock's release, by
:class:`distribute.coordination.FencedEdit` (the one writer of the remote's
coordination state; its docstring says how the edit is fenced, and how an edit
that takes a live worker's job revokes that worker's liveness record).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import replace

from distribute.coordination import Edit, FencedEdit
from distribute.core.errors import UsageError
from distribute.core.ledger import Ledger


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
    files stay on the main branch, and its commits too, as the second parent of its
    finish commit); an unknown job
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
