"""Preparing a remote, and reading its state without a worker.

``init_remote`` makes any remote ready for workers: the ledgers, ``jobs.txt``
and a short ``DISTRIBUTE.md`` on the main branch, and the lock ref, written
in one atomic push -- which doubles as the probe that the remote accepts
``--atomic``.  It is idempotent: what exists is kept.  ``RemoteView`` is a
throw-away clone used by the command line to read and edit the remote
(status, queueing, requeue, unlock) through the same coordinator steps as
workers, so every edit is fenced like theirs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from distribute.coordination import (
    FencedEdit,
    prepare_remote,
    read_ledger,
    read_lock,
    repair_lock,
)
from distribute.core.errors import RemoteStateError, UsageError
from distribute.core.ledger import Ledger
from distribute.core.lock import LockState
from distribute.core.names import check_name
from distribute.sources import JOBS_FILE
from distribute.transport.base import Oid, Transport
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.repository import init_bare_repo

LAYOUT_FILE = "DISTRIBUTE.md"
LAYOUT_TEXT = """\
# This repository is a Distribute remote

Workers coordinate through it and store their results in it.

- `jobs.txt`: jobs waiting to run, one per line (the queue).
- `running.txt`: jobs being run: name, worker, fencing token, attempt.
- `done.txt`: finished jobs; their results are merged into this branch.  It
  holds the latest; the older ones are in `done/000001.txt`, `done/000002.txt`,
  ... in order, 1,000 a part (all of them: `cat done/*.txt done.txt`).
- `failed.txt`: jobs that failed on every attempt, with the last reason.
- `updates/<job>/`: what each job wrote.
- branches `jobs/<worker>/<job>/<token>`: each job's own history.
- `refs/distribute/lock`: the lock; its history lists every holding.
- `refs/distribute/workers/<worker>`: each worker's liveness record.
- `refs/distribute/handed/<worker>`: moved by each claim that hands that
  worker a job, so its waits notice at once.
- `refs/distribute/archive/<worker>`: the branches of jobs that failed for
  good, archived (`archived.txt` in it lists each branch with its last commit).

Edit the ledgers only through `distribute` (requeue, unlock), so that every
change is fenced against running workers.
"""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/\s]+@[^/\s]+:")


def is_local_path(remote: str) -> bool:
    """True when ``remote`` names a folder rather than a URL (``scheme://`` or ``user@host:``)."""
    return not _SCHEME.match(remote)


def init_remote(
    remote: str | os.PathLike[str],
    branch: str = "main",
    jobs: Iterable[str] = (),
) -> str:
    """Prepare ``remote`` for workers and return its URL or path.

    A local path that does not exist becomes a new bare repository whose
    default branch is ``branch``.  Existing files are kept; missing ledgers,
    ``jobs.txt`` and ``DISTRIBUTE.md`` are added.  ``jobs`` are queued.

    Raises:
        RemoteStateError: the remote refuses atomic pushes.
        InvalidName: a job name cannot be stored.
    """
    url = os.fspath(remote)
    check_name(branch, "branch")
    if is_local_path(url):
        path = Path(url)
        if not path.exists():
            init_bare_repo(path, branch, serve_partial_clones=True)
        url = str(path.resolve())
    jobs = list(jobs)
    for job in jobs:
        check_name(job, "job")
    with remote_view(url) as view:
        view.prepare(branch)
        if jobs:
            view.add_jobs(jobs)
    return url


def add_jobs(remote: str | os.PathLike[str], jobs: Iterable[str], wait: float = 60.0) -> list[str]:
    """Queue ``jobs`` on a prepared remote, under its lock; return the jobs added.

    Jobs already queued, running, done or failed are skipped.

    Raises:
        InvalidName: a job name cannot be stored.
        RemoteStateError: the remote is not prepared, or its lock stayed held
            (unchanged) for ``wait`` seconds.
    """
    url = os.fspath(remote)
    if is_local_path(url):
        url = str(Path(url).resolve())
    with remote_view(url) as view:
        return view.add_jobs(list(jobs), wait)


class RemoteView:
    """A scratch clone for reading and editing a remote outside any worker."""

    def __init__(self, copy: GitLocalCopy, branch: str | None = None) -> None:
        self.copy = copy
        self.transport: Transport = copy.transport()
        self.branch = branch or copy.default_branch() or "main"
        self.main_ref = "refs/heads/" + self.branch

    def prepare(self, branch: str) -> None:
        """Write what the remote lacks of the ledgers, ``jobs.txt``, ``DISTRIBUTE.md`` and
        the lock (:func:`distribute.coordination.prepare_remote`)."""
        self.branch, self.main_ref = branch, "refs/heads/" + branch
        prepare_remote(self.transport, branch,
                       {JOBS_FILE: b"", LAYOUT_FILE: LAYOUT_TEXT.encode()})

    def repair_lock(self) -> tuple[Oid, LockState] | None:
        """:func:`distribute.coordination.repair_lock` on this remote's main branch."""
        return repair_lock(self.transport, self.branch)

    def ledger(self, main: Oid) -> Ledger:
        return read_ledger(self.transport, main, self.branch)

    def main(self) -> Oid:
        main = self.transport.fetch([self.main_ref]).get(self.main_ref)
        if main is None:
            raise RemoteStateError(
                f"the remote has no branch {self.branch!r}; prepare it with `distribute init`"
            )
        return main

    def lock(self) -> tuple[Oid | None, LockState]:
        return read_lock(self.transport)

    def add_jobs(self, jobs: list[str], wait: float = 60.0) -> list[str]:
        """Queue the jobs not already queued, running, done or failed; return those added.

        The edit is made under the remote lock (see :mod:`distribute.fenced`),
        so a worker's next-job function never sees ``jobs.txt`` change under it.
        """
        from distribute.fenced import cli_holder, queue_edit

        if not jobs:
            raise UsageError("no jobs given")
        for job in jobs:
            check_name(job, "job")
        result: dict[str, list[str]] = {}
        FencedEdit(self, cli_holder(), wait).apply(queue_edit(jobs, result))
        return result.get("added", [])


@contextmanager
def remote_view(url: str, branch: str | None = None) -> Iterator[RemoteView]:
    """A :class:`RemoteView` on a scratch clone that is removed afterwards (read through
    its transport only, so without a working tree)."""
    scratch = tempfile.mkdtemp(prefix="distribute-view-")
    try:
        copy = GitLocalCopy.clone(url, Path(scratch) / "copy", checkout=False)
        yield RemoteView(copy, branch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
