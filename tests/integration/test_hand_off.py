"""Hand-offs with real workers and real git: a claim made from ``jobs.txt`` also claims
queued jobs for the idle workers its look shows, in the same push, and each of those
takes its job up at its next look instead of racing for a claim of its own.

The protocol's side is proved step by step in ``tests/property/test_hand_offs.py`` and by
the protocol machine; here the Worker's loop runs it: jobs run once each, a worker takes
up what was handed to it without moving the lock, one that left is not waited for, and
``hand_off=False`` turns it off."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distribute.dist import Worker, worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import queue_jobs_func

MAIN = "refs/heads/main"
LOCK = "refs/distribute/lock"


def git(remote: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=remote, capture_output=True, text=True,
                          check=True).stdout


def ledger(remote: Path, name: str) -> dict[str, str]:
    return {line.split("\t")[0]: line for line in git(remote, "show", f"{MAIN}:{name}")
            .splitlines()}


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    return bare


def open_worker(remote: Path, tmp_path: Path, name: str, **options: Any) -> Worker:
    options.setdefault("poll_seconds", 0.05)
    options.setdefault("lease_seconds", 30)
    return worker_from_url(f"file://{remote}", path=str(tmp_path / name), name=name, **options)


def ready_pair(remote: Path, tmp_path: Path, **options: Any) -> tuple[Worker, Worker]:
    """w1 looked at the remote before w2 came, and w2 has run and finished a job: w1 knows
    w2 for a live worker, and w2 is idle."""
    w1 = open_worker(remote, tmp_path, "w1", **options)
    w1.get_running()
    w2 = open_worker(remote, tmp_path, "w2", **options)
    assert w2.get_next_job(queue_jobs_func) == "j1"
    w2.finish_job()
    return w1, w2


def test_the_idle_worker_takes_up_the_job_handed_to_it_without_a_claim(remote, tmp_path):
    add_jobs(str(remote), ["j1", "j2", "j3", "j4"])
    w1, w2 = ready_pair(remote, tmp_path)
    with w1, w2:
        assert w1.get_next_job(queue_jobs_func) == "j2"
        line = ledger(remote, "running.txt")["j3"]
        assert "worker=w2" in line and "by=w1" in line and f"session={w2.session}" in line
        body = git(remote, "log", "-1", "--format=%B", MAIN)
        assert body.startswith("distribute: claim j2 by w1") and "j3\tfor w2" in body
        lock, pushes = git(remote, "rev-parse", LOCK), w2.coord.stats.pushes
        assert w2.get_next_job(queue_jobs_func) == "j3"
        assert w2.running_job == "j3" and w2.coord.stats.extra["handed_taken"] == 1
        # no push: its record was written at its last finish; the lock stays
        assert git(remote, "rev-parse", LOCK) == lock and w2.coord.stats.pushes == pushes
        Path(w2.job_dir).mkdir(parents=True)
        Path(w2.job_dir, "out.txt").write_text("handed\n")
        w2.finish_job()
        w1.finish_job()
    # both finishes were parked (the other worker was about); leaving folds them in
    assert git(remote, "show", f"{MAIN}:updates/j3/out.txt") == "handed\n"
    assert set(ledger(remote, "done.txt")) == {"j1", "j2", "j3"}


def test_a_job_handed_to_a_worker_that_left_is_retried_at_once(remote, tmp_path):
    add_jobs(str(remote), ["j1", "j2", "j3"])
    w1, w2 = ready_pair(remote, tmp_path, lease_seconds=60)
    with w1:
        assert w1.get_next_job(queue_jobs_func) == "j2"
        assert "worker=w2" in ledger(remote, "running.txt")["j3"]
        w2.close()  # says it is gone: no one waits a lease for its job
        w1.finish_job()
        started = time.monotonic()
        assert w1.get_next_job(queue_jobs_func) == "j3"
        assert time.monotonic() - started < 30
        assert w1.attempt == 2 and "interrupted=1" in ledger(remote, "running.txt")["j3"]
        w1.finish_job()


def test_hand_off_false_claims_only_for_itself(remote, tmp_path):
    add_jobs(str(remote), ["j1", "j2", "j3"])
    w1, w2 = ready_pair(remote, tmp_path, hand_off=False)
    with w1, w2:
        assert w1.get_next_job(queue_jobs_func) == "j2"
        assert set(ledger(remote, "running.txt")) == {"j2"}
        assert "handed_out" not in w1.coord.stats.extra


def test_a_fleet_runs_every_job_once_and_hands_jobs_off(remote, tmp_path):
    jobs = [f"job-{i:02d}" for i in range(36)]
    add_jobs(str(remote), jobs)
    ran: list[tuple[str, str]] = []
    stats: dict[str, dict[str, int]] = {}
    errors: list[BaseException] = []

    def loop(name: str) -> None:
        try:
            with open_worker(remote, tmp_path, name) as w:
                while (job := w.get_next_job(queue_jobs_func)) is not None:
                    ran.append((name, job))
                    time.sleep(0.1)
                    w.finish_job()
                stats[name] = dict(w.coord.stats.extra)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors and not any(t.is_alive() for t in threads)
    assert sorted(job for _, job in ran) == jobs  # each ran once
    assert sorted(ledger(remote, "done.txt")) == jobs and not ledger(remote, "running.txt")
    handed = sum(s.get("handed_out", 0) for s in stats.values())
    taken = sum(s.get("handed_taken", 0) for s in stats.values())
    assert handed == taken > 0


def test_a_worker_without_a_heartbeat_renews_its_record_to_take_a_job_up(remote, tmp_path):
    """Nothing renews the record of a worker made with heartbeat=False while its job runs:
    taking a handed job up writes it at once (naming the job), as a claim would have."""
    add_jobs(str(remote), ["j1", "j2", "j3", "j4"])
    w1, w2 = ready_pair(remote, tmp_path, heartbeat=False)
    with w1, w2:
        assert w1.get_next_job(queue_jobs_func) == "j2"
        pushes = w2.coord.stats.pushes
        assert w2.get_next_job(queue_jobs_func) == "j3"
        assert w2.coord.stats.extra["handed_taken"] == 1
        assert w2.coord.stats.pushes == pushes + 1 and w2.coord.beat.jobs == ("j3",)
        w2.finish_job()
        w1.finish_job()
