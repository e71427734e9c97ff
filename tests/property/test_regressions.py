"""Bugs in distribute/ that the protocol machine (or its audit) found, each reduced to its
smallest reproduction and kept as a regression test now that it is fixed.  Each test
states the behaviour docs/protocol.md asks for.  A new bug starts here as a strict xfail, with
an entry in ``protocol_machine.KNOWN_BUGS`` that keeps the machine's faults away from it,
until the fix lands.
"""

from __future__ import annotations

import contextlib

import pytest
from fake_clock import Clock
from hypothesis import Phase
from hypothesis.stateful import run_state_machine_as_test
from protocol_machine import KNOWN_BUGS, MAIN_REF, MemoryWorld, ProtocolMachine, machine_settings

from distribute.coordination import Coordinator
from distribute.core.errors import OutcomeUnknown, TransportError
from distribute.core.names import LOCK_REF, job_dir
from distribute.core.plan import CallNextJobFunction
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import RefUpdate

LEASE, MARGIN = 10.0, 2.5


def coordinator(world: MemoryWorld, name: str, clock: Clock) -> Coordinator:
    return Coordinator(
        world.transport(name), worker=name, session=name + "#1", branch="main", lease=LEASE,
        margin=MARGIN, max_attempts=2, clock=clock,
    )


def claim(c: Coordinator, job: str):
    snap = c.observe()
    assert c.try_acquire(snap)
    held = c.claim(snap, CallNextJobFunction(), job, None)
    assert held is not None
    return held


def test_an_update_whose_push_did_not_land_is_not_lease_lost():
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    c = coordinator(world, "w", clock)
    job = claim(c, "j1")
    tip = c.transport.write_commit(parents=[job.tip], base=job.tip, message="update",
                                   changes={job_dir("j1") + "/log.txt": b"1\n"})
    world.fail_next_push(c.transport, "unknown-lost")
    with contextlib.suppress(OutcomeUnknown, TransportError):  # retryable: the caller retries
        c.update(tip)


@pytest.mark.parametrize("step", ["claim", "finish"])
def test_a_push_that_landed_is_known_even_if_main_moved_before_the_read_back(step):
    world, clock = MemoryWorld(["j1", "j2", "j3"]), Clock(100.0)
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    claim(a, "j1")
    if step == "finish":
        claim(b, "j2")
    else:
        snap = b.observe()
        assert b.try_acquire(snap)
    armed = []

    def b_pushes_and_loses_the_answer(name, updates):
        if name != "b" or armed:
            return None
        armed.append(a.finish_step)
        return "unknown-applied"

    def main_moves_before_b_reads_back(name, refs):
        if name == "b" and armed and armed[-1] is not None:
            assert armed.pop()() is not None  # a's finish lands meanwhile
            armed.append(None)
        return None

    world.remote.fault_hook = b_pushes_and_loses_the_answer
    world.remote.fetch_fault_hook = main_moves_before_b_reads_back
    if step == "claim":
        held = b.claim(snap, CallNextJobFunction(), "j3", None)
        running = b.read_ledger(world.refs()[MAIN_REF]).running_entry("j3")
        assert running is not None and running.worker == "b"  # it landed ...
        assert held is not None  # ... and b must know it holds j3
    else:
        assert b.finish_step() is not None  # it landed; b must not report a lost race


def test_an_acquire_from_an_old_snapshot_does_not_revive_an_expired_holding():
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    old = a.observe()
    assert a.try_acquire(old)
    clock.now += LEASE + 1  # a's holding expires before it claims
    assert a.claim(old, CallNextJobFunction(), "j1", None) is None
    b.observe()  # b first sees a's (expired) holding now
    clock.now += LEASE + MARGIN + 1
    a.try_acquire(old)  # the old snapshot saw the lock free
    assert b.try_acquire(b.observe())
    assert not (a.holding_valid() and b.holding_valid()), "two valid holdings at once"


@pytest.mark.parametrize("step", ["renew", "release"])
def test_a_lock_push_that_did_not_land_does_not_strand_the_lock(step):
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    c = coordinator(world, "w", clock)
    assert c.try_acquire(c.observe())
    clock.now += LEASE / 2  # a renewal is due
    world.fail_next_push(c.transport, "unknown-lost")
    getattr(c, step)()
    held_by_us = world.refs()[LOCK_REF] == (c.holding.oid if c.holding else None)
    lock_free = "free" in c.transport.commit_message(world.refs()[LOCK_REF])
    assert held_by_us or lock_free, "the lock is held by this session, which forgot it"


def test_the_worker_does_not_run_the_next_job_function_on_an_expired_holding(tmp_path):
    pytest.importorskip("distribute.transport.git")
    from distribute.dist import worker_from_url
    from distribute.remote import init_remote

    url = init_remote(tmp_path / "remote.git", jobs=["j1"])
    clock = Clock(100.0)

    class PauseAfterAcquire:
        """The process stops for two leases right after its acquire lands."""

        def __init__(self, inner):
            self.inner, self.paused = inner, False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def push(self, updates):
            ok = self.inner.push(updates)
            if ok and not self.paused and [u.ref for u in updates] == [LOCK_REF]:
                self.paused = True
                clock.now += 2 * LEASE
            return ok

    def sleep(seconds: float) -> None:
        clock.now += seconds

    seen = []
    with worker_from_url(url, tmp_path / "copy", name="w", lease_seconds=LEASE,
                         heartbeat=False, clock=clock, sleep=sleep,
                         wrap_transport=PauseAfterAcquire) as worker:

        def next_job():
            seen.append(worker.coord.holding_valid())
            return "j1"

        assert worker.get_next_job(next_job) == "j1"
    assert all(seen), f"the next-job function ran on an expired holding ({seen})"


def test_a_torn_observe_is_seen_and_never_blames_the_next_job_function():
    """A fetch that shows a claim's released lock but not its main branch (git's files
    backend renames an atomic push's refs one at a time) is recognised as torn: no
    acquire from it, and a claim decided on it starts over instead of raising."""
    world, clock = MemoryWorld(["j1", "j2"]), Clock(100.0)
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    b.observe()
    claim(a, "j1")  # the latest push: lock released, job branch, a's liveness, main
    world.tear_next_read(b.transport)
    snap = b.observe()
    assert snap.lock.free and snap.ledger.running_entry("j1") is None  # torn
    assert b.torn(snap)
    assert not b.try_acquire(snap), "acquired from a torn view"
    # were it acquired anyway (an older lock record without ``main``), the claim
    # replays on the newer main branch and starts over rather than raise
    fresh = b.observe()
    assert not b.torn(fresh) and b.try_acquire(fresh)
    queue = read_queue(b.transport.read_file(snap.main, JOBS_FILE).decode())
    edits = b.transport.write_commit(parents=[snap.main], base=snap.main, message="take",
                                     changes={JOBS_FILE: format_queue(queue[1:]).encode()})
    assert queue[0] == "j1"
    assert b.claim(snap, CallNextJobFunction(), queue[0], edits) is None
    assert b.holding is None and "free" in b.transport.commit_message(world.refs()[LOCK_REF])
    running = b.read_ledger(world.refs()[MAIN_REF]).running_entry("j1")
    assert running is not None and running.worker == "a"


def test_the_machine_passes_with_torn_reads():
    """The machine with torn reads switched on (it found the bug above within a few runs)."""
    machine = type("ProtocolMachineWithTornReads", (ProtocolMachine,),
                   {"known_bugs": KNOWN_BUGS - {"torn-observe"}})
    run_state_machine_as_test(machine, settings=machine_settings(
        phases=[Phase.generate], report_multiple_bugs=False, print_blob=False))


def test_known_bug_helpers_hold_their_assumptions():
    """The reproductions above rely on these (so an xfail cannot pass for another reason)."""
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    c = coordinator(world, "w", clock)
    job = claim(c, "j1")
    assert c.job is job and world.refs()[job.branch_ref] == job.tip
    before = world.refs()[MAIN_REF]
    world.fail_next_push(c.transport, "unknown-applied")
    assert c.push([RefUpdate(job.branch_ref, job.tip, before)])  # resolved by reading
    assert world.refs()[job.branch_ref] == before


def test_a_claim_whose_answer_came_after_a_takeover_is_dropped_not_run():
    """Found by the base machine (a stalled push with a lost answer, 1 run in ~3500): a's
    claim landed, its answer took longer than a lease, and b meanwhile took the job over
    (legally: a's record stood still for a lease and a margin).  Reading back that its
    claim landed, a must not start the job: its record says it was revoked."""
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    taken = []

    def a_loses_the_answer(name, updates):
        return "unknown-applied" if name == "a" and not taken else None

    def b_takes_over_before_a_reads_back(name, refs):
        if name == "a" and not taken:
            taken.append(True)
            b.observe()
            clock.now += LEASE + MARGIN + 1  # a's record stands still all that time
            seen = b.observe()
            assert b.try_acquire(seen)
            plan = b.plan(seen)
            assert plan.__class__.__name__ == "Retry", plan
            assert b.claim(seen, plan, None) is not None
        return None

    world.remote.fault_hook = a_loses_the_answer
    world.remote.fetch_fault_hook = b_takes_over_before_a_reads_back
    assert a.claim(snap, CallNextJobFunction(), "j1", None) is None
    assert a.job is None and a.revoked
    running = b.read_ledger(world.refs()[MAIN_REF]).running_entry("j1")
    assert running is not None and running.worker == "b"


def test_a_late_claim_whose_renewal_fails_is_still_held_not_retried():
    """Found in review: the renewal that confirms a late claim (above) met a transport
    error, the caller retried the whole claim, found its holding expired and got None,
    while the coordinator held the job: a job held but never run."""
    world, clock = MemoryWorld(["j1", "j2"]), Clock(100.0)
    a = coordinator(world, "a", clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    pushes = []

    def late_then_dropped(name, updates):
        pushes.append(name)
        if len(pushes) == 1:  # the claim lands, its answer a whole lease later
            clock.now += LEASE + 1
            return None
        return "drop" if len(pushes) == 2 else None  # the renewal meets a network error

    world.remote.fault_hook = late_then_dropped
    got = a.claim(snap, CallNextJobFunction(), "j1", None)
    assert got is not None and a.job is got and got.job == "j1"


def test_a_torn_read_at_finish_does_not_make_a_live_holder_drop_its_job():
    """A finish reads the main branch and the liveness records in one fetch.  The records
    sort first, so a read torn by the holder's own claim shows its new record beside the
    main branch from before the claim, where the job is not its own.  That read must not
    become a ``LeaseLost``: the verdict is made on the main branch alone."""
    world, clock = MemoryWorld(["j1"]), Clock(100.0)
    c = coordinator(world, "w", clock)
    job = claim(c, "j1")
    world.tear_next_read(c.transport)
    assert c.finish_step() is not None  # before the fix: LeaseLost, and the job dropped
    assert c.job is None
    done = world.read_file(world.refs()[MAIN_REF], "done.txt") or b""
    assert done.startswith(f"j1\tworker=w\ttoken={job.token}".encode())
