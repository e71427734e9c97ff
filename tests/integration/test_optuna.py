"""Optuna over Distribute: the git journal backend, trials as jobs, worker processes.

The backend tests run in one process (two backends on one remote are two
machines as far as the protocol goes); the StudyJobs tests drive workers in
process, with a fake clock for takeovers; the last tests start real worker
processes (tests/integration/optuna_worker.py) and kill one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from distribute.core.errors import (  # noqa: E402
    LeaseLost,
    OutcomeUnknown,
    RemoteStateError,
    UsageError,
)
from distribute.core.ledger import Ledger  # noqa: E402
from distribute.dist import worker_from_url  # noqa: E402
from distribute.optuna import (  # noqa: E402
    ATTEMPT_ATTR,
    JOB_ATTR,
    RETRY_OF_ATTR,
    GitJournalBackend,
    StudyJobs,
    chunk_path,
    journal_ref,
    open_study,
)
from distribute.remote import init_remote  # noqa: E402
from distribute.transport.base import RefUpdate  # noqa: E402
from distribute.transport.memory import MemoryRemote  # noqa: E402

HERE = Path(__file__).parent
SPACE = {"x": FloatDistribution(-1.0, 1.0), "y": FloatDistribution(-1.0, 1.0)}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(x, y):  # the same as optuna_worker.py's
    return (x - 0.3) ** 2 + (y + 0.2) ** 2


def git(*args, cwd):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def ledger_of(bare):
    files = {}
    for name in ("running.txt", "done.txt", "failed.txt"):
        try:
            files[name] = git("show", f"main:{name}", cwd=bare).encode()
        except subprocess.CalledProcessError:
            files[name] = None
    return Ledger.from_files(files)


@pytest.fixture
def remote(tmp_path):
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


# ---- the journal backend ------------------------------------------------------------------


def logs(who, count, start=0):
    return [{"who": who, "n": n} for n in range(start, start + count)]


def test_append_then_read_from_any_offset(remote):
    main = git("rev-parse", "main", cwd=remote)
    with GitJournalBackend.open(str(remote), "s") as backend:
        assert backend.read_logs(0) == []
        backend.append_logs(logs("a", 2))
        backend.append_logs(logs("a", 3, start=2))
        assert backend.read_logs(0) == logs("a", 5)
        assert backend.read_logs(3) == logs("a", 2, start=3)
        assert backend.read_logs(5) == []
    # the ref holds one commit per append, each extending the file
    ref = journal_ref("s")
    assert git("rev-list", "--count", ref, cwd=remote).strip() == "2"
    text = git("show", f"{ref}:{chunk_path(0)}", cwd=remote)
    assert len(text.splitlines()) == 5 and text.endswith("\n")
    assert git("rev-parse", "main", cwd=remote) == main  # appends never touch the main branch


def test_a_long_journal_is_cut_into_chunks_that_read_as_one(remote, tmp_path):
    with GitJournalBackend.open(str(remote), "s", chunk_bytes=40) as writer, \
            GitJournalBackend.open(str(remote), "s", refresh_seconds=0) as reader:  # fmt: skip
        writer.append_logs(logs("a", 1))
        assert reader.read_logs(0) == logs("a", 1)
        for n in range(1, 7):
            writer.append_logs(logs("a", 1, start=n))
        writer.append_logs(logs("a", 3, start=7))  # a batch is never split
        assert reader.read_logs(1) == logs("a", 9, start=1)  # read on from a cached chunk
        exported = writer.export(tmp_path / "journal.log").read_text()
    files = git("ls-tree", "--name-only", journal_ref("s") + ":journal", cwd=remote).split()
    assert len(files) > 2 and files == sorted(files)
    joined = "".join(git("show", f"{journal_ref('s')}:journal/{f}", cwd=remote) for f in files)
    assert joined == exported and len(exported.splitlines()) == 10
    with GitJournalBackend.open(str(remote), "s") as fresh:
        assert fresh.read_logs(0) == logs("a", 10)


def test_two_backends_appending_concurrently_keep_every_log_once_in_order(remote):
    backends = [GitJournalBackend.open(str(remote), "s", refresh_seconds=0) for _ in range(2)]
    errors = []

    def writer(backend, who):
        try:
            for n in range(8):
                backend.append_logs(logs(who, 1, start=n))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    pairs = zip(backends, "ab", strict=True)
    threads = [threading.Thread(target=writer, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    seen = [b.read_logs(0) for b in backends]
    assert seen[0] == seen[1] and len(seen[0]) == 16
    for who in "ab":
        assert [log["n"] for log in seen[0] if log["who"] == who] == list(range(8))
    for b in backends:
        b.close()


def test_journal_storage_over_two_backends_numbers_trials_once(remote):
    with GitJournalBackend.open(str(remote), "s") as b1, GitJournalBackend.open(
        str(remote), "s"
    ) as b2:
        s1 = optuna.create_study(study_name="s", storage=JournalStorage(b1))
        s2 = optuna.load_study(study_name="s", storage=JournalStorage(b2))
        numbers = []
        for _ in range(3):
            for study in (s1, s2):
                trial = study.ask(SPACE)
                numbers.append(trial.number)
                study.tell(trial, objective(**trial.params))
        assert sorted(numbers) == list(range(6))
        b1.refresh()
        assert [t.number for t in s1.trials] == list(range(6))
        assert all(t.state == TrialState.COMPLETE for t in s1.trials)


def test_reads_inside_the_refresh_window_are_served_from_the_cache(remote):
    with GitJournalBackend.open(str(remote), "s", refresh_seconds=3600) as backend:
        backend.read_logs(0)
        backend.append_logs(logs("a", 1))
        fetches = backend.stats.fetches
        for _ in range(5):
            assert backend.read_logs(0) == logs("a", 1)
        assert backend.stats.fetches == fetches  # our own append is known without a fetch
    with GitJournalBackend.open(str(remote), "s", refresh_seconds=0) as backend:
        backend.read_logs(0)
        backend.read_logs(0)
        assert backend.stats.fetches == 2


def test_a_stale_cache_loses_the_race_and_appends_on_top(remote):
    with GitJournalBackend.open(str(remote), "s", refresh_seconds=3600) as slow, \
            GitJournalBackend.open(str(remote), "s") as other:  # fmt: skip
        slow.read_logs(0)
        other.append_logs(logs("other", 1))
        slow.append_logs(logs("slow", 1))  # built on an old tip: refused, redone
        assert slow.stats.lost_races == 1
        assert slow.read_logs(0) == logs("other", 1) + logs("slow", 1)


@pytest.mark.parametrize("fault", ["unknown-applied", "unknown-lost"])
def test_an_unknown_push_outcome_appends_exactly_once(fault):
    remote = MemoryRemote()
    faults = [fault]
    remote.fault_hook = lambda name, updates: faults.pop() if faults else None
    backend = GitJournalBackend(remote.transport("a"), "s")
    backend.append_logs(logs("a", 1))
    assert backend.stats.unknown_outcomes == 1
    backend.append_logs(logs("a", 1, start=1))
    reader = GitJournalBackend(remote.transport("r"), "s")
    assert reader.read_logs(0) == logs("a", 2)


class LoseTheAnswerOnce:
    """A transport whose first push lands, lets ``meanwhile`` run, then raises OutcomeUnknown."""

    def __init__(self, inner, meanwhile):
        self.inner, self.meanwhile, self.armed = inner, meanwhile, True

    def push(self, updates):
        if not self.armed:
            return self.inner.push(updates)
        self.armed = False
        assert self.inner.push(updates)
        self.meanwhile()
        raise OutcomeUnknown("the connection died after sending")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_an_unknown_outcome_counts_as_landed_when_others_built_on_it():
    remote = MemoryRemote()
    other = GitJournalBackend(remote.transport("b"), "s", refresh_seconds=0)
    transport = LoseTheAnswerOnce(remote.transport("a"), lambda: other.append_logs(logs("b", 1)))
    backend = GitJournalBackend(transport, "s")
    backend.append_logs(logs("a", 1))
    assert backend.stats.unknown_outcomes == 1 and backend.stats.lost_races == 0
    backend.refresh()
    assert backend.read_logs(0) == logs("a", 1) + logs("b", 1)


def test_a_rewritten_journal_is_refused_with_the_fix(remote):
    with GitJournalBackend.open(str(remote), "s") as backend:
        backend.append_logs(logs("a", 2))
        other = backend.transport.write_commit(
            parents=[], message="rewrite", changes={chunk_path(0): b'{"who":"x"}\n'}
        )
        assert backend.transport.push([RefUpdate(backend.ref, backend.head, other)])
        with pytest.raises(RemoteStateError, match="never force-push"):
            backend.refresh()


def test_a_ref_that_is_not_a_journal_is_refused(remote):
    main = git("rev-parse", "main", cwd=remote).strip()
    git("update-ref", journal_ref("s"), main, cwd=remote)
    with GitJournalBackend.open(str(remote), "s") as backend, pytest.raises(
        RemoteStateError, match="another study name"
    ):
        backend.read_logs(0)


def test_export_gives_a_file_optuna_and_the_dashboard_read(remote, tmp_path):
    with GitJournalBackend.open(str(remote), "s") as backend:
        study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
        for _ in range(3):
            trial = study.ask(SPACE)
            study.tell(trial, objective(**trial.params))
        path = backend.export(tmp_path / "journal.log")
    copy = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [(t.number, t.value) for t in copy.trials] == [(t.number, t.value) for t in study.trials]


# ---- StudyJobs with workers in this process --------------------------------------------------


def make(remote, tmp_path, name="w", **kw):
    kw.setdefault("lease_seconds", 5)
    kw.setdefault("poll_seconds", 0.05)
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name, **kw)


def study_jobs(n_trials, **kw):
    kw.setdefault("direction", "minimize")
    kw.setdefault("sampler", optuna.samplers.RandomSampler(seed=1))
    return StudyJobs("search", SPACE, n_trials, **kw)


def read_back(remote):
    with open_study(str(remote), "search") as study:
        return study.get_trials()


def test_a_budget_gives_exactly_that_many_complete_trials(remote, tmp_path):
    with make(remote, tmp_path) as w, study_jobs(3) as jobs:
        ran = []
        while (job := w.get_next_job(jobs)) is not None:
            assert job == f"trial-{jobs.trial(w).number}"
            jobs.tell(w, objective(**jobs.params(w)))
            ran.append(job)
    assert ran == ["trial-0", "trial-1", "trial-2"]
    trials = read_back(remote)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(t.value == objective(**t.params) for t in trials)
    assert sorted(e.job for e in ledger_of(remote).done) == ran


def test_a_trial_asked_by_a_holder_that_never_claimed_is_failed(remote, tmp_path):
    with make(remote, tmp_path) as w, study_jobs(1) as jobs:
        assert jobs(w) == "trial-0"  # asked, but the claim never happened (lock lost)
        assert w.get_next_job(jobs) == "trial-1"
        jobs.tell(w, 1.0)
        assert w.get_next_job(jobs) is None
    states = [t.state for t in read_back(remote)]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def takeover_pair(remote, tmp_path):
    clock = [0.0]
    slow = make(remote, tmp_path, name="slow", heartbeat=False, lease_seconds=1)
    fast = make(remote, tmp_path, name="fast", lease_seconds=1, margin_seconds=0.1,
                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    return slow, fast


def test_a_taken_over_trial_fails_and_its_params_run_again(remote, tmp_path):
    slow, fast = takeover_pair(remote, tmp_path)
    try:
        slow_jobs, fast_jobs = study_jobs(1), study_jobs(1)
        assert slow.get_next_job(slow_jobs) == "trial-0"
        params = slow_jobs.params(slow)
        # fast waits (fake clock) until slow's lease expires, then runs trial-0 again
        assert fast.get_next_job(fast_jobs) == "trial-0" and fast.attempt == 2
        held = fast_jobs.trial(fast)
        assert held.number == 1 and held.params == params and not held.told
        with pytest.raises(LeaseLost):
            slow_jobs.tell(slow, 5.0)  # the value is refused: its trial is FAIL now
        fast_jobs.tell(fast, 2.0)
        assert fast.get_next_job(fast_jobs) is None
    finally:
        slow.close()
        fast.close()
    trials = read_back(remote)
    assert [(t.state, t.value) for t in trials] == [
        (TrialState.FAIL, None), (TrialState.COMPLETE, 2.0)
    ]
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs == {JOB_ATTR: "trial-0", ATTEMPT_ATTR: 2, RETRY_OF_ATTR: 0}
    done = ledger_of(remote).done
    assert [(e.job, e.attempt) for e in done] == [("trial-0", 2)]


def test_a_value_told_before_the_takeover_stands(remote, tmp_path):
    slow, fast = takeover_pair(remote, tmp_path)
    try:
        slow_jobs, fast_jobs = study_jobs(1), study_jobs(1)
        assert slow.get_next_job(slow_jobs) == "trial-0"
        assert fast.get_next_job(fast_jobs) == "trial-0" and fast.attempt == 2
        slow_jobs.study(slow).tell(0, 1.0)  # slow told, then died before finish_job
        held = fast_jobs.trial(fast)
        assert held.told and held.number == 0
        fast_jobs.tell(fast, 99.0)  # only finishes the job
    finally:
        slow.close()
        fast.close()
    assert [(t.state, t.value) for t in read_back(remote)] == [(TrialState.COMPLETE, 1.0)]
    assert [e.job for e in ledger_of(remote).done] == ["trial-0"]


def test_a_value_told_while_the_takeover_runs_stands(remote, tmp_path, monkeypatch):
    slow, fast = takeover_pair(remote, tmp_path)
    try:
        slow_jobs, fast_jobs = study_jobs(1), study_jobs(1)
        assert slow.get_next_job(slow_jobs) == "trial-0"
        assert fast.get_next_job(fast_jobs) == "trial-0" and fast.attempt == 2
        study = fast_jobs.study(fast)
        add_trial = study.add_trial

        def add_trial_then_slow_tells(trial):
            add_trial(trial)  # fast's retry trial lands ...
            slow_jobs.study(slow).tell(0, 1.0)  # ... then slow's value, before fast fails 0

        monkeypatch.setattr(study, "add_trial", add_trial_then_slow_tells)
        held = fast_jobs.trial(fast)
        assert held.told and held.number == 0
        fast_jobs.tell(fast, 99.0)  # only finishes the job
    finally:
        slow.close()
        fast.close()
    trials = read_back(remote)
    assert [(t.state, t.value) for t in trials] == [
        (TrialState.COMPLETE, 1.0), (TrialState.FAIL, None)
    ]
    assert trials[1].user_attrs[RETRY_OF_ATTR] == 0
    assert [e.job for e in ledger_of(remote).done] == ["trial-0"]


def test_failed_attempts_rerun_the_params_then_the_budget_refills(remote, tmp_path):
    with make(remote, tmp_path, max_attempts=2) as w, study_jobs(1, max_failed_jobs=2) as jobs:
        assert w.get_next_job(jobs) == "trial-0"
        params = jobs.params(w)
        assert jobs.fail(w, "boom") == "retry"
        assert w.get_next_job(jobs) == "trial-0" and w.attempt == 2
        assert jobs.params(w) == params and jobs.trial(w).number == 1
        assert jobs.fail(w, "boom again") == "failed"
        assert w.get_next_job(jobs) == "trial-2"
        jobs.tell(w, 0.5)
        assert w.get_next_job(jobs) is None
    states = [t.state for t in read_back(remote)]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]


def test_max_failed_jobs_stops_asking(remote, tmp_path):
    with make(remote, tmp_path, max_attempts=1) as w, study_jobs(3, max_failed_jobs=2) as jobs:
        assert w.get_next_job(jobs) == "trial-0"
        assert jobs.fail(w, "boom") == "failed"
        assert w.get_next_job(jobs) == "trial-1"
        with pytest.warns(UserWarning):
            jobs.tell(w, float("nan"))  # optuna records NaN as FAIL: a job without a value
        assert w.get_next_job(jobs) is None
    states = [t.state for t in read_back(remote)]
    assert states == [TrialState.FAIL, TrialState.FAIL]


def test_clear_errors(remote, tmp_path):
    init_remote(remote, jobs=["trial-0"])
    with make(remote, tmp_path) as w:
        assert w.get_next_job(lambda: "trial-0") == "trial-0"
        w.finish_job()
        with study_jobs(2) as jobs, pytest.raises(UsageError, match="job_prefix"):
            w.get_next_job(jobs)
        with study_jobs(2, job_prefix="other-") as jobs:
            assert w.get_next_job(jobs) == "other-1"  # trial 0 was failed above
            with pytest.raises(UsageError, match="not a trial"):
                StudyJobs("search", SPACE, 1).trial_number_of("trial-x")
            jobs.tell(w, 1.0)
        with study_jobs(2, direction="maximize") as jobs, pytest.raises(
            UsageError, match="direction"
        ):
            jobs.study(w)


# ---- worker processes -------------------------------------------------------------------------


class Proc:
    """A worker process whose output lines are collected as they come."""

    def __init__(self, args):
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def has(self, prefix):
        return any(line.startswith(prefix) for line in self.lines)

    def finish(self, timeout):
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"worker still running after {timeout} s: {self.lines} {self.err[-20:]}")
        for r in self.readers:
            r.join(timeout=10)
        self.popen.stdout.close()
        self.popen.stderr.close()
        return code

    def told(self):
        out = []
        for line in self.lines:
            if line.startswith("TOLD\t"):
                _, job, attempt, number, value, outcome = line.split("\t")
                out.append((job, int(attempt), int(number), float(value), outcome))
        return out


def start_workers(url, tmp_path, names, n_trials, lease, hang_on=None):
    procs = []
    for name in names:
        args = [sys.executable, str(HERE / "optuna_worker.py"), url, str(tmp_path / f"copy-{name}"),
                name, "search", str(n_trials), str(lease)]  # fmt: skip
        procs.append(Proc(args + ([hang_on] if hang_on else [])))
    return procs


def check_study(remote, procs, n_trials):
    """The study read back equals what the workers told; the budget holds; numbers are unique."""
    trials = read_back(remote)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    told = {number: value for p in procs for (_, _, number, value, ok) in p.told() if ok == "done"}
    assert {t.number: t.value for t in complete} == told
    for t in complete:
        assert t.value == objective(**t.params)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    ledger = ledger_of(remote)
    assert ledger.running == ()
    jobs_of_complete = sorted(t.user_attrs.get(JOB_ATTR, f"trial-{t.number}") for t in complete)
    assert sorted(e.job for e in ledger.done) == jobs_of_complete
    return trials


def test_worker_processes_run_a_budget_of_trials(remote, tmp_path):
    n_trials = 12
    procs = start_workers(str(remote), tmp_path, ["p0", "p1", "p2"], n_trials, lease=8)
    for p in procs:
        assert p.finish(timeout=120) == 0, p.err[-20:]
    trials = check_study(remote, procs, n_trials)
    assert len(trials) == n_trials  # nothing failed, nothing asked twice
    assert sum(int(p.lines[-1].split("\t")[1]) for p in procs) == n_trials


def test_four_workers_with_the_default_lease_end_with_no_lease_long_tail(remote, tmp_path):
    """Users saw the README's Optuna example take 70 s for 2 s of trials: each remaining
    worker waited about a lease at the end.  With the default 120 s lease, every worker
    must be done well within a third of it."""
    n_trials = 12
    procs = start_workers(str(remote), tmp_path, [f"d{i}" for i in range(4)], n_trials,
                          lease=120)
    for p in procs:
        assert p.finish(timeout=40) == 0, p.err[-20:]
    check_study(remote, procs, n_trials)


def test_a_killed_worker_s_trial_fails_and_its_params_are_retried(remote, tmp_path):
    n_trials = 5
    procs = start_workers(str(remote), tmp_path, ["k0", "k1"], n_trials, lease=2,
                          hang_on="trial-0")  # fmt: skip
    deadline = time.monotonic() + 90
    while not any(p.has("HANG") for p in procs):
        assert time.monotonic() < deadline, [p.err[-5:] for p in procs]
        assert all(p.popen.poll() is None for p in procs), [p.err[-20:] for p in procs]
        time.sleep(0.05)
    hung = next(p for p in procs if p.has("HANG"))
    os.kill(hung.popen.pid, signal.SIGKILL)
    hung.finish(timeout=10)
    survivor = next(p for p in procs if p is not hung)
    assert survivor.finish(timeout=120) == 0, survivor.err[-20:]

    trials = check_study(remote, procs, n_trials)
    first = trials[0]
    assert first.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == 0]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == first.params
    assert retries[0].user_attrs[ATTEMPT_ATTR] == 2
    assert [e.attempt for e in ledger_of(remote).done if e.job == "trial-0"] == [2]
    assert ("trial-0", 2, retries[0].number) in [t[:3] for t in survivor.told()]


@pytest.mark.slow
def test_four_workers_two_killed_mid_trial(remote, tmp_path):
    n_trials, hang_on = 16, ["trial-1", "trial-4"]
    procs = start_workers(str(remote), tmp_path, [f"m{i}" for i in range(4)], n_trials, lease=2,
                          hang_on=",".join(hang_on))  # fmt: skip
    killed = []
    deadline = time.monotonic() + 180
    while len(killed) < len(hang_on):
        assert time.monotonic() < deadline, [p.err[-5:] for p in procs]
        for p in procs:
            if p.has("HANG") and p not in killed:
                os.kill(p.popen.pid, signal.SIGKILL)
                p.finish(timeout=10)
                killed.append(p)
        time.sleep(0.05)
    for p in procs:
        if p not in killed:
            assert p.finish(timeout=180) == 0, p.err[-20:]
    trials = check_study(remote, procs, n_trials)
    for job in hang_on:
        family = [t for t in trials if t.user_attrs.get(JOB_ATTR, f"trial-{t.number}") == job]
        assert [t.state for t in family] == [TrialState.FAIL, TrialState.COMPLETE]
        assert family[0].params == family[1].params
