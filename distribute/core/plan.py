"""What a lock holder does next: retry an orphaned job, or ask the next-job function.

Theory of operation
-------------------
Once a worker holds the lock it looks at the ledger before calling the
next-job function.  Jobs released for a retry, jobs whose holder's lease
expired, and jobs held by this worker's own earlier life (a restart) are
offered first, one at a time, as attempt + 1 -- or, when their attempts are
used up, moved to ``failed.txt``.  Only when none is left is the next-job
function called.  Pure: the caller says which holders it judged expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from distribute.core.ledger import MAX_INTERRUPTIONS, Entry, Ledger


@dataclass(frozen=True, slots=True)
class Retry:
    """Claim ``entry.job`` again as attempt ``entry.attempt + 1``.

    ``revoke`` names the previous holder whose liveness ref must be revoked
    (by CAS from its observed value) in the same atomic push; ``""`` when the
    job was released cleanly or belonged to this worker's earlier life.
    ``interrupted``: the job is still held (by a worker whose lease expired,
    or by this worker's earlier life), and that attempt ends as interrupted.
    """

    entry: Entry
    revoke: str = ""
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Move ``entry.job`` to ``failed.txt``: its attempts are used up."""

    entry: Entry
    reason: str
    revoke: str = ""


@dataclass(frozen=True, slots=True)
class CallNextJobFunction:
    """No orphaned job: ask the next-job function for a new one."""


ClaimPlan = Retry | GiveUp | CallNextJobFunction


def plan_claim(
    ledger: Ledger, me: str, expired: Set[str], max_attempts: int,
    max_interruptions: int = MAX_INTERRUPTIONS, session: str = "",
) -> ClaimPlan:
    """Choose the holder's next move.

    Args:
        ledger: the ledger at the main branch the holder observed.
        me: this worker.  Its own running entries are from an earlier life
            (a worker runs one job at a time and has none when it asks for
            the next), so they are retried at once without waiting a lease.
        expired: workers whose liveness the caller judged expired.
        max_attempts: failed attempts allowed per job.
        max_interruptions: interrupted attempts allowed per job.
        session: this worker's process; a job another worker claimed for it
            (``Entry.session``) is its to take up, not an orphan.
    """
    for entry in ledger.running:
        if session and entry.handed_to(me, session):
            continue
        if entry.released:
            if entry.failures >= max_attempts or entry.interrupted >= max_interruptions:
                return GiveUp(entry, entry.reason or "attempts used up")
            return Retry(entry)
        if entry.worker == me:
            revoke, why = "", f"worker {me!r} restarted"
        elif entry.worker in expired:
            revoke, why = entry.worker, f"lease of worker {entry.worker!r} expired"
        else:
            continue
        if entry.interrupted + 1 >= max_interruptions:
            reason = f"interrupted {entry.interrupted + 1} times; the last time: {why}"
            return GiveUp(entry, reason, revoke=revoke)
        return Retry(entry, revoke=revoke, interrupted=True)
    return CallNextJobFunction()


def others_running(ledger: Ledger, me: str) -> tuple[Entry, ...]:
    """Jobs still held by other workers: the reason to wait instead of returning ``None``."""
    return tuple(e for e in ledger.running if e.worker != me)


def ahead_in_turn(idle: Iterable[str], me: str, ledger: Ledger) -> list[str]:
    """The idle workers that go before ``me`` the next time the lock is free, in order.

    Idle workers (``idle``, those running no job, plus ``me``) take turns
    least recently served first: ordered by the highest fencing token of any
    job each one claimed (as ``ledger`` records it), then by name.  A worker
    that has just claimed goes to the back, so the order is first come, first
    served, and every observer of the same main branch computes the same
    order.  An empty list means it is ``me``'s turn.  When two workers
    disagree, the compare-and-swap still lets only one win: the order only
    keeps waiting workers from colliding, and the one that just finished a
    job from overtaking those that waited.
    """
    others = set(idle) - {me}
    if not others:
        return []  # alone: nothing to order, and no ledger to scan
    order = in_turn(others | {me}, ledger)
    return order[: order.index(me)]


def in_turn(workers: Iterable[str], ledger: Ledger) -> list[str]:
    """``workers`` least recently served first: by the highest fencing token each claimed
    under (as ``ledger`` records it), then by name (:func:`ahead_in_turn`)."""
    served = ledger.served()
    return sorted(workers, key=lambda name: (served.get(name, -1), name))
