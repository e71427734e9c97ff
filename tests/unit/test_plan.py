from distribute.core.ledger import Entry, Ledger
from distribute.core.plan import CallNextJobFunction, GiveUp, Retry, others_running, plan_claim


def led(*running):
    return Ledger(running=tuple(running))


def test_no_orphans_calls_the_function():
    assert plan_claim(led(Entry("a", "v", 1)), "w", set(), 3) == CallNextJobFunction()


def test_released_job_is_retried_first():
    e = Entry("a", "", 1, 1, "boom")
    assert plan_claim(led(e), "w", set(), 3) == Retry(e)


def test_expired_holder_is_revoked():
    e = Entry("a", "v", 1, 1)
    assert plan_claim(led(e), "w", {"v"}, 3) == Retry(e, revoke="v")


def test_own_earlier_life_is_retried_at_once():
    e = Entry("a", "w", 1, 2)
    assert plan_claim(led(e), "w", set(), 3) == Retry(e)


def test_attempts_used_up_give_up():
    e = Entry("a", "v", 1, 3)
    p = plan_claim(led(e), "w", {"v"}, 3)
    assert isinstance(p, GiveUp) and p.revoke == "v" and "expired" in p.reason


def test_others_running():
    assert others_running(led(Entry("a", "w"), Entry("b", "v")), "w") == (Entry("b", "v"),)
