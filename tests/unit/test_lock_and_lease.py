import pytest
from hypothesis import given
from hypothesis import strategies as st

from distribute.core.errors import RemoteStateError
from distribute.core.lease import LeaseWatch
from distribute.core.lock import (
    Acquire,
    Beat,
    LockState,
    Wait,
    beat_message,
    decide_acquire,
    holder_verdict,
    lock_message,
    parse_beat_message,
    parse_lock_message,
)


@given(st.integers(0, 10**6), st.text(max_size=20), st.text(max_size=8), st.integers(0, 99),
       st.text(max_size=8), st.text(max_size=20))
def test_lock_message_round_trip(token, holder, session, renewal, main, last):
    state = LockState(token, holder, session, renewal, main=main, last=last)
    assert parse_lock_message(lock_message(state)) == state


def test_beat_message_round_trip():
    beat = Beat("w 1", "s", 4, ("a/b", "c")).revoke("v", 9)
    assert parse_beat_message(beat_message(beat)) == beat
    assert "revoked by v" in beat_message(beat)


def test_garbage_records_are_reported():
    with pytest.raises(RemoteStateError):
        parse_lock_message("hello")
    with pytest.raises(RemoteStateError):
        parse_lock_message(beat_message(Beat("w", "s")))


def test_free_lock_is_acquired_with_next_token():
    d = decide_acquire(LockState(token=4), "w", "s", holder_expired=False)
    assert d == Acquire(LockState(5, "w", "s"), takeover=False)


def test_held_lock_means_wait_until_expired():
    held = LockState(4, "v", "sv")
    assert decide_acquire(held, "w", "s", holder_expired=False) == Wait("v")
    d = decide_acquire(held, "w", "s", holder_expired=True)
    assert isinstance(d, Acquire) and d.takeover and d.new.token == 5


def test_restarted_worker_takes_its_old_holding_at_once():
    d = decide_acquire(LockState(4, "w", "old"), "w", "new", holder_expired=False)
    assert isinstance(d, Acquire) and d.takeover


def test_release_keeps_the_token_and_names_the_last_holder():
    assert LockState(7, "w", "s", 3).released("abc") == LockState(7, main="abc", last="w")


def test_an_unlocked_claim_takes_the_next_token_and_leaves_the_lock_free():
    after = LockState(7, main="old", last="v").claimed_unlocked("w", "new")
    assert after == LockState(8, main="new", last="w") and after.free


def test_holder_verdict():
    assert holder_verdict(0, 1, 30) == "valid"
    assert holder_verdict(0, 10, 30) == "renew"
    assert holder_verdict(0, 30, 30) == "lost"


def test_expiry_is_judged_by_observation_only():
    w = LeaseWatch(lease=10, margin=1)
    w.observe("r", "a", now=1000)
    assert not w.expired("r", 1010.9)
    assert w.expired("r", 1011)
    w.observe("r", "b", now=1011)  # any change restarts the wait
    assert not w.expired("r", 1015) and w.remaining("r", 1015) == 7


def test_unseen_ref_is_never_expired():
    w = LeaseWatch(lease=10, margin=1)
    assert not w.expired("r", 10**9)


def test_absent_ref_can_expire_and_then_appear():
    w = LeaseWatch(lease=1, margin=0)
    w.observe("r", None, 0)
    assert w.expired("r", 1) and w.value("r") is None
    assert w.observe("r", "x", 2) and not w.expired("r", 2.5)


@given(
    skew=st.floats(-1e6, 1e6, allow_nan=False),
    rate=st.floats(0.9, 1.1),
    holder_period=st.floats(0.5, 3.0),
)
def test_a_renewing_holder_is_never_judged_expired(skew, rate, holder_period):
    """Whatever the observer's clock offset (hours apart) or rate (within 10 %),
    a holder that renews every lease/3 of real time never looks expired."""
    lease, margin = 10.0, 1.0
    w = LeaseWatch(lease, margin)
    renew_every = lease / 3
    real = 0.0
    value = 0
    w.observe("r", str(value), skew + rate * real)
    while real < 200:
        real += holder_period
        if real // renew_every != (real - holder_period) // renew_every:
            value += 1
        now = skew + rate * real
        w.observe("r", str(value), now)
        assert not w.expired("r", now)


@given(skew=st.floats(-1e6, 1e6, allow_nan=False), rate=st.floats(0.9, 1.1))
def test_a_dead_holder_is_judged_expired_within_a_bounded_time(skew, rate):
    lease, margin = 10.0, 1.5
    w = LeaseWatch(lease, margin)
    w.observe("r", "last", skew)
    real = 0.0
    while not w.expired("r", skew + rate * real):
        real += 0.25
    # expiry comes no sooner than the lease (the observer clock runs <= 10 % fast)
    # and no later than (lease + margin) / slowest rate
    assert real >= (lease + margin) / 1.1 - 0.25 >= lease * 1.0
    assert real <= (lease + margin) / 0.9 + 0.25


def test_a_record_says_takes_hand_offs_only_when_it_takes_none():
    plain = Beat(worker="w", session="s", seq=3)
    assert "takes_hand_offs" not in beat_message(plain)  # records read as before
    assert parse_beat_message(beat_message(plain)).takes_hand_offs
    none = Beat(worker="w", session="s", seq=3, takes_hand_offs=False)
    again = parse_beat_message(beat_message(none))
    assert again == none and not again.next(()).takes_hand_offs
    wrong = beat_message(none).replace('"takes_hand_offs": false', '"takes_hand_offs": "no"')
    with pytest.raises(RemoteStateError, match="takes_hand_offs"):
        parse_beat_message(wrong)


def test_a_value_is_known_recent_only_when_its_change_was_seen_between_close_readings():
    w = LeaseWatch(lease=10, margin=2)
    w.observe("r", "v1", now=0.0)
    assert not w.written_within("r", 5, now=0.0)  # first seen: it may be old
    w.observe("r", "v2", now=100.0)  # changed at some time after 0.0
    assert not w.written_within("r", 5, now=100.0)
    w.observe("r", "v2", now=101.0)
    w.observe("r", "v3", now=101.5)  # written after 101.0
    assert w.written_within("r", 5, now=102.0) and not w.written_within("r", 5, now=106.0)
    # a ref that appears in a later sweep of every ref of its kind was written since the
    # sweep before it; in the first sweep, nothing is known of it
    w.observe_all({"a": "x"}, ["a"], now=200.0, new_is_move=True)
    assert not w.written_within("a", 5, now=200.0)
    w.observe_all({"a": "x", "b": "y"}, ["a", "b"], now=201.0, new_is_move=True)
    assert w.written_within("b", 5, now=201.0) and not w.written_within("a", 5, now=201.0)
