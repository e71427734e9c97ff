"""Deliberately broken protocol variants, to show that the state machine catches each one.

Every variant is a subclass of :class:`~distribute.coordination.Coordinator`
that overrides one method (or hands it a different :class:`LeaseWatch`), and
is switched on only by :func:`protocol_machine.variant` in a test.  None of
this is reachable from the library: there is no flag a user could set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from distribute.coordination import Coordinator
from distribute.core.lease import ABSENT, LeaseWatch
from distribute.core.ledger import Entry, Ledger
from distribute.core.lock import Beat, beat_message
from distribute.core.names import LOCK_REF
from distribute.transport.base import Oid, RefUpdate


def is_claim(updates: Sequence[RefUpdate]) -> bool:
    """The claim's push: it is the only one that creates a job branch."""
    return any(u.ref.startswith("refs/heads/jobs/") and u.old is None for u in updates)


class ClaimWithoutCas(Coordinator):
    """(1) The claim's main-branch update expects whatever is there at push time."""

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if is_claim(updates):
            now = self.transport.list_refs(self.main_ref).get(self.main_ref)
            updates = [replace(u, old=now) if u.ref == self.main_ref else u for u in updates]
        return super().push(updates)


class ReleaseBeforeClaim(Coordinator):
    """(2) The lock is released in one push, the claim lands in a second one."""

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if not is_claim(updates):
            return super().push(updates)
        lock = [u for u in updates if u.ref == LOCK_REF]
        rest = [u for u in updates if u.ref != LOCK_REF]
        return super().push(lock) and super().push(rest)


class ClaimThenBranch(Coordinator):
    """(3) The claim and the job branch are pushed one after the other, not atomically."""

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if not is_claim(updates):
            return super().push(updates)
        branch = [u for u in updates if u.ref.startswith("refs/heads/jobs/")]
        rest = [u for u in updates if u not in branch]
        return super().push(rest) and super().push(branch)


class UnfencedLedger(Ledger):
    """A ledger whose finish moves the job to done.txt whoever holds it, under any token."""

    __slots__ = ()

    def finish(self, job: str, worker: str, token: int) -> Ledger:
        entry = self.running_entry(job)
        done = Entry(job=job, worker=worker, token=token, attempt=entry.attempt if entry else 1)
        return replace(
            self,
            running=tuple(e for e in self.running if e.job != job),
            done=(*self.done, done),
        )


class FinishWithoutToken(Coordinator):
    """(4) finish does not check the fencing token (nor the holder) of the ledger line."""

    def read_ledger(self, commit: Oid) -> Ledger:
        ledger = super().read_ledger(commit)
        return UnfencedLedger(ledger.running, ledger.done, ledger.failed, ledger.has_failed_file)


class HolderClockWatch(LeaseWatch):
    """Judges expiry by the holder's clock reading written into the ref's commit."""

    def __init__(self, coordinator: Coordinator, lease: float, margin: float) -> None:
        super().__init__(lease, margin)
        self.coordinator = coordinator

    def unchanged_for(self, ref: str, now: float) -> float:
        oid = self.value(ref)
        if oid is None:
            return 0.0
        body = self.coordinator.transport.commit_message(oid).strip().rsplit("\n\n", 1)[-1]
        stamp = json.loads(body).get("stamp")
        return 0.0 if stamp is None else max(0.0, now - float(stamp))


class LeaseByHolderClock(Coordinator):
    """(5a) Lock and liveness commits carry the writer's clock; observers compare it with theirs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.watch = HolderClockWatch(self, self.watch.lease, self.watch.margin)

    def _empty_commit(self, message: str, parents: Sequence[Oid] = ()) -> Oid:
        summary, _, body = message.strip().rpartition("\n\n")
        record = dict(json.loads(body), stamp=self.clock())
        stamped = f"{summary}\n\n{json.dumps(record, sort_keys=True)}\n"
        return super()._empty_commit(stamped, parents)


class FirstSightWatch(LeaseWatch):
    """Remembers when it first saw a ref at all; a new value does not restart the wait."""

    def observe(self, ref: str, value: str | None, now: float) -> bool:
        value = value or ABSENT
        previous = self._seen.get(ref)
        if previous is not None and previous[0] == value:
            return False
        self._seen[ref] = (value, now if previous is None else previous[1])
        return True


class LeaseByFirstSight(Coordinator):
    """(5b) Expiry counted from the first observation only: renewals do not restart the wait."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.watch = FirstSightWatch(self.watch.lease, self.watch.margin)


class ForcedRenewBeat(Coordinator):
    """(6) Renews its liveness by overwriting the ref, even after another worker revoked it."""

    def renew_beat(self) -> bool:
        with self.mutex:
            jobs = (self.job.job,) if self.job else ()
            beat: Beat = self.beat.next(jobs)
            new_oid = self._empty_commit(beat_message(beat))
            sent = self.clock()
            now = self.transport.list_refs(self.own_ref).get(self.own_ref)
            if self.push([RefUpdate(self.own_ref, now, new_oid)]):
                self.beat, self.beat_oid, self.beat_sent_at = beat, new_oid, sent
                return True
            return False


class UnknownMeansFailed(Coordinator):
    """(7) A push whose answer was lost is taken to have failed, without reading the refs."""

    def resolve_unknown(self, updates: Sequence[RefUpdate]) -> bool:
        return False


class UnlockedClaimIgnoresTheLock(Coordinator):
    """(8) An unlocked claim CASes the main branch but not the lock, so it can land while
    another worker holds the lock and runs its next-job function."""

    _dropping = False

    def claim_unlocked(self, snap: Any, job: str, edits: Oid | None = None) -> Any:
        self._dropping = True
        try:
            return super().claim_unlocked(snap, job, edits)
        finally:
            self._dropping = False

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if self._dropping:
            updates = [u for u in updates if u.ref != LOCK_REF]
        return super().push(updates)


VARIANTS: dict[str, type[Coordinator]] = {
    "1 claim without CAS": ClaimWithoutCas,
    "2 release before claim": ReleaseBeforeClaim,
    "3 claim, then branch": ClaimThenBranch,
    "4 finish without token": FinishWithoutToken,
    "5a lease by holder clock": LeaseByHolderClock,
    "5b lease by first sight": LeaseByFirstSight,
    "6 forced renew_beat": ForcedRenewBeat,
    "7 unknown means failed": UnknownMeansFailed,
    "8 unlocked claim ignores the lock": UnlockedClaimIgnoresTheLock,
}
