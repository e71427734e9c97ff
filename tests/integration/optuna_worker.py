"""One worker of an Optuna study over Distribute, run as a process by test_optuna.py.

Usage: python optuna_worker.py URL PATH NAME STUDY N_TRIALS LEASE_SECONDS [HANG_ON_JOBS]

Prints one line per event, tab-separated:
``TOLD job attempt trial value outcome`` (outcome ``done`` or ``lost``),
``HANG job`` before sleeping forever in the first attempt of a job listed in
HANG_ON_JOBS (comma-separated; the test kills the process then), and
``END count`` when no job is left.
"""

from __future__ import annotations

import sys
import time

import optuna
from optuna.distributions import FloatDistribution

from distribute.core.errors import LeaseLost
from distribute.dist import worker_from_url
from distribute.optuna import StudyJobs

SPACE = {"x": FloatDistribution(-1.0, 1.0), "y": FloatDistribution(-1.0, 1.0)}


def objective(x: float, y: float) -> float:
    return (x - 0.3) ** 2 + (y + 0.2) ** 2


def say(*fields: object) -> None:
    print("\t".join(str(f) for f in fields), flush=True)


def main(url, path, name, study, n_trials, lease, hang_on=""):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    jobs = StudyJobs(
        study, SPACE, int(n_trials), direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=sum(map(ord, name))),
    )  # fmt: skip
    worker = worker_from_url(
        url, path=path, name=name, lease_seconds=float(lease), poll_seconds=0.05
    )
    count = 0
    for _ in range(1000):  # bounded: a budget of trials needs far fewer rounds
        job = worker.get_next_job(jobs)
        if job is None:
            break
        held = jobs.trial(worker)
        if job in hang_on.split(",") and worker.attempt == 1:
            say("HANG", job)
            time.sleep(3600)
        value = objective(**held.params)
        try:
            jobs.tell(worker, value)
            say("TOLD", job, held.attempt, held.number, repr(value), "done")
            count += 1
        except LeaseLost:
            say("TOLD", job, held.attempt, held.number, repr(value), "lost")
            worker.discard_changes()
    say("END", count)
    jobs.close()
    worker.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
