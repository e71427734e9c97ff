"""The Whetlab adapter (``whetlab_make_next_jobs_func``) against a fake Whetlab experiment.

The fake keeps the part of the Whetlab client's interface the adapter uses:
``suggest()`` returns a result (parameter values) carrying ``_result_id``,
``pending()`` lists the results without an outcome, ``cancel_by_result_id``
deletes one, ``update_by_result_id`` records an outcome.  Workers run over a
real bare repository, in this process.
"""

from __future__ import annotations

import subprocess

import pytest

from distribute.core.errors import LeaseLost
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.sources import whetlab_make_next_jobs_func


class Result(dict):
    """What the Whetlab client returns: a dict of parameter values with the id as an attribute."""

    _result_id: int


class Suggestion:
    """A plain object carrying ``_result_id`` (and the values as ``params``)."""

    def __init__(self, rid: int, params: dict) -> None:
        self._result_id = rid
        self.params = params


class FakeExperiment:
    """An in-process stand-in for ``whetlab.Experiment``.

    ``shape`` is how results look: ``"client"`` as the Whetlab client makes
    them (a ``dict`` subclass with a ``_result_id`` attribute), ``"object"``
    (any object with the attribute) or ``"dict"`` (a plain dict holding the
    key ``"_result_id"``).
    """

    def __init__(self, first_id: int = 100, shape: str = "object") -> None:
        self.next_id = first_id
        self.shape = shape
        self.params: dict[int, dict] = {}
        self.outcomes: dict[int, float] = {}
        self.cancelled: list[int] = []
        self.calls: list[str] = []

    def _result(self, rid):
        if self.shape == "client":
            result = Result(self.params[rid])
            result._result_id = rid
            return result
        if self.shape == "dict":
            return {**self.params[rid], "_result_id": rid}
        return Suggestion(rid, self.params[rid])

    def suggest(self):
        self.calls.append("suggest")
        rid, self.next_id = self.next_id, self.next_id + 1
        self.params[rid] = {"learning_rate": rid / 1000}
        return self._result(rid)

    def pending(self):
        self.calls.append("pending")
        return [self._result(rid) for rid in self.params if rid not in self.outcomes]

    def cancel_by_result_id(self, rid):
        # the real client sends the id in a URL: "101" and 101 name the same result
        rid = int(rid)
        self.calls.append(f"cancel {rid}")
        assert rid in self.params, f"cancelled an unknown result {rid}"
        assert rid not in self.outcomes, f"cancelled result {rid}, which has an outcome"
        del self.params[rid]
        self.cancelled.append(rid)

    def update_by_result_id(self, rid, value):
        rid = int(rid)
        assert rid in self.params, f"outcome for an unknown or cancelled result {rid}"
        self.outcomes[rid] = value

    @property
    def pending_ids(self):
        return sorted(rid for rid in self.params if rid not in self.outcomes)


def git(*args, cwd):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def done_jobs(bare):
    return [line.split("\t")[0] for line in git("show", "main:done.txt", cwd=bare).splitlines()]


@pytest.fixture
def remote(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


def make(remote, tmp_path, name="w", **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name, **kw)


@pytest.mark.parametrize(
    # "client": dicts carrying the id as an attribute, as the Whetlab client's results do
    "shape", ["client", "object", "dict"]
)
def test_the_result_id_is_the_job_and_outcomes_are_reported(remote, tmp_path, shape):
    experiment = FakeExperiment(shape=shape)
    with make(remote, tmp_path) as w:
        func = whetlab_make_next_jobs_func(w, experiment)
        for expected in ("100", "101"):
            job = w.get_next_job(func)
            assert job == expected and experiment.pending_ids == [int(job)]
            experiment.update_by_result_id(job, float(job))
            w.finish_job()
    assert experiment.outcomes == {100: 100.0, 101: 101.0}
    assert experiment.cancelled == [] and experiment.pending_ids == []
    assert done_jobs(remote) == ["100", "101"]


def test_pending_results_no_worker_runs_are_cancelled(remote, tmp_path):
    experiment = FakeExperiment()
    with make(remote, tmp_path, name="a") as a, make(remote, tmp_path, name="b") as b:
        func_a = whetlab_make_next_jobs_func(a, experiment)
        func_b = whetlab_make_next_jobs_func(b, experiment)
        assert a.get_next_job(func_a) == "100"
        stray = experiment.suggest()._result_id  # asked by a holder whose claim never landed
        assert b.get_next_job(func_b) == "102"
        assert experiment.cancelled == [stray]  # nobody runs it
        assert experiment.pending_ids == [100, 102]  # a's and b's are kept
        for worker, job in ((a, "100"), (b, "102")):
            experiment.update_by_result_id(job, 0.5)
            worker.finish_job()
        assert a.get_next_job(func_a) == "103"
        assert experiment.cancelled == [stray]  # finished results are never cancelled
    assert sorted(done_jobs(remote)) == ["100", "102"]


def test_a_dead_worker_s_result_is_retried_not_cancelled(remote, tmp_path):
    experiment = FakeExperiment()
    clock = [0.0]
    slow = make(remote, tmp_path, name="slow", heartbeat=False, lease_seconds=1)
    fast = make(remote, tmp_path, name="fast", lease_seconds=1, margin_seconds=0.1,
                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    try:
        func_slow = whetlab_make_next_jobs_func(slow, experiment)
        func_fast = whetlab_make_next_jobs_func(fast, experiment)
        assert slow.get_next_job(func_slow) == "100"
        assert fast.get_next_job(func_fast) == "101"  # slow still counts as alive
        experiment.update_by_result_id("101", 1.0)
        fast.finish_job()
        clock[0] += 10  # slow's liveness has not moved for longer than its lease
        calls = len(experiment.calls)
        assert fast.get_next_job(func_fast) == "100" and fast.attempt == 2
        assert experiment.calls[calls:] == []  # a retry never asks the service
        assert experiment.cancelled == []
        experiment.update_by_result_id("100", 2.0)
        fast.finish_job()
        with pytest.raises(LeaseLost):
            slow.finish_job()
    finally:
        slow.close()
        fast.close()
    assert experiment.outcomes == {100: 2.0, 101: 1.0}
    assert sorted(done_jobs(remote)) == ["100", "101"]


def test_a_result_whose_job_failed_for_good_is_cancelled(remote, tmp_path):
    experiment = FakeExperiment()
    with make(remote, tmp_path, max_attempts=2) as w:
        func = whetlab_make_next_jobs_func(w, experiment)
        assert w.get_next_job(func) == "100"
        assert w.fail_job("diverged") == "retry"
        # released for a retry: still in running.txt, so its result stays pending
        assert w.get_next_job(func) == "100" and w.attempt == 2
        assert experiment.cancelled == []
        assert w.fail_job("diverged again") == "failed"
        assert w.get_next_job(func) == "101"
        assert experiment.cancelled == [100]
        assert experiment.pending_ids == [101]
    assert "100\t" in git("show", "main:failed.txt", cwd=remote)


def test_two_workers_in_turn_never_cancel_each_other(remote, tmp_path):
    experiment = FakeExperiment()
    with make(remote, tmp_path, name="a") as a, make(remote, tmp_path, name="b") as b:
        funcs = {w: whetlab_make_next_jobs_func(w, experiment) for w in (a, b)}
        running = {}
        for _ in range(3):
            for w in (a, b):
                if w in running:
                    experiment.update_by_result_id(running.pop(w), 0.0)
                    w.finish_job()
                running[w] = w.get_next_job(funcs[w])
        assert experiment.cancelled == []
        assert experiment.pending_ids == sorted(int(j) for j in running.values())
