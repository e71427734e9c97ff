"""What a claim step says when it writes nothing: one typed reason per case
(``core.events.NotClaimed``), asserted on the in-memory remote without real git."""

from __future__ import annotations

from distribute.coordination import Coordinator, JobHolding, prepare_remote
from distribute.core.events import NotClaimed
from distribute.core.plan import CallNextJobFunction, Retry
from distribute.transport.memory import MemoryRemote

LEASE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(jobs: bytes = b"j1\nj2\n") -> tuple[MemoryRemote, Clock]:
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": jobs})
    return remote, Clock()


def worker(remote: MemoryRemote, name: str, clock: Clock) -> Coordinator:
    return Coordinator(remote.transport(name), worker=name, session=name + "#1", branch="main",
                       lease=LEASE, margin=2.0, max_attempts=3, clock=clock)


def test_a_claim_that_lands_is_its_holding():
    remote, clock = setup()
    a = worker(remote, "a", clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    got = a.claim_step(snap, CallNextJobFunction(), "j1", None)
    assert isinstance(got, JobHolding) and got.job == "j1" and got.attempt == 1


def test_a_holding_past_its_lease_claims_nothing_and_says_the_lock_was_lost():
    remote, clock = setup()
    a = worker(remote, "a", clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    clock.now += LEASE + 1  # paused past the lease: another worker may hold the lock now
    assert a.claim_step(snap, CallNextJobFunction(), "j1", None) is NotClaimed.LOCK_LOST
    assert a.job is None and a.holding is None


def test_a_retry_of_an_orphan_that_changed_meanwhile_is_replanned():
    remote, clock = setup()
    a, b = worker(remote, "a", clock), worker(remote, "b", clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    assert a.claim(snap, CallNextJobFunction(), "j1", None) is not None
    assert a.fail_step("boom") == "retry"  # j1 released for another attempt
    seen = b.observe()
    plan = b.plan(seen)
    assert isinstance(plan, Retry) and plan.entry.job == "j1"
    assert b.try_acquire(seen)
    # a plan made on a line the ledger no longer holds (someone retried it, gave it up or
    # an administrator edited it after the look the plan was made on)
    changed = Retry(entry=type(plan.entry)(job="j1", token=999), revoke="", interrupted=False)
    assert b.claim_step(seen, changed, None) is NotClaimed.REPLAN
    assert b.holding is None  # released for the caller to start over


def test_an_unlocked_claim_beaten_to_the_lock_says_it_was_taken():
    remote, clock = setup()
    a, b = worker(remote, "a", clock), worker(remote, "b", clock)
    snap_a, snap_b = a.observe(), b.observe()
    assert isinstance(b.claim_unlocked_step(snap_b, "j1"), JobHolding)
    assert a.claim_unlocked_step(snap_a, "j1") is NotClaimed.TAKEN
    assert a.job is None


def test_the_compatibility_wrappers_read_none_for_every_reason():
    remote, clock = setup()
    a, b = worker(remote, "a", clock), worker(remote, "b", clock)
    snap_a, snap_b = a.observe(), b.observe()
    assert b.claim_unlocked(snap_b, "j1") is not None
    assert a.claim_unlocked(snap_a, "j1") is None
    snap = a.observe()
    assert a.try_acquire(snap)
    clock.now += LEASE + 1
    assert a.claim(snap, CallNextJobFunction(), "j2", None) is None
