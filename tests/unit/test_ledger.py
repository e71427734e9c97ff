import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distribute.core.errors import LeaseLost, RemoteStateError, UsageError
from distribute.core.ledger import (
    DONE,
    FAILED,
    RUNNING,
    Entry,
    Ledger,
    format_line,
    parse_line,
)
from distribute.core.names import _FORBIDDEN_CATEGORIES

names = st.text(min_size=1, max_size=30).filter(
    lambda s: s == s.strip()
    and not any(__import__("unicodedata").category(c) in _FORBIDDEN_CATEGORIES for c in s)
)
entries = st.builds(
    Entry,
    job=names,
    worker=names | st.just(""),
    token=st.integers(0, 10**9),
    attempt=st.integers(1, 50),
    reason=st.text(max_size=40).map(lambda s: " ".join(s.split())),
)


@given(entries)
def test_line_round_trip(entry):
    assert parse_line(format_line(entry)) == entry


@given(st.lists(entries, max_size=8), st.lists(entries, max_size=8))
def test_ledger_round_trip(running, done):
    ledger = Ledger(running=tuple(running), done=tuple(done))
    again = Ledger.from_files(ledger.to_files())
    assert again == ledger


def test_seed_format_plain_names():
    ledger = Ledger.from_files({RUNNING: b"", DONE: b"a\nb c\n\n"})
    assert [e.job for e in ledger.done] == ["a", "b c"]


def test_missing_ledgers_name_the_fix():
    with pytest.raises(RemoteStateError, match="distribute init"):
        Ledger.from_files({RUNNING: b""}, "main")


def test_damaged_line_is_reported():
    with pytest.raises(RemoteStateError, match="running.txt"):
        Ledger.from_files({RUNNING: b"job\tnonsense\n", DONE: b""})


@pytest.mark.parametrize(("line", "what"), [
    ("jo\x01b\tworker=w\ttoken=1", "the job name holds the character U+0001"),
    ("job\tworker=w\x7f\ttoken=1", "worker= holds the character U+007F"),
    ("job\tworker=\twas=w\u2028x\ttoken=1", "was= holds the character U+2028"),
    ("job\tworker=w\ttoken=1\tby=\x00", "by= holds a NUL byte"),
    ("job\tworker=w\ttoken=1\tsession=s\rs", "session= holds a carriage return"),
])
def test_a_name_a_ledger_cannot_hold_is_reported_by_its_field(line, what):
    with pytest.raises(RemoteStateError, match=re.escape(what)):
        Ledger.from_files({RUNNING: line.encode() + b"\n", DONE: b""})


def fresh():
    return Ledger.from_files({RUNNING: b"", DONE: b""})


def test_claim_finish():
    led = fresh().claim("j", "w", 3)
    assert led.running_entry("j") == Entry("j", "w", 3, 1)
    done = led.finish("j", "w", 3)
    assert done.state_of("j") == "done" and not done.running
    done.validate()


def test_finish_with_stale_token_is_refused():
    led = fresh().claim("j", "w", 3).retry("j", "v", 4)
    with pytest.raises(LeaseLost, match="held by 'v'"):
        led.finish("j", "w", 3)
    with pytest.raises(LeaseLost):
        led.finish("j", "v", 3)
    assert led.finish("j", "v", 4).is_done("j")


def test_finish_twice_is_refused():
    led = fresh().claim("j", "w", 1).finish("j", "w", 1)
    with pytest.raises(LeaseLost, match="already done"):
        led.finish("j", "w", 1)


def test_claiming_a_known_job_is_refused():
    led = fresh().claim("j", "w", 1)
    with pytest.raises(UsageError, match="already running"):
        led.claim("j", "v", 2)
    with pytest.raises(UsageError, match="already done"):
        led.finish("j", "w", 1).claim("j", "v", 2)


def test_fail_releases_then_fails_for_good():
    led = fresh().claim("j", "w", 1)
    led = led.fail("j", "w", 1, "boom\nline two", max_attempts=2)
    e = led.running_entry("j")
    assert e.released and e.reason == "boom line two" and e.attempt == 1
    led = led.retry("j", "v", 2)
    assert led.running_entry("j").attempt == 2
    led = led.fail("j", "v", 2, "again", max_attempts=2)
    assert led.state_of("j") == "failed" and led.failed[0].attempt == 2
    assert FAILED in led.to_files()


def test_interruptions_release_without_using_up_attempts():
    led = fresh().claim("j", "w", 1)
    for token in range(2, 6):  # four interruptions in a row, max_attempts=2
        led = led.fail("j", led.running_entry("j").worker or "v", token - 1, "SIGTERM",
                       max_attempts=2, interrupted=True)
        e = led.running_entry("j")
        assert e is not None and e.released and e.failures == 0
        assert e.interrupted == token - 1 and e.was in ("w", "v")
        led = led.retry("j", "v", token)
    e = led.running_entry("j")
    assert (e.attempt, e.interrupted, e.failures) == (5, 4, 0)
    led = led.fail("j", "v", 5, "boom", max_attempts=2)  # a real failure: 1 of 2
    assert led.running_entry("j").failures == 1
    led = led.retry("j", "v", 6).fail("j", "v", 6, "boom", max_attempts=2)
    assert led.state_of("j") == "failed"
    assert led.failed[0].interrupted == 4


def test_interruptions_are_capped():
    led = fresh().claim("j", "w", 1)
    led = led.fail("j", "w", 1, "killed", max_attempts=3, interrupted=True,
                   max_interruptions=2).retry("j", "w", 2)
    led = led.fail("j", "w", 2, "killed", max_attempts=3, interrupted=True,
                   max_interruptions=2)
    assert led.state_of("j") == "failed"


def test_a_takeover_counts_the_holders_attempt_as_interrupted():
    led = fresh().claim("j", "w", 1).retry("j", "v", 2, interrupted=True)
    e = led.running_entry("j")
    assert (e.attempt, e.interrupted, e.failures) == (2, 1, 0)


def test_new_fields_survive_a_round_trip_and_old_lines_read_as_failures():
    led = fresh().claim("j", "w", 1).fail("j", "w", 1, "x", 3, interrupted=True)
    again = Ledger.from_files(led.to_files())
    assert again == led
    assert b"interrupted=1" in led.to_files()[RUNNING] and b"was=w" in led.to_files()[RUNNING]
    # a line written before interruptions were told apart: every ended attempt failed
    old = Ledger.from_files({RUNNING: b"j\tworker=\ttoken=1\tattempt=2\n", "done.txt": b""})
    assert old.running_entry("j").failures == 2


def test_requeue_forgets_a_failed_job():
    led = fresh().claim("j", "w", 1).fail("j", "w", 1, "x", max_attempts=1)
    assert led.requeue("j").state_of("j") is None
    with pytest.raises(UsageError):
        fresh().requeue("nope")


def test_changed_files_only_lists_changes():
    before = fresh()
    after = before.claim("j", "w", 1)
    assert set(after.changed_files(before)) == {RUNNING}


def test_validate_catches_double_done():
    bad = Ledger(done=(Entry("j"), Entry("j")))
    with pytest.raises(AssertionError, match="done twice"):
        bad.validate()
    with pytest.raises(AssertionError, match="both running and done"):
        Ledger(running=(Entry("j", "w"),), done=(Entry("j"),)).validate()
