"""The waiting worker's decisions (distribute.core.pacing) with plain inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from distribute.core.pacing import (
    TURNS_WAITED,
    KeepWatching,
    LookAgain,
    Pacer,
    Try,
    Watch,
    after_failed_try,
    after_look,
    after_peek,
    looks_in_full,
    marker_of,
    still_ahead,
    turn_wait,
)

LOCK = "refs/distribute/lock"
A, B = "refs/distribute/workers/a", "refs/distribute/workers/b"


def held(value="l1", ahead=()):
    return Watch(lock_free=False, lock_oid=value, latest=value, ahead=tuple(ahead),
                 ahead_oids={r: "r0" for r in ahead})


def free(value="l1", ahead=()):
    return Watch(lock_free=True, lock_oid=value, latest=value, ahead=tuple(ahead),
                 ahead_oids={r: "r0" for r in ahead})


def test_a_held_lock_unchanged_is_watched():
    verdict = after_peek(held(), {LOCK: "l1"}, LOCK, expired=False, wait=0.0)
    assert isinstance(verdict, KeepWatching) and verdict.wake_by is None


@pytest.mark.parametrize("ahead", [(), (A,), (A, B)])
def test_a_held_lock_that_moves_sends_the_waiter_to_look_whoever_is_ahead(ahead):
    """The cause of the lease-long stall: with workers ahead, the old rule kept watching
    a lock that had been released, under the verdict "held"."""
    refs = {LOCK: "l2", **{r: "r0" for r in ahead}}
    assert isinstance(after_peek(held(ahead=ahead), refs, LOCK, expired=False, wait=5.0),
                      LookAgain)


def test_an_expired_lock_is_looked_at():
    assert isinstance(after_peek(held(), {LOCK: "l1"}, LOCK, expired=True, wait=0.0), LookAgain)


def test_at_a_free_lock_the_waiter_wakes_by_its_turn():
    verdict = after_peek(free(ahead=(A,)), {LOCK: "l1", A: "r0"}, LOCK, expired=False, wait=0.3)
    assert isinstance(verdict, KeepWatching) and verdict.wake_by == 0.3
    assert isinstance(after_peek(free(ahead=(A,)), {LOCK: "l1", A: "r0"}, LOCK,
                                 expired=False, wait=0.0), LookAgain)


def test_a_worker_handed_a_job_drops_out_of_line_by_its_marker():
    """A worker a claim handed a job may take it up without writing its record: its
    hand-off marker, which the claim moved (or made), tells those behind it."""
    mark_a, mark_b = marker_of(A), marker_of(B)
    assert mark_a == "refs/distribute/handed/a"
    watch = replace(free(ahead=(A, B)), ahead_oids={A: "r0", B: "r0", mark_a: "m0"})
    unmoved = {LOCK: "l1", A: "r0", B: "r0", mark_a: "m0"}
    assert still_ahead(watch, unmoved) == (A, B)
    moved = {LOCK: "l2", A: "r0", B: "r0", mark_a: "m1"}  # a claim handed a a job
    assert still_ahead(watch, moved) == (B,)
    made = {**moved, mark_a: "m0", mark_b: "m1"}  # b's first hand-off makes its marker
    assert still_ahead(watch, made) == (A,)
    verdict = after_peek(watch, {**made, mark_a: "m1"}, LOCK, expired=False, wait=1.0)
    assert isinstance(verdict, LookAgain)  # nobody is ahead any more


def test_turns_taken_at_a_free_lock_drop_those_who_took_them():
    watch = free(ahead=(A, B))
    refs = {LOCK: "l2", A: "r1", B: "r0"}  # a claimed: its record and the lock moved
    assert still_ahead(watch, refs) == (B,)
    verdict = after_peek(watch, refs, LOCK, expired=False, wait=1.0)
    assert isinstance(verdict, KeepWatching) and verdict.watch.ahead == (B,)
    refs = {LOCK: "l3", A: "r1", B: "r1"}  # and then b: nobody is ahead any more
    assert isinstance(after_peek(verdict.watch, refs, LOCK, expired=False, wait=1.0), LookAgain)


def test_after_a_look_a_free_lock_is_tried_when_it_is_our_turn():
    assert isinstance(after_look(free(), 0.0), Try)
    assert isinstance(after_look(free(ahead=(A,)), 0.5), KeepWatching)
    assert isinstance(after_look(held(), 9.0), Try)  # a held lock: try (maybe a takeover)
    assert after_failed_try(held()) == held() and after_failed_try(free()) is None


def test_turn_wait_counts_at_most_four_turns_from_when_the_wait_began():
    assert turn_wait(2, 0.5, unchanged_for=0.0, waiting_for=0.0) == 1.0
    assert turn_wait(10, 0.5, unchanged_for=0.0, waiting_for=0.0) == TURNS_WAITED * 0.5
    # a lock value seen long ago says nothing about turns: only this wait counts
    assert turn_wait(2, 0.5, unchanged_for=100.0, waiting_for=0.25) == 0.75


def test_the_pacer_learns_and_stays_under_its_ceiling_unless_a_turn_takes_longer():
    pacer = Pacer(poll=0.1, ceiling=1.0)
    assert pacer.slot() == pytest.approx(0.1)
    pacer.looked(0.2)
    pacer.claimed(0.3)
    assert pacer.slot() == pytest.approx(0.1 + 0.2 + 0.6)
    pacer.looked(0.8)  # looks now average 0.35 s
    assert pacer.slot() == 1.0  # never past the ceiling...
    pacer.looked(5.0)  # ...unless a look and a claim alone take longer
    assert pacer.slot() == pytest.approx(1.5 * (pacer.observe_seconds + 0.3))
    assert pacer.poll_delay(0) <= 0.1 and pacer.poll_delay(9) <= 1.0
    pacer.count_turns({A: "r0", B: "r0"}, 0.0, "refs/distribute/workers/")
    pacer.count_turns({A: "r1", B: "r1"}, 1.0, "refs/distribute/workers/")
    assert pacer.turn_pace() == pytest.approx(0.5)


def test_only_the_next_in_turn_at_a_free_lock_looks_in_full_instead_of_peeking():
    over_a_network = (0.5, 0.35)  # a fetch, and a listing of refs, timed here
    assert looks_in_full(free(ahead=(A,)), *over_a_network)
    assert not looks_in_full(free(ahead=(A, B)), *over_a_network)  # further back: peeks
    assert not looks_in_full(free(), *over_a_network)  # nobody ahead: it tries at once
    assert not looks_in_full(held(ahead=(A,)), *over_a_network)  # a holder may keep it long
    # a remote on this machine: a peek reads ref files, far cheaper than a look
    assert not looks_in_full(free(ahead=(A,)), 0.02, 0.001)
    assert not looks_in_full(free(ahead=(A,)), 0.5, 0.0)  # no peek timed yet


def test_a_worker_looks_when_its_hand_off_marker_moves_and_only_then():
    """A claim that hands jobs moves the lock and each handed worker's marker; the handed
    workers drop out of the line only once they take their jobs up.  So a worker whose
    marker moved looks at once, with workers still ahead; one whose marker did not has
    nothing to take up, and keeps its place in line."""
    watch = replace(free(ahead=(A, B)), handed="m1")
    mine = "refs/distribute/handed/me"
    handed = {LOCK: "l2", A: "r0", B: "r0", mine: "m2"}  # nobody ahead moved yet
    verdict = after_peek(watch, handed, LOCK, expired=False, wait=1.0, handed_ref=mine)
    assert isinstance(verdict, LookAgain) and "handed" in verdict.why
    others = {LOCK: "l2", A: "r0", B: "r0", mine: "m1"}  # the claim handed jobs to others
    assert isinstance(after_peek(watch, others, LOCK, expired=False, wait=1.0,
                                 handed_ref=mine), KeepWatching)
    # a worker that takes no hand-offs does not read a marker
    assert isinstance(after_peek(watch, handed, LOCK, expired=False, wait=1.0), KeepWatching)
    # the first marker ever written for this worker counts as a move
    first = {LOCK: "l2", A: "r0", B: "r0", mine: "m1"}
    assert isinstance(after_peek(free(ahead=(A, B)), first, LOCK, expired=False, wait=1.0,
                                 handed_ref=mine), LookAgain)
    # a held lock: the marker tells all the same
    assert isinstance(after_peek(replace(held(ahead=(A,)), handed="m1"), handed, LOCK,
                                 expired=False, wait=1.0, handed_ref=mine), LookAgain)


def test_a_rounding_errors_worth_of_turn_wait_is_no_wait():
    # 3 turns of 0.1 s minus 0.3 s waited: 0 up to rounding (5.6e-17), which a clock that
    # does not move after so short a sleep would wait for ever
    assert 3 * 0.1 - 0.3 > 0.0
    assert turn_wait(3, 0.1, 0.3, 10.0) <= 0.0
    assert turn_wait(2, 1.0, 1.0, 10.0) == 1.0 and turn_wait(2, 1.0, 3.0, 10.0) == -1.0
