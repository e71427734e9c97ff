"""Optuna studies kept in the git remote, and trials handed out as Distribute jobs.

Install with ``pip install 'distribute-jobs[optuna]'``.

Theory of operation
-------------------
**The journal.**  Optuna's ``JournalStorage`` records every change to a study
(create a trial, set a parameter, finish a trial, ...) as one JSON log, and
rebuilds the study by replaying the logs in order.  It asks its backend for
two things only: append logs, and read the logs from number ``n`` on.
:class:`GitJournalBackend` keeps those logs in the remote, on a commit chain
of its own ref, ``refs/distribute/studies/<encoded study name>``.  The ref is
not the main branch, so appends to a study never race the workers' claims and
finishes.  The journal is Optuna's journal file format (one JSON log per
line) cut into chunk files ``journal/00000000.jsonl``, ``journal/00000001.jsonl``
...: an append rewrites only the last chunk (a new one is started once it holds
``chunk_bytes``), so a long study costs the remote linear, not quadratic,
space.  Their concatenation is the journal (:meth:`GitJournalBackend.export`).

* An append writes a commit whose last chunk is the last known one plus the
  new lines, parented on the last known commit, and pushes it as a
  compare-and-swap of the ref.  A lost race means someone else appended
  first: fetch, rebuild on top of what is there, push again.  So the ref only
  ever grows by whole appends, and every writer's logs land exactly once, in
  one total order that every reader replays the same way.  (Optuna derives
  trial numbers from that order, so two workers can never get one number.)
* A push whose answer was lost (``OutcomeUnknown``) is resolved by reading
  the ref back: it landed if the ref holds our commit or a descendant of it
  (nobody can build on a commit that never reached the remote); otherwise it
  is sent again on top of the newer journal.
* Reads come from a cache of the journal at a fetched commit.  The cache is
  refetched only when it is older than ``refresh_seconds``; right after an
  append it is exactly the remote's state, so the read that Optuna does after
  every write costs no fetch.  A newer journal head must descend from the
  cached one and extend its last chunk byte for byte; anything else (a
  force-pushed or deleted ref) is an error, because Optuna's replayed state
  could not be trusted any more.

**The jobs.**  :class:`StudyJobs` is a next-job function: it runs under the
remote lock, alone among all workers, asks the study for a new trial and
returns ``trial-<number>`` as the job.  In the job, :meth:`StudyJobs.params`
gives the trial's parameters and :meth:`StudyJobs.tell` reports the value and
then finishes the job (in that order: a worker dying between the two leaves a
told trial, which the retry notices and merely finishes).

Workers die, and jobs fail.  Distribute then offers the job to a worker as
attempt 2, without calling the next-job function.  The new holder creates a
*new* RUNNING trial with the same parameters (user attributes
``distribute_job``, ``distribute_attempt``, ``distribute_retry_of``) and only
then marks the dead attempt's trial FAIL.  Why a new trial and not
``enqueue_trial``: a waiting trial can be popped by any ``study.ask()``,
which would tear it from the job Distribute is retrying; creating it RUNNING
ties it to this holding.  Why create before failing: the budget counts
COMPLETE, PRUNED, RUNNING and WAITING trials, and at no instant may it drop
below the truth, or the next-job function would ask one trial too many.
If the dead attempt's value was told after all (it raced the takeover), the
journal's order decides: the FAIL is ignored, the new trial is marked FAIL
instead, and the job is only finished.

Under the lock, before asking, the function fails RUNNING trials whose job is
not running (a holder that asked but lost the lock before its claim landed,
or a job that used up its attempts).  With ``n_trials=N`` the study ends with
exactly ``N`` trials that COMPLETE (or are PRUNED, if you prune), and no
trial number is used twice.  A job that ends without a value (its attempts
used up, or a NaN told) gives its budget slot back; after ``max_failed_jobs``
such jobs no new trial is asked, so an objective that always fails stops.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

try:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend
    from optuna.study import StudyDirection
    from optuna.trial import FrozenTrial, TrialState
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "distribute.optuna needs Optuna 4 or newer: pip install 'distribute-jobs[optuna]'"
    ) from _err

from distribute.backoff import Backoff, retry_transport
from distribute.core.errors import (
    NoRunningJob,
    OutcomeUnknown,
    RemoteStateError,
    TransportError,
    UsageError,
)
from distribute.core.ledger import (
    DONE,
    DONE_PARTS,
    FAILED,
    RUNNING,
    Ledger,
    parse_ledger_text,
    parts_in_order,
)
from distribute.core.names import check_name, encode_component, scrub_url
from distribute.transport.base import Oid, RefUpdate, Transport, holds
from distribute.transport.git import GitTransport
from distribute.transport.repository import init_bare_repo

if TYPE_CHECKING:
    from distribute.dist import Worker

__all__ = [
    "ATTEMPT_ATTR",
    "CHUNK_BYTES",
    "JOB_ATTR",
    "JOURNAL_DIR",
    "RETRY_OF_ATTR",
    "STUDIES_PREFIX",
    "GitJournalBackend",
    "JobTrial",
    "JournalStats",
    "StudyJobs",
    "chunk_path",
    "journal_ref",
    "open_study",
]

#: Where study journals live on the remote, one ref per study.
STUDIES_PREFIX = "refs/distribute/studies/"
#: The folder of journal chunks on the study's ref; each holds JSON logs, one per line.
JOURNAL_DIR = "journal"
#: A chunk takes appends until it holds this many bytes; then a new one is started.
CHUNK_BYTES = 64 * 1024

#: User attributes of a trial created for a retried job.
JOB_ATTR = "distribute_job"
ATTEMPT_ATTR = "distribute_attempt"
RETRY_OF_ATTR = "distribute_retry_of"

#: Trial states that use up the trial budget (FAIL does not).
_BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
_TOLD_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def journal_ref(study_name: str) -> str:
    """The ref holding the journal of ``study_name``: ``refs/distribute/studies/<encoded>``."""
    return STUDIES_PREFIX + encode_component(check_name(study_name, "study"))


def chunk_path(index: int) -> str:
    """Path of the journal's chunk number ``index`` in the study ref's tree."""
    return f"{JOURNAL_DIR}/{index:08d}.jsonl"


# ---- the journal backend ---------------------------------------------------------------


@dataclass
class JournalStats:
    """What a :class:`GitJournalBackend` sent to the remote, for tuning and tests."""

    fetches: int = 0
    pushes: int = 0
    lost_races: int = 0
    unknown_outcomes: int = 0
    reads_from_cache: int = 0


class GitJournalBackend(BaseJournalBackend):
    """An Optuna journal backend whose log lives on a ref of a git remote.

    Use it with ``optuna.storages.JournalStorage(backend)``.  Safe for many
    processes on many machines (they coordinate through compare-and-swap
    pushes) and for threads of one process.

    Args:
        transport: the remote plus a local object store, for example
            ``GitLocalCopy.open(path).transport()``; see :meth:`for_worker`
            and :meth:`open` for the usual ways to get one.
        name: the journal's name; the ref is :func:`journal_ref` of it.
        refresh_seconds: reads are answered from the cache while it is
            younger than this (a fetch or our own push); ``0`` fetches on
            every read.
        retry_seconds: how long an unreachable remote or a journal that keeps
            moving is retried before raising.
        owns_transport: close ``transport`` in :meth:`close`.
        chunk_bytes: size at which a new chunk file is started.
    """

    def __init__(
        self,
        transport: Transport,
        name: str,
        *,
        refresh_seconds: float = 1.0,
        retry_seconds: float = 60.0,
        owns_transport: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if refresh_seconds < 0 or retry_seconds <= 0 or chunk_bytes < 1:
            raise UsageError(
                "refresh_seconds must be >= 0, retry_seconds > 0 and chunk_bytes >= 1"
            )
        self.transport = transport
        self.name = name
        self.ref = journal_ref(name)
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self.chunk_bytes = chunk_bytes
        self.stats = JournalStats()
        self._owns_transport = owns_transport
        self._scratch: Path | None = None
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._tip: Oid | None = None
        self._chunks: list[bytes] = []  # contents of every chunk at _tip
        self._lines: list[bytes] = []  # every log, without its newline
        self._synced_at: float | None = None

    # ---- ways to make one --------------------------------------------------
    @classmethod
    def for_worker(cls, worker: Worker, name: str, **options: Any) -> GitJournalBackend:
        """A backend on ``worker``'s local copy (its own transport; no extra clone)."""
        return cls(worker.copy.transport(), name, owns_transport=True, **options)

    @classmethod
    def open(cls, url: str, name: str, **options: Any) -> GitJournalBackend:
        """A backend on a scratch object store in a temporary folder, removed by :meth:`close`.

        For reading or exporting a study from a machine that runs no worker.
        """
        from distribute.remote import is_local_path

        if is_local_path(url):
            url = str(Path(url).resolve())
        scratch = Path(tempfile.mkdtemp(prefix="distribute-journal-"))
        try:
            transport = GitTransport(init_bare_repo(scratch / "objects.git"), url)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        backend = cls(transport, name, owns_transport=True, **options)
        backend._scratch = scratch
        return backend

    # ---- pickling: process pools, joblib and Dask send the storage to other processes ----
    def __getstate__(self) -> dict[str, Any]:
        """What another process needs to open the same journal: the remote's URL (without
        a password: a process that unpickles it authenticates the way git does there, for
        instance through a credential helper or an ssh key), the name and the options.
        Caches, locks and the transport are not sent; the copy opens its own."""
        remote_url = getattr(self.transport, "remote_url", None)
        if remote_url is None:
            raise TypeError(
                f"a GitJournalBackend on {type(self.transport).__name__} cannot be pickled: "
                "only a git transport has a URL another process can open"
            )
        return {
            "url": remote_url(), "name": self.name, "refresh_seconds": self.refresh_seconds,
            "retry_seconds": self.retry_seconds, "chunk_bytes": self.chunk_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        opened = type(self).open(
            state["url"], state["name"], refresh_seconds=state["refresh_seconds"],
            retry_seconds=state["retry_seconds"], chunk_bytes=state["chunk_bytes"],
        )
        self.__dict__.update(opened.__dict__)

    def close(self) -> None:
        if self._owns_transport:
            self.transport.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> GitJournalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- Optuna's extension point -----------------------------------------
    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """The logs numbered ``log_number_from`` and up (0: all of them)."""
        with self._lock:
            if self._stale():
                self._sync()
            else:
                self.stats.reads_from_cache += 1
            return [self._parse(n) for n in range(max(0, log_number_from), len(self._lines))]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` to the remote journal: a compare-and-swap push, redone on a lost race."""
        if not logs:
            return
        payload = b"".join(
            json.dumps(log, separators=(",", ":")).encode("utf-8") + b"\n" for log in logs
        )
        with self._lock:
            if self._stale():
                self._sync()
            deadline = self._clock() + self.retry_seconds
            backoff = Backoff(0.01, 0.5)
            while True:
                base = self._tip
                index = len(self._chunks) - 1
                if index < 0 or len(self._chunks[index]) >= self.chunk_bytes:
                    index += 1
                data = (self._chunks[index] if index < len(self._chunks) else b"") + payload
                commit = self.transport.write_commit(
                    parents=[base] if base else [],
                    base=base,
                    message=f"optuna journal: {len(logs)} log(s)\n\nappend {uuid.uuid4().hex}\n",
                    changes={chunk_path(index): data},
                )
                landed, newer = self._push(base, commit, deadline)
                if landed:
                    self._adopt(commit, index, data, exact=not newer)
                    return
                self.stats.lost_races += 1
                if self._clock() >= deadline:
                    raise RemoteStateError(
                        f"the journal {self.ref} kept moving for {self.retry_seconds:.0f} s and "
                        "this append never landed; try again, or raise retry_seconds"
                    )
                self._sleep(backoff.next())
                self._sync()

    # ---- extras -------------------------------------------------------------
    def refresh(self) -> None:
        """Fetch the journal now, whatever the age of the cache."""
        with self._lock:
            self._sync()

    @property
    def head(self) -> Oid | None:
        """The journal commit the cache holds (``None``: no journal yet)."""
        return self._tip

    def journal_bytes(self) -> bytes:
        """The whole journal as last fetched or written: Optuna's journal file format."""
        with self._lock:
            if self._synced_at is None:
                self._sync()
            return b"".join(self._chunks)

    def export(self, path: str | Path) -> Path:
        """Fetch the journal and write it to ``path``.

        The file is what ``optuna.storages.journal.JournalFileBackend(path)``
        reads, so ``optuna-dashboard path`` shows the study.
        """
        with self._lock:
            self._sync()
            target = Path(path)
            target.write_bytes(b"".join(self._chunks))
            return target

    # ---- plumbing ------------------------------------------------------------
    def _stale(self) -> bool:
        return self._synced_at is None or self._clock() - self._synced_at >= self.refresh_seconds

    def _retrying(self, step: Callable[[], Any], what: str) -> Any:
        return retry_transport(step, seconds=self.retry_seconds, backoff=Backoff(0.05, 2.0),
                               clock=self._clock, sleep=self._sleep, failed=f"{what} failed")

    def _fetch(self) -> Oid | None:
        values: dict[str, Oid] = self._retrying(
            lambda: self.transport.fetch([self.ref]), f"fetching the journal {self.ref}"
        )
        self.stats.fetches += 1
        return values.get(self.ref)

    def _sync(self) -> None:
        started = self._clock()
        self._load(self._fetch())
        self._synced_at = started

    def _push(self, base: Oid | None, commit: Oid, deadline: float) -> tuple[bool, bool]:
        """Push ``commit`` over ``base``.

        Returns ``(landed, newer)``: whether it landed (read back when the
        answer was lost), and whether others are known to have appended since.
        """
        backoff = Backoff(0.05, 2.0)
        while True:
            self.stats.pushes += 1
            try:
                return self.transport.push([RefUpdate(self.ref, base, commit)]), False
            except OutcomeUnknown:
                self.stats.unknown_outcomes += 1
                current = self._fetch()
                return holds(self.transport, current, commit), current not in (None, commit)
            except TransportError as err:  # nothing was sent
                if self._clock() >= deadline:
                    raise TransportError(
                        f"appending to the journal {self.ref} failed for "
                        f"{self.retry_seconds:.0f} s: {scrub_url(str(err))}"
                    ) from None
                self._sleep(backoff.next())

    def _adopt(self, commit: Oid, index: int, data: bytes, *, exact: bool) -> None:
        """Our push landed: the remote held ``commit`` a moment ago (``exact``) or more."""
        self._extend(index, data)
        self._tip = commit
        self._synced_at = self._clock() if exact else None

    def _extend(self, index: int, data: bytes) -> None:
        """Chunk ``index`` now holds ``data``, which extends what the cache knew of it."""
        known = self._chunks[index] if index < len(self._chunks) else b""
        self._lines.extend(data[len(known) :].split(b"\n")[:-1])
        if index < len(self._chunks):
            self._chunks[index] = data
        else:
            self._chunks.append(data)

    def _load(self, tip: Oid | None) -> None:
        """Move the cache to the journal at ``tip``, which must extend the cached one."""
        if tip == self._tip:
            return
        if tip is None:
            raise RemoteStateError(
                f"the journal {self.ref} was deleted from the remote while this process used "
                "it; restore the ref or start a new study"
            )
        rewritten = RemoteStateError(
            f"the journal {self.ref} was rewritten (it no longer extends what this process "
            "read); journals only grow -- never force-push that ref; restart the process to "
            "read it afresh"
        )
        if self._tip is not None and not self.transport.is_ancestor(self._tip, tip):
            raise rewritten
        index = max(len(self._chunks) - 1, 0)
        while (data := self.transport.read_file(tip, chunk_path(index))) is not None:
            known = self._chunks[index] if index < len(self._chunks) else b""
            if not data.startswith(known) or not data.endswith(b"\n"):
                raise rewritten
            self._extend(index, data)
            index += 1
        if not self._chunks:
            raise RemoteStateError(
                f"the commit {tip} on {self.ref} has no {chunk_path(0)}; that ref is not an "
                "Optuna journal written by Distribute -- use another study name"
            )
        self._tip = tip

    def _parse(self, number: int) -> dict[str, Any]:
        try:
            log: dict[str, Any] = json.loads(self._lines[number])
        except ValueError as err:
            raise RemoteStateError(
                f"log {number} of the journal {self.ref} is not JSON: {err}"
            ) from None
        return log


# ---- trials as jobs ----------------------------------------------------------------------

SearchSpace = Mapping[str, BaseDistribution] | Callable[[optuna.Trial], object]
Direction = Literal["minimize", "maximize"] | StudyDirection


@dataclass(frozen=True)
class JobTrial:
    """The trial a job holding tells its value to.

    Attributes:
        job: the job name (``trial-<n>``: ``n`` is the trial first asked for it).
        attempt: the holding's attempt number.
        number: the trial number this holding reports to (``n`` on the first
            attempt, a new trial with the same parameters on a retry).
        params: the parameters to run.
        told: an earlier attempt already reported a value; :meth:`StudyJobs.tell`
            will only finish the job.
    """

    job: str
    attempt: int
    number: int
    params: dict[str, Any]
    told: bool = False


@dataclass
class _Session:
    """One worker's view of the study."""

    backend: GitJournalBackend
    storage: JournalStorage
    study: optuna.Study | None = None
    holding: JobTrial | None = None


class StudyJobs:
    """A next-job function that hands out the trials of an Optuna study as jobs.

    Pass the same object to ``worker.get_next_job``; in the job, call
    :meth:`params` and then :meth:`tell` (or :meth:`fail`)::

        jobs = StudyJobs("search", {"x": FloatDistribution(-5, 5)}, n_trials=20)
        while worker.get_next_job(jobs) is not None:
            x = jobs.params(worker)["x"]
            jobs.tell(worker, (x - 1) ** 2)   # tells the value, then finish_job()

    Args:
        study_name: the study, created on first use; its journal is on the
            ref :func:`journal_ref` of this name.
        search_space: parameter name -> Optuna distribution, or a function
            ``f(trial)`` that calls ``trial.suggest_*`` (it runs under the lock).
        n_trials: the budget: how many trials end COMPLETE (or PRUNED).
        direction / directions: as for ``optuna.create_study``.
        sampler: the sampler of this process's study object (default Optuna's).
        job_prefix: jobs are ``<job_prefix><trial number>``; give each study
            sharing one remote its own prefix.
        max_failed_jobs: stop asking for new trials once this many jobs of
            the study ended without a value (in ``failed.txt``, or done with
            a FAIL trial such as a NaN told); default ``n_trials``.  Taken
            over attempts and asks whose claim was lost do not count.
        refresh_seconds: see :class:`GitJournalBackend`.

    The study belongs to these jobs: a RUNNING trial whose job is not running
    is failed under the lock, so do not run other optimizers on it at the same
    time.  Trials you enqueue (``study.enqueue_trial``) are asked first.
    """

    def __init__(
        self,
        study_name: str,
        search_space: SearchSpace,
        n_trials: int,
        *,
        direction: Direction | None = None,
        directions: Sequence[Direction] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        job_prefix: str = "trial-",
        max_failed_jobs: int | None = None,
        refresh_seconds: float = 1.0,
    ) -> None:
        if n_trials < 1:
            raise UsageError(f"n_trials must be at least 1, got {n_trials}")
        check_name(job_prefix + "0", "job")
        self.study_name = check_name(study_name, "study")
        self.search_space = search_space
        self.n_trials = n_trials
        self.direction = direction
        self.directions = list(directions) if directions is not None else None
        self.sampler = sampler
        self.job_prefix = job_prefix
        self.max_failed_jobs = n_trials if max_failed_jobs is None else max_failed_jobs
        self.refresh_seconds = refresh_seconds
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()

    # ---- naming ------------------------------------------------------------------
    def job_name(self, number: int) -> str:
        return f"{self.job_prefix}{number}"

    def trial_number_of(self, job: str) -> int:
        """The trial first asked for ``job`` (``trial-7`` -> 7)."""
        digits = job[len(self.job_prefix) :] if job.startswith(self.job_prefix) else ""
        if not _is_number(digits):
            raise UsageError(
                f"job {job!r} is not a trial of study {self.study_name!r} (its jobs are named "
                f"{self.job_prefix!r} + trial number); was it handed out by another next-job "
                "function?"
            )
        return int(digits)

    def _job_of(self, trial: FrozenTrial) -> str:
        job = trial.user_attrs.get(JOB_ATTR)
        return job if isinstance(job, str) else self.job_name(trial.number)

    # ---- per-worker study objects ----------------------------------------------------
    def _session(self, worker: Worker) -> _Session:
        with self._sessions_lock:
            session = self._sessions.get(worker.name)
            if session is None:
                backend = GitJournalBackend.for_worker(
                    worker, self.study_name, refresh_seconds=self.refresh_seconds,
                    retry_seconds=worker.retry_seconds,
                )
                session = _Session(backend, JournalStorage(backend))
                self._sessions[worker.name] = session
            return session

    def backend(self, worker: Worker) -> GitJournalBackend:
        """The journal backend ``worker``'s study object uses."""
        return self._session(worker).backend

    def study(self, worker: Worker) -> optuna.Study:
        """This process's study object for ``worker`` (created on the remote if needed)."""
        session = self._session(worker)
        if session.study is None:
            try:
                study = optuna.load_study(
                    study_name=self.study_name, storage=session.storage, sampler=self.sampler
                )
            except KeyError:
                study = optuna.create_study(
                    study_name=self.study_name, storage=session.storage, sampler=self.sampler,
                    direction=self.direction, directions=self.directions, load_if_exists=True,
                )  # fmt: skip
            self._check_directions(study)
            session.study = study
        return session.study

    def _check_directions(self, study: optuna.Study) -> None:
        wanted = self.directions or ([self.direction] if self.direction else None)
        if wanted is None:
            return
        have = [d.name.lower() for d in study.directions]
        if have != [w.name.lower() if isinstance(w, StudyDirection) else w for w in wanted]:
            raise UsageError(
                f"study {self.study_name!r} on the remote optimizes {have}, not {wanted}; "
                "pass the same direction(s) or use another study name"
            )

    # ---- the next-job function (under the lock) -------------------------------------------
    def __call__(self, worker: Worker) -> str | None:
        """Ask the study for a new trial and return its job name; ``None`` when the budget is used.

        Runs under the remote lock with the working tree at the main branch.
        """
        study = self.study(worker)
        self._session(worker).backend.refresh()
        ledger = _ledger_in(worker)
        self._fail_orphans(study, ledger)
        trials = study.get_trials(deepcopy=False)
        if sum(t.state in _BUDGET_STATES for t in trials) >= self.n_trials:
            return None
        if self._failed_jobs(trials, ledger) >= self.max_failed_jobs:
            return None
        trial = self._ask(study)
        job = self.job_name(trial.number)
        state = ledger.state_of(job)
        if state is not None:
            _mark_failed(study, trial.number)
            raise UsageError(
                f"trial {trial.number} of study {self.study_name!r} would be job {job!r}, which "
                f"is already {state} on this remote (another study uses the same job names); "
                "pass job_prefix=... unique to this study"
            )
        return job

    def _ask(self, study: optuna.Study) -> optuna.Trial:
        if isinstance(self.search_space, Mapping):
            return study.ask(dict(self.search_space))
        trial = study.ask()
        try:
            self.search_space(trial)
        except BaseException:
            _mark_failed(study, trial.number)
            raise
        return trial

    def _failed_jobs(self, trials: Sequence[FrozenTrial], ledger: Ledger) -> int:
        """Jobs of this study that ended (done or failed) without a COMPLETE or PRUNED trial."""
        ended = {
            e.job for e in (*ledger.done, *ledger.failed)
            if e.job.startswith(self.job_prefix) and _is_number(e.job[len(self.job_prefix) :])
        }  # fmt: skip
        return len(ended - {self._job_of(t) for t in trials if t.state in _TOLD_STATES})

    def _fail_orphans(self, study: optuna.Study, ledger: Ledger) -> int:
        """Fail RUNNING trials whose job is not running (a lost claim, attempts used up)."""
        orphans = [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if ledger.state_of(self._job_of(t)) != "running"
        ]
        for number in orphans:
            _mark_failed(study, number)
        return len(orphans)

    # ---- in the job ---------------------------------------------------------------------
    def trial(self, worker: Worker) -> JobTrial:
        """The trial the running job reports to.

        On a retry (``worker.attempt > 1``) the first call creates a new
        RUNNING trial with the same parameters and then fails the earlier
        attempts' trials; see the module docstring.

        Raises:
            NoRunningJob: call ``worker.get_next_job(jobs)`` first.
        """
        job, attempt = worker.running_job, worker.attempt
        if job is None or attempt is None:
            raise NoRunningJob("this worker runs no job; call worker.get_next_job(jobs) first")
        session = self._session(worker)
        held = session.holding
        if held is not None and (held.job, held.attempt) == (job, attempt):
            return held
        held = self._resolve(worker, job, attempt)
        session.holding = held
        return held

    def params(self, worker: Worker) -> dict[str, Any]:
        """The parameters of the running job's trial."""
        return dict(self.trial(worker).params)

    def tell(
        self,
        worker: Worker,
        value: float | Sequence[float] | None = None,
        *,
        state: TrialState | None = None,
    ) -> None:
        """Report the job's value to the study, then ``worker.finish_job()``.

        The value goes first so that a worker dying in between leaves a told
        trial (its retry just finishes the job) rather than a finished job
        whose trial stays RUNNING.  If another worker took the job over, the
        value is refused by the study and ``finish_job`` raises ``LeaseLost``.
        """
        held = self.trial(worker)
        if not held.told:
            study = self.study(worker)
            # finished by a takeover a moment ago: finish_job raises LeaseLost below
            with suppress(UpdateFinishedTrialError):
                study.tell(held.number, value, state=state, skip_if_finished=True)
        worker.finish_job()

    def fail(self, worker: Worker, reason: str = "failed") -> str:
        """``worker.fail_job(reason)``; when no attempt is left, fail the trial too.

        The trial stays RUNNING while a retry is due: the retry fails it after
        creating its own, so the budget never counts one trial too few.

        Returns:
            ``"retry"`` or ``"failed"``, as ``fail_job``.
        """
        held = self.trial(worker)
        outcome = worker.fail_job(reason)
        if outcome == "failed" and not held.told:
            _mark_failed(self.study(worker), held.number)
        return outcome

    def _resolve(self, worker: Worker, job: str, attempt: int) -> JobTrial:
        first = self.trial_number_of(job)
        study = self.study(worker)
        trials = study.get_trials(deepcopy=False)
        if attempt > 1 or first >= len(trials):
            # a job this worker did not ask for itself: look at the newest journal
            self._session(worker).backend.refresh()
            trials = study.get_trials(deepcopy=False)
        if first >= len(trials):
            raise RemoteStateError(
                f"job {job!r} has no trial {first} in study {self.study_name!r}; was the study "
                "deleted or renamed?"
            )
        origin = trials[first]
        params = dict(origin.params)
        family = self._family(trials, job)
        told = [t for t in family if t.state in _TOLD_STATES]
        if told:
            return JobTrial(job, attempt, told[0].number, params, told=True)
        mine = self._own_trial(family, origin, attempt)
        if mine is not None and len(family) == 1:  # the usual first attempt: nothing to do
            return JobTrial(job, attempt, mine.number, params)
        if mine is None:
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.RUNNING,
                    params=origin.params,
                    distributions=origin.distributions,
                    user_attrs={JOB_ATTR: job, ATTEMPT_ATTR: attempt, RETRY_OF_ATTR: first},
                )
            )
            family = self._family(study.get_trials(deepcopy=False), job)
            mine = self._own_trial(family, origin, attempt)
            if mine is None:  # pragma: no cover - add_trial landed, so the replay shows it
                raise RemoteStateError(f"the retry trial of job {job!r} vanished from the study")
        for t in family:
            if t.number != mine.number and not t.state.is_finished():
                _mark_failed(study, t.number)
        # the journal's order decides a race with the earlier attempt's tell: if its value
        # landed before our FAIL, it stands and this attempt's trial is the one to fail
        family = self._family(study.get_trials(deepcopy=False), job)
        told = [t for t in family if t.state in _TOLD_STATES and t.number != mine.number]
        if told:
            _mark_failed(study, mine.number)
            return JobTrial(job, attempt, told[0].number, params, told=True)
        return JobTrial(job, attempt, mine.number, params)

    def _family(self, trials: Sequence[FrozenTrial], job: str) -> list[FrozenTrial]:
        """The trials made for ``job``: the one first asked, and one per retry."""
        return [t for t in trials if self._job_of(t) == job]

    @staticmethod
    def _own_trial(
        family: Sequence[FrozenTrial], origin: FrozenTrial, attempt: int
    ) -> FrozenTrial | None:
        """The RUNNING trial of this attempt, if it exists already."""
        if attempt == 1 and origin.state == TrialState.RUNNING:
            return origin
        for t in family:
            if t.user_attrs.get(ATTEMPT_ATTR) == attempt and t.state == TrialState.RUNNING:
                return t
        return None

    def close(self) -> None:
        """Close every worker's journal backend."""
        with self._sessions_lock:
            for session in self._sessions.values():
                session.backend.close()
            self._sessions.clear()

    def __enter__(self) -> StudyJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _mark_failed(study: optuna.Study, number: int) -> None:
    """Mark trial ``number`` FAIL unless it finished already (in any process)."""
    with suppress(UpdateFinishedTrialError):
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def _ledger_in(worker: Worker) -> Ledger:
    """The ledgers in the working tree (the main branch, while the lock is held)."""
    files: dict[str, bytes | None] = {}
    for name in (RUNNING, DONE, FAILED):
        try:
            files[name] = (Path(worker.path) / name).read_bytes()
        except FileNotFoundError:
            files[name] = None
    folder = Path(worker.path) / DONE_PARTS
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    parts = tuple((f"{DONE_PARTS}/{name}", parse_ledger_text(
        (folder / name).read_bytes(), f"{DONE_PARTS}/{name}", None))
        for name in parts_in_order(names))
    return Ledger.from_files(files, worker.branch, parts)


@contextmanager
def open_study(url: str, study_name: str, **options: Any) -> Iterator[optuna.Study]:
    """The study on the remote ``url``, read through a scratch :class:`GitJournalBackend`.

    For looking at results from any machine::

        with open_study(url, "search") as study:
            print(study.best_trial)
    """
    with GitJournalBackend.open(url, study_name, **options) as backend:
        yield optuna.load_study(study_name=study_name, storage=JournalStorage(backend))
