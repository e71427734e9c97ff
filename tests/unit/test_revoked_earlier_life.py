"""A takeover that revoked an earlier life's record still fences the restarted worker.

A worker killed while finishing is restarted with the same name and completes the
finish (``Coordinator.adopt``).  Meanwhile another worker, which saw the dead life's
record silent for a lease, takes the job over: its claim revokes that record, which
names the *dead* life's session.  The restarted life's park then meets a record it
did not write.  It used to count a revocation only when the record named its own
session, so it wrote its park over the revocation: the job was finished twice, and the
park, on a job the ledger gives to the other worker, was never folded (a finish the
worker was told had landed, lost).  The simulator's checker caught this over ssh with
kills and pauses (double-finish, stale-write and lost-write on one job).
"""

from __future__ import annotations

import pytest
from fake_clock import Clock

from distribute.coordination import Coordinator, JobHolding, prepare_remote
from distribute.core.errors import LeaseLost
from distribute.core.plan import CallNextJobFunction, Retry
from distribute.transport.memory import MemoryRemote

LEASE, MARGIN = 30.0, 5.0


def coordinator(remote: MemoryRemote, worker: str, session: str, clock: Clock) -> Coordinator:
    return Coordinator(remote.transport(session), worker=worker, session=session,
                       branch="main", lease=LEASE, margin=MARGIN, max_attempts=3, clock=clock)


def test_a_restarted_worker_cannot_park_over_a_takeover_of_its_earlier_life():
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": b"j1\nj2\n"})
    clock = Clock()
    first = coordinator(remote, "a", "a#0", clock)
    snap = first.observe()
    assert first.try_acquire(snap)
    job = first.claim(snap, CallNextJobFunction(), "j1", None)
    assert isinstance(job, JobHolding)
    # the first life dies mid-finish; b sees its record silent for a lease
    b = coordinator(remote, "b", "b#0", clock)
    b.observe()
    clock.now += LEASE + MARGIN + 1
    seen = b.observe()
    plan = b.plan(seen)
    assert isinstance(plan, Retry) and plan.entry.job == "j1"
    # the restarted life takes the finish up, and looks: j1 is still its own
    again = coordinator(remote, "a", "a#1", clock)
    again.adopt(JobHolding(job.job, job.token, job.attempt, job.branch, job.tip))
    again.observe()
    first_try = again._finish_try(park_instead=True)
    assert first_try.name == "READY"  # merges cleanly, to be parked
    # b's takeover lands before the park
    assert b.try_acquire(seen)
    taken = b.claim_step(seen, plan, None)
    assert isinstance(taken, JobHolding) and taken.job == "j1"
    with pytest.raises(LeaseLost):
        while not again.park_step():
            pass
    ledger = again.read_ledger(again.observe().main)
    assert ledger.running_entry("j1").worker == "b"
