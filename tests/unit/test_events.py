"""The typed events a worker reports (distribute.core.events), and their journal form."""

from __future__ import annotations

import dataclasses

import pytest

from distribute.coordination import Coordinator, prepare_remote
from distribute.core import events as ev
from distribute.core.plan import CallNextJobFunction
from distribute.transport.memory import MemoryRemote
from sim.checker import JOB_ENDS, _History


def test_each_kind_names_one_event_class_and_the_set_lists_them_all():
    classes = [c for c in vars(ev).values()
               if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event]
    kinds = [c.kind for c in classes]
    assert len(kinds) == len(set(kinds)) and all(kinds)
    assert set(kinds) == ev.EVENT_KINDS
    assert all(dataclasses.is_dataclass(c) and c.__dataclass_params__.frozen for c in classes)


def test_journal_fields_leave_out_what_is_not_given():
    assert ev.fields_of(ev.Fail(job="j", token=3, reason="r")) == {
        "job": "j", "token": 3, "reason": "r"}
    given = ev.Fail(job="j", token=3, reason="r", outcome="retry")
    assert ev.fields_of(given)["outcome"] == "retry"
    assert "unlocked" not in ev.fields_of(ev.LockAcquire(token=1, takeover=False, previous=""))


def test_a_coordinator_reports_kinds_and_fields_as_the_journal_receives_them():
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": b"j1\n"})
    seen: list[tuple[str, dict[str, object]]] = []
    now = [0.0]
    c = Coordinator(remote.transport("w"), worker="w", session="s", branch="main", lease=10,
                    margin=2, max_attempts=2,
                    clock=lambda: now[0], journal=lambda kind, **f: seen.append((kind, f)))
    snap = c.observe()
    assert c.try_acquire(snap)
    job = c.claim(snap, CallNextJobFunction(), "j1", None)
    assert job is not None
    c.finish_step()
    kinds = [k for k, _ in seen]
    assert kinds == ["lock-acquire", "claim", "finish"]
    assert all(k in ev.EVENT_KINDS for k in kinds)
    assert seen[1][1] == {"job": "j1", "token": job.token, "attempt": 1, "branch": job.branch,
                          "revoked": ""}


def test_the_checker_refuses_to_count_an_event_no_worker_reports():
    history = _History.build([])
    assert list(history.events("claim")) == []
    with pytest.raises(ValueError, match="no event"):
        list(history.events("claimed"))
    assert set(JOB_ENDS) <= ev.EVENT_KINDS


def test_a_failed_attempt_says_what_it_did_as_a_typed_value_that_reads_as_a_string():
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": b"j1\n"})
    c = Coordinator(remote.transport("w"), worker="w", session="s", branch="main", lease=10,
                    margin=2, max_attempts=2, clock=lambda: 0.0)
    for expected in (ev.FailOutcome.RETRY, ev.FailOutcome.FAILED):
        snap = c.observe()
        assert c.try_acquire(snap)
        plan = c.plan(snap)
        job = c.claim(snap, plan if plan.__class__.__name__ == "Retry" else
                      CallNextJobFunction(), "j1", None)
        assert job is not None
        outcome = c.fail_step("boom")
        assert outcome is expected and outcome == expected.value
