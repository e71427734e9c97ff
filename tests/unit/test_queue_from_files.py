"""``QueueJobs`` decides from the main branch's files, without the working tree.

The built-in queue needs only ``jobs.txt``.  Read from the fetched commit and
answered as a change to that file, it costs no checkout of the main branch and no
snapshot of the working tree, which on a remote holding thousands of results
were most of a claim's time.  The answers are the same as the working-tree path's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distribute.core.errors import InvalidName, RemoteStateError
from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import QueueJobs, queue_jobs_func, repo_only


def reader(files: dict[str, bytes]):
    return files.get


def test_the_first_line_is_the_job_and_the_rest_is_the_new_file():
    answer = QueueJobs().next_job_from_files(reader({"jobs.txt": b"a\n\n b \nc\n"}))
    assert answer == ("a", {"jobs.txt": b"b\nc\n"})


def test_an_empty_or_missing_queue_has_no_job():
    assert QueueJobs().next_job_from_files(reader({})) is None
    assert QueueJobs().next_job_from_files(reader({"jobs.txt": b"\n \n"})) is None


def test_another_queue_file_is_read_and_written():
    queue = QueueJobs("queues/gpu.txt")
    answer = queue.next_job_from_files(reader({"jobs.txt": b"x\n", "queues/gpu.txt": b"g1\n"}))
    assert answer == ("g1", {"queues/gpu.txt": b""})


def test_text_that_is_not_utf8_names_the_file_and_the_fix():
    with pytest.raises(RemoteStateError, match=r"jobs.txt .* not UTF-8 .* fix it"):
        QueueJobs().next_job_from_files(reader({"jobs.txt": b"\xff\n"}))


def test_a_bad_first_line_is_refused_before_anything_changes():
    with pytest.raises(InvalidName):
        QueueJobs().next_job_from_files(reader({"jobs.txt": b"a\x01b\nc\n"}))


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


@repo_only
def hand_written_queue(worker) -> str | None:
    """The original project's style: read jobs.txt in the working tree, rewrite it."""
    path = Path(worker.path) / "jobs.txt"
    jobs = path.read_text().split()
    if not jobs:
        return None
    path.write_text("".join(j + "\n" for j in jobs[1:]))
    return jobs[0]


@pytest.mark.parametrize("func", [QueueJobs(), queue_jobs_func, hand_written_queue],
                         ids=["QueueJobs", "queue_jobs_func", "working-tree"])
def test_a_claim_from_the_files_checks_out_only_the_job(tmp_path, func):
    """Both paths give the same jobs and the same queue on main; the files path checks
    out the jobs' branches and, at the end, the main branch; the working-tree path the
    main branch before every call too."""
    bare = tmp_path / "remote.git"
    init_remote(bare)
    add_jobs(str(bare), ["one", "two", "three"])
    with worker_from_url(str(bare), path=tmp_path / "copy", name="w", lease_seconds=5,
                         poll_seconds=0.05, wait_for_running=False) as w:
        # each checkout, as the job held then (None: the main branch, between jobs)
        checkouts: list[str | None] = []
        real = w.copy.checkout
        w.copy.checkout = lambda commit, branch: (
            checkouts.append(w.coord.job.job if w.coord.job else None), real(commit, branch))
        got = []
        while (job := w.get_next_job(func)) is not None:
            got.append(job)
            w.finish_job()
        # with no job left, the working tree holds the main branch, whichever path decided
        done = (Path(w.path) / "done.txt").read_text().splitlines()
        assert [line.split("\t")[0] for line in done] == ["one", "two", "three"]
        assert w.copy.head() == git("rev-parse", "main", cwd=bare).strip()
    assert got == ["one", "two", "three"]
    assert git("show", "main:jobs.txt", cwd=bare) == ""
    job_checkouts = [b for b in checkouts if b is not None]
    assert job_checkouts == ["one", "two", "three"]
    if func is hand_written_queue:
        # the main branch before each call, for the function to read
        assert checkouts.count(None) >= 4
    else:
        # each job's branch, then the main branch once, when no job is left
        assert checkouts == [*job_checkouts, None]
