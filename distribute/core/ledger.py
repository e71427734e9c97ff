"""The ledgers: ``running.txt``, ``done.txt`` and ``failed.txt`` on the main branch.

Theory of operation
-------------------
Each ledger holds one job per line, the job name first, then tab-separated
``key=value`` fields.  A line with only a name (the original project's
format) reads as a job with no fields.  A :class:`Ledger` is an immutable
value: every transition (claim, finish, fail, release, retry) returns a new
one or raises, and every transition checks the fencing token so that a
holder whose lease was taken over cannot move its job.

States of a job in the ledgers::

    (absent) --claim--> running[worker, token, attempt]
    running  --finish (same worker+token)--> done
    running  --fail or interrupt, attempts left--> running[worker="" (released), was=worker]
    running[released] or running[expired] --retry--> running[new worker, new token, attempt+1]
    running  --fail or interrupt, none left--> failed
    failed   --requeue--> (absent; the queue gets it back)

Attempts count failures, not interruptions.  An attempt *fails* when its
command fails or the job calls ``fail_job``; it is *interrupted* when its
worker was stopped by a signal, restarted, or went silent until its lease
expired.  ``max_attempts`` bounds failures; a separate, generous
``max_interruptions`` stops a job that brings down every machine it lands
on.  A line records ``interrupted=N``, the interrupted attempts among those
that ended, so the failures are the ended attempts less those.
"""

from __future__ import annotations

import collections
import itertools
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from distribute.core.errors import LeaseLost, RemoteStateError, UsageError
from distribute.core.names import check_name, forbidden_character

RUNNING = "running.txt"
DONE = "done.txt"
FAILED = "failed.txt"
LEDGER_FILES = (RUNNING, DONE, FAILED)
REQUIRED_FILES = (RUNNING, DONE)
#: The folder of ``done.txt``'s sealed parts: ``done/000001.txt``, ``done/000002.txt``, ...
#: hold the oldest lines, in order, and ``done.txt`` the lines since (see
#: :meth:`Ledger.to_files`).  The whole list is the parts in the order of their numbers,
#: then ``done.txt``: ``cat done/*.txt done.txt``.
DONE_PARTS = "done"
#: How many lines ``done.txt`` gathers before they are sealed into a part of their own.
DONE_PART_LINES = 1000
_PART_NAME = re.compile(r"[0-9]{6,9}\.txt")
#: Default cap on interrupted attempts of one job (see the module docstring).
MAX_INTERRUPTIONS = 10


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger line.

    Attributes:
        job: the job name.
        worker: the holder (``""`` in ``running.txt`` means released, waiting
            for another attempt).
        token: the fencing token of the holding under which it was claimed.
        attempt: 1 for the first run, +1 for every retry.
        reason: why the last attempt failed, if it did.
        interrupted: how many of the attempts that ended were interrupted
            rather than failed.
        was: on a released line, the worker whose attempt ended (its branch
            holds what that attempt wrote).
        by: on a line claimed for ``worker`` by another worker (a hand-off:
            one claim push gives queued jobs to idle workers too), that worker.
        session: on a handed line, the session of ``worker`` it was handed to:
            only that process takes it up; an earlier or later life of the same
            worker treats it as its own interrupted attempt.
    """

    job: str
    worker: str = ""
    token: int = 0
    attempt: int = 1
    reason: str = ""
    interrupted: int = 0
    was: str = ""
    by: str = ""
    session: str = ""

    @property
    def released(self) -> bool:
        return self.worker == ""

    def handed_to(self, worker: str, session: str) -> bool:
        """Is this a line another worker claimed for ``worker``'s process ``session``?"""
        return bool(self.by) and (self.worker, self.session) == (worker, session)

    @property
    def ended(self) -> int:
        """Attempts that have ended: all of them once released, else all but the current."""
        return self.attempt if self.released else self.attempt - 1

    @property
    def failures(self) -> int:
        """Ended attempts that failed (the ones ``max_attempts`` counts)."""
        return max(0, self.ended - self.interrupted)


def _clean_reason(reason: str) -> str:
    """Fold a free-text reason onto one tab-free line."""
    return " ".join(reason.split())[:300]


def format_line(entry: Entry) -> str:
    fields = [entry.job, f"worker={entry.worker}", f"token={entry.token}"]
    fields.append(f"attempt={entry.attempt}")
    if entry.interrupted:
        fields.append(f"interrupted={entry.interrupted}")
    if entry.was:
        fields.append(f"was={entry.was}")
    if entry.by:
        fields.append(f"by={entry.by}")
    if entry.session:
        fields.append(f"session={entry.session}")
    if entry.reason:
        fields.append(f"reason={_clean_reason(entry.reason)}")
    return "\t".join(fields)


#: What to do about a ledger line no worker can read (every worker stops on it, so that no
#: job runs twice on a guess).
_REPAIR = (
    "a ledger on the remote's main branch is damaged (edited by hand, or written by "
    "something else); fix or delete that line in a clone of the remote and push it -- "
    "workers stop rather than guess"
)
_NUMBER_FIELDS = {"token": 0, "attempt": 1, "interrupted": 0}
#: what the message calls each name a line holds, in the order they are checked
_NAME_FIELDS = ("the job name", "worker=", "was=", "by=", "session=")


def _damaged(source: str, what: str, line: str | bytes) -> RemoteStateError:
    shown = repr(line[:200]) + (" ..." if len(line) > 200 else "")
    return RemoteStateError(f"{source}: {what} in line {shown}; {_REPAIR}", source=source)


def parse_line(line: str, source: str = "ledger") -> Entry:
    """Parse one ledger line; raise :class:`RemoteStateError` if it is damaged.

    The job name and the ``worker`` and ``was`` fields must be names a ledger can hold
    (no control character: a NUL byte is damage, not a name); ``token``, ``attempt`` and
    ``interrupted`` must be decimal numbers of at most 18 digits (``attempt`` at least
    1).  ``source`` names the file and line in the message (``running.txt line 3``).
    """
    job, *fields = line.split("\t")
    if not job:
        raise _damaged(source, "no job name", line)
    values: dict[str, str] = {}
    for f in fields:
        key, sep, value = f.partition("=")
        if not sep:
            raise _damaged(source, f"cannot read field {f!r} (not key=value)", line)
        values[key] = value
    names = (job, values.get("worker", ""), values.get("was", ""), values.get("by", ""),
             values.get("session", ""))
    if forbidden_character("".join(names)) is not None:  # one check for a sound line
        for what, name in zip(_NAME_FIELDS, names, strict=True):
            bad = forbidden_character(name)
            if bad is not None:
                raise _damaged(source, f"{what} holds {bad}", line)
    numbers: dict[str, int] = {}
    for key, least in _NUMBER_FIELDS.items():
        text = values.get(key, str(least))
        if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < least:
            raise _damaged(source, f"bad number {key}={text!r}", line)
        numbers[key] = int(text)
    return Entry(
        job=job,
        worker=values.get("worker", ""),
        token=numbers["token"],
        attempt=numbers["attempt"],
        reason=values.get("reason", ""),
        interrupted=numbers["interrupted"],
        was=values.get("was", ""),
        by=values.get("by", ""),
        session=values.get("session", ""),
    )


def part_path(number: int) -> str:
    """The path of sealed part ``number`` (from 1) of ``done.txt``."""
    return f"{DONE_PARTS}/{number:06d}.txt"


def part_number(name: str) -> int | None:
    """The number of the part a file named ``name`` in :data:`DONE_PARTS` holds, ``None``
    for a file that is not a part (a person's note, say, or ``1.txt``: a part's name has
    six digits or more), which readers leave alone."""
    return int(name[:-4]) if _PART_NAME.fullmatch(name) else None


def parts_in_order(names: Iterable[str]) -> list[str]:
    """The names among ``names`` (of files in :data:`DONE_PARTS`) that are parts, in the
    order of their numbers: the order of their lines."""
    numbered = [(number, name) for name in names if (number := part_number(name)) is not None]
    return [name for _, name in sorted(numbered)]


def parse_ledger_text(data: bytes, source: str, key: str | None = "") -> tuple[Entry, ...]:
    """The entries of one ledger file; a damaged line raises :class:`RemoteStateError`
    naming the file and the line's number (a line ending in ``\\r\\n`` reads as one
    ending in ``\\n``).

    Ledgers grow at their end (``done.txt`` gains a line per finished job), so the last
    text parsed for each ``key`` (by default ``source``) is remembered: a text that
    merely extends it is parsed from where the last one ended, and a claim or finish
    costs the same with 100,000 jobs done as with none.  The result is the same as a
    full parse.  ``key=None``: parse and remember nothing (a sealed part, which its
    reader keeps by its id).
    """
    if key is None:
        return _parse_lines(data, source, first=1)
    key = key or source
    last = _PARSED.get(key)
    if last is not None:
        old, entries, lines = last
        if data == old:
            return entries
        if (not old or old.endswith(b"\n")) and data.startswith(old):
            tail = data[len(old):]
            more = _parse_lines(tail, source, first=lines + 1)
            result = entries + more
            _PARSED[key] = (data, result, lines + tail.count(b"\n"))
            _index(key, result, entries)
            return result
    result = _parse_lines(data, source, first=1)
    _PARSED[key] = (data, result, data.count(b"\n"))
    _index(key, result, None)
    return result


#: the key ``done.txt`` is parsed under when it has sealed parts, and the key the whole
#: list is indexed under then (:func:`_joined`; a ``done.txt`` without parts is indexed
#: under :data:`DONE`, so a process reading both kinds keeps both indexes)
_DONE_TAIL = "done.txt after its parts"
_DONE_JOINED = "done.txt with its parts"
Parts = tuple[tuple[str, tuple[Entry, ...]], ...]
#: the last whole list of done entries joined from parts and ``done.txt``: the parts, the
#: entries of ``done.txt``, and the whole list
_JOINED: list[tuple[Parts, tuple[Entry, ...], tuple[Entry, ...]]] = []


def _joined(parts: Parts, tail: tuple[Entry, ...]) -> tuple[Entry, ...]:
    """The entries of ``parts`` then ``tail``, indexed.  When the
    parts are the same objects as last time and ``tail`` extends the last one (a finish
    appends a line to ``done.txt``), the last list is extended and its index grows,
    instead of joining and indexing 100,000 entries again."""
    last = _JOINED[0] if _JOINED else None
    if (last is not None and len(last[0]) == len(parts)
            and all(a[1] is b[1] for a, b in zip(last[0], parts, strict=True))
            and len(last[1]) <= len(tail) and tail[: len(last[1])] == last[1]):
        whole = last[2] + tail[len(last[1]):]
        _index(_DONE_JOINED, whole, last[2])
    else:
        whole = tuple(itertools.chain.from_iterable(e for _, e in parts)) + tail
        _index(_DONE_JOINED, whole, None)
    _JOINED[:] = [(parts, tail, whole)]
    return whole


#: per ledger source name: the last text parsed, its entries, and its count of newlines
_PARSED: dict[str, tuple[bytes, tuple[Entry, ...], int]] = {}


@dataclass(frozen=True, slots=True)
class _Index:
    """What the questions a worker asks at every step need from the last entries parsed
    for one ledger source, kept along with the parse (:func:`parse_ledger_text`), so a
    done.txt of 100,000 lines is not scanned at each step."""

    chain: tuple[Entry, ...]  # the entries indexed
    #: job -> the position of its first entry in ``chain``.  Only ever added to, when
    #: the chain grows: so it answers for every prefix of the chain as well (a job is in
    #: a prefix of length n when its position is below n)
    first: dict[str, int]
    served: dict[str, int]  # worker -> highest fencing token in the whole chain


_INDEXED: dict[str, _Index] = {}


def _index(source: str, entries: tuple[Entry, ...], grew_from: tuple[Entry, ...] | None) -> None:
    last = _INDEXED.get(source)
    if grew_from is not None and last is not None and last.chain is grew_from:
        first, served, start = last.first, dict(last.served), len(grew_from)
    else:
        first, served, start = {}, {}, 0
    for position in range(start, len(entries)):
        entry = entries[position]
        first.setdefault(entry.job, position)
        if entry.token > served.get(entry.worker, -1):
            served[entry.worker] = entry.token
    _INDEXED[source] = _Index(entries, first, served)


def _indexed(entries: tuple[Entry, ...], source: str) -> tuple[_Index, int] | None:
    """The index of ``source`` and how many of the first ``entries`` it answers for:
    ``entries`` and its chain agree up to the end of the shorter one, so ``entries`` is
    a prefix of the chain (a ledger read before the chain grew), or the chain a prefix
    of ``entries`` (a view with parked finishes folded in, which adds a few done lines
    to the ledger read).  Compared element by element, in C, with an identity check
    before each equality, so for the same objects a pointer compare each."""
    found = _INDEXED.get(source)
    if found is None:
        return None
    chain = found.chain
    if chain is entries:
        return found, len(entries)
    shared = min(len(chain), len(entries))
    if shared and entries[shared - 1] != chain[shared - 1]:
        return None
    if entries[:shared] != chain[:shared]:  # a whole tuple's slice is the tuple itself
        return None
    return found, shared


def _holds(entries: tuple[Entry, ...], source: str, job: str) -> bool:
    """Is ``job`` among ``entries`` (read from ``source``)?"""
    found = _indexed(entries, source)
    if found is None:
        return any(e.job == job for e in entries)
    index, shared = found
    if index.first.get(job, shared) < shared:
        return True
    return any(e.job == job for e in entries[shared:])


def _parse_lines(data: bytes, source: str, first: int) -> tuple[Entry, ...]:
    entries = []
    for number, raw in enumerate(data.split(b"\n"), first):
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            raise _damaged(f"{source} line {number}", "text that is not UTF-8", raw) from None
        if line.strip():
            entries.append(parse_line(line, f"{source} line {number}"))
    return tuple(entries)


def format_ledger_text(entries: tuple[Entry, ...]) -> bytes:
    """The text of a ledger holding ``entries``, one line each.

    Like parsing, rendering remembers its last few results: ``entries`` that start
    with the very same entry objects as a text rendered before (a finish appends one
    to ``done``) are rendered from there.
    """
    best: tuple[tuple[Entry, ...], bytes] | None = None
    for old, text in tuple(_RENDERED):
        if len(old) <= len(entries) and (best is None or len(old) > len(best[0])) and all(
            map(operator.is_, old, entries)
        ):
            best = (old, text)
    if best is not None and len(best[0]) == len(entries):
        return best[1]
    start, text = (len(best[0]), best[1]) if best is not None else (0, b"")
    text += "".join(format_line(e) + "\n" for e in entries[start:]).encode("utf-8")
    _RENDERED.appendleft((entries, text))
    return text


#: the last texts rendered, with the entries they hold
_RENDERED: collections.deque[tuple[tuple[Entry, ...], bytes]] = collections.deque(maxlen=6)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The three ledgers at one commit of the main branch."""

    running: tuple[Entry, ...] = ()
    done: tuple[Entry, ...] = ()
    failed: tuple[Entry, ...] = ()
    has_failed_file: bool = field(default=False, compare=False)
    #: the sealed parts of ``done.txt`` read with it (path, entries), in order: ``done``
    #: starts with their entries.  What :meth:`to_files` compares against, so that it
    #: writes only the parts that change
    parts: Parts = field(default=(), compare=False, repr=False)

    # ---- reading and writing -----------------------------------------------
    @classmethod
    def from_files(
        cls, files: Mapping[str, bytes | None], branch: str = "main", parts: Parts = ()
    ) -> Ledger:
        """Build a ledger from the files of a commit, and the sealed ``parts`` of its
        ``done.txt`` (path, entries; in the order of their numbers, see
        :data:`DONE_PARTS`).

        Raises:
            RemoteStateError: ``running.txt`` or ``done.txt`` is missing.
        """
        missing = [name for name in REQUIRED_FILES if files.get(name) is None]
        if missing:
            raise RemoteStateError(
                f"the remote's {branch!r} branch has no {' or '.join(missing)}; prepare the remote "
                "with `distribute init REMOTE` (or distribute.init_remote(url)) first",
                missing=missing,
            )
        failed_data = files.get(FAILED)
        if parts:
            done = _joined(parts, parse_ledger_text(files[DONE] or b"", DONE, _DONE_TAIL))
        else:
            done = parse_ledger_text(files[DONE] or b"", DONE)
        return cls(
            running=parse_ledger_text(files[RUNNING] or b"", RUNNING),
            done=done,
            failed=parse_ledger_text(failed_data or b"", FAILED),
            has_failed_file=failed_data is not None,
            parts=parts,
        )

    def to_files(self) -> dict[str, bytes | None]:
        """The ledger files to write for this ledger, over the files it was read from:
        ``running.txt``, ``done.txt``, ``failed.txt`` (when there is one), and the sealed
        parts of ``done.txt`` that are new or change (``None``: a part to delete).

        ``done.txt`` holds fewer than :data:`DONE_PART_LINES` lines: once it has that
        many, they are sealed into the next part, and ``done.txt`` starts empty.  So a
        finish writes a small ``done.txt`` however many jobs are done, and a part, once
        written, stays as it is.  Only taking a done job's line out (``distribute
        requeue --done``) changes a sealed part: that part and those after it are
        written anew.
        """
        files: dict[str, bytes | None] = {RUNNING: format_ledger_text(self.running)}
        files.update(self._done_files())
        if self.failed or self.has_failed_file:
            files[FAILED] = format_ledger_text(self.failed)
        return files

    def _done_files(self) -> dict[str, bytes | None]:
        done, start, kept = self.done, 0, 0
        for _, entries in self.parts:
            # still in place: its first and last entries are the same objects at the same
            # places.  Lines only ever join the end or leave (each entry an object of its
            # own), so any line that left this part or an earlier one moves its last entry
            end = start + len(entries)
            if not entries or end > len(done) or not (
                    done[start] is entries[0] and done[end - 1] is entries[-1]):
                break
            start, kept = end, kept + 1
        last = (part_number(self.parts[kept - 1][0].rpartition("/")[2]) or 0) if kept else 0
        number = last + 1  # after the last part kept
        files: dict[str, bytes | None] = {}
        while len(done) - start >= DONE_PART_LINES:
            files[part_path(number)] = format_ledger_text(done[start : start + DONE_PART_LINES])
            start, number = start + DONE_PART_LINES, number + 1
        for path, _ in self.parts[kept:]:
            files.setdefault(path, None)
        files[DONE] = format_ledger_text(done[start:])
        return files

    def changed_files(self, before: Ledger) -> dict[str, bytes | None]:
        """Only the ledger files whose contents differ from ``before`` (which this ledger
        was made from), and every part :meth:`to_files` writes, with ``done.txt``."""
        old, new = before.to_files(), self.to_files()
        parts = [k for k in new if k.startswith(DONE_PARTS + "/")]
        changed = {k: v for k, v in new.items() if k in parts or old.get(k) != v}
        if parts:
            changed[DONE] = new[DONE]
        return changed

    # ---- queries -------------------------------------------------------------
    def running_entry(self, job: str) -> Entry | None:
        return next((e for e in self.running if e.job == job), None)

    @property
    def _done_index(self) -> str:
        """The key the index of ``done`` is kept under (see :func:`_joined`)."""
        return _DONE_JOINED if self.parts else DONE

    def is_done(self, job: str) -> bool:
        return _holds(self.done, self._done_index, job)

    def state_of(self, job: str) -> str | None:
        if self.running_entry(job) is not None:
            return "running"
        if self.is_done(job):
            return "done"
        if _holds(self.failed, FAILED, job):
            return "failed"
        return None

    def served(self) -> dict[str, int]:
        """Each worker's highest fencing token among all the entries."""
        found = _indexed(self.done, self._done_index)
        if found is not None and found[1] == len(found[0].chain):  # the whole chain
            index, shared = found
            served, rest = dict(index.served), (*self.done[shared:], *self.failed, *self.running)
        else:
            served, rest = {}, (*self.done, *self.failed, *self.running)
        for entry in rest:
            if entry.token > served.get(entry.worker, -1):
                served[entry.worker] = entry.token
        return served

    def handed_to(self, worker: str, session: str) -> Entry | None:
        """The running job another worker claimed for ``worker``'s process ``session``,
        if any (see :class:`Entry`): one that process, idle, is to take up."""
        return next((e for e in self.running if e.handed_to(worker, session)), None)

    def held_by(self, worker: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.running if e.worker == worker)

    def holders(self) -> frozenset[str]:
        return frozenset(e.worker for e in self.running if e.worker)

    # ---- transitions -------------------------------------------------------
    def claim(
        self, job: str, worker: str, token: int, *, by: str = "", session: str = ""
    ) -> Ledger:
        """Record a new job as running under ``token``; ``by`` and ``session`` for a job
        another worker claims for ``worker`` (a hand-off, see :class:`Entry`).

        Raises:
            UsageError: the job is already running, done or failed.
        """
        check_name(job, "job")
        check_name(worker, "worker")
        state = self.state_of(job)
        if state is not None:
            raise UsageError(
                f"the next-job function returned {job!r}, which is already {state}; "
                "a job runs once -- return a new name, or requeue it first",
                job=job,
                state=state,
            )
        entry = Entry(job=job, worker=worker, token=token, attempt=1, by=by, session=session)
        return replace(self, running=(*self.running, entry))

    def retry(self, job: str, worker: str, token: int, *, interrupted: bool = False) -> Ledger:
        """Give a released or expired running job to ``worker`` as its next attempt.

        ``interrupted``: the current attempt of a job still held (its holder's
        lease expired, or it is this worker's own earlier life) ends here as
        interrupted.  A released job's last attempt is counted already.
        """
        old = self._running_or_raise(job)
        new = Entry(
            job=job, worker=worker, token=token, attempt=old.attempt + 1,
            interrupted=old.interrupted + (1 if interrupted and not old.released else 0),
        )
        return replace(self, running=tuple(new if e.job == job else e for e in self.running))

    def finish(self, job: str, worker: str, token: int) -> Ledger:
        """Move the job to ``done.txt``.

        Raises:
            LeaseLost: the job is not running under this worker and token.
        """
        entry = self._fenced(job, worker, token, "finish")
        done = Entry(job=job, worker=worker, token=token, attempt=entry.attempt,
                     interrupted=entry.interrupted)
        return replace(
            self,
            running=tuple(e for e in self.running if e.job != job),
            done=self.done + (done,),  # one copy of the pointers, not one push per entry
        )

    def fail(
        self, job: str, worker: str, token: int, reason: str, max_attempts: int, *,
        interrupted: bool = False, max_interruptions: int = MAX_INTERRUPTIONS,
    ) -> Ledger:
        """End the current attempt as failed (or ``interrupted``): release the job for a
        retry, or move it to ``failed.txt`` when its failures reach ``max_attempts`` or
        its interruptions ``max_interruptions``."""
        entry = self._fenced(job, worker, token, "fail")
        return self._end_attempt(entry, reason, max_attempts, interrupted, max_interruptions)

    def expire(self, job: str, reason: str) -> Ledger:
        """Move a running job to ``failed.txt`` for good (its attempts are used up); a
        holder's attempt still under way ends as interrupted."""
        entry = self._running_or_raise(job)
        return self._end_attempt(entry, reason, 0, not entry.released, MAX_INTERRUPTIONS)

    def _end_attempt(
        self, entry: Entry, reason: str, max_attempts: int, interrupted: bool,
        max_interruptions: int,
    ) -> Ledger:
        if not entry.released:
            entry = replace(entry, interrupted=entry.interrupted + (1 if interrupted else 0))
        entry = replace(entry, by="", session="")
        ended = replace(entry, worker="", was=entry.worker or entry.was)
        if ended.failures >= max_attempts or ended.interrupted >= max_interruptions:
            final = replace(entry, reason=_clean_reason(reason), was="")
            return replace(
                self,
                running=tuple(e for e in self.running if e.job != entry.job),
                failed=(*(e for e in self.failed if e.job != entry.job), final),
            )
        released = replace(ended, reason=_clean_reason(reason))
        return replace(
            self, running=tuple(released if e.job == entry.job else e for e in self.running)
        )

    def requeue(self, job: str) -> Ledger:
        """Forget a failed (or running) job so that it can be claimed again from attempt 1."""
        if self.state_of(job) not in ("failed", "running"):
            raise UsageError(f"job {job!r} is not failed or running; nothing to requeue", job=job)
        return replace(
            self,
            running=tuple(e for e in self.running if e.job != job),
            failed=tuple(e for e in self.failed if e.job != job),
        )

    def _running_or_raise(self, job: str) -> Entry:
        entry = self.running_entry(job)
        if entry is None:
            raise UsageError(f"job {job!r} is not running", job=job)
        return entry

    def _fenced(self, job: str, worker: str, token: int, action: str) -> Entry:
        entry = self.running_entry(job)
        if entry is None or entry.worker != worker or entry.token != token:
            now = "not running" if entry is None else (
                "released for a retry" if entry.released
                else f"held by {entry.worker!r} under token {entry.token}"
            )
            if self.is_done(job):
                now = "already done"
            raise LeaseLost(
                f"cannot {action} job {job!r}: this worker ({worker!r}, token {token}) lost it; "
                f"it is {now}. The job branch is kept on the remote.",
                job=job,
                worker=worker,
                token=token,
            )
        return entry

    def validate(self) -> None:
        """Check cross-ledger invariants; raise ``AssertionError`` naming the first broken one."""
        running = [e.job for e in self.running]
        done = [e.job for e in self.done]
        assert len(running) == len(set(running)), f"a job runs twice: {running}"
        assert len(done) == len(set(done)), f"a job is done twice: {done}"
        both = set(running) & set(done)
        assert not both, f"jobs both running and done: {sorted(both)}"
