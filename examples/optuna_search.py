"""A hyperparameter search with Optuna, run by worker processes over a git remote.

    python examples/optuna_search.py --trials 20 [--workers 4] [--train-seconds 0] [--workdir DIR]

What it does: prepares a bare repository as the remote, starts worker
processes (each with its own clone, as separate machines would have), lets
them share one Optuna study kept on the remote, then prints the best trial,
the throughput, and how to open the study in optuna-dashboard.

The objective is cheap on purpose: a ridge regression of a noisy curve on
polynomial features, scored on held-out points.  Each trial also writes its
metrics to ``updates/trial-<n>/metrics.json``, which ``finish_job`` merges into
the main branch, so the remote keeps every trial's files next to the study.
``--train-seconds`` adds a sleep to each trial, standing in for real training,
to show how throughput scales with workers once trials cost something.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution, IntDistribution

from distribute import LeaseLost
from distribute.dist import worker_from_url
from distribute.optuna import GitJournalBackend, StudyJobs, open_study
from distribute.remote import init_remote

STUDY = "ridge-search"
SPACE = {
    "degree": IntDistribution(1, 12),
    "alpha": FloatDistribution(1e-6, 10.0, log=True),
}


def objective(degree: int, alpha: float) -> float:
    """Validation error of ridge regression on polynomial features of a noisy sine."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 80)
    y = np.sin(3 * x) + rng.normal(0, 0.1, x.size)
    features = np.vander(x, degree + 1)
    train, valid = slice(0, 60), slice(60, 80)
    a = features[train]
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(degree + 1), a.T @ y[train])
    return float(np.mean((features[valid] @ weights - y[valid]) ** 2))


def run_worker(url: str, path: str, name: str, trials: int, seed: int, train: float) -> None:
    """One worker: take trials until the budget is used, report each value."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    jobs = StudyJobs(STUDY, SPACE, trials, direction="minimize", sampler=sampler)
    with worker_from_url(url, path=path, name=name, lease_seconds=30) as worker, jobs:
        while worker.get_next_job(jobs) is not None:
            params = jobs.params(worker)
            time.sleep(train)  # stands in for an expensive training run
            value = objective(**params)
            os.makedirs(worker.job_dir, exist_ok=True)
            with open(os.path.join(worker.job_dir, "metrics.json"), "w") as f:
                json.dump({"params": params, "valid_mse": value, "worker": name}, f)
            try:
                jobs.tell(worker, value)  # the value first, then finish_job()
            except LeaseLost:  # paused past the lease: another worker took the trial over
                worker.discard_changes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--train-seconds", type=float, default=0.0,
                        help="sleep this long in each trial, as if training")  # fmt: skip
    parser.add_argument("--workdir", help="folder for the remote and the clones (default: new)")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "PATH", "NAME"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(*args.worker, trials=args.trials, seed=args.seed, train=args.train_seconds)
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="optuna-search-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    url = init_remote(workdir / "remote.git")
    print(f"remote: {url}")
    started = time.monotonic()
    procs = [
        subprocess.Popen([
            sys.executable, __file__, "--trials", str(args.trials), "--seed", str(i),
            "--train-seconds", str(args.train_seconds),
            "--worker", url, str(workdir / f"clone-{i}"), f"worker-{i}",
        ])  # fmt: skip
        for i in range(args.workers)
    ]
    for proc in procs:
        if proc.wait(timeout=600) != 0:
            sys.exit(f"a worker failed (exit {proc.returncode})")
    wall = time.monotonic() - started

    with open_study(url, STUDY) as study:
        trials = study.get_trials()
        best = study.best_trial
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in complete if t.datetime_complete)
    span = (last - first).total_seconds()
    print(f"{len(complete)} trials complete ({len(trials)} in the study), "
          f"{args.workers} worker(s)")  # fmt: skip
    print(f"best: trial {best.number}, valid_mse={best.value:.5f}, params={best.params}")
    print(f"throughput: {len(complete) / span:.2f} trials/s from the first ask to the last tell "
          f"({span:.1f} s); {wall:.1f} s wall time including process start-up")

    journal = workdir / "journal.log"
    with GitJournalBackend.open(url, STUDY) as backend:
        backend.export(journal)
    print(f"\nthe study's journal, exported: {journal}")
    print("open it in the dashboard (pip install optuna-dashboard):")
    print(f"    optuna-dashboard {journal}")
    print("or read it in Python:")
    print("    optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))")
    print(f"the study itself stays on the remote, ref refs/distribute/studies/{STUDY};")
    print(f"each trial's files are on its main branch: git -C {url} ls-tree -r --name-only main")


if __name__ == "__main__":
    main()
