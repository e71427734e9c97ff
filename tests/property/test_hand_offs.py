"""Hand-offs, step by step on the in-memory remote: one unlocked claim also claims queued
jobs for idle workers (``Coordinator.handoff_targets``), each of which takes its job up
at its next look (``Coordinator.take_handed``) without a claim of its own.

What must hold: the push lands whole or not at all; each handed job gets a token of its
own, after the claimer's, and the free lock moves past the last; only the process the
line names takes the job up, once; a worker that never takes it up loses it like any
holder, once its lease ran out; and only live, idle workers are handed anything."""

from __future__ import annotations

import pytest
from fake_clock import Clock
from protocol_machine import MAIN_REF, MemoryWorld

from distribute.coordination import Coordinator, JobHolding
from distribute.core.errors import LeaseLost
from distribute.core.lock import parse_beat_message, parse_lock_message
from distribute.core.names import LOCK_REF, handed_ref, job_branch_ref
from distribute.core.plan import CallNextJobFunction, Retry
from distribute.sources import JOBS_FILE, format_queue, read_queue

LEASE, MARGIN = 10.0, 2.5


def coordinator(world: MemoryWorld, name: str, clock: Clock, life: int = 1) -> Coordinator:
    return Coordinator(
        world.transport(f"{name}#{life}"), worker=name, session=f"{name}#s{life}",
        branch="main", lease=LEASE, margin=MARGIN, max_attempts=2, clock=clock,
    )


def queue_edits(c: Coordinator, main: str, take: int) -> tuple[list[str], str]:
    """The queue's next ``take`` jobs and one commit taking them off ``jobs.txt``."""
    t = c.transport
    queue = read_queue((t.read_file(main, JOBS_FILE) or b"").decode())
    edits = t.write_commit(parents=[main], base=main, message="take",
                           changes={JOBS_FILE: format_queue(queue[take:]).encode()})
    return queue[:take], edits


def claim_with_hand_offs(c: Coordinator):
    """Observe, then claim the next job and one for each hand-off target."""
    snap = c.observe()
    targets = c.handoff_targets(snap)
    names, edits = queue_edits(c, snap.main, 1 + len(targets))
    handed = list(zip(targets, names[1:], strict=False))
    return c.claim_unlocked(snap, names[0], edits, handed), handed


def running(world: MemoryWorld) -> dict[str, str]:
    text = (world.read_file(world.refs()[MAIN_REF], "running.txt") or b"").decode()
    return {line.split("\t")[0]: line for line in text.splitlines()}


def idle_pair(jobs: list[str]):
    """Workers a and b, where a has seen b's record move: b ran a job and finished it."""
    world, clock = MemoryWorld(jobs), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    a.observe()  # a sees the remote before b is there
    got, _ = claim_with_hand_offs(b)
    assert got is not None
    assert b.finish_step() is not None
    return world, clock, a, b


def test_one_push_claims_for_the_idle_worker_and_it_takes_the_job_up_without_a_claim():
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4"])
    pushes = a.stats.pushes
    lock_before = parse_lock_message(world.message(world.refs()[LOCK_REF]))
    got, handed = claim_with_hand_offs(a)
    assert got is not None and got.job == "j2" and a.stats.pushes == pushes + 1
    assert [(beat.worker, job) for beat, job in handed] == [("b", "j3")]
    lock = parse_lock_message(world.message(world.refs()[LOCK_REF]))
    assert lock.free and lock.token == lock_before.token + 2 and got.token == lock_before.token + 1
    line = running(world)["j3"]
    assert "worker=b" in line and "by=a" in line and f"session={b.session}" in line
    assert f"token={got.token + 1}" in line
    branch = job_branch_ref("b", "j3", got.token + 1)
    assert world.refs()[branch] == world.refs()[MAIN_REF]
    assert read_queue(world.read_file(world.refs()[MAIN_REF], JOBS_FILE).decode()) == ["j4"]

    b_pushes, lock_oid = b.stats.pushes, world.refs()[LOCK_REF]
    snap = b.observe()
    assert b.plan(snap) == CallNextJobFunction()  # not an orphan of b's: b's to take up
    fetches = b.stats.fetches
    taken = b.take_handed(snap)
    assert b.stats.fetches == fetches  # the look brought b's job branches
    assert taken is not None and (taken.job, taken.token) == ("j3", got.token + 1)
    # no push: b's record was written lately (its park); the lock stays
    assert b.stats.pushes == b_pushes and world.refs()[LOCK_REF] == lock_oid
    assert world.refs()[b.own_ref] == b.beat_oid
    assert b.take_handed(b.observe()) is None  # once
    assert b.finish_step() is not None
    assert "j3" not in running(world)
    # the next holding gets the token after the last one handed out
    c = coordinator(world, "c", clock)
    snap = c.observe()
    assert c.try_acquire(snap) and c.holding is not None
    assert c.holding.state.token == got.token + 2


@pytest.mark.parametrize("waited", [LEASE / 3 - 0.5, LEASE / 3])
def test_a_take_up_renews_the_record_when_the_heartbeat_would_be_due(waited):
    """A handed job is taken up without a push while b's record is fresh; once a third of
    the lease has passed since b sent it, the take-up renews it, naming the job (b would
    renew it at the next heartbeat tick anyway)."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4"])
    assert claim_with_hand_offs(a)[0] is not None
    clock.now += waited
    pushes, record = b.stats.pushes, world.refs()[b.own_ref]
    taken = b.take_handed(b.observe())
    assert taken is not None and taken.job == "j3"
    if waited < LEASE / 3:
        assert b.stats.pushes == pushes and world.refs()[b.own_ref] == record
    else:
        assert b.stats.pushes == pushes + 1 and world.refs()[b.own_ref] != record
        assert b.beat.jobs == ("j3",) and world.refs()[b.own_ref] == b.beat_oid
    # either way the heartbeat renews it in time, naming the job
    clock.now += LEASE / 3
    b.renew()
    assert b.beat.jobs == ("j3",) and world.refs()[b.own_ref] == b.beat_oid != record


def test_a_worker_with_a_handed_job_claims_nothing_else_first():
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4"])
    assert claim_with_hand_offs(a)[0] is not None
    snap = b.observe()
    names, edits = queue_edits(b, snap.main, 1)
    assert b.claim_unlocked(snap, names[0], edits) is None
    assert b.try_acquire(snap)
    assert b.claim(snap, CallNextJobFunction(), names[0], edits) is None
    assert set(running(world)) == {"j2", "j3"} and b.job is None
    assert b.take_handed(b.observe()) is not None


def test_a_handed_job_its_worker_never_takes_up_is_retried_once_the_lease_ran_out():
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    got, _ = claim_with_hand_offs(a)
    assert got is not None and a.finish_step() is not None
    # b is gone without a word (killed): its record stays as it was
    snap = a.observe()
    assert isinstance(a.plan(snap), CallNextJobFunction)  # b's lease runs still
    clock.now += LEASE + MARGIN + 1
    snap = a.observe()
    plan = a.plan(snap)
    assert isinstance(plan, Retry) and plan.entry.job == "j3" and plan.revoke == "b"
    assert a.try_acquire(snap)
    retried = a.claim(snap, plan, None)
    assert retried is not None and retried.attempt == 2
    assert "interrupted=1" in running(world)["j3"]
    # b comes back: the job is a's now
    assert b.take_handed(b.observe()) is None and b.job is None


def test_a_stale_view_after_a_takeover_drops_the_job():
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    old = b.observe()  # b's look shows j3 handed to it...
    clock.now += LEASE + MARGIN + 1
    assert a.finish_step() is not None
    snap = a.observe()
    plan = a.plan(snap)
    assert isinstance(plan, Retry) and a.try_acquire(snap)
    assert a.claim(snap, plan, None) is not None  # ...then its lease ran out and a took it
    assert b.take_handed(old) is None and b.revoked and b.job is None


def test_a_restarted_worker_treats_a_job_handed_to_its_earlier_life_as_interrupted():
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    b2 = coordinator(world, "b", clock, life=2)
    snap = b2.observe()
    assert b2.handed(snap) is None and b2.take_handed(snap) is None
    plan = b2.plan(snap)
    assert isinstance(plan, Retry) and plan.entry.job == "j3" and plan.interrupted


def test_only_live_idle_workers_whose_record_moved_are_targets():
    world, clock = MemoryWorld(["j1", "j2", "j3", "j4", "j5"]), Clock()
    a, b, c = (coordinator(world, n, clock) for n in "abc")
    assert claim_with_hand_offs(b)[0] is not None
    assert claim_with_hand_offs(c)[0] is not None
    # a first saw b and c as they are: a record first seen now may be a dead worker's
    assert a.handoff_targets(a.observe()) == []
    assert b.finish_step() is not None  # b's record does not move on a finish...
    assert a.handoff_targets(a.observe()) == []
    assert b.renew_beat()  # ...but on a renewal, say
    snap = a.observe()
    assert [t.worker for t in a.handoff_targets(snap)] == ["b"]  # c still runs its job
    assert a.handoff_targets(snap, limit=0) == []
    clock.now += LEASE / 2  # b has waited half a lease without a word: it claims for itself
    assert a.handoff_targets(a.observe()) == []
    assert b.renew_beat() and b.say_gone()
    assert a.handoff_targets(a.observe()) == []  # b left


def test_the_push_is_refused_whole_when_the_lock_moved():
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4"])
    snap = a.observe()
    targets = a.handoff_targets(snap)
    assert [t.worker for t in targets] == ["b"]
    names, edits = queue_edits(a, snap.main, 2)
    c = coordinator(world, "c", clock)
    assert claim_with_hand_offs(c)[0] is not None  # the lock moved on
    before = dict(world.refs())
    handed = list(zip(targets, names[1:], strict=True))
    assert a.claim_unlocked(snap, names[0], edits, handed) is None
    assert world.refs() == before


def test_a_restarted_life_that_resumed_a_taken_up_job_learns_of_its_takeover():
    """b takes up j3 and dies inside its finish; its next life adopts the job from its
    local copy to complete that finish (a Worker killed elsewhere drops the job).  When
    a takes the job over meanwhile, the revocation names the record that named j3, so
    b's new life counts it as its own and its finish is refused (not parked over the
    takeover: the job would have run twice)."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    taken = b.take_handed(b.observe())
    assert taken is not None
    b2 = coordinator(world, "b", clock, life=2)
    b2.adopt(JobHolding(taken.job, taken.token, taken.attempt, taken.branch, taken.tip))
    assert a.finish_step() is not None
    a.observe()  # sees b's record as the take-up left it...
    clock.now += LEASE + MARGIN + 1  # ...and unchanged for a lease
    snap = a.observe()
    plan = a.plan(snap)
    assert isinstance(plan, Retry) and plan.revoke == "b" and a.try_acquire(snap)
    assert a.claim(snap, plan, None) is not None
    b2.observe()
    with pytest.raises(LeaseLost):
        b2.finish(lambda _: None, lambda: 0.0, park_first=True)
    assert "worker=a" in running(world)["j3"]


def test_a_park_after_a_takeover_of_a_job_taken_up_without_a_push_is_refused():
    """b takes up j3 without writing its record (it was fresh) and dies inside its finish;
    its next life adopts the job and reads the ledger for its finish (still its own),
    then a takes the job over, revoking b's record, which never named j3.  The revocation names the
    job it takes, so the new life's park counts it as its own and is refused; else the
    park would be written over the revocation, and finish_job() would return for
    results that no fold will ever merge (the ledger gives the job to a)."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    pushes = b.stats.pushes
    taken = b.take_handed(b.observe())
    assert taken is not None and b.stats.pushes == pushes  # no push: the record is fresh
    b2 = coordinator(world, "b", clock, life=2)
    b2.adopt(JobHolding(taken.job, taken.token, taken.attempt, taken.branch, taken.tip))
    assert a.finish_step() is not None
    a.observe()
    clock.now += LEASE + MARGIN + 1
    b2.observe()
    assert b2._finish_try(park_instead=True).name == "READY"  # the ledger: still b's
    snap = a.observe()
    plan = a.plan(snap)
    assert isinstance(plan, Retry) and plan.revoke == "b" and a.try_acquire(snap)
    assert a.claim(snap, plan, None) is not None
    revocation = parse_beat_message(world.message(world.refs()[b.own_ref]))
    assert revocation.revoked and "j3" in revocation.jobs
    with pytest.raises(LeaseLost):
        for _ in range(3):
            if b2.park_step():
                break  # landed over the revocation
    assert "worker=a" in running(world)["j3"]
    assert parse_beat_message(world.message(world.refs()[b.own_ref])).revoked


def test_an_admin_cancel_of_a_job_taken_up_without_a_push_names_it_in_the_revocation():
    """As a takeover does: ``distribute cancel`` revokes the record of the worker whose
    job it takes, and the record, not yet renewed since the take-up, never named j3."""
    from test_parked_races import AdminView

    from distribute.coordination import FencedEdit
    from distribute.fenced import cancel_edit

    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    pushes = b.stats.pushes
    assert b.take_handed(b.observe()) is not None and b.stats.pushes == pushes
    assert "j3" not in parse_beat_message(world.message(world.refs()[b.own_ref])).jobs
    FencedEdit(AdminView(world), "cli@admin", 30.0, sleep=lambda s: None,
               clock=clock).apply(cancel_edit(["j3"], {}, "cli@admin"))
    revocation = parse_beat_message(world.message(world.refs()[b.own_ref]))
    assert revocation.revoked and "j3" in revocation.jobs
    assert "j3" not in running(world)


def test_a_worker_that_takes_no_hand_offs_is_never_handed_one():
    world, clock = MemoryWorld(["j1", "j2", "j3"]), Clock()
    a = coordinator(world, "a", clock)
    b = Coordinator(world.transport("b#1"), worker="b", session="b#s1", branch="main",
                    lease=LEASE, margin=MARGIN, max_attempts=2, clock=clock, hand_offs=False)
    a.observe()
    got, _ = claim_with_hand_offs(b)
    assert got is not None and b.finish_step() is not None and b.renew_beat()
    assert a.handoff_targets(a.observe()) == []
    assert "takes_hand_offs" in world.message(world.refs()[b.own_ref])


def test_a_handed_job_whose_finish_is_parked_is_not_taken_up_again():
    """The ledger lists a parked finish as running until someone folds it: the view (with
    the parked finishes folded in) says done, and a job is taken up once per process."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3"])
    assert claim_with_hand_offs(a)[0] is not None
    assert b.take_handed(b.observe()) is not None
    assert b.park_step() and b.job is None
    snap = b.observe()
    assert "j3" in running(world) and snap.ledger.handed_to("b", b.session) is not None
    assert b.handed(snap) is None and b.take_handed(snap) is None and b.job is None


def test_a_record_that_changed_while_the_claimer_was_not_looking_is_no_target():
    """a ran a long job without looking: b's record changed at some time in that gap, so b
    may have died long ago, and a hands it nothing."""
    world, clock = MemoryWorld(["j1", "j2", "j3"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    a.observe()
    clock.now += 3 * LEASE  # a is busy elsewhere
    assert claim_with_hand_offs(b)[0] is not None and b.finish_step() is not None
    assert a.handoff_targets(a.observe()) == []
    assert b.renew_beat()  # written after a's last look, which was just now
    assert [t.worker for t in a.handoff_targets(a.observe())] == ["b"]


def test_a_hand_off_moves_the_handed_workers_marker_and_no_other():
    """The claim's push moves ``refs/distribute/handed/<worker>`` of each worker it handed
    a job, to the claim commit: the one ref that worker's peeks watch for a job to take
    up.  A second claim that hands it another job moves the marker again (from the value
    the claimer read); the claimer's own marker and those of workers handed nothing stay."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4", "j5", "j6"])
    got, handed = claim_with_hand_offs(a)
    assert got is not None and [beat.worker for beat, _ in handed] == ["b"]
    refs = world.refs()
    first = refs[handed_ref("b")]
    assert first == refs[MAIN_REF] and handed_ref("a") not in refs
    # b takes its job up and finishes it; a finishes too, and claims again for both
    snap = b.observe()
    assert b.take_handed(snap) is not None and b.finish_step() is not None
    assert a.finish_step() is not None
    clock.now += 1.0
    got, handed = claim_with_hand_offs(a)
    assert got is not None and [beat.worker for beat, _ in handed] == ["b"]
    refs = world.refs()
    assert refs[handed_ref("b")] == refs[MAIN_REF] != first
    assert handed_ref("a") not in refs


def test_a_job_handed_while_the_workers_own_claim_lost_is_taken_up_in_one_push():
    """b's unlocked claim loses to a's, which hands b a job.  The lost claim left b to
    read its record again; the look that shows the job read it, so the take-up (whose
    renewal is due) is one push of b's record, not a refused push, a fetch of the record
    and a second push."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4", "j5"])
    stale = b.observe()
    names, edits = queue_edits(b, stale.main, 1)
    got, handed = claim_with_hand_offs(a)
    assert got is not None and [beat.worker for beat, _ in handed] == ["b"]
    assert b.claim_unlocked(stale, names[0], edits) is None  # lost to a's claim
    clock.now += LEASE / 3  # b's record is due for renewal: the take-up pushes it
    pushes, fetches, record = b.stats.pushes, b.stats.fetches, world.refs()[b.own_ref]
    taken = b.take_handed(b.observe())
    assert taken is not None and taken.job == handed[0][1]
    assert b.stats.pushes == pushes + 1  # no refused push
    assert b.stats.fetches == fetches + 1  # the look only
    assert world.refs()[b.own_ref] == b.beat_oid != record


def test_a_take_up_after_a_lost_claim_still_learns_of_a_revocation():
    """As above, but b's record was revoked meanwhile (a took over the job b held, whose
    end b never saw): the record the look read is not adopted, the take-up's push is
    refused and b learns it was revoked; the handed job is dropped."""
    world, clock, a, b = idle_pair(["j1", "j2", "j3", "j4", "j5"])
    stale = b.observe()
    names, edits = queue_edits(b, stale.main, 1)
    got, handed = claim_with_hand_offs(a)
    assert got is not None and [beat.worker for beat, _ in handed] == ["b"]
    assert b.claim_unlocked(stale, names[0], edits) is None
    snap = b.observe()
    clock.now += LEASE + MARGIN + 1
    assert a.finish_step() is not None
    a.observe()
    clock.now += LEASE + MARGIN + 1
    retry = a.observe()
    plan = a.plan(retry)
    assert isinstance(plan, Retry) and plan.revoke == "b" and a.try_acquire(retry)
    assert a.claim(retry, plan, None) is not None  # b's handed job, taken over
    assert b.take_handed(snap) is None and b.revoked and b.job is None
