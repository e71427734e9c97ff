"""Claims with no separate acquire (``Coordinator.claim_unlocked``), step by step on the
in-memory remote: one atomic push moves a free lock to the next token and claims the job,
and is refused whole when the lock or the main branch moved since the observation."""

from __future__ import annotations

from protocol_machine import MAIN_REF, MemoryWorld
from test_regressions import Clock, claim, coordinator

from distribute.core.lock import parse_lock_message
from distribute.core.names import LOCK_REF
from distribute.core.plan import CallNextJobFunction
from distribute.sources import JOBS_FILE, format_queue, read_queue


def lock_of(world: MemoryWorld):
    return parse_lock_message(world.message(world.refs()[LOCK_REF]))


def running(world: MemoryWorld) -> bytes:
    return world.read_file(world.refs()[MAIN_REF], "running.txt") or b""


def test_an_unlocked_claim_is_one_push_and_leaves_the_lock_free():
    world, clock = MemoryWorld(["j1", "j2"]), Clock()
    a = coordinator(world, "a", clock)
    snap = a.observe()
    held = a.claim_unlocked(snap, "j1")
    assert held is not None and held.token == 1 and a.stats.pushes == 1
    lock = lock_of(world)
    assert lock.free and lock.token == 1 and lock.last == "a"
    assert lock.main == world.refs()[MAIN_REF] == held.tip
    assert b"j1" in running(world) and b"token=1" in running(world)
    assert world.refs()["refs/heads/" + held.branch] == held.tip
    # the next holding, locked or not, gets the next token
    b = coordinator(world, "b", clock)
    assert claim(b, "j2").token == 2


def test_a_lock_taken_meanwhile_refuses_the_unlocked_claim_whole():
    world, clock = MemoryWorld(["j1", "j2"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    snap = a.observe()
    b_snap = b.observe()
    assert b.try_acquire(b_snap)  # b holds the lock, say running its next-job function
    before = dict(world.refs())
    assert a.claim_unlocked(snap, "j1") is None
    assert world.refs() == before and a.job is None
    assert b.claim(b_snap, CallNextJobFunction(), "j1", None) is not None


def test_a_finish_meanwhile_is_replayed_over_and_the_claim_lands_once():
    """Only the main branch moved and the lock did not: nobody claimed in between, so the
    claim is rebuilt on the new main branch (edits merged) instead of asking again."""
    world, clock = MemoryWorld(["j1", "j2", "j3"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    claim(b, "j1")
    snap = a.observe()
    edits = a.transport.write_commit(parents=[snap.main], base=snap.main, message="take j2",
                                     changes={JOBS_FILE: format_queue(["j3"]).encode()})
    assert b.finish_step() is not None  # a finish moves main, not the lock
    finished = world.refs()[MAIN_REF]
    held = a.claim_unlocked(snap, "j2", edits)
    assert held is not None and held.token == 2
    assert a.stats.extra["unlocked_lost"] == 1 and a.stats.replays == 1
    main = world.refs()[MAIN_REF]
    assert world.is_ancestor(finished, main)  # built on the finish, which is kept
    assert read_queue(world.read_file(main, JOBS_FILE).decode()) == ["j3"]
    assert b"j1" in world.read_file(main, "done.txt") and running(world).count(b"j2") == 1


def test_a_claim_by_someone_else_meanwhile_sends_the_function_back():
    world, clock = MemoryWorld(["j1", "j2"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    snap = a.observe()
    assert b.claim_unlocked(b.observe(), "j1") is not None  # the lock moved
    before = dict(world.refs())
    assert a.claim_unlocked(snap, "j2") is None  # j2 may not be next any more: ask again
    assert world.refs() == before and a.job is None


def test_of_two_unlocked_claims_from_one_observation_exactly_one_lands():
    world, clock = MemoryWorld(["j1", "j2"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    sa, sb = a.observe(), b.observe()
    got = [a.claim_unlocked(sa, "j1"), b.claim_unlocked(sb, "j1")]
    assert [g is not None for g in got] == [True, False]
    assert running(world).count(b"j1") == 1


def test_a_held_lock_or_a_torn_view_is_never_claimed_unlocked():
    world, clock = MemoryWorld(["j1", "j2"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    assert b.try_acquire(b.observe())
    assert a.claim_unlocked(a.observe(), "j1") is None and a.stats.pushes == 0
    b.release(b.observe().main)
    claim(b, "j1")
    world.tear_next_read(a.transport)  # a fetch that reads the lock after a claim, main before
    torn = a.observe()
    assert a.torn(torn)
    assert a.claim_unlocked(torn, "j2") is None and a.stats.pushes == 0
