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

from distribute.core.errors import RemoteStateError, UsageError
from distribute.core.ledger import DONE, FAILED, RUNNING, Ledger
from distribute.core.lock import LockState, lock_message, parse_lock_message
from distribute.core.names import JOB_BRANCH_PREFIX, LOCK_REF, check_name
from distribute.sources import JOBS_FILE
from distribute.transport.base import Oid, RefUpdate, Transport
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.repository import init_bare_repo

LAYOUT_FILE = "DISTRIBUTE.md"
LAYOUT_TEXT = """\
# This repository is a Distribute remote

Workers coordinate through it and store their results in it.

- `jobs.txt`: jobs waiting to run, one per line (the queue).
- `running.txt`: jobs being run: name, worker, fencing token, attempt.
- `done.txt`: finished jobs; their results are merged into this branch.
- `failed.txt`: jobs that failed on every attempt, with the last reason.
- `updates/<job>/`: what each job wrote.
- branches `jobs/<worker>/<job>/<token>`: each job's own history.
- `refs/distribute/lock`: the lock; its history lists every holding.
- `refs/distribute/workers/<worker>`: each worker's liveness record.

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
            init_bare_repo(path, branch)
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
        self.branch, self.main_ref = branch, "refs/heads/" + branch
        for _ in range(20):
            values = self.transport.fetch([self.main_ref, LOCK_REF])
            main = values.get(self.main_ref)
            changes: dict[str, bytes | None] = {}
            for name, default in ((RUNNING, b""), (DONE, b""), (FAILED, b""), (JOBS_FILE, b""),
                                  (LAYOUT_FILE, LAYOUT_TEXT.encode())):
                if main is None or self.transport.read_file(main, name) is None:
                    changes[name] = default
            updates = []
            if changes:
                new = self.transport.write_commit(
                    parents=[main] if main else [], base=main, changes=changes,
                    message="distribute: prepare the remote",
                )
                updates.append(RefUpdate(self.main_ref, main, new))
            if LOCK_REF not in values:
                # a remote whose lock was deleted (the repair of a damaged one) has
                # used tokens: the new lock starts above them, so no claim reuses one
                token = self.highest_token(main) if main is not None else 0
                lock = self.transport.write_commit(
                    parents=[], message=lock_message(LockState(token=token)), changes={}
                )
                updates.append(RefUpdate(LOCK_REF, None, lock))
            if not updates or self.transport.push(updates):
                return
        raise RemoteStateError("the remote kept changing while it was being prepared; try again")

    def highest_token(self, main: Oid) -> int:
        """The highest fencing token the remote records: in the ledgers at ``main`` and in
        the names of job branches (``jobs/<worker>/<job>/<token>``).  A lock written anew
        starts from it, so every later claim gets a token no earlier holding had (a lock
        holding that claimed nothing leaves no record, and needs none: its pushes name
        the old lock commit, which is gone)."""
        highest = 0
        files = {n: self.transport.read_file(main, n) for n in (RUNNING, DONE, FAILED)}
        if files[RUNNING] is not None and files[DONE] is not None:
            ledger = Ledger.from_files(files, self.branch)
            for entry in (*ledger.running, *ledger.done, *ledger.failed):
                highest = max(highest, entry.token)
        for ref in self.transport.list_refs("refs/heads/" + JOB_BRANCH_PREFIX):
            last = ref.rsplit("/", 1)[-1]
            if last.isascii() and last.isdigit() and len(last) <= 18:
                highest = max(highest, int(last))
        return highest

    def repair_lock(self) -> tuple[Oid, LockState] | None:
        """Replace a lock ref that holds no lock record with a free lock whose token is
        above every token the remote records (compare-and-swap from the damaged value).

        Returns:
            ``(the damaged value, the new state)``, or ``None`` when the lock is readable
            (nothing to repair; see :func:`distribute.cli.break_lock`).

        Raises:
            RemoteStateError: no lock ref, or it changed meanwhile.
        """
        values = self.transport.fetch([self.main_ref, LOCK_REF])
        damaged = values.get(LOCK_REF)
        if damaged is None:
            raise RemoteStateError(
                "the remote has no lock (refs/distribute/lock); prepare it with `distribute init`"
            )
        try:
            parse_lock_message(self.transport.commit_message(damaged))
            return None
        except RemoteStateError:
            pass
        main = values.get(self.main_ref)
        state = LockState(token=self.highest_token(main) if main is not None else 0)
        lock = self.transport.write_commit(parents=[], message=lock_message(state), changes={})
        if not self.transport.push([RefUpdate(LOCK_REF, damaged, lock)]):
            raise RemoteStateError(
                "the lock changed while it was being repaired; nothing was written -- look "
                "again with `distribute status` before retrying"
            )
        return damaged, state

    def ledger(self, main: Oid) -> Ledger:
        files = {n: self.transport.read_file(main, n) for n in (RUNNING, DONE, FAILED)}
        return Ledger.from_files(files, self.branch)

    def main(self) -> Oid:
        main = self.transport.fetch([self.main_ref]).get(self.main_ref)
        if main is None:
            raise RemoteStateError(
                f"the remote has no branch {self.branch!r}; prepare it with `distribute init`"
            )
        return main

    def lock(self) -> tuple[Oid | None, LockState]:
        oid = self.transport.fetch([LOCK_REF]).get(LOCK_REF)
        if oid is None:
            return None, LockState()
        return oid, parse_lock_message(self.transport.commit_message(oid))

    def add_jobs(self, jobs: list[str], wait: float = 60.0) -> list[str]:
        """Queue the jobs not already queued, running, done or failed; return those added.

        The edit is made under the remote lock (see :mod:`distribute.fenced`),
        so a worker's next-job function never sees ``jobs.txt`` change under it.
        """
        from distribute.fenced import FencedEdit, cli_holder, queue_edit

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
