"""Reading a job's log, once or as it grows: ``distribute logs [--follow]``.

Theory of operation
-------------------
A job's ``log.txt`` lives in its folder (``updates/<job>/log.txt``).  While the
job runs, its worker commits the log to the job's branch every
``--commit-every`` seconds; when it is done, the finish merges that branch into
the main branch.  :func:`locate_log` reads it from where it is newest: the
main branch for a done job, else the branch the ledger names (the running
attempt's, or the last one's for a job released for a retry or failed), else
the newest branch of that job.  It never raises for a log that is not there
yet: it says what state the job is in.

:func:`follow` looks again and again and writes only what is new.  A look
first asks the remote for two ref values only (the main branch, and the branch
the last look read from); when neither moved nothing else is read and the wait
before the next look grows, from ``interval`` doubling up to four times it, and
starts again at ``interval`` once something moved.  A log that does not carry
on what was printed (an attempt that started afresh) is announced and printed
from its start.  The loop ends by itself once the job is done or failed for
good (``failed.txt``); a job released for another attempt is still followed.
It never reads a clock: the waits are the only notion of time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distribute.backoff import Backoff
from distribute.core.errors import UsageError
from distribute.core.names import JOB_BRANCH_PREFIX, encode_component, job_branch, job_dir
from distribute.sources import JOBS_FILE, read_queue

if TYPE_CHECKING:
    from distribute.remote import RemoteView

LOG_FILE = "log.txt"

#: States a job's log can be followed in; ``done`` and ``failed`` end a follow.
QUEUED, RUNNING, RELEASED, DONE, FAILED, UNKNOWN = (
    "queued", "running", "released", "done", "failed", "unknown",
)
ENDED = (DONE, FAILED)

#: How far the wait between looks grows while nothing changes, as a multiple of the interval.
MAX_BACKOFF_FACTOR = 4


@dataclass(frozen=True)
class LogLook:
    """What one look at the remote found of a job's log.

    Attributes:
        state: ``queued``, ``running``, ``released`` (waiting for another attempt),
            ``done``, ``failed`` (for good) or ``unknown``.
        data: the log, ``None`` when there is none yet.
        where: the branch ``data`` was read from (``None`` without data).
        watch: the job branch whose tip tells that the log may have grown (the
            running attempt's, or where ``data`` came from); ``None`` when only the
            main branch can tell.
        worker, attempt, reason: from the job's ledger line, when it has one.
        seen: the main branch's commit this look read, and the tip of ``watch`` it read
            (``None``: no such branch): a later look that finds both unchanged has
            nothing new to read.
    """

    state: str
    data: bytes | None = None
    where: str | None = None
    watch: str | None = None
    worker: str = ""
    attempt: int = 0
    reason: str = ""
    seen: tuple[str | None, str | None] = (None, None)


def locate_log(view: RemoteView, job: str, *, earlier_runs: bool = True) -> LogLook:
    """Look once for ``job``'s ``log.txt`` (see the module docstring).

    ``earlier_runs``: for a queued job (requeued after it failed), read the log of its
    last run; without it a queued job has no log.
    """
    transport = view.transport
    main = view.main()
    ledger = view.ledger(main)
    path = f"{job_dir(job)}/{LOG_FILE}"
    entry = ledger.running_entry(job) or next(
        (e for e in (*ledger.done, *ledger.failed) if e.job == job), None)
    state = ledger.state_of(job)
    worker = entry.worker if entry is not None else ""
    attempt = entry.attempt if entry is not None else 0
    reason = entry.reason if entry is not None else ""
    if state == DONE:
        data = transport.read_file(main, path)
        if data is not None:
            return LogLook(DONE, data, view.branch, None, worker, attempt, seen=(main, None))
    elif state == RUNNING and entry is not None and entry.released:
        state = RELEASED
    elif state is None:
        queue = read_queue((transport.read_file(main, JOBS_FILE) or b"").decode("utf-8"))
        state = QUEUED if job in queue else UNKNOWN
    candidates: list[str] = []
    owner = (entry.worker or entry.was) if entry is not None else ""
    if entry is not None and owner:
        candidates.append(job_branch(owner, job, entry.token))
    # a running attempt's branch is where its log appears, even before it has one
    watch = candidates[0] if state == RUNNING and candidates else None
    if state == QUEUED and not earlier_runs:
        return LogLook(state, seen=(main, None))
    encoded = encode_component(job)
    mine: list[tuple[int, str]] = []
    for ref in transport.list_refs("refs/heads/" + JOB_BRANCH_PREFIX):
        parts = ref[len("refs/heads/"):].split("/")
        if len(parts) == 4 and parts[2] == encoded and parts[3].isdigit():
            mine.append((int(parts[3]), "/".join(parts)))
    candidates += [b for _, b in sorted(mine, reverse=True)]
    tips: dict[str, str | None] = {}
    for name in dict.fromkeys(candidates):
        ref = "refs/heads/" + name
        tip = tips[name] = transport.fetch([ref]).get(ref)
        if tip is None:
            continue
        data = transport.read_file(tip, path)
        if data is not None:
            watched = watch or name
            return LogLook(state, data, name, watched, worker, attempt, reason,
                           (main, tips.get(watched)))
    if state in ENDED:
        # its branches may be archived (by their worker, or `distribute gc`): the last
        # attempt's first, from its worker's archive (every archive when the line names no
        # worker)
        from distribute.coordination import read_archive

        archived = read_archive(transport, [f"refs/heads/{b}" for b in candidates[:1]] or None)
        names = [*candidates[:1], *sorted(
            (ref[len("refs/heads/"):] for ref in archived
             if ref.split("/")[-2:-1] == [encoded] and ref.rsplit("/", 1)[-1].isdigit()),
            key=lambda name: int(name.rsplit("/", 1)[-1]), reverse=True)]
        for name in dict.fromkeys(names):
            tip = archived.get("refs/heads/" + name)
            data = transport.read_file(tip, path) if tip is not None else None
            if data is not None:
                return LogLook(state, data, name, watch or name, worker, attempt, reason,
                               (main, None))
    # the values read, not read again: a move after the reading is seen by the next look
    return LogLook(state, None, None, watch, worker, attempt, reason,
                   (main, tips.get(watch) if watch else None))


class LogWatcher:
    """Looks at one job's log, skipping the reading when no ref it depends on moved."""

    def __init__(self, view: RemoteView, job: str) -> None:
        self.view = view
        self.job = job
        self._seen: tuple[str | None, str | None] | None = None
        self._last: LogLook | None = None

    def _refs(self, watch: str | None) -> tuple[str | None, str | None]:
        transport = self.view.transport
        main = transport.list_refs(self.view.main_ref).get(self.view.main_ref)
        if watch is None:
            return main, None
        ref = "refs/heads/" + watch
        return main, transport.list_refs(ref).get(ref)

    def look(self) -> LogLook | None:
        """A new look, or ``None`` when nothing it depends on moved since the last one."""
        last = self._last
        if last is not None:
            seen = self._refs(last.watch)
            if seen == self._seen:
                return None
        found = locate_log(self.view, self.job, earlier_runs=False)
        # the values this look read, not read again: a move after it is seen next time
        self._seen = found.seen
        self._last = found
        return found


def describe(look: LogLook, job: str) -> str:
    """One line on where ``job`` is, for the person following it."""
    if look.state == QUEUED:
        return f"job {job!r} is queued; waiting for a worker to start it"
    if look.state == RUNNING:
        what = f"job {job!r} is running (attempt {look.attempt} on worker {look.worker!r})"
        return what + (f" and has no {LOG_FILE} yet; waiting" if look.data is None else "")
    if look.state == RELEASED:
        why = f": {look.reason}" if look.reason else ""
        return (f"job {job!r}: attempt {look.attempt} ended{why}; waiting for another "
                "attempt")
    if look.state == DONE:
        return f"job {job!r} is done (attempt {look.attempt} on worker {look.worker!r})"
    if look.state == FAILED:
        why = f": {look.reason}" if look.reason else ""
        return (f"job {job!r} failed for good after attempt {look.attempt}{why}; "
                f"`distribute requeue REMOTE {job}` runs it again")
    return f"job {job!r} is not known to this remote"


def follow(
    look: Callable[[], LogLook | None],
    job: str,
    write: Callable[[bytes], None],
    say: Callable[[str], None],
    *,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> LogLook:
    """Write ``job``'s log as it grows until the job is done or failed; return the last look.

    Args:
        look: one look at the remote (``None``: nothing moved since the last one).
        write: receives each new piece of the log.
        say: receives one line whenever the job's state changes.
        interval: seconds between looks while things change; up to
            :data:`MAX_BACKOFF_FACTOR` times that while nothing does.

    Raises:
        UsageError: the job is not known to the remote.
    """
    if interval <= 0:
        raise UsageError("the interval between looks must be > 0 seconds")
    backoff = Backoff(interval, interval * MAX_BACKOFF_FACTOR, rng, spread=0.25)
    shown = b""
    said = ""
    while True:
        found = look()
        if found is not None:
            if found.state == UNKNOWN:
                raise UsageError(
                    f"job {job!r} is not known to this remote (not queued, running, done or "
                    "failed); see `distribute status REMOTE`"
                )
            moved = False
            if found.data is not None and found.data != shown:
                if found.data.startswith(shown):
                    write(found.data[len(shown):])
                else:
                    say(f"the log of job {job!r} on {found.where} starts afresh (a new "
                        "attempt); printing it from its start")
                    write(found.data)
                shown, moved = found.data, True
            line = describe(found, job)
            if line != said:
                said, moved = line, True
                say(line)
            if found.state in ENDED:
                return found
            if moved:
                backoff.reset()
        sleep(backoff.next())


__all__ = [
    "DONE",
    "ENDED",
    "FAILED",
    "LOG_FILE",
    "MAX_BACKOFF_FACTOR",
    "QUEUED",
    "RELEASED",
    "RUNNING",
    "UNKNOWN",
    "LogLook",
    "LogWatcher",
    "describe",
    "follow",
    "locate_log",
]
