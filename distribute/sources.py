"""Next-job functions that ship with Distribute.

A next-job function runs while its worker holds the remote lock, with the
working tree at the freshly fetched main branch.  It returns the next job's
name, or ``None`` when it has none.  File edits it makes are committed with
the claim, atomically.  It may take no argument (the original project's
style, reading a global worker) or the worker as its one argument.

Effects outside the repository (a call to a suggestion service) cannot be
fenced by the lock: a holder that loses its lease mid-call may have made the
call anyway.  Make such effects idempotent; they are at-least-once.

A function that only reads and edits files of the local copy can do without
the lock's separate acquire: mark it with :func:`repo_only` (``QueueJobs``
is).  Such a function runs with the lock free, maybe on several workers at
once and maybe more than once per job; one atomic push then both claims its
job and moves the lock on, and is refused whole if anyone else claimed or
finished in between, so only one run's answer counts.  The lock is still
taken as before when a job must be retried or the lock is held.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar

from distribute.core.errors import RemoteStateError, UsageError
from distribute.core.names import check_name

if TYPE_CHECKING:
    from distribute.dist import Worker


def call_next_job_function(func: Callable[..., Any], worker: Any) -> Any:
    """Call a next-job function as a worker does: ``func(worker)`` when it takes a
    positional argument without a default, else ``func()`` (the seed's style)."""
    try:
        required = [
            p for p in inspect.signature(func).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        required = []
    return func(worker) if required else func()

JOBS_FILE = "jobs.txt"

F = TypeVar("F")


def repo_only(func: F) -> F:
    """Mark a next-job function as touching nothing but the local copy's files.

    It must keep no state between calls and call nothing outside the
    repository, because it may run on several workers at once, and its
    answer may be thrown away and asked for again.  Returns ``func``.
    """
    func.repo_only = True  # type: ignore[attr-defined]
    return func


def is_repo_only(func: object) -> bool:
    """Was ``func`` marked with :func:`repo_only` (or is it an instance of a class
    that sets ``repo_only = True``)?"""
    return getattr(func, "repo_only", False) is True


class DecidesFromFiles(Protocol):
    """A next-job function that can answer from the main branch's files alone
    (:meth:`QueueJobs.next_job_from_files`); a worker then needs no working tree for it."""

    def next_job_from_files(
        self, read: Callable[[str], bytes | None]
    ) -> tuple[str, dict[str, bytes | None]] | None: ...


def decides_from_files(func: object) -> TypeGuard[DecidesFromFiles]:
    """Does ``func`` offer ``next_job_from_files(read)``?"""
    return callable(getattr(func, "next_job_from_files", None))


def read_queue(text: str) -> list[str]:
    """Jobs listed in a queue file: one per line, blank lines skipped."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def format_queue(jobs: list[str]) -> str:
    return "".join(job + "\n" for job in jobs)


class QueueJobs:
    """Take jobs in order from a queue file (default ``jobs.txt``) on the main branch.

    The first line is removed and returned; the shortened file is committed
    with the claim.  Returns ``None`` when the queue is empty or missing.
    It reads and writes only that file, so it is :func:`repo_only`, and a worker
    asks :meth:`next_job_from_files` instead of calling it: the queue is read from
    the fetched main branch, and the working tree is neither checked out nor
    snapshotted for it.
    """

    repo_only = True

    def __init__(self, filename: str = JOBS_FILE) -> None:
        if os.path.isabs(filename) or ".." in filename.replace("\\", "/").split("/"):
            raise ValueError(f"queue file must be a relative path inside the repo: {filename!r}")
        self.filename = filename

    def __call__(self, worker: Worker) -> str | None:
        path = os.path.join(worker.path, self.filename)
        if os.path.islink(path):
            # a link committed as the queue would read and rewrite a file outside the copy
            raise RemoteStateError(
                f"{self.filename} on the remote's main branch is a symbolic link; the queue "
                "must be a plain file: replace it in a clone of the remote and push"
            )
        try:
            with open(path, "rb") as f:
                answer = self._next(f.read())
        except FileNotFoundError:
            return None
        if answer is None:
            return None
        job, rest = answer
        with open(path, "wb") as f:
            f.write(rest)
        return job

    def next_job_from_files(
        self, read: Callable[[str], bytes | None]
    ) -> tuple[str, dict[str, bytes | None]] | None:
        """The next job and the file changes that take it off the queue, decided from the
        main branch's files (``read(path)``: a file's contents, ``None`` when absent);
        ``None`` when the queue is empty or missing.  The same answer as calling the
        object on a working tree at that commit."""
        data = read(self.filename)
        answer = None if data is None else self._next(data)
        if answer is None:
            return None
        job, rest = answer
        return job, {self.filename: rest}

    def _next(self, data: bytes) -> tuple[str, bytes] | None:
        """The first job in a queue file's contents, and the contents without it."""
        try:
            jobs = read_queue(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RemoteStateError(
                f"{self.filename} on the remote's main branch is not UTF-8 text ({exc.reason} "
                f"at byte {exc.start}); fix it in a clone of the remote and push"
            ) from None
        if not jobs:
            return None
        return check_name(jobs[0], "job"), format_queue(jobs[1:]).encode("utf-8")


class RandomJobs:
    """Return a new random job name each call: ``<prefix><integer>``.

    ``limit`` stops after that many jobs from this worker (``None``: never).
    """

    def __init__(self, prefix: str = "job-", seed: int | None = None, limit: int | None = None):
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.limit = limit
        self.given = 0

    def __call__(self) -> str | None:
        if self.limit is not None and self.given >= self.limit:
            return None
        self.given += 1
        return f"{self.prefix}{self.rng.getrandbits(63)}"


_QUEUE = QueueJobs()


@repo_only
def queue_jobs_func(worker: Worker) -> str | None:
    """The ``jobs.txt`` queue as a plain function (a worker asks its
    ``next_job_from_files``, :meth:`QueueJobs.next_job_from_files`)."""
    return _QUEUE(worker)


queue_jobs_func.next_job_from_files = _QUEUE.next_job_from_files  # type: ignore[attr-defined]


def whetlab_make_next_jobs_func(worker: Worker, experiment: Any) -> Any:
    """A next-job function that asks a Whetlab-style experiment for suggestions.

    Before each suggestion it cancels the experiment's pending results that no
    worker runs (left by dead workers), then returns ``experiment.suggest()``'s
    result id as the job.  ``experiment`` needs ``suggest()`` (a result with a
    ``_result_id``), ``pending()`` (such results) and
    ``cancel_by_result_id(id)``; report outcomes yourself with
    ``update_by_result_id(id, value)``.  Calls to the service are
    at-least-once: a holder that loses its lease mid-call may still have made
    them.
    """

    def next_jobs_func() -> str:
        running = set(worker.get_running())
        for result in list(experiment.pending()):
            result_id = str(_result_id(result))
            if result_id not in running:
                experiment.cancel_by_result_id(_result_id(result))
        return str(_result_id(experiment.suggest()))

    return next_jobs_func


def _result_id(result: Any) -> Any:
    """The id of a suggestion: an attribute (the Whetlab client's results are dicts that
    carry it as one) or, for plain mappings, a key."""
    found = getattr(result, "_result_id", None)
    if found is None and isinstance(result, Mapping):
        found = result.get("_result_id")
    if found is None:
        raise UsageError(
            f"the suggestion {result!r} has no _result_id; the experiment must follow the "
            "Whetlab client interface (see whetlab_make_next_jobs_func)"
        )
    return found
