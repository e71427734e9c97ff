"""A worker's next wait starts from what its own finish just read and wrote.

A finish fetches the main branch, the lock and the liveness records, then pushes
(the main branch, or its own record when it parks).  Asked for a job right away, the
worker decides from that view instead of fetching again: one fetch fewer per job,
which over a slow link is about a quarter of a lone worker's time per job.  A view
that went stale meanwhile (another worker claimed) must cost a refused push and a
look, never a job claimed twice; an old view is not used at all."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_parked_finish import pop_queue  # a next-job function that edits jobs.txt

from distribute.dist import Worker, worker_from_url
from distribute.remote import add_jobs, init_remote

MAIN = "refs/heads/main"


def done(remote: Path) -> list[str]:
    text = subprocess.run(["git", "show", f"{MAIN}:done.txt"], cwd=remote,
                          capture_output=True, text=True, check=True).stdout
    return sorted(line.split("\t")[0] for line in text.splitlines())


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    add_jobs(str(bare), ["job-a", "job-b", "job-c", "job-d"])
    return bare


def open_worker(remote: Path, tmp_path: Path, name: str, **options: Any) -> Worker:
    options.setdefault("poll_seconds", 0.05)
    return worker_from_url(f"file://{remote}", path=str(tmp_path / name), name=name,
                           lease_seconds=30, **options)


def reused(worker: Worker) -> int:
    return worker.coord.stats.extra.get("views_reused", 0)


def test_a_lone_worker_claims_its_next_job_without_a_fetch(remote, tmp_path):
    w = open_worker(remote, tmp_path, "w")
    assert w.get_next_job(pop_queue) == "job-a"
    w.finish_job()
    assert done(remote) == ["job-a"]  # alone: the finish moved the main branch itself
    fetches = w.coord.stats.fetches
    assert w.get_next_job(pop_queue) == "job-b"
    assert w.coord.stats.fetches == fetches  # the finish's view served the claim
    assert reused(w) == 1
    w.finish_job()
    assert w.get_next_job(pop_queue) == "job-c"
    assert reused(w) == 2
    w.finish_job()
    w.close()
    assert done(remote) == ["job-a", "job-b", "job-c"]


def test_a_view_gone_stale_costs_a_refused_push_not_a_second_claim(remote, tmp_path):
    # a long poll keeps a's view young enough to be used after b's claim below
    a = open_worker(remote, tmp_path, "a", poll_seconds=60.0, sleep=lambda _s: None)
    assert a.get_next_job(pop_queue) == "job-a"
    a.finish_job()
    b = open_worker(remote, tmp_path, "b")
    assert b.get_next_job(pop_queue) == "job-b"  # the lock and main branch moved since
    pushes, fetches = a.coord.stats.pushes, a.coord.stats.fetches
    assert a.get_next_job(pop_queue) == "job-c"
    assert reused(a) == 1
    # the lock's value in a's view was gone: its take of the lock was refused, and one
    # look later it took the lock and claimed
    assert a.coord.stats.fetches == fetches + 1
    assert a.coord.stats.pushes == pushes + 3
    a.finish_job()
    b.finish_job()
    assert b.get_next_job(pop_queue) == "job-d"
    b.finish_job()
    assert a.get_next_job(pop_queue) is None
    assert b.get_next_job(pop_queue) is None
    a.close()
    b.close()
    assert done(remote) == ["job-a", "job-b", "job-c", "job-d"]


def test_an_old_view_is_not_used(remote, tmp_path):
    offset = [0.0]
    w = open_worker(remote, tmp_path, "w", heartbeat=False,
                    clock=lambda: time.monotonic() + offset[0])
    assert w.get_next_job(pop_queue) == "job-a"
    w.finish_job()
    offset[0] += 600.0  # the worker ran other code for ten minutes before asking again
    fetches = w.coord.stats.fetches
    assert w.get_next_job(pop_queue) == "job-b"
    assert w.coord.stats.fetches == fetches + 1
    assert reused(w) == 0
    w.finish_job()
    w.close()


def test_after_a_parked_finish_the_next_claim_needs_no_fetch_and_folds_it(remote, tmp_path):
    a, b = open_worker(remote, tmp_path, "a"), open_worker(remote, tmp_path, "b")
    assert a.get_next_job(pop_queue) == "job-a"
    assert b.get_next_job(pop_queue) == "job-b"
    a.coord.observe()  # a sees b's record: its finish parks
    a.finish_job()
    assert a.coord.stats.extra.get("parked") == 1
    assert done(remote) == []
    fetches = a.coord.stats.fetches
    assert a.get_next_job(pop_queue) == "job-c"  # b runs a job: a is first in turn
    assert a.coord.stats.fetches == fetches
    assert reused(a) == 1
    assert done(remote) == ["job-a"]  # the claim folded a's parked finish in
    for w in (a, b):
        w.finish_job()
    assert b.get_next_job(pop_queue) == "job-d"
    b.finish_job()
    for w in (a, b):
        assert w.get_next_job(pop_queue) is None
        w.close()
    assert done(remote) == ["job-a", "job-b", "job-c", "job-d"]
