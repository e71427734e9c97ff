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
from distribute.core.names import LOCK_REF, check_name
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate, Transport
from distribute.transport.git import GitLocalCopy, init_bare_repo

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
    with remote_view(url) as view:
        view.prepare(branch, list(jobs))
    return url


class RemoteView:
    """A scratch clone for reading and editing a remote outside any worker."""

    def __init__(self, copy: GitLocalCopy, branch: str | None = None) -> None:
        self.copy = copy
        self.transport: Transport = copy.transport()
        self.branch = branch or copy.default_branch() or "main"
        self.main_ref = "refs/heads/" + self.branch

    def prepare(self, branch: str, jobs: list[str]) -> None:
        self.branch, self.main_ref = branch, "refs/heads/" + branch
        for _ in range(20):
            values = self.transport.fetch([self.main_ref, LOCK_REF])
            main = values.get(self.main_ref)
            changes: dict[str, bytes | None] = {}
            for name, default in ((RUNNING, b""), (DONE, b""), (FAILED, b""), (JOBS_FILE, b""),
                                  (LAYOUT_FILE, LAYOUT_TEXT.encode())):
                if main is None or self.transport.read_file(main, name) is None:
                    changes[name] = default
            if jobs:
                changes.update(self._queue_changes(main, jobs, changes.get(JOBS_FILE)))
            updates = []
            if changes:
                new = self.transport.write_commit(
                    parents=[main] if main else [], base=main, changes=changes,
                    message="distribute: prepare the remote",
                )
                updates.append(RefUpdate(self.main_ref, main, new))
            if LOCK_REF not in values:
                lock = self.transport.write_commit(
                    parents=[], message=lock_message(LockState()), changes={}
                )
                updates.append(RefUpdate(LOCK_REF, None, lock))
            if not updates or self.transport.push(updates):
                return
        raise RemoteStateError("the remote kept changing while it was being prepared; try again")

    def _queue_changes(
        self, main: Oid | None, jobs: list[str], pending: bytes | None
    ) -> dict[str, bytes | None]:
        for job in jobs:
            check_name(job, "job")
        current = pending if pending is not None else (
            self.transport.read_file(main, JOBS_FILE) if main else b""
        )
        queue = read_queue((current or b"").decode("utf-8"))
        has_ledgers = main is not None and all(
            self.transport.read_file(main, name) is not None for name in (RUNNING, DONE)
        )
        ledger = self.ledger(main) if main is not None and has_ledgers else None
        known = set(queue)
        if ledger is not None:
            known |= {e.job for e in (*ledger.running, *ledger.done, *ledger.failed)}
        added = [j for j in dict.fromkeys(jobs) if j not in known]
        return {JOBS_FILE: format_queue(queue + added).encode("utf-8")}

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

    def add_jobs(self, jobs: list[str]) -> list[str]:
        """Queue jobs not already queued, running, done or failed; return those added."""
        if not jobs:
            raise UsageError("no jobs given")
        for job in jobs:
            check_name(job, "job")
        for _ in range(50):
            main = self.main()
            changes = self._queue_changes(main, jobs, None)
            before = read_queue((self.transport.read_file(main, JOBS_FILE) or b"").decode())
            after = read_queue((changes[JOBS_FILE] or b"").decode())
            added = after[len(before):]
            if not added:
                return []
            new = self.transport.write_commit(
                parents=[main], base=main, changes=changes,
                message=f"distribute: queue {len(added)} job(s)",
            )
            if self.transport.push([RefUpdate(self.main_ref, main, new)]):
                return added
        raise RemoteStateError("the main branch kept moving; try again")

    def edit_ledger(self, edit: object, message: str) -> Ledger:
        """CAS an edit of the ledgers (``edit(ledger) -> ledger``) onto the main branch."""
        assert callable(edit)
        for _ in range(50):
            main = self.main()
            before = self.ledger(main)
            after = edit(before)
            changes = after.changed_files(before)
            if not changes:
                return after
            new = self.transport.write_commit(
                parents=[main], base=main, changes=changes, message=message
            )
            if self.transport.push([RefUpdate(self.main_ref, main, new)]):
                return after
        raise RemoteStateError("the main branch kept moving; try again")


@contextmanager
def remote_view(url: str, branch: str | None = None) -> Iterator[RemoteView]:
    """A :class:`RemoteView` on a scratch clone that is removed afterwards."""
    scratch = tempfile.mkdtemp(prefix="distribute-view-")
    try:
        copy = GitLocalCopy.clone(url, Path(scratch) / "copy")
        yield RemoteView(copy, branch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
