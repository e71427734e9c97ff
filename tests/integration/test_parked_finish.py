"""Parked finishes with real workers and real git: a finish that loses its race for the
main branch is recorded on its worker's liveness record, ``finish_job()`` returns, and the
results reach the main branch by the next move of it (a claim, a worker with no job, or
``close()``), from this process or from a later one with the same name."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_run import ok

from distribute.core.errors import MergeConflict
from distribute.core.lock import parse_beat_message
from distribute.dist import Worker, worker_from_url
from distribute.remote import add_jobs, init_remote

MAIN = "refs/heads/main"


def git(remote: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=remote, capture_output=True, text=True,
                          check=True).stdout.strip()


def done(remote: Path) -> str:
    return git(remote, "show", f"{MAIN}:done.txt")


def record(remote: Path, worker: str) -> Any:
    return parse_beat_message(git(remote, "log", "-1", "--format=%B",
                                  f"refs/distribute/workers/{worker}"))


def pop_queue(worker: Worker) -> str | None:
    path = Path(worker.path) / "jobs.txt"
    lines = path.read_text().splitlines()
    if not lines:
        return None
    path.write_text("".join(line + "\n" for line in lines[1:]))
    return lines[0]


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare)
    add_jobs(str(bare), ["job-a", "job-b", "job-c"])
    return bare


def open_worker(remote: Path, tmp_path: Path, name: str) -> Worker:
    return worker_from_url(f"file://{remote}", path=str(tmp_path / name), name=name,
                           lease_seconds=30, poll_seconds=0.05)


def lose_the_next_race(loser: Worker, winner_moves: Callable[[], None]) -> None:
    """Make ``loser``'s next fetch of the main branch return, then let ``winner_moves``
    move the main branch before ``loser`` pushes: its finish loses the race for real."""
    transport = loser.coord.transport
    real_fetch = transport.fetch
    armed = [True]

    def fetch(refs: Any) -> Any:
        got = real_fetch(refs)
        if armed[0] and MAIN in refs:
            armed[0] = False
            winner_moves()
        return got

    transport.fetch = fetch  # type: ignore[method-assign]


def two_running(remote: Path, tmp_path: Path) -> tuple[Worker, Worker]:
    a, b = open_worker(remote, tmp_path, "a"), open_worker(remote, tmp_path, "b")
    assert a.get_next_job(pop_queue) == "job-a"
    assert b.get_next_job(pop_queue) == "job-b"
    for w in (a, b):
        Path(w.path, w.job_dir).mkdir(parents=True, exist_ok=True)
        Path(w.path, w.job_dir, "result.txt").write_text(f"{w.running_job}\n")
    return a, b


def a_parks(remote: Path, tmp_path: Path) -> tuple[Worker, Worker, int]:
    """a and b run a job each; a finishes with b about: parked at once."""
    a, b = two_running(remote, tmp_path)
    a.coord.observe()  # a sees b's record (b claimed after a's last look)
    a.finish_job()
    parked = record(remote, "a").parked
    assert [p.job for p in parked] == ["job-a"]
    return a, b, parked[0].token


def test_with_another_worker_about_a_finish_parks_at_once(remote, tmp_path):
    a, b = two_running(remote, tmp_path)
    a.coord.observe()
    a.commit_update()
    main_before = git(remote, "rev-parse", MAIN)
    pushes = a.coord.stats.pushes
    a.finish_job()  # returns: durable on a's record
    assert git(remote, "rev-parse", MAIN) == main_before
    assert a.coord.stats.pushes == pushes + 1  # one push of a's own record, no race
    parked = record(remote, "a").parked
    assert [p.job for p in parked] == ["job-a"]
    token = parked[0].token
    # the record's commit carries the results: its parent is the job branch's tip
    assert git(remote, "rev-parse", "refs/distribute/workers/a^1") == parked[0].tip
    status = json.loads(ok(tmp_path, "status", str(remote), "--json").stdout)
    rows = {r["job"]: r["lease"] for r in status["running"]}
    assert rows["job-a"] == "finished" and rows["job-b"] != "finished"

    b.finish_job()  # parked too: a is about
    assert "job-a" not in done(remote) and "job-b" not in done(remote)
    assert b.get_next_job(pop_queue) == "job-c"  # b's claim folds both finishes in
    assert f"job-a\tworker=a\ttoken={token}" in done(remote) and "job-b\tworker=b" in done(remote)
    assert git(remote, "merge-base", "--is-ancestor", parked[0].tip, MAIN) == ""
    assert git(remote, "show", f"{MAIN}:updates/job-a/result.txt") == "job-a"
    subjects = git(remote, "log", "--format=%s", MAIN).splitlines()
    assert sum(s.startswith("distribute: finish job-a by a ") for s in subjects) == 1
    b.finish_job()
    assert a.get_next_job(pop_queue) is None
    assert record(remote, "a").parked == () and record(remote, "a").gone
    a.close()
    b.close()
    assert sorted(line.split("\t")[0] for line in done(remote).splitlines()) == [
        "job-a", "job-b", "job-c"]


def test_a_finish_that_loses_its_race_parks(remote, tmp_path):
    a = open_worker(remote, tmp_path, "a")
    assert a.get_next_job(pop_queue) == "job-a"
    assert not a.coord.others_about()  # alone: the finish goes to the main branch first
    lose_the_next_race(a, lambda: add_jobs(str(remote), ["job-z"]))
    a.finish_job()
    assert "job-a" not in done(remote)
    assert [p.job for p in record(remote, "a").parked] == ["job-a"]
    assert a.get_next_job(pop_queue) == "job-b"  # its own claim folds it
    assert "job-a\tworker=a" in done(remote)
    a.close()


def test_the_last_worker_folds_its_own_parked_finish_before_returning_none(remote, tmp_path):
    a, b, _ = a_parks(remote, tmp_path)
    b.finish_job()
    b.close()  # b leaves without claiming again
    assert "job-a" not in done(remote)
    assert a.get_next_job(pop_queue) == "job-c"  # a's own claim folds it
    assert "job-a\tworker=a" in done(remote)
    a.finish_job()  # alone now (b said it left): straight to the main branch
    assert "job-c\tworker=a" in done(remote)
    assert a.get_next_job(pop_queue) is None
    assert all(j in done(remote) for j in ("job-a", "job-b", "job-c"))
    assert git(remote, "show", f"{MAIN}:running.txt") == ""
    a.close()


def test_close_folds_a_parked_finish(remote, tmp_path):
    a, b, token = a_parks(remote, tmp_path)
    a.close()  # a script that stops right after finish_job()
    assert f"job-a\tworker=a\ttoken={token}" in done(remote)
    assert record(remote, "a").gone and record(remote, "a").parked == ()
    b.close()


def test_a_restarted_worker_keeps_and_folds_what_its_dead_life_parked(remote, tmp_path):
    a, b, token = a_parks(remote, tmp_path)
    # a dies here: no close, no atexit; its copy's file lock goes with the process
    a._stop.set()
    a._filelock.release()
    b.finish_job()
    b.close()
    again = open_worker(remote, tmp_path, "a")
    assert "job-a" not in done(remote)
    assert again.get_next_job(pop_queue) == "job-c"  # not job-a again: it is finished
    assert f"job-a\tworker=a\ttoken={token}" in done(remote)
    again.finish_job()
    assert again.get_next_job(pop_queue) is None
    assert [line.split("\t")[0] for line in done(remote).splitlines()].count("job-a") == 1
    again.close()


def test_a_lone_worker_never_parks(remote, tmp_path):
    a = open_worker(remote, tmp_path, "a")
    while a.get_next_job(pop_queue) is not None:
        a.finish_job()
    assert a.coord.stats.extra.get("parked", 0) == 0
    assert len(done(remote).splitlines()) == 3
    a.close()


def test_an_admin_edit_folds_parked_finishes_before_editing(remote, tmp_path):
    """``add`` (any edit under the lock) sees a parked job as done and lists it so."""
    a, b, _ = a_parks(remote, tmp_path)
    assert "job-a" not in done(remote)
    assert add_jobs(str(remote), ["job-d"]) == ["job-d"]
    assert "job-a\tworker=a\t" in done(remote)
    assert "job-d" in git(remote, "show", f"{MAIN}:jobs.txt")
    a.close()
    b.close()


def test_a_conflicting_finish_is_not_parked_but_raises(remote, tmp_path):
    """Parking at once is only for a branch that merges cleanly: a conflict is reported by
    finish_job() itself, as without parking."""
    a, b = two_running(remote, tmp_path)
    Path(a.path, "shared.txt").write_text("from a\n")
    Path(b.path, "shared.txt").write_text("from b\n")
    b.finish_job()  # parked (a is about): shared.txt from b goes first
    assert [p.job for p in record(remote, "b").parked] == ["job-b"]
    a.coord.observe()
    assert a.coord.others_about()
    with pytest.raises(MergeConflict):
        a.finish_job()
    assert "job-a" in git(remote, "show", f"{MAIN}:failed.txt")
    assert "job-b\tworker=b" in done(remote)  # folded in the same push as a's record
    assert git(remote, "show", f"{MAIN}:shared.txt") == "from b"
    assert record(remote, "a").parked == ()
    a.close()
    b.close()


def test_the_last_worker_to_leave_folds_what_a_dead_worker_parked(remote, tmp_path):
    """b parks its finish and dies before folding it; a, leaving because no job is left,
    folds b's entry too (its record still looks alive), so done.txt is complete."""
    a, b = two_running(remote, tmp_path)
    b.coord.observe()
    b.finish_job()
    assert [p.job for p in record(remote, "b").parked] == ["job-b"]
    b._stop.set()  # b dies: no close, no fold of its own
    b._filelock.release()
    a.coord.observe()
    a.finish_job()  # parked too: b's record looks alive
    assert "job-a" not in done(remote) and "job-b" not in done(remote)
    assert a.get_next_job(lambda: None) is None
    assert "job-a\tworker=a" in done(remote) and "job-b\tworker=b" in done(remote)
    assert git(remote, "show", f"{MAIN}:running.txt") == ""
    a.close()


def test_a_restart_whose_dead_life_parked_its_finish_does_not_call_it_refused(remote, tmp_path):
    """Killed after its park landed but before it noted so in its copy, a worker's next
    life completes "a finish that had begun": it finds the finish parked on its own
    record, and reports it finished, not taken over (nothing was)."""
    a, b = two_running(remote, tmp_path)
    a.coord.observe()
    job = a.coord.job
    assert job is not None
    marker = json.dumps({"job": job.job, "token": job.token, "attempt": job.attempt,
                         "branch": job.branch, "finishing": True})
    a.finish_job()
    assert [p.job for p in record(remote, "a").parked] == ["job-a"]
    a._job_marker().write_text(marker)  # as if killed before the note was cleared
    a._stop.set()
    a._filelock.release()
    events: list[str] = []
    again = worker_from_url(f"file://{remote}", path=str(tmp_path / "a"), name="a",
                            lease_seconds=30, poll_seconds=0.05,
                            journal=lambda kind, **fields: events.append(kind))
    assert again.get_next_job(pop_queue) == "job-c"
    assert "finish-refused" not in events and "finish" in events
    assert [line.split("\t")[0] for line in done(remote).splitlines()].count("job-a") == 1
    again.finish_job()
    b.finish_job()
    assert again.get_next_job(pop_queue) is None
    again.close()
    b.close()
    assert git(remote, "for-each-ref", "refs/heads/jobs/a/") == ""  # merged, then pruned


def test_a_finish_that_wrote_only_its_folder_parks_without_a_merge(remote, tmp_path):
    """Jobs that write only their own folders (``two_running``'s do): the second finish
    parks knowing its branch merges cleanly onto the first one's, and runs no merge to
    learn it; a job that also wrote a file elsewhere is checked by merging."""
    a, b = two_running(remote, tmp_path)
    b.finish_job()  # parked (a is about)
    a.coord.observe()
    merges: list[str] = []
    real = a.coord.transport.merge

    def counted(ours: str, theirs: str) -> Any:
        merges.append(theirs)
        return real(ours, theirs)

    a.coord.transport.merge = counted  # type: ignore[method-assign]
    a.finish_job()
    assert merges == [] and [p.job for p in record(remote, "a").parked] == ["job-a"]
    # the next job of each writes outside its folder too: checked by merging
    assert a.get_next_job(pop_queue) == "job-c"
    Path(a.path, a.job_dir).mkdir(parents=True, exist_ok=True)
    Path(a.path, a.job_dir, "result.txt").write_text("c\n")
    Path(a.path, "notes.txt").write_text("written beside the results\n")
    a.coord.observe()
    merges.clear()  # the claim folded what was parked
    a.finish_job()
    assert len(merges) == 1  # its branch, merged to check it
    assert [p.job for p in record(remote, "a").parked] == ["job-c"]
    a.close()
    b.close()
