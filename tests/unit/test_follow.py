"""The loop behind `distribute logs --follow`, driven by scripted looks (no remote, no clock)."""

from __future__ import annotations

import random

import pytest

from distribute.core.errors import UsageError
from distribute.follow import MAX_BACKOFF_FACTOR, LogLook, describe, follow


def scripted(*looks):
    """A look function returning ``looks`` in turn; the test fails if it is called more."""
    pending = list(looks)

    def look():
        assert pending, "follow looked again after the job had ended"
        return pending.pop(0)

    return look


def run(*looks, interval=1.0):
    written, said, slept = [], [], []
    last = follow(scripted(*looks), "j", written.append, said.append, interval=interval,
                  sleep=slept.append, rng=random.Random(1))
    return last, b"".join(written), said, slept


def test_prints_only_what_is_new_and_stops_when_done():
    last, out, said, slept = run(
        LogLook("queued"),
        None,
        LogLook("running", None, None, "jobs/w/j/1", "w", 1),
        LogLook("running", b"a\n", "jobs/w/j/1", "jobs/w/j/1", "w", 1),
        None,
        LogLook("running", b"a\nb\n", "jobs/w/j/1", "jobs/w/j/1", "w", 1),
        LogLook("done", b"a\nb\nc\n", "main", None, "w", 1),
    )
    assert out == b"a\nb\nc\n"
    assert last.state == "done"
    assert "queued" in said[0] and "no log.txt yet" in said[1] and "done" in said[-1]
    assert len(slept) == 6  # one wait between each two looks, none after the last


def test_a_failed_job_ends_the_follow_and_names_the_fix():
    last, out, said, _ = run(
        LogLook("running", b"x\n", "jobs/w/j/1", "jobs/w/j/1", "w", 1),
        LogLook("released", b"x\nboom\n", "jobs/w/j/1", "jobs/w/j/1", "", 1, "exit code 3"),
        LogLook("failed", b"x\nboom\nboom\n", "jobs/v/j/2", "jobs/v/j/2", "v", 2, "exit code 3"),
    )
    assert last.state == "failed" and out == b"x\nboom\nboom\n"
    assert any("waiting for another attempt" in line for line in said)
    assert "requeue" in said[-1] and "exit code 3" in said[-1]


def test_a_log_that_starts_afresh_is_announced_and_printed_whole():
    _, out, said, _ = run(
        LogLook("running", b"old\n", "jobs/w/j/1", "jobs/w/j/1", "w", 1),
        LogLook("running", b"new\n", "jobs/v/j/2", "jobs/v/j/2", "v", 2),
        LogLook("done", b"new\nend\n", "main", None, "v", 2),
    )
    assert out == b"old\nnew\nend\n"
    assert any("afresh" in line for line in said)


def test_the_wait_grows_while_nothing_changes_and_is_bounded():
    looks = [LogLook("running", b"a\n", "b", "b", "w", 1)] + [None] * 12
    looks += [LogLook("running", b"a\nmore\n", "b", "b", "w", 1), None,
              LogLook("done", b"a\nmore\n", "main", None, "w", 1)]
    _, _, _, slept = run(*looks, interval=2.0)
    idle = slept[1:13]
    assert all(0 < s <= 2.0 * MAX_BACKOFF_FACTOR for s in slept)
    assert max(idle) > 2.0 * MAX_BACKOFF_FACTOR / 2  # it did grow
    assert slept[13] <= 2.0  # and starts again at the interval once the log moved


def test_an_unknown_job_is_an_error_at_once():
    with pytest.raises(UsageError, match="not known"):
        run(LogLook("unknown"))
    with pytest.raises(UsageError, match="interval"):
        follow(scripted(), "j", print, print, interval=0)


def test_describe_names_worker_and_attempt():
    line = describe(LogLook("running", b"", "b", "b", "gpu-box-2", 3), "lr=0.1")
    assert "gpu-box-2" in line and "attempt 3" in line and "no log" not in line


class FakeTransport:
    def __init__(self, refs):
        self.refs = refs

    def list_refs(self, prefix):
        return {r: v for r, v in self.refs.items() if r.startswith(prefix)}


class FakeView:
    main_ref = "refs/heads/main"

    def __init__(self, refs):
        self.transport = FakeTransport(refs)


def test_a_branch_that_moves_right_after_a_look_is_read_again(monkeypatch):
    """The refs a look depends on are the values it read, not values read after it: a
    commit landing just after the reading must not be taken as already seen."""
    import distribute.follow as follow_module

    refs = {"refs/heads/main": "m1", "refs/heads/jobs/w/j/1": "t1"}
    moves = [True]

    def locate(view, job, earlier_runs=True):
        look = LogLook("running", b"a\n", "jobs/w/j/1", "jobs/w/j/1", "w", 1,
                       seen=(refs["refs/heads/main"], refs["refs/heads/jobs/w/j/1"]))
        if moves.pop(0):
            refs["refs/heads/jobs/w/j/1"] = "t2"  # the worker commits just after the read
        return look

    monkeypatch.setattr(follow_module, "locate_log", locate)
    watcher = follow_module.LogWatcher(FakeView(refs), "j")
    moves[:] = [True, False]
    assert watcher.look() is not None
    assert watcher.look() is not None, "the commit just after the first look was skipped"
    # and with nothing moved since, the next look reads nothing
    assert watcher.look() is None
