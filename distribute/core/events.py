"""The events a worker's protocol steps report, as typed values.

A :class:`~distribute.coordination.Coordinator` reports each step that
changed (or failed to change) the remote as one of these frozen values.  A
journal callback given to a worker receives them flattened, as
``callback(kind, **fields)`` (:func:`fields_of`: the dataclass fields, those
that are ``None`` left out), which is what the simulator writes to its
journals and what its checker and coverage count read back: both use the
``kind`` constants below instead of spelling the names again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import ClassVar


class FailOutcome(StrEnum):
    """What an ended attempt did to its job: queued it for another attempt, or failed it
    for good (``failed.txt``).  A ``str``, so ``outcome == "retry"`` still reads."""

    RETRY = "retry"
    FAILED = "failed"


class NotClaimed(StrEnum):
    """Why a claim wrote nothing (``Coordinator.claim_step``): the caller starts over
    with a new look.  The value says it for a log."""

    #: the lock holding ran past its lease, or was taken over or broken meanwhile
    LOCK_LOST = "the lock holding was lost"
    #: the next-job function decided on a main branch that was not the newest
    STALE = "the next-job function's answer was stale"
    #: the orphaned job to retry changed meanwhile (finished, retried or failed)
    REPLAN = "the orphaned job changed"
    #: with no lock: someone else claimed first, or the job is known by now
    TAKEN = "another worker claimed first"
    #: the claim landed a lease after it was sent, and the job was taken over meanwhile
    DROPPED = "the claim landed too late to run"


class FinishOutcome(StrEnum):
    """How a finish landed: merged into the main branch by its worker, or *parked* on
    the worker's own liveness record because the main branch moved under it (durable
    there; the next move of the main branch by any worker folds it in)."""

    MERGED = "merged"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class Event:
    """One reported step; ``kind`` names it in journals."""

    kind: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class TornObserve(Event):
    """A look saw a lock record naming a main branch the fetch did not return."""

    kind: ClassVar[str] = "torn-observe"
    lock_main: str
    main: str


@dataclass(frozen=True, slots=True)
class LockAcquire(Event):
    """The lock is ours under ``token`` (``unlocked``: a claim that moved a free lock on)."""

    kind: ClassVar[str] = "lock-acquire"
    token: int
    takeover: bool
    previous: str
    unlocked: bool | None = None


@dataclass(frozen=True, slots=True)
class LockRelease(Event):
    kind: ClassVar[str] = "lock-release"
    token: int
    ok: bool


@dataclass(frozen=True, slots=True)
class LockLost(Event):
    """The lock moved away from our holding (broken, or taken over after a pause)."""

    kind: ClassVar[str] = "lock-lost"
    token: int


@dataclass(frozen=True, slots=True)
class LockRenew(Event):
    kind: ClassVar[str] = "lock-renew"
    token: int


@dataclass(frozen=True, slots=True)
class Revoked(Event):
    """Our liveness record was revoked by ``by`` (a takeover under ``token``)."""

    kind: ClassVar[str] = "revoked"
    by: str
    token: int


@dataclass(frozen=True, slots=True)
class Gone(Event):
    """Our last liveness record says we left."""

    kind: ClassVar[str] = "gone"


@dataclass(frozen=True, slots=True)
class GiveUp(Event):
    """An orphaned job went to ``failed.txt`` (too many attempts)."""

    kind: ClassVar[str] = "give-up"
    job: str
    reason: str


@dataclass(frozen=True, slots=True)
class StaleDecision(Event):
    """The function's job became known meanwhile; the holding was released."""

    kind: ClassVar[str] = "stale-decision"
    job: str


@dataclass(frozen=True, slots=True)
class ResumeConflict(Event):
    """An earlier attempt's files could not be carried into the new attempt."""

    kind: ClassVar[str] = "resume-conflict"
    job: str
    branch: str


@dataclass(frozen=True, slots=True)
class Claim(Event):
    """A claim landed (``revoked``: the worker whose job this one took over, or "";
    ``by``: for a job another worker claimed for this one, that worker, reported when
    this worker takes it up)."""

    kind: ClassVar[str] = "claim"
    job: str
    token: int
    attempt: int
    branch: str
    revoked: str
    by: str | None = None


@dataclass(frozen=True, slots=True)
class HandOff(Event):
    """This worker's claim (of its own job under ``with_token``) also claimed ``job``
    for the idle worker ``to`` under ``token``: the job is ``to``'s, which takes it up
    at its next look."""

    kind: ClassVar[str] = "hand-off"
    job: str
    token: int
    to: str
    with_token: int


@dataclass(frozen=True, slots=True)
class Adopt(Event):
    """A restarted worker took back the job its earlier life held."""

    kind: ClassVar[str] = "adopt"
    job: str
    token: int
    tip: str


@dataclass(frozen=True, slots=True)
class Update(Event):
    kind: ClassVar[str] = "update"
    job: str
    token: int
    tip: str


@dataclass(frozen=True, slots=True)
class FinishPriority(Event):
    """A finish that kept losing races asked the others to hold back their claims."""

    kind: ClassVar[str] = "finish-priority"
    job: str
    token: int


@dataclass(frozen=True, slots=True)
class Finish(Event):
    kind: ClassVar[str] = "finish"
    job: str
    token: int
    tip: str
    outcome: FinishOutcome = FinishOutcome.MERGED


@dataclass(frozen=True, slots=True)
class Fold(Event):
    """A finish that worker ``parker`` (possibly this one) parked landed on the main
    branch in a push of this worker (``merged``: its results merged; else recorded as
    failed, a merge conflict)."""

    kind: ClassVar[str] = "fold"
    job: str
    token: int
    parker: str
    merged: bool = True


@dataclass(frozen=True, slots=True)
class FinishRefused(Event):
    """The ledger refused the finish (the job was taken over)."""

    kind: ClassVar[str] = "finish-refused"
    job: str
    token: int


@dataclass(frozen=True, slots=True)
class Fail(Event):
    """An attempt ended without a finish (``outcome``: what the ledger did with it)."""

    kind: ClassVar[str] = "fail"
    job: str
    token: int
    reason: str
    outcome: FailOutcome | None = None


#: Every kind of event a worker reports.
EVENT_KINDS = frozenset({
    TornObserve.kind, LockAcquire.kind, LockRelease.kind, LockLost.kind, LockRenew.kind,
    Revoked.kind, Gone.kind, GiveUp.kind, StaleDecision.kind, ResumeConflict.kind,
    Claim.kind, HandOff.kind, Adopt.kind, Update.kind, FinishPriority.kind, Finish.kind,
    FinishRefused.kind, Fail.kind, Fold.kind,
})


def fields_of(event: Event) -> dict[str, object]:
    """``event``'s fields as keyword arguments for a journal, ``None`` values left out."""
    values = {f.name: getattr(event, f.name) for f in fields(event)}
    return {name: value for name, value in values.items() if value is not None}


__all__ = [
    "EVENT_KINDS",
    "Adopt",
    "Claim",
    "Event",
    "Fail",
    "FailOutcome",
    "Finish",
    "FinishPriority",
    "FinishOutcome",
    "FinishRefused",
    "Fold",
    "GiveUp",
    "Gone",
    "HandOff",
    "LockAcquire",
    "LockLost",
    "LockRelease",
    "LockRenew",
    "NotClaimed",
    "ResumeConflict",
    "Revoked",
    "StaleDecision",
    "TornObserve",
    "Update",
    "fields_of",
]
