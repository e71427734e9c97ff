from hypothesis import given
from hypothesis import strategies as st

from distribute.core.ledger import Entry, Ledger
from distribute.core.plan import (
    CallNextJobFunction,
    GiveUp,
    Retry,
    ahead_in_turn,
    others_running,
    plan_claim,
)


def led(*running):
    return Ledger(running=tuple(running))


def test_no_orphans_calls_the_function():
    assert plan_claim(led(Entry("a", "v", 1)), "w", set(), 3) == CallNextJobFunction()


def test_released_job_is_retried_first():
    e = Entry("a", "", 1, 1, "boom")
    assert plan_claim(led(e), "w", set(), 3) == Retry(e)


def test_expired_holder_is_revoked_and_its_attempt_ends_interrupted():
    e = Entry("a", "v", 1, 1)
    assert plan_claim(led(e), "w", {"v"}, 3) == Retry(e, revoke="v", interrupted=True)


def test_own_earlier_life_is_retried_at_once_as_an_interruption():
    e = Entry("a", "w", 1, 2)
    assert plan_claim(led(e), "w", set(), 3) == Retry(e, interrupted=True)


def test_expiries_do_not_use_up_attempts():
    """Attempt 3 of a job whose two earlier attempts were interrupted (preempted) has
    failed no time: with max_attempts=3 it is retried, not given up."""
    e = Entry("a", "v", 1, 3, interrupted=2)
    assert plan_claim(led(e), "w", {"v"}, 3) == Retry(e, revoke="v", interrupted=True)


def test_too_many_interruptions_give_up():
    e = Entry("a", "v", 1, 5, interrupted=4)
    p = plan_claim(led(e), "w", {"v"}, 3, max_interruptions=5)
    assert isinstance(p, GiveUp) and p.revoke == "v" and "interrupted 5 times" in p.reason
    assert "expired" in p.reason


def test_released_job_with_failures_used_up_gives_up():
    e = Entry("a", "", 1, 3, "boom", interrupted=0)  # three failed attempts ended
    assert isinstance(plan_claim(led(e), "w", set(), 3), GiveUp)
    e = Entry("a", "", 1, 3, "boom", interrupted=1)  # two failures, one interruption
    assert plan_claim(led(e), "w", set(), 3) == Retry(e)


def test_others_running():
    assert others_running(led(Entry("a", "w"), Entry("b", "v")), "w") == (Entry("b", "v"),)


# ---- taking turns at a free lock ---------------------------------------------------------
names = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8,
                 unique=True)


def served(**tokens):
    return Ledger(done=tuple(Entry(f"j{w}{t}", w, t) for w, t in tokens.items()))


def test_least_recently_served_goes_first():
    ledger = served(a=5, b=2, c=9)
    assert ahead_in_turn(["a", "b", "c", "d"], "a", ledger) == ["d", "b"]
    assert ahead_in_turn(["a", "b", "c", "d"], "d", ledger) == []  # never served: first
    assert ahead_in_turn(["a", "b", "c", "d"], "c", ledger) == ["d", "b", "a"]


def test_me_counts_even_when_not_listed():
    assert ahead_in_turn([], "me", Ledger()) == []
    assert ahead_in_turn(["a"], "b", Ledger()) == ["a"]


@given(names, st.data())
def test_every_idle_worker_has_its_own_place(idle, data):
    """All observers of one ledger agree: the places form 0, 1, ..., n-1 with no tie."""
    tokens = data.draw(st.lists(st.integers(0, 20), min_size=len(idle), max_size=len(idle)))
    pairs = enumerate(zip(idle, tokens, strict=True))
    ledger = Ledger(done=tuple(Entry(f"j{i}", w, t) for i, (w, t) in pairs))
    places = sorted(len(ahead_in_turn(idle, w, ledger)) for w in idle)
    assert places == list(range(len(idle)))
    for w in idle:  # the ones ahead are exactly those whose own list is shorter
        ahead = ahead_in_turn(idle, w, ledger)
        assert all(len(ahead_in_turn(idle, v, ledger)) < len(ahead) for v in ahead)


@given(names, st.integers(1, 3))
def test_turns_go_round(idle, rounds):
    """If the first in turn always claims next, every worker claims once per round."""
    ledger, claims = Ledger(), []
    for token in range(1, rounds * len(idle) + 1):
        first = [w for w in idle if not ahead_in_turn(idle, w, ledger)]
        assert len(first) == 1
        job = f"job{token}"
        ledger = ledger.claim(job, first[0], token).finish(job, first[0], token)
        claims.append(first[0])
    for r in range(rounds):
        assert sorted(claims[r * len(idle):(r + 1) * len(idle)]) == sorted(idle)
