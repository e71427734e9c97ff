"""Peeks at a remote shared by the workers of one machine.

Theory of operation
-------------------
A worker waiting for its turn peeks at the remote's refs (``ls-remote``) every
little while.  Several workers on one machine (``--slots``, ``--gpus``, or a
script starting a few) wait for the same refs, and each peek over ssh or HTTPS
costs a connection, a process on the server and one on this machine.  So the
answer is shared: the worker that peeks writes what it read, with the time, to a
file that the other workers of this user and this remote read instead of asking
the remote again, as long as it is no older than the delay they would have slept
anyway (half the worker's own wait between peeks: the worker next in turn, which
peeks most often, nearly always reads the remote itself).  While one worker
peeks, the others that want an answer wait for its answer (a file lock), up to a
bound, instead of asking at the same moment.

A peek is only ever a hint: every claim, finish and take-over decides on a full
look (a fetch) of its own.  A shared answer is at most ``max_age`` seconds old,
so it can only make a worker notice a change that much later; it cannot make a
worker act on a state that is not the remote's.  The file holds ref names and
commit ids of the remote, nothing else (no URL, no password); it lives in a
folder only this user can read, named by a hash of the remote's URL (without a
password) and the branch.  A file that is torn, unreadable or from the future
counts as absent.  Ages are read on the machine's monotonic clock, which all
its processes share (no time of day: a clock set back or forward changes
nothing), and an answer from before the last boot is from the future or too old.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import filelock

from distribute.core.names import scrub_url
from distribute.credentials import private_folder, split_secret, user_temp_folder

#: How long a worker waits for another worker's peek under way before it peeks itself.
PEEK_WAIT_SECONDS = 5.0


class SharedPeeks:
    """The shared peeks at one remote and branch for this user on this machine."""

    def __init__(
        self, url: str, branch: str, *, folder: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        public = scrub_url(split_secret(url).public)
        key = hashlib.sha256(f"{public}\n{branch}".encode()).hexdigest()[:32]
        root = Path(folder) if folder is not None else default_folder()
        self.path = private_folder(root) / f"{key}.json"
        self._lock = filelock.FileLock(str(self.path) + ".lock")
        self._clock = clock

    def get(
        self, peek: Callable[[], dict[str, str]], max_age: float
    ) -> tuple[dict[str, str], bool]:
        """Refs read by a peek at most ``max_age`` seconds ago: another worker's from the
        file, or ``peek()``'s (then written for the others).  Returns the refs and
        whether this call peeked."""
        found = self._read(max_age)
        if found is not None:
            return found, False
        try:
            with self._lock.acquire(timeout=PEEK_WAIT_SECONDS):
                # another worker may have peeked while this one waited for the lock
                found = self._read(max_age)
                if found is not None:
                    return found, False
                refs = peek()
                self._write(refs)
                return refs, True
        except filelock.Timeout:
            return peek(), True

    def _read(self, max_age: float) -> dict[str, str] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            at, refs = float(data["at"]), data["refs"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        age = self._clock() - at
        if not 0 <= age <= max_age or not isinstance(refs, Mapping):
            return None
        return {str(k): str(v) for k, v in refs.items()}

    def _write(self, refs: Mapping[str, str]) -> None:
        """Write atomically (a reader sees the old answer or the new one, never half)."""
        scratch = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.new")
        with contextlib.suppress(OSError):  # sharing is an optimisation: never fail a peek
            scratch.write_text(json.dumps({"at": self._clock(), "refs": dict(refs)}),
                               encoding="utf-8")
            os.replace(scratch, self.path)
        scratch.unlink(missing_ok=True)


def default_folder() -> Path:
    """``<temp>/distribute-<uid>/peeks``: per user, readable by that user only."""
    return user_temp_folder("peeks")


__all__ = ["PEEK_WAIT_SECONDS", "SharedPeeks", "default_folder"]
