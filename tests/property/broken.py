"""Deliberately broken protocol variants, to show that the state machine catches each one.

Every variant is a subclass of :class:`~distribute.coordination.Coordinator`
that overrides one method, its *seam* (or hands it a different
:class:`LeaseWatch`), and is switched on only by :func:`protocol_machine.variant`
in a test.  None of this is reachable from the library: there is no flag a
user could set.

A variant keeps a :class:`Trace`: how often its seam was reached, and every
moment it *deviated*, that is, did something the correct code would not have
done (forced a push the CAS would have refused, answered a lost push's
outcome wrongly, judged a lease expired that was not, ...).  :func:`hunt`
accepts a catch only when the machine raised a protocol violation in a run
in which the variant had deviated before it.  So a variant whose seam the
library stopped using is reported as *not exercised* rather than as a test
that "did not raise", and a violation the variant did not cause (a crash, a
bug elsewhere) is never counted as catching it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from hypothesis import Phase
from hypothesis.stateful import run_state_machine_as_test
from protocol_machine import (
    CAUGHT,
    STATS,
    VIOLATIONS,
    ProtocolMachine,
    Violation,
    machine_settings,
    variant,
)

from distribute.coordination import Coordinator, Holding, Snapshot
from distribute.core.errors import LeaseLost
from distribute.core.lease import ABSENT, LeaseWatch
from distribute.core.ledger import Entry, Ledger
from distribute.core.lock import Beat, beat_message
from distribute.core.names import HANDED_PREFIX, LOCK_REF, WORKERS_PREFIX
from distribute.transport.base import Oid, RefUpdate

# ---- what a variant did, and the verdict ------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    """One deviation: in machine run ``run``, after ``violations`` violations had been
    recorded in this process (so it came before violation number ``violations``)."""

    run: int
    violations: int


@dataclass
class Trace:
    reached: int = 0
    deviations: list[Deviation] = field(default_factory=list)


#: Variant class -> what it did in this process.
TRACES: dict[type, Trace] = {}


def trace_of(cls: type) -> Trace:
    return TRACES.setdefault(cls, Trace())


def note_reached(cls: type) -> None:
    trace_of(cls).reached += 1


def note_deviation(cls: type) -> None:
    trace_of(cls).deviations.append(Deviation(STATS["runs"], len(VIOLATIONS)))


class Broken(Coordinator):
    """Base of the variants: names the seam and records when it is reached and when it
    deviates from what the correct code would do."""

    #: The overridden method whose behaviour is broken, for the report.
    seam: ClassVar[str] = ""

    def reached(self) -> None:
        note_reached(type(self))

    def deviated(self) -> None:
        note_deviation(type(self))

    def force_record(self, jobs: tuple[str, ...]) -> bool:
        """Rewrite this worker's liveness record from whatever value it has now, not from
        its last one (a revocation written meanwhile is overwritten): the deviation of
        the variants that renew by force.  Call with the mutex held."""
        beat: Beat = self.beat.next(jobs)
        new_oid = self._empty_commit(beat_message(beat))
        sent = self.clock()
        now = self.transport.list_refs(self.own_ref).get(self.own_ref)
        if now != self.beat_oid:
            self.deviated()  # the CAS from its last value would have been refused
        if self.push([RefUpdate(self.own_ref, now, new_oid)]):
            self.beat, self.beat_oid, self.beat_sent_at = beat, new_oid, sent
            return True
        return False


def remote_refs(c: Coordinator) -> dict[str, Oid] | None:
    """The refs on the remote as the machine's auditor sees them, without a fetch (a fetch
    could use up a torn read scheduled for this worker); ``None`` outside the machine."""
    machine = getattr(c.transport, "machine", None)  # the machine's Wire around the transport
    return None if machine is None else machine.world.refs()


class NotCaught(AssertionError):
    """A broken variant was not caught, or was caught for a reason it did not cause."""


@dataclass(frozen=True)
class Catch:
    examples: int  # examples run until the first violation
    message: str
    scenario: str  # the targeted rule under way when it was found ("" for none)
    deviations: int


def hunt(name: str, cls: type, base: type[ProtocolMachine] = ProtocolMachine,
         make: Any = variant, **overrides: Any) -> Catch:
    """Run the machine ``make(cls, base)`` (by default: ``base`` with every worker on
    ``cls``) until it finds a violation.

    Shrinking is skipped (only the verdict matters).  Raises :class:`NotCaught` unless
    the machine raised a :class:`Violation` in a run in which ``cls`` had deviated
    before that violation.
    """
    TRACES.pop(cls, None)
    runs, seen = STATS["runs"], len(VIOLATIONS)
    settings = machine_settings(
        phases=[Phase.generate], report_multiple_bugs=False, print_blob=False, **overrides)
    raised: Violation | None = None
    try:
        run_state_machine_as_test(make(cls, base), settings=settings)
    except Violation as exc:
        raised = exc
    except Exception as exc:
        raise NotCaught(f"variant {name!r} crashed with {type(exc).__name__}: {exc}; "
                        "a crash is not a catch") from exc
    trace, ran = trace_of(cls), STATS["runs"] - runs
    if not trace.deviations:
        seam = cls.seam or "(unnamed)"
        if not trace.reached:
            why = f"its seam {seam} was never reached"
        else:
            why = (f"its seam {seam} was reached {trace.reached} times but never behaved "
                   "differently from the correct code")
        found = "" if raised is None else f" (the machine's violation, not its doing: {raised})"
        raise NotCaught(f"variant {name!r} not exercised: {why} in {ran} runs{found}")
    if raised is None:
        raise NotCaught(f"variant {name!r} deviated {len(trace.deviations)} times in {ran} "
                        "runs, yet the machine found no violation: it is not caught")
    same = [i for i in range(seen, len(VIOLATIONS)) if VIOLATIONS[i].message == str(raised)]
    if not same:
        raise NotCaught(f"variant {name!r}: a Violation was raised outside the machine's "
                        f"checks, which is not a catch: {raised}")
    index = same[-1]
    found = VIOLATIONS[index]
    if not any(d.run == found.run and d.violations <= index for d in trace.deviations):
        raise NotCaught(f"variant {name!r}: the machine's violation came in a run in which "
                        f"the variant had not deviated yet, so it is not the variant's "
                        f"doing: {found.message}")
    first = VIOLATIONS[seen]
    CAUGHT[name] = (first.run - runs, first.message[:100])
    return Catch(first.run - runs, found.message, found.scenario, len(trace.deviations))


# ---- the variants --------------------------------------------------------------------


def is_claim(updates: Sequence[RefUpdate]) -> bool:
    """The claim's push: it is the only one that creates a job branch."""
    return any(u.ref.startswith("refs/heads/jobs/") and u.old is None for u in updates)


class ClaimWithoutCas(Broken):
    """(1) The claim's main-branch update expects whatever is there at push time."""

    seam = "Coordinator.push (claims)"

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if is_claim(updates):
            self.reached()
            now = self.transport.list_refs(self.main_ref).get(self.main_ref)
            if any(u.ref == self.main_ref and u.old != now for u in updates):
                self.deviated()  # the CAS would have refused this claim
            updates = [replace(u, old=now) if u.ref == self.main_ref else u for u in updates]
        return super().push(updates)


class ReleaseBeforeClaim(Broken):
    """(2) The lock is released in one push, the claim lands in a second one."""

    seam = "Coordinator.push (claims)"

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if not is_claim(updates):
            return super().push(updates)
        self.reached()
        lock = [u for u in updates if u.ref == LOCK_REF]
        rest = [u for u in updates if u.ref != LOCK_REF]
        if lock:
            self.deviated()  # one atomic push becomes two
        return super().push(lock) and super().push(rest)


class ClaimThenBranch(Broken):
    """(3) The claim and the job branch are pushed one after the other, not atomically."""

    seam = "Coordinator.push (claims)"

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if not is_claim(updates):
            return super().push(updates)
        self.reached()
        branch = [u for u in updates if u.ref.startswith("refs/heads/jobs/")]
        rest = [u for u in updates if u not in branch]
        self.deviated()  # one atomic push becomes two
        return super().push(rest) and super().push(branch)


class UnfencedLedger(Ledger):
    """A ledger whose finish moves the job to done.txt whoever holds it, under any token."""

    __slots__ = ()

    def finish(self, job: str, worker: str, token: int) -> Ledger:
        note_reached(FinishWithoutToken)
        try:
            return super().finish(job, worker, token)
        except LeaseLost:
            note_deviation(FinishWithoutToken)  # the correct ledger refuses this finish
        entry = self.running_entry(job)
        done = Entry(job=job, worker=worker, token=token, attempt=entry.attempt if entry else 1)
        return replace(
            self,
            running=tuple(e for e in self.running if e.job != job),
            done=(*self.done, done),
        )


class FinishWithoutToken(Broken):
    """(4) finish does not check the fencing token (nor the holder) of the ledger line."""

    seam = "Ledger.finish (through Coordinator.read_ledger)"

    def read_ledger(self, commit: Oid) -> Ledger:
        ledger = super().read_ledger(commit)
        return UnfencedLedger(ledger.running, ledger.done, ledger.failed, ledger.has_failed_file)


class FinishTrustsItsHolding(Broken):
    """(4b) The Ledger still checks the token, but when it refuses a finish the coordinator
    overrides it: the worker believes it holds the job, so it writes the ledger line to
    ``done.txt`` itself."""

    seam = "Coordinator.finish_step"

    def finish_step(self) -> Oid | None:
        self.reached()
        job = self._job()
        try:
            return super().finish_step()
        except LeaseLost:
            self.deviated()  # the correct code stops here
        main = self.transport.fetch([self.main_ref])[self.main_ref]
        ledger = self.read_ledger(main)
        entry = ledger.running_entry(job.job)
        done = replace(
            ledger,
            running=tuple(e for e in ledger.running if e.job != job.job),
            done=(*ledger.done, Entry(job=job.job, worker=self.worker, token=job.token,
                                      attempt=job.attempt if entry is None else entry.attempt)),
        )
        merged = self.transport.merge(main, job.tip)
        if not merged.clean:
            raise LeaseLost("the forced finish does not merge", job=job.job)
        new_main = self.transport.write_commit(
            parents=[main, job.tip], tree=merged.tree, changes=done.to_files(),
            message=f"distribute: finish {job.job} by {self.worker} (token {job.token})",
        )
        if not self.push([RefUpdate(self.main_ref, main, new_main)]):
            self.job = job  # lost a race: try again
            return None
        return new_main


class HolderClockWatch(LeaseWatch):
    """Judges expiry by the holder's clock reading written into the ref's commit."""

    def __init__(self, coordinator: Broken, lease: float, margin: float) -> None:
        super().__init__(lease, margin)
        self.coordinator = coordinator

    def unchanged_for(self, ref: str, now: float) -> float:
        oid = self.value(ref)
        if oid is None:
            return 0.0
        body = self.coordinator.transport.commit_message(oid).strip().rsplit("\n\n", 1)[-1]
        stamp = json.loads(body).get("stamp")
        return 0.0 if stamp is None else max(0.0, now - float(stamp))

    def expired(self, ref: str, now: float) -> bool:
        self.coordinator.reached()
        verdict = super().expired(ref, now)
        if verdict != (LeaseWatch.unchanged_for(self, ref, now) >= self.lease + self.margin):
            self.coordinator.deviated()
        return verdict


class LeaseByHolderClock(Broken):
    """(5a) Lock and liveness commits carry the writer's clock; observers compare it with theirs."""

    seam = "LeaseWatch.unchanged_for (Coordinator.watch)"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.watch = HolderClockWatch(self, self.watch.lease, self.watch.margin)

    def _empty_commit(self, message: str, parents: Sequence[Oid] = ()) -> Oid:
        summary, _, body = message.strip().rpartition("\n\n")
        record = dict(json.loads(body), stamp=self.clock())
        stamped = f"{summary}\n\n{json.dumps(record, sort_keys=True)}\n"
        return super()._empty_commit(stamped, parents)


class FirstSightWatch(LeaseWatch):
    """Remembers when it first saw a ref at all; a new value does not restart the wait.
    A correct watch fed the same observations tells when the verdict differs."""

    def __init__(self, coordinator: Broken, lease: float, margin: float) -> None:
        super().__init__(lease, margin)
        self.coordinator = coordinator
        self.correct = LeaseWatch(lease, margin)

    def observe(self, ref: str, value: str | None, now: float) -> bool:
        self.correct.observe(ref, value, now)
        value = value or ABSENT
        previous = self._seen.get(ref)
        if previous is not None and previous[0] == value:
            return False
        self._seen[ref] = (value, now if previous is None else previous[1])
        return True

    def expired(self, ref: str, now: float) -> bool:
        self.coordinator.reached()
        verdict = super().expired(ref, now)
        if verdict != self.correct.expired(ref, now):
            self.coordinator.deviated()
        return verdict


class LeaseByFirstSight(Broken):
    """(5b) Expiry counted from the first observation only: renewals do not restart the wait."""

    seam = "LeaseWatch.observe (Coordinator.watch)"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.watch = FirstSightWatch(self, self.watch.lease, self.watch.margin)


class ForcedRenewBeat(Broken):
    """(6) Renews its liveness by overwriting the ref, even after another worker revoked it."""

    seam = "Coordinator.renew_beat"

    def renew_beat(self) -> bool:
        self.reached()
        with self.mutex:
            return self.force_record((self.job.job,) if self.job else ())


class UpdateRenewsByForce(Broken):
    """(6b) Every update also rewrites the worker's liveness record from whatever value it
    has now (saving a heartbeat while a job is busy), so a revocation is overwritten."""

    seam = "Coordinator.update"

    def update(self, tip: Oid) -> None:
        self.reached()
        super().update(tip)
        if self.job is None:
            return
        with self.mutex:
            self.force_record((self.job.job,))


class UnknownMeansFailed(Broken):
    """(7) A push whose answer was lost is taken to have failed, without reading the refs."""

    seam = "Coordinator.resolve_unknown"

    def resolve_unknown(self, updates: Sequence[RefUpdate]) -> bool:
        self.reached()
        refs = remote_refs(self)
        first = updates[0]
        if refs is not None and self._holds(refs.get(first.ref), first.new):
            self.deviated()  # it did land
        return False


class ResolveByEquality(Broken):
    """(7b) A push whose answer was lost counts as landed only if the ref still holds exactly
    the pushed commit: when others built on it before the read-back, it looks lost."""

    seam = "Coordinator.resolve_unknown"

    def resolve_unknown(self, updates: Sequence[RefUpdate]) -> bool:
        self.reached()
        first = updates[0]
        current = self.transport.fetch([first.ref]).get(first.ref)
        self.stats.fetches += 1
        landed = current == first.new
        if landed != self._holds(current, first.new):
            self.deviated()
        return landed


class UnlockedClaimIgnoresTheLock(Broken):
    """(8) An unlocked claim CASes the main branch but not the lock, so it can land while
    another worker holds the lock and runs its next-job function."""

    seam = "Coordinator.claim_unlocked"
    _dropping = False

    def claim_unlocked(self, snap: Any, job: str, edits: Oid | None = None,
                       handed: Any = ()) -> Any:
        self.reached()
        self._dropping = True
        try:
            return super().claim_unlocked(snap, job, edits, handed)
        finally:
            self._dropping = False

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        if self._dropping:
            kept = [u for u in updates if u.ref != LOCK_REF]
            if len(kept) < len(updates):
                self.deviated()
            updates = kept
        return super().push(updates)


class RestartKeepsItsHolding(Broken):
    """(9) A restarted worker that finds the lock held by its previous process carries on
    with that holding instead of acquiring anew (token + 1) under its new session."""

    seam = "Coordinator.try_acquire"

    def try_acquire(self, snap: Snapshot) -> bool:
        self.reached()
        lock = snap.lock
        if (snap.lock_oid and not lock.free and lock.holder == self.worker
                and lock.session != self.session and not self.torn(snap)):
            self.deviated()
            self.holding = Holding(lock, snap.lock_oid, self.clock())
            return True
        return super().try_acquire(snap)


class HandedJobTakenUpAgain(Broken):
    """(10) A worker takes up a job handed to it whenever a look shows the line running
    under its session: it forgets the jobs it took up already, and reads the ledger
    without the parked finishes folded in, so its own parked finish looks unfinished."""

    seam = "Coordinator.handed"

    def handed(self, snap: Snapshot) -> Any:
        self.reached()
        if self.job is not None:
            return None
        entry = snap.ledger.handed_to(self.worker, self.session)
        if entry is not None and super().handed(snap) is None:
            self.deviated()
            self._taken_up.discard((entry.job, entry.token))
        return entry


class HandOffToBusyWorker(Broken):
    """(10b) A claim hands jobs to every live worker it sees, busy or not: a worker already
    running a job is given a second one, which it cannot run while the first runs."""

    seam = "Coordinator.handoff_targets"

    def handoff_targets(self, snap: Snapshot, limit: int = 15) -> Any:
        self.reached()
        idle = super().handoff_targets(snap, limit)
        now = self.clock()
        busy = [
            beat for ref, oid in sorted(snap.refs.items())
            if ref.startswith(WORKERS_PREFIX) and ref != self.own_ref
            and (beat := self.beat_at(oid)) is not None and beat.session and not beat.gone
            and not beat.revoked and beat.takes_hand_offs and beat.worker in snap.view.holders()
            and not self.watch.expired(ref, now)
        ]
        if busy:
            self.deviated()
        return (idle + busy)[:limit]


class HandOffWithoutMarker(Broken):
    """(10c) A claim hands jobs without moving the handed workers' markers: a handed
    worker's peeks show nothing for it, so it learns of its job only when its turn to
    look comes, and the jobs of one claim are taken up one turn apart."""

    seam = "Coordinator._build_claim"

    def _build_claim(self, *args: Any, **kwargs: Any) -> Any:
        self.reached()
        claim = super()._build_claim(*args, **kwargs)
        kept = [u for u in claim.updates if not u.ref.startswith(HANDED_PREFIX)]
        if len(kept) != len(claim.updates):
            self.deviated()
        return replace(claim, updates=kept)


VARIANTS: dict[str, type[Broken]] = {
    "1 claim without CAS": ClaimWithoutCas,
    "2 release before claim": ReleaseBeforeClaim,
    "3 claim, then branch": ClaimThenBranch,
    "4 finish without token": FinishWithoutToken,
    "4b finish trusts its holding": FinishTrustsItsHolding,
    "5a lease by holder clock": LeaseByHolderClock,
    "5b lease by first sight": LeaseByFirstSight,
    "6 forced renew_beat": ForcedRenewBeat,
    "6b update renews by force": UpdateRenewsByForce,
    "7 unknown means failed": UnknownMeansFailed,
    "7b resolve by equality": ResolveByEquality,
    "8 unlocked claim ignores the lock": UnlockedClaimIgnoresTheLock,
    "9 restart keeps its holding": RestartKeepsItsHolding,
    "10 handed job taken up again": HandedJobTakenUpAgain,
    "10b hand-off to a busy worker": HandOffToBusyWorker,
    "10c hand-off without its marker": HandOffWithoutMarker,
}
