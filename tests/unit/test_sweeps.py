"""Sweeps (names built from parameters and read back), the command's placeholders and
environment, and the runner's breaker and wait for new jobs, with a stand-in worker."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from distribute.core.errors import InvalidName, UsageError
from distribute.core.names import check_name, job_dir
from distribute.runner import (
    EXIT_ALL_FAILED,
    EXIT_BREAKER,
    CommandTemplateError,
    JobRunner,
    command_for_job,
    job_environment,
    param_env_name,
)
from distribute.sweeps import (
    cross,
    format_job,
    grid,
    parse_dimension,
    parse_job,
    parse_values,
    random_search,
)

PY = sys.executable

# ---- grids -----------------------------------------------------------------------------------


def test_grid_is_the_product_with_the_first_parameter_slowest():
    assert grid(lr="0.1,0.01", seed="0..1") == [
        "lr=0.1 seed=0", "lr=0.1 seed=1", "lr=0.01 seed=0", "lr=0.01 seed=1",
    ]


def test_values_are_kept_as_written():
    assert grid(lr="0.10,1e-3,1E-04", tag="a.b-c") == [
        "lr=0.10 tag=a.b-c", "lr=1e-3 tag=a.b-c", "lr=1E-04 tag=a.b-c",
    ]


def test_ranges_are_inclusive_and_mix_with_lists():
    assert parse_values("0..3") == ["0", "1", "2", "3"]
    assert parse_values("3..1") == ["3", "2", "1"]
    assert parse_values("-1..1,10,0") == ["-1", "0", "1", "10"]  # duplicates dropped
    assert parse_values("a..b") == ["a..b"]  # not numbers: a value like any other
    with pytest.raises(UsageError, match="integers"):
        parse_values("0.1..0.5")
    with pytest.raises(UsageError, match="empty value"):
        parse_values("1,,2")


def test_python_values_and_mappings():
    assert grid({"warmup-steps": range(0, 200, 100)}, lr=[1e-3, 0.5]) == [
        "warmup-steps=0 lr=0.001", "warmup-steps=0 lr=0.5",
        "warmup-steps=100 lr=0.001", "warmup-steps=100 lr=0.5",
    ]
    assert grid(depth=3) == ["depth=3"]
    with pytest.raises(UsageError, match="twice"):
        grid({"lr": "1"}, lr="2")
    with pytest.raises(UsageError, match="at least one"):
        grid()


@pytest.mark.parametrize("value, why", [
    ("a b", "white space"), ("a\tb", "white space"), ("x\x00", "cannot be part"),
    ("", "empty"),
])
def test_values_a_job_name_cannot_hold_are_refused(value, why):
    with pytest.raises(InvalidName, match=why):
        grid(tag=[value])


@pytest.mark.parametrize("key", ["", "1lr", "l r", "a=b", "-x", "lr\n"])
def test_bad_parameter_names_are_refused(key):
    with pytest.raises(InvalidName, match="parameter name"):
        grid({key: "1"})


def test_parse_job_inverts_format_job():
    for name in grid(lr="0.1,1e-3", opt="adam,sgd", seed="0..2", path="runs/a=b"):
        check_name(name)
        assert format_job(parse_job(name)) == name
    assert parse_job("lr=0.1 seed=0") == {"lr": "0.1", "seed": "0"}
    assert parse_job("path=a=b") == {"path": "a=b"}


def test_names_not_of_the_key_value_form_have_no_parameters():
    assert parse_job("plain job") == {}
    assert parse_job("--lr=0.1") == {}
    assert parse_job("mlp lr=0.1 seed=2") == {"lr": "0.1", "seed": "2"}
    assert parse_job("x=1 x=2") == {"x": "1"}


def test_cross_joins_names_and_refuses_shared_parameters():
    assert cross(["lr=1", "lr=2"], grid(seed="0..1")) == [
        "lr=1 seed=0", "lr=1 seed=1", "lr=2 seed=0", "lr=2 seed=1",
    ]
    with pytest.raises(UsageError, match="two of the sweeps"):
        cross(["lr=1"], ["lr=2"])


# ---- random search ---------------------------------------------------------------------------

SPACE = {"lr": "loguniform:1e-5:1e-1", "layers": "int:1:4", "opt": "choice:adam,sgd",
         "drop": "uniform:0:0.5"}


def test_random_search_is_reproducible_distinct_and_in_range():
    jobs = random_search(20, SPACE, seed=7)
    assert jobs == random_search(20, SPACE, seed=7)
    assert jobs != random_search(20, SPACE, seed=8)
    assert len(set(jobs)) == 20
    for job in jobs:
        p = parse_job(job)
        assert list(p) == ["lr", "layers", "opt", "drop"]
        assert 1e-5 <= float(p["lr"]) <= 1e-1
        assert p["layers"] in {"1", "2", "3", "4"} and p["opt"] in {"adam", "sgd"}
        assert 0 <= float(p["drop"]) <= 0.5


def test_random_search_knows_a_small_space():
    jobs = random_search(8, {"layers": "int:1:4", "opt": "adam,sgd"}, seed=1)
    assert len(set(jobs)) == 8  # every point, drawn in a seeded order
    with pytest.raises(UsageError, match="only 8 distinct points"):
        random_search(9, {"layers": "int:1:4", "opt": "adam,sgd"}, seed=1)


@pytest.mark.parametrize("spec, why", [
    ("loguniform:0:1", "0 < LOW"), ("uniform:1:0", "LOW < HIGH"), ("int:1.5:3", "integer"),
    ("uniform:a:b", "numbers"), ("uniform:1", "LOW:HIGH"),
])
def test_malformed_dimensions_name_the_parameter(spec, why):
    with pytest.raises(UsageError, match=why) as info:
        parse_dimension("lr", spec)
    assert "lr" in str(info.value)


# ---- the command's placeholders and environment ----------------------------------------------


def test_parameters_fill_placeholders_and_args_expands_to_arguments():
    job = "lr=0.1 seed=0"
    assert command_for_job(["train", "--lr", "{lr}", "--out=runs/{seed}", "{args}"], job) == [
        "train", "--lr", "0.1", "--out=runs/0", "--lr=0.1", "--seed=0",
    ]
    assert command_for_job(["echo", "x {args} y"], job) == ["echo", "x --lr=0.1 --seed=0 y"]
    assert command_for_job(["echo", "{{lr}}", "${lr}", "{job}"], job) == [
        "echo", "{lr}", "${lr}", job,
    ]
    assert command_for_job(["run", "{args}"], "plain") == ["run"]


def test_shell_mode_quotes_every_value():
    job = "tag=it's seed=1"
    argv = command_for_job(["printf", "'%s|'", "{tag}", "{args}"], job, shell=True)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == "it's|--tag=it's|--seed=1|"
    assert shlex.split(argv[2])[2] == "it's"


def test_a_missing_parameter_is_a_clear_error():
    with pytest.raises(CommandTemplateError, match=r"uses \{lr\}.*'plain'.*has none"):
        command_for_job(["train", "{lr}"], "plain")
    with pytest.raises(CommandTemplateError, match=r"its parameters: seed"):
        command_for_job(["train", "{lr}"], "seed=1", known={"lr", "seed"})
    # braces around a word no job has as a parameter are code, not a placeholder
    code = "print(f'{i}')"
    assert command_for_job([PY, "-c", code], "seed=1", known={"seed"}) == [PY, "-c", code]


def test_parameters_are_in_the_environment():
    env = job_environment({"DISTRIBUTE_PARAM_OLD": "x", "A": "1"}, job="lr=0.1 warmup-steps=5",
                          worker="w", attempt=1, job_dir="/x")
    assert env["DISTRIBUTE_PARAM_LR"] == "0.1"
    assert env["DISTRIBUTE_PARAM_WARMUP_STEPS"] == "5"
    assert "DISTRIBUTE_PARAM_OLD" not in env and env["A"] == "1"
    assert param_env_name("model.depth") == "DISTRIBUTE_PARAM_MODEL_DEPTH"


# ---- the runner: breaker, all failed, waiting for jobs ---------------------------------------


class Worker:
    """Enough of distribute.dist.Worker for JobRunner: a queue, and a ledger of attempts."""

    def __init__(self, path, jobs, max_attempts=3):
        self.name = "fake"
        self.path = str(path)
        self.branch = "main"
        self.queue = list(jobs)
        self.released = []  # jobs put back, offered first (as the protocol does)
        self.failures = {}
        self.interruptions = {}
        self.failed = []
        self.done = []
        self.running_job = None
        self.attempt = None
        self.job_branch = None
        self.resumed_from = None
        self.removed_links = []
        self.max_attempts = max_attempts
        self.poll_seconds = 0.01
        self.idle_poll_seconds = 0.05
        self.lease_seconds = 60.0
        self.transport = self
        self.main = "c0"
        self.looks = 0

    @property
    def job_dir(self):
        return os.path.join(self.path, *job_dir(self.running_job).split("/"))

    def get_next_job(self, func):
        source = self.released or self.queue
        if not source:
            return None
        self.running_job = source.pop(0)
        self.attempt = 1 + self.failures.get(self.running_job, 0) + self.interruptions.get(
            self.running_job, 0)
        return self.running_job

    def commit_update(self, message=None):
        return True

    def finish_job(self):
        self.done.append(self.running_job)
        self.running_job = None

    def fail_job(self, reason="failed", *, interrupted=False):
        job, self.running_job = self.running_job, None
        counts = self.interruptions if interrupted else self.failures
        counts[job] = counts.get(job, 0) + 1
        if self.failures.get(job, 0) >= self.max_attempts:
            self.failed.append(job)
            return "failed"
        self.released.append(job)
        return "retry"

    def list_refs(self, prefix):
        self.looks += 1
        return {"refs/heads/main": self.main}


def test_breaker_stops_a_worker_whose_command_cannot_start(tmp_path):
    w = Worker(tmp_path, [f"job-{i}" for i in range(10)])
    summary = JobRunner(w, [str(tmp_path / "no-such-program"), "{job}"], lambda: None).run()
    assert summary.exit_code == EXIT_BREAKER
    assert "no-such-program" in summary.breaker and "could not start" in summary.breaker
    assert w.failures == {} and w.interruptions == {"job-0": 3}  # no attempt used up
    assert w.queue == [f"job-{i}" for i in range(1, 10)] and w.released == ["job-0"]


def test_breaker_stops_a_command_that_fails_at_once(tmp_path):
    w = Worker(tmp_path, [f"job-{i}" for i in range(10)])
    code = "import sys; print('ImportError: no module named torch'); sys.exit(1)"
    summary = JobRunner(w, [PY, "-c", code], lambda: None, breaker=2).run()
    assert summary.exit_code == 3 and len(summary.outcomes) == 2
    assert "ImportError: no module named torch" in summary.breaker
    assert w.failures == {} and w.interruptions == {"job-0": 2} and len(w.queue) == 9


def test_once_the_command_worked_one_crashing_job_fails_as_usual(tmp_path):
    w = Worker(tmp_path, ["good", "bad", "good2"])
    code = "import sys; sys.exit(1 if sys.argv[1] == 'bad' else 0)"
    summary = JobRunner(w, [PY, "-c", code, "{job}"], lambda: None).run()
    assert summary.breaker is None and summary.exit_code == 0
    assert w.failures == {"bad": 3} and w.failed == ["bad"] and w.done == ["good", "good2"]


def test_breaker_zero_and_slow_failures_count_attempts(tmp_path):
    w = Worker(tmp_path, ["a"], max_attempts=2)
    summary = JobRunner(w, [PY, "-c", "raise SystemExit(2)"], lambda: None, breaker=0).run()
    assert w.failed == ["a"] and summary.breaker is None
    assert summary.exit_code == EXIT_ALL_FAILED  # every job it ran failed
    w = Worker(tmp_path, ["b"], max_attempts=1)
    summary = JobRunner(w, [PY, "-c", "raise SystemExit(2)"], lambda: None,
                        breaker_seconds=0).run()
    assert w.failed == ["b"] and summary.exit_code == EXIT_ALL_FAILED


def test_a_missing_parameter_fails_the_attempt_not_the_worker(tmp_path):
    (tmp_path / "jobs.txt").write_text("lr=0.1\nplain\n")  # the sweep's parameter names
    w = Worker(tmp_path, ["lr=0.1", "plain"])
    code = "import sys; print(sys.argv[1])"
    summary = JobRunner(w, [PY, "-c", code, "{lr}"], lambda: None).run()
    assert w.done == ["lr=0.1"] and w.failed == ["plain"]
    assert "has no parameter lr" in summary.outcomes[-1].reason
    with open(os.path.join(w.path, job_dir("plain"), "log.txt")) as f:
        assert "uses {lr}" in f.read()


def test_wait_for_jobs_takes_a_job_queued_later_and_idle_exit_ends_the_wait(tmp_path):
    w = Worker(tmp_path, [])
    runner = JobRunner(w, [PY, "-c", "pass"], lambda: None, idle_exit=0.6)
    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 3:  # someone queues a job: the main branch moves
            w.queue.append("late")
            w.main = "c1"

    runner._clock = lambda: now[0]
    runner._sleep = sleep
    summary = runner.run()
    assert w.done == ["late"] and summary.exit_code == 0
    # looks at the idle pace: from poll_seconds doubling up to idle_poll_seconds
    assert sleeps[0] <= 2 * w.poll_seconds and max(sleeps) <= w.idle_poll_seconds
    assert now[0] - sum(sleeps[:3]) == pytest.approx(0.6)  # idle_exit: from the job's end
