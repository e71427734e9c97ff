"""The protocol on the remote, step by step, over any :class:`Transport`.

Theory of operation
-------------------
A :class:`Coordinator` is one worker's side of protocol v1.  It knows no
working tree: the next-job function's file edits arrive as a commit, and a
job's results as the tip of its branch.  Each method is one short step --
observe, acquire, claim, release, renew, finish, fail -- so a test can
interleave the steps of several workers in any order.

* ``observe`` fetches the main branch, the lock and the liveness refs in one
  fetch, reads the ledgers and feeds every value to the :class:`LeaseWatch`.
* ``try_acquire`` asks :func:`decide_acquire` and CASes the lock ref from the
  exact value observed (a takeover is never a plain force).
* ``claim`` pushes, atomically: the main branch (ledger line plus the
  function's edits), the lock's release, the new job branch, this worker's
  liveness ref, and -- when it takes over a dead worker's job -- a revoked
  beat on that worker's ref.  If the main branch moved meanwhile (a finish
  landed), the claim is replayed on the new main branch: the function's edits
  by a three-way merge, the ledger by re-applying the core's decision.  The
  function is never run twice for one holding.
* ``finish`` merges the job branch into the main branch with a tree-only
  merge and CASes the main branch; the ledger transition checks the fencing
  token, so a holder whose job was taken over is refused.
* ``park_step`` records a finish on the worker's own liveness ref instead (a
  CAS from its last value, which a takeover's revocation also CASes from), when
  other workers are about or the finish lost its race; ``observe`` finds every
  valid parked finish, every step that moves the main branch folds them onto the
  main branch it read (:class:`Folds`, merged when first asked for) and pushes
  the folds with its own change (docs/protocol.md, steps 8 and 9).

The clock and sleep are passed in; the caller decides how long to wait.

The one writer
--------------
This module is the only code that writes the remote's coordination state: the
lock ref, the liveness refs and the ledgers (and the archives of job branches).
Besides a worker's steps that is the writing done from outside any worker's steps,
at the end of this file:
:class:`FencedEdit` (``add``, ``requeue``, ``cancel``: an edit of the queue and
the ledgers under the lock), :func:`break_lock` (``unlock``), :func:`new_lock`
(a lock written anew by ``init`` or by the repair of a damaged one), and
:meth:`Coordinator.release_leftovers` (what a stopped worker process still
holds).  Other modules read through it or call it; none builds an update of
those refs.

Threads
-------
A worker's heartbeat renews the lock and the liveness ref from its own thread.
:attr:`Coordinator.mutex` guards the coordinator's fields, and serialises the
worker's writes to those two refs (each a compare-and-swap from the value this
worker last wrote, so two threads writing one of them must take turns).  It is
not held while a running job's results travel: the reads of the remote (a look,
a peek, the fetch a finish or a fail starts with) and a job branch's upload run
without it, so a checkpoint that takes minutes to push does not stop the
heartbeat and lose its job.  The pushes it is held across carry no results (the
lock, liveness records, and main-branch commits whose result objects the job
branch's push already brought).  The heartbeat reads back its own pushes with a
listing of refs, which downloads nothing and waits for no fetch.  Two rare reads
still run under it: within a claim, when no job runs yet, an earlier attempt's
branch that a retry resumes (a lock renewal it delays is safe: the claim's
compare-and-swap names the lock's value); and within a look, a parked finish's
branch that the fetch of the liveness records did not bring (its record was
rewritten by a revocation).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Protocol, TypeVar

from distribute.backoff import Backoff
from distribute.core import events as ev
from distribute.core.errors import (
    DistributeError,
    LeaseLost,
    MergeConflict,
    NoRunningJob,
    OutcomeUnknown,
    RemoteStateError,
    TransportError,
    UsageError,
)
from distribute.core.lease import LeaseWatch
from distribute.core.ledger import (
    DONE,
    DONE_PARTS,
    LEDGER_FILES,
    MAX_INTERRUPTIONS,
    RUNNING,
    Entry,
    Ledger,
    Parts,
    parse_ledger_text,
    parts_in_order,
)
from distribute.core.lock import (
    Acquire,
    Beat,
    LockState,
    Parked,
    bad_lock,
    beat_message,
    decide_acquire,
    holder_verdict,
    lock_message,
    parse_beat_message,
    parse_lock_message,
)
from distribute.core.names import (
    HANDED_PREFIX,
    JOB_BRANCH_PREFIX,
    LOCK_REF,
    WORKERS_PREFIX,
    decode_component,
    encode_component,
    handed_ref,
    job_branch,
    job_branch_ref,
    job_dir,
    worker_ref,
)
from distribute.core.plan import (
    CallNextJobFunction,
    ClaimPlan,
    GiveUp,
    Retry,
    ahead_in_turn,
    in_turn,
    plan_claim,
)
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate, Transport, check_oid, holds

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Folds:
    """The parked finishes one observation found, folded onto its main branch: commits
    written in the local object store, not pushed.  ``entries`` holds, per finish, its
    worker, the record and whether its branch merged cleanly (else the fold records
    the job as failed by a merge conflict, as the worker's own finish would have)."""

    tip: Oid
    ledger: Ledger
    entries: tuple[tuple[str, Parked, bool], ...]


class FoldsOnDemand:
    """The folds of one observation's parked finishes, written when first asked for.

    Folding runs a merge per parked finish.  Most looks only wait (their worker's turn
    has not come, or it takes up a job handed to it), and what they decide by, the
    running lines and the tokens, does not depend on how those merges go; so the merges
    are left to the look that moves the main branch (a claim, a fold), which asks for
    :attr:`Snapshot.folds`.  ``fold`` writes them (``Coordinator._fold``); a failure is
    not kept, so the next ask tries again."""

    __slots__ = ("_fold", "_main", "_ledger", "_parked", "_folds", "_outlook")

    def __init__(self, fold: Callable[[Oid, Ledger, Sequence[tuple[str, Parked]]], Folds],
                 main: Oid, ledger: Ledger, parked: Sequence[tuple[str, Parked]]) -> None:
        self._fold, self._main, self._ledger, self._parked = fold, main, ledger, tuple(parked)
        self._folds: Folds | None = None
        self._outlook: Ledger | None = None

    def folds(self) -> Folds:
        if self._folds is None:
            self._folds = self._fold(self._main, self._ledger, self._parked)
        return self._folds

    def outlook(self) -> Ledger:
        """The ledger as if every parked finish merged cleanly (each moved to
        ``done.txt``): no merge is run.  Its running lines and every entry's token are
        those of the real folds (a parked finish whose branch conflicts leaves the
        running lines too, for ``failed.txt``, under the same token)."""
        if self._folds is not None:
            return self._folds.ledger
        if self._outlook is None:
            ledger = self._ledger
            for worker, p in self._parked:
                ledger = ledger.finish(p.job, worker, p.token)
            self._outlook = ledger
        return self._outlook


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one ``observe`` saw on the remote.

    ``main`` and ``ledger`` are the main branch as the remote holds it (what a push
    names as the old value); :attr:`base` and :attr:`view` are the same with the
    parked finishes folded in (:class:`Folds`), which is what any step that moves
    the main branch builds on and decides by.  :attr:`outlook` is what a worker that
    only waits decides by: the same running lines and tokens as :attr:`view`, with no
    merge run to learn them.
    """

    main: Oid
    ledger: Ledger
    lock_oid: Oid | None
    lock: LockState
    refs: dict[str, Oid]
    at: float
    gone: frozenset[str] = frozenset()  # workers whose record says they left
    pending: FoldsOnDemand | None = field(default=None, compare=False, repr=False)

    @property
    def folds(self) -> Folds | None:
        """The parked finishes folded onto ``main`` (merged when first asked for), or
        ``None`` when there are none."""
        return self.pending.folds() if self.pending is not None else None

    @property
    def base(self) -> Oid:
        """The commit a move of the main branch builds on: the folds' tip, or ``main``."""
        folds = self.folds
        return folds.tip if folds else self.main

    @property
    def view(self) -> Ledger:
        """The ledgers once the parked finishes are folded in: parked jobs are done (or,
        a branch that did not merge, failed)."""
        folds = self.folds
        return folds.ledger if folds else self.ledger

    @property
    def outlook(self) -> Ledger:
        """:attr:`view` as far as its running lines and tokens go (who runs what, who
        was served last), without the merges: see :meth:`FoldsOnDemand.outlook`."""
        return self.pending.outlook() if self.pending is not None else self.ledger


@dataclass(slots=True)
class Holding:
    """This worker's holding of the lock."""

    state: LockState
    oid: Oid
    sent_at: float


@dataclass(slots=True)
class JobHolding:
    """The job this worker runs."""

    job: str
    token: int
    attempt: int
    branch: str
    tip: Oid
    resumed_from: str | None = None  # the earlier attempt's branch it starts from
    #: the commit the branch started at, when every commit on it since then is known to
    #: have written the job's own folder and nothing else (``None``: not known; see
    #: :meth:`Coordinator.update`)
    confined_from: Oid | None = None

    @property
    def branch_ref(self) -> str:
        return "refs/heads/" + self.branch


@dataclass(slots=True)
class Stats:
    """Counters the benchmark and the simulator report."""

    pushes: int = 0
    lost_races: int = 0
    unknown_outcomes: int = 0
    replays: int = 0
    takeovers: int = 0
    renewals: int = 0
    fetches: int = 0
    #: pushes the remote answered, landed or refused as a lost race: a retry loop that sees
    #: this grow knows the remote took pushes meanwhile, so an error after that starts a
    #: new window (reads alone do not count: a remote that answers fetches but can store
    #: nothing, a full disk, must still end the retries)
    answers: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        """Count one more ``name`` in :attr:`extra`."""
        self.extra[name] = self.extra.get(name, 0) + 1


@dataclass(frozen=True, slots=True)
class _Claim:
    """One claim, written and ready to push."""

    updates: list[RefUpdate]
    job: JobHolding
    beat: Beat
    beat_oid: Oid
    own_old: Oid | None
    revoke: str
    folds: Folds | None = None
    #: (branch ref, tip) of the released attempt this claim's branch starts from
    superseded: tuple[str, Oid] | None = None


#: pushes an unlocked claim tries while only finishes move the main branch under it
UNLOCKED_TRIES = 3
#: idle workers one unlocked claim may hand a queued job to besides its own (section 3,
#: step 5 of docs/protocol.md): a fleet claims up to this many more jobs per lock move
HANDOFF_MAX = 15
#: lost races in a row after which a finish (or fail) asks the others to let it through
FINISH_PRIORITY_AFTER = 3
#: finished jobs whose branches a worker deletes together, in one push
PRUNE_BATCH = 16
#: branches ``distribute gc`` deletes per push
GC_BATCH = 500


class _Lost(Enum):
    """A finish's try that did not land on the main branch: which push lost its race,
    or the finish was parked already (an earlier try's park landed unseen)."""

    MAIN = "the finish"
    CONFLICT = "the record of its merge conflict"
    PARKED = "parked already"
    READY = "merges cleanly onto the main branch as it is: to be parked"


class LostHolding(Exception):
    """Internal: the lock holding was taken over while we worked under it."""


class Coordinator:
    """One worker's steps of the protocol.

    Args:
        transport: the remote and the local object store.
        worker: this worker's name; session: unique per process.
        branch: the main branch's short name.
        lease: lease period in seconds; margin: the observer's extra wait.
        max_attempts: failed attempts per job before it moves to ``failed.txt``.
        clock: a monotonic clock.
        journal: optional callback receiving protocol events (for the simulator).
        max_interruptions: interrupted attempts per job before it moves to
            ``failed.txt`` (see :mod:`distribute.core.ledger`).
        resume: a retried job's branch starts from the previous attempt's
            branch (merged onto the main branch), so its files are there.
        hand_offs: this worker's claims hand queued jobs to idle workers, and its
            records say other workers' claims may hand it one (:meth:`handoff_targets`);
            ``False``: neither.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        worker: str,
        session: str,
        branch: str,
        lease: float,
        margin: float,
        max_attempts: int,
        clock: Callable[[], float],
        journal: Callable[..., None] | None = None,
        max_interruptions: int = MAX_INTERRUPTIONS,
        resume: bool = True,
        hand_offs: bool = True,
    ) -> None:
        self.transport = transport
        self.worker = worker
        self.session = session
        self.branch = branch
        self.main_ref = "refs/heads/" + branch
        self.own_ref = worker_ref(worker)
        #: this worker's job branches: a look brings them, so that a job another worker
        #: handed to this one is taken up without a fetch of its own (:meth:`take_handed`)
        self.own_branches = f"refs/heads/{JOB_BRANCH_PREFIX}{encode_component(worker)}/*"
        self.lease = lease
        self.max_attempts = max_attempts
        self.max_interruptions = max_interruptions
        self.resume = resume
        self.clock = clock
        self.watch = LeaseWatch(lease, margin)
        self.holding: Holding | None = None
        self.job: JobHolding | None = None
        self.beat = Beat(worker=worker, session=session, lease=lease,
                         takes_hand_offs=hand_offs)
        self.beat_oid: Oid | None = None
        self.beat_sent_at = float("-inf")
        #: something calls :meth:`renew` while a job runs (the Worker's heartbeat thread):
        #: a handed job is then taken up without a push while the record is fresh
        #: (:meth:`take_handed`); without one, the take-up always renews the record
        self.renewed_in_background = True
        self.revoked = False
        #: who revoked this worker's record (a worker that took its job over, or the
        #: lock holder name of an admin command such as ``distribute cancel``)
        self.revoked_by = ""
        #: (branch ref, tip) of the jobs this worker finished whose branch is still on the
        #: remote: the main branch holds each tip (a finish commit's second parent)
        self.merged: list[tuple[str, Oid]] = []
        #: (branch ref, tip) of released attempts whose branch a retry claimed here starts
        #: from (merged into its first commit), so no ref needs to keep them
        self.superseded: list[tuple[str, Oid]] = []
        #: (branch ref, tip) of the jobs whose last attempt failed here: archived in this
        #: worker's archive (:func:`archive_branches`), so no ref needs to keep them
        self.failed_here: list[tuple[str, Oid]] = []
        self._answered_here: dict[int, int] = {}  # thread id: answered pushes
        self.stats = Stats()
        self.mutex = threading.RLock()
        self._journal = journal
        self._acquires = 0
        self._beats: dict[Oid, Beat | None] = {}
        self._folded: dict[tuple[Oid, tuple[tuple[str, Parked], ...]], Folds] = {}
        #: this worker's parked finishes known to be folded (or void): never taken up again
        #: from a record of ours that still lists them
        self._settled: set[Parked] = set()
        #: (job, token) of the jobs handed to this process that it took up
        self._taken_up: set[tuple[str, int]] = set()
        #: the last observation: whether other workers are about (see :meth:`finish`)
        self.last_seen: Snapshot | None = None
        #: the refs the last finish try read, its main branch the one it decided on
        self._finish_read: dict[str, Oid] = {}
        #: what a finish that just landed left this worker knowing of the remote: the
        #: main branch, the lock and the liveness records its fetch read, with what it
        #: pushed since, and when it landed.  The worker's next wait for a job starts
        #: from it instead of a look of its own when it comes at once (see
        #: ``Worker._look``): a view that went stale meanwhile costs a refused push,
        #: never a wrong step.
        self.after_finish: tuple[dict[str, Oid], float] | None = None

    # ---- small helpers -----------------------------------------------------
    def journal(self, event: ev.Event) -> None:
        """Report ``event`` to the journal callback, if any, as ``(kind, **fields)``."""
        if self._journal is not None:
            self._journal(event.kind, **ev.fields_of(event))

    def read_ledger(self, commit: Oid) -> Ledger:
        return read_ledger(self.transport, commit, self.branch)

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        """Atomic CAS push; an unknown outcome is resolved by reading the refs.  The
        counters are kept under :attr:`mutex`, the push itself is not."""
        with self.mutex:
            self.stats.pushes += 1
        try:
            ok = self.transport.push(updates)
        except OutcomeUnknown:
            with self.mutex:
                self.stats.unknown_outcomes += 1
            ok = self.resolve_unknown(updates)
        here = threading.get_ident()
        with self.mutex:
            self.stats.answers += 1
            self._answered_here[here] = self._answered_here.get(here, 0) + 1
            if not ok:
                self.stats.lost_races += 1
        return ok

    def answers_here(self) -> int:
        """Pushes the remote answered for the calling thread: what a retry loop of that
        thread counts (``stats.answers`` counts every thread's; a worker's heartbeat,
        answered in its own thread, says nothing of a step that keeps failing here)."""
        return self._answered_here.get(threading.get_ident(), 0)

    def resolve_unknown(self, updates: Sequence[RefUpdate]) -> bool:
        """Learn whether a push whose answer was lost landed, by reading the refs.

        The push was atomic, so its first ref tells for all.  That ref may
        have moved on since (another worker finished a job, or took the lock
        after our release): it landed when the ref holds our new commit or a
        descendant of it.  Nobody else can build on a commit that never
        reached the remote.
        """
        first = updates[0]
        # a listing first: it downloads nothing and does not wait for a fetch under way in
        # the other thread (the heartbeat reads back its own pushes holding the mutex)
        listed = self._listed(first.ref)
        if listed == first.new:
            return True
        if listed == first.old:
            return False
        current = self._fetch([first.ref]).get(first.ref)  # another's write
        return self._holds(current, first.new)

    def _listed(self, ref: str) -> Oid | None:
        """``ref``'s value on the remote, from a listing of refs (an ``ls-remote``)."""
        return self.transport.list_refs(ref).get(ref)

    def _fetch(self, refs: Sequence[str]) -> dict[str, Oid]:
        """Fetch ``refs`` and count it: the count under :attr:`mutex`, the fetch without
        taking it (see the module docstring on what runs under it)."""
        values = self.transport.fetch(refs)
        with self.mutex:
            self.stats.fetches += 1
        return values

    def _holds(self, current: Oid | None, commit: Oid | None) -> bool:
        """:func:`~distribute.transport.base.holds`; objects not known locally: no."""
        try:
            return holds(self.transport, current, commit)
        except DistributeError:
            return False

    def _empty_commit(self, message: str, parents: Sequence[Oid] = ()) -> Oid:
        return self.transport.write_commit(parents=list(parents), message=message, changes={})

    def _beat_commit(self, beat: Beat) -> Oid:
        """A liveness record's commit: its parked finishes' tips are its parents, so the
        results travel with every fetch of the liveness refs.  So is the main branch
        commit this worker saw last, which every other worker has or soon will: a fetch
        that brings the record then finds common history at once.  A commit with no
        parent never does, and git's negotiation goes on for more rounds, one round trip
        (over HTTP, one request) each, before the server sends anything."""
        parents = record_parents(beat)
        seen = self.last_seen
        if seen is not None and seen.main not in parents:
            parents.append(seen.main)
        return self._empty_commit(beat_message(beat), parents)

    # ---- observe -----------------------------------------------------------
    def observe(self) -> Snapshot:
        """Fetch the main branch, the lock, the liveness refs and the hand-off markers
        (:func:`~distribute.core.names.handed_ref`); feed the lease watch.

        The fetch runs without :attr:`mutex`: it may download much, and the heartbeat
        must not wait for it."""
        values = self._fetch([self.main_ref, LOCK_REF, WORKERS_PREFIX + "*", HANDED_PREFIX + "*",
                              self.own_branches])
        with self.mutex:
            return self._snapshot(values)

    def _snapshot(self, values: Mapping[str, Oid]) -> Snapshot:
        """A :class:`Snapshot` of what one fetch of the main branch, the lock and the
        liveness refs read (``values``); feeds the lease watch.  Called under
        :attr:`mutex`."""
        now = self.clock()
        main = values.get(self.main_ref)
        if main is None:
            raise RemoteStateError(
                f"the remote has no branch {self.branch!r}; prepare it with "
                "`distribute init REMOTE` or pass branch=... naming its main branch",
                branch=self.branch,
            )
        ledger = self.read_ledger(main)
        lock_oid = values.get(LOCK_REF)
        try:
            lock = (
                parse_lock_message(self.transport.commit_message(lock_oid))
                if lock_oid
                else LockState()
            )
        except RemoteStateError as exc:
            raise bad_lock(str(exc)) from None
        self.watch.observe(LOCK_REF, lock_oid, now)
        holders = {worker_ref(w) for w in ledger.holders()}
        listed = {r for r in values if r.startswith(WORKERS_PREFIX)}
        # a record first listed by a later look was written since the first one
        self.watch.observe_all(values, holders | listed, now,
                               new_is_move=self.last_seen is not None)
        gone = frozenset(
            b.worker for b in (self.beat_at(values[r]) for r in listed)
            if b is not None and b.gone
        )
        parked = self._parked_at(values, ledger)
        on_demand = FoldsOnDemand(self._fold, main, ledger, parked) if parked else None
        snap = Snapshot(main, ledger, lock_oid, lock, dict(values), now, gone, on_demand)
        self.last_seen = snap
        return snap

    # ---- parked finishes -------------------------------------------------------
    def parked_in(self, refs: Mapping[str, Oid], ledger: Ledger) -> list[tuple[str, Parked]]:
        """The parked finishes the liveness records in ``refs`` hold that ``ledger`` still
        lists as running under that worker and token (a parked finish is folded in once;
        after that, or once its job was given to someone else, it is stale and ignored)."""
        return find_parked(refs, ledger, self.beat_at)

    def _parked_at(self, refs: Mapping[str, Oid], ledger: Ledger) -> list[tuple[str, Parked]]:
        """:meth:`parked_in`, this worker's own parked finishes brought in step with the
        record among ``refs`` first (:meth:`_sync_parked`)."""
        self._sync_parked(refs.get(self.own_ref), ledger)
        return self.parked_in(refs, ledger)

    def _sync_parked(self, own: Oid | None, ledger: Ledger) -> None:
        """Keep this worker's parked finishes in step with the remote: take up those its
        record holds (written by an earlier life of this worker), and drop those the
        main branch lists by now (a branch merged that way joins :attr:`merged`)."""
        with self.mutex:
            if own:
                self._carry_parked(own)
            mine = self.beat.parked
            keep = tuple(p for p in mine if parked_valid(ledger, self.worker, p))
            for p in mine:
                if p not in keep:
                    self._settle(p, merged=any(
                        (e.job, e.token, e.worker) == (p.job, p.token, self.worker)
                        for e in ledger.done
                    ))
            if keep != self.beat.parked:
                self.beat = replace(self.beat, parked=keep)

    def _settle(self, p: Parked, merged: bool) -> None:
        """This worker's parked finish ``p`` is folded (or void): never take it up again
        from a record of ours; a ``merged`` branch joins those to prune."""
        self._settled.add(p)
        if merged:
            self.merged.append(("refs/heads/" + job_branch(self.worker, p.job, p.token), p.tip))

    def _carry_parked(self, oid: Oid) -> None:
        """Take up the parked finishes this worker's record at ``oid`` holds and its own
        record lacks (an earlier life of this worker parked them): every record it
        writes keeps them until the main branch lists them."""
        record = self.beat_at(oid)
        if record is None or record.worker != self.worker:
            return
        have = {(p.job, p.token) for p in self.beat.parked}
        extra = tuple(p for p in record.parked
                      if (p.job, p.token) not in have and p not in self._settled)
        if extra:
            self.beat = replace(self.beat, parked=self.beat.parked + extra)

    def _fold(self, main: Oid, ledger: Ledger, parked: Sequence[tuple[str, Parked]]) -> Folds:
        """Write the commits that fold ``parked`` onto ``main`` (cached: a finish's read and
        the view it leaves for the next wait fold the same finishes), under :attr:`mutex`: a
        snapshot's folds are written when first asked for, by whichever step asks."""
        key = (main, tuple(parked))
        with self.mutex:
            folds = self._folded.get(key)
            if folds is None:
                folds = fold_parked(self.transport, main, ledger, parked)
                if len(self._folded) > 64:
                    self._folded.clear()
                self._folded[key] = folds
            return folds

    def _journal_folds(self, folds: Folds | None) -> None:
        """After a push with ``folds`` landed: report them, and forget this worker's own
        (their branches, merged, go with the next pruning)."""
        mine = set()
        for worker, p, clean in folds.entries if folds else ():
            self.stats.count("folds")
            self.journal(ev.Fold(job=p.job, token=p.token, parker=worker, merged=clean))
            if worker == self.worker:
                mine.add(p)
                self._settle(p, merged=clean)
        if mine:
            self.beat = replace(self.beat, parked=tuple(
                p for p in self.beat.parked if p not in mine))

    def fold(self, snap: Snapshot, everyone: bool = False) -> bool:
        """Push onto the main branch, alone, the parked finishes ``snap`` shows of this
        worker and of workers that left or fell silent for a lease (a worker with no job
        to claim does this, so that its own finishes reach ``done.txt`` before it leaves
        and a dead worker's do not wait for a claim; a live worker's are left to it and
        to the next claim, so idle workers do not all race to fold the same finish).
        With ``everyone``, all of them (a worker leaving because no job is left: it may
        be the last to look).  Returns whether the push landed (or there was nothing to
        fold); ``False``: the main branch moved, look again."""
        with self.mutex:
            if snap.folds is None:
                return True
            now = self.clock()
            chosen = [
                (w, p) for w, p, _ in snap.folds.entries
                if everyone or w == self.worker or w in snap.gone
                or self.watch.expired(worker_ref(w), now)
            ]
            if not chosen:
                return True
            folds = (snap.folds if len(chosen) == len(snap.folds.entries)
                     else self._fold(snap.main, snap.ledger, chosen))
            if not self.push([RefUpdate(self.main_ref, snap.main, folds.tip)]):
                return False
            self._journal_folds(folds)
            return True

    def others_about(self) -> bool:
        """Did the last observation show another worker whose record is live (neither
        gone nor silent for a lease)?  Then a finish is parked at once (see
        :meth:`finish`): the next claim, by anyone, folds it."""
        snap = self.last_seen
        if snap is None:
            return False
        now = self.clock()
        return any(
            ref.startswith(WORKERS_PREFIX) and ref != self.own_ref
            and not self.watch.expired(ref, now)
            and not any(w in snap.gone for w in _worker_name(ref))
            for ref in snap.refs
        )

    def beat_at(self, oid: Oid) -> Beat | None:
        """The liveness record at ``oid`` (``None`` when it cannot be read); cached."""
        beat = self._beats.get(oid)
        if beat is None and oid not in self._beats:
            try:
                beat = parse_beat_message(self.transport.commit_message(oid))
            except DistributeError:
                beat = None
            if len(self._beats) > 4096:
                self._beats.clear()
            self._beats[oid] = beat
        return beat

    def registered(self, snap: Snapshot) -> bool:
        """Does the remote hold a liveness record of this worker that says it is here?"""
        return self.own_ref in snap.refs and self.worker not in snap.gone

    def ahead_in_turn(self, snap: Snapshot) -> list[str]:
        """The liveness refs of the idle workers that go before this one at the next free
        lock (:func:`~distribute.core.plan.ahead_in_turn`).  Idle: a liveness ref that
        moved within the last lease period (so the dead drop out), and no running job.
        Each of them moves its ref when it claims, so a :meth:`peek` tells who is left."""
        now = self.clock()
        running = {e.worker for e in snap.outlook.running}
        listed = (
            name
            for ref in snap.refs
            if ref.startswith(WORKERS_PREFIX) and not self.watch.expired(ref, now)
            for name in _worker_name(ref)
        )
        idle = [w for w in listed if w not in running and w not in snap.gone]
        return [worker_ref(w) for w in ahead_in_turn(idle, self.worker, snap.outlook)]

    def expired_workers(self, snap: Snapshot) -> set[str]:
        """Holders of running jobs whose lease is over: their liveness record was seen
        unchanged for a lease, or it says they left (a worker that stopped without
        giving its job back makes no one wait a lease for it)."""
        now = self.clock()
        return {
            w for w in snap.outlook.holders()
            if w != self.worker and (self.watch.expired(worker_ref(w), now) or w in snap.gone)
        }

    # ---- the lock ----------------------------------------------------------
    def try_acquire(self, snap: Snapshot) -> bool:
        """Try to take the lock from the value observed in ``snap``."""
        with self.mutex:
            if self.torn(snap):
                self.journal(ev.TornObserve(lock_main=snap.lock.main, main=snap.main))
                self.stats.count("torn_observes")
                return False
            expired = self.watch.expired(LOCK_REF, self.clock())
            self._acquires += 1
            nonce = f"{self.session[:12]}.{self._acquires}"
            decision = decide_acquire(snap.lock, self.worker, self.session, expired, nonce)
            if not isinstance(decision, Acquire):
                return False
            parents = [snap.lock_oid] if snap.lock_oid else []
            new_oid = self._empty_commit(lock_message(decision.new), parents)
            sent = self.clock()
            if not self.push([RefUpdate(LOCK_REF, snap.lock_oid, new_oid)]):
                return False
            if decision.takeover:
                self.stats.takeovers += 1
            self.holding = Holding(decision.new, new_oid, sent)
            self.journal(ev.LockAcquire(
                token=decision.new.token, takeover=decision.takeover, previous=snap.lock.holder,
            ))
            return True

    def peek(self, shared: Mapping[str, Oid] | None = None) -> dict[str, Oid]:
        """Cheap poll while waiting: the lock's and the liveness refs' values, read with no
        fetch (one ``ls-remote``, or the ref files of a remote on this machine).  The
        lease watch sees the lock's value, so its expiry is judged exactly as by
        :meth:`observe`.  ``shared``: what another worker of this machine just peeked
        (:mod:`distribute.shared_peeks`), taken instead of asking the remote."""
        # the ls-remote goes without the mutex, like every read of the remote
        values = self.transport.list_refs("refs/distribute/") if shared is None else dict(shared)
        with self.mutex:
            self.stats.count("peeks" if shared is None else "shared_peeks")
            self.watch.observe(LOCK_REF, values.get(LOCK_REF), self.clock())
            return values

    def torn(self, snap: Snapshot) -> bool:
        """Did ``snap`` read a released lock but a main branch older than that release?

        A fetch reads refs one at a time; a claim that lands in between
        shows its released lock next to the main branch before the claim.
        The release names the main branch it left, so the tear is visible.
        """
        lock = snap.lock
        if not (lock.free and lock.main) or self._holds(snap.main, lock.main):
            return False
        # a tear lasts one fetch; a free lock left unchanged for a lease that still names a
        # commit the main branch lacks is damage, not a tear, and must not stop everyone
        return not self.watch.expired(LOCK_REF, self.clock())

    def holding_valid(self) -> bool:
        """Is the lock ours, and not a full lease past our last send (``holder_verdict``)?"""
        h = self.holding
        return h is not None and holder_verdict(h.sent_at, self.clock(), self.lease) != "lost"

    def keep_valid_holding(self) -> bool:
        """:meth:`holding_valid`; a holding that is not is forgotten (another worker may
        hold the lock by now, so nothing may be done under it)."""
        with self.mutex:
            if self.holding_valid():
                return True
            self.holding = None
            return False

    def release(self, main: Oid | None = None) -> None:
        """Release the lock without claiming (the next-job function had no job).

        ``main`` is the main branch commit the holder saw last, recorded in
        the release.  A push that did not land while the lock is still ours
        is sent again; the holding is forgotten only once the lock is free
        or someone else's.

        Raises:
            TransportError: the release did not land after a few tries; the
                holding is kept, so calling again retries it.
        """
        with self.mutex:
            for _ in range(3):
                h = self.holding
                if h is None:
                    return
                new_oid = self._empty_commit(lock_message(h.state.released(main or "")), [h.oid])
                if self.push([RefUpdate(LOCK_REF, h.oid, new_oid)]):
                    self.holding = None
                    self.journal(ev.LockRelease(token=h.state.token, ok=True))
                    return
                if self._forget_if_lock_moved(h):
                    return
            raise TransportError("the lock's release was refused three times; retrying")

    def _forget_if_lock_moved(self, h: Holding) -> bool:
        """After a push on the lock did not land: forget ``h`` if the lock moved on (a
        listing tells; nothing needs downloading)."""
        if self._listed(LOCK_REF) == h.oid:
            return False
        self.holding = None
        self.journal(ev.LockLost(token=h.state.token))
        return True

    def renew(self) -> None:
        """Heartbeat: renew the lock and the liveness ref when due.  Thread-safe."""
        with self.mutex:
            now = self.clock()
            h = self.holding
            if h is not None and holder_verdict(h.sent_at, now, self.lease) == "renew":
                state = h.state.renewed()
                new_oid = self._empty_commit(lock_message(state), [h.oid])
                sent = self.clock()
                if self.push([RefUpdate(LOCK_REF, h.oid, new_oid)]):
                    self.holding = Holding(state, new_oid, sent)
                    self.stats.renewals += 1
                    self.journal(ev.LockRenew(token=state.token))
                else:
                    self._forget_if_lock_moved(h)  # still ours: the next tick tries again
            if self.job is not None and now - self.beat_sent_at >= self.lease / 3:
                self.renew_beat()

    def renew_beat(self) -> bool:
        """CAS this worker's liveness ref from its last value; learn of a revocation."""
        with self.mutex:
            jobs = (self.job.job,) if self.job else ()
            beat = self.beat.next(jobs)
            new_oid = self._beat_commit(beat)
            sent = self.clock()
            if self.push([RefUpdate(self.own_ref, self.beat_oid, new_oid)]):
                self.beat, self.beat_oid, self.beat_sent_at = beat, new_oid, sent
                self.stats.renewals += 1
                return True
            current, revoked = self._own_record()
            if revoked is not None:
                self.revoked = True
                self.revoked_by = revoked.revoked_by
                self.journal(ev.Revoked(by=revoked.revoked_by, token=revoked.token))
                return False
            # our own earlier life wrote it: adopt its value (and, through _own_record, the
            # finishes it parked there) and go on
            self.beat_oid = current
            return False

    def _own_record(self, seen_at: Oid | None = None) -> tuple[Oid | None, Beat | None]:
        """This worker's liveness ref as the remote holds it (fetched, or ``seen_at``: its
        value as a look just read it), and the record there when it says that this
        session was revoked (a takeover of its job wrote it).

        A takeover revokes the record value it saw, which may be an earlier life's: a
        restarted worker that took up that life's job (:meth:`adopt`) meets a revocation
        naming another session.  It counts when it names the job this worker holds, or
        no session at all (the taker could not read the record it replaced): this
        worker holds one job, and the ledger gave that one away."""
        current = seen_at or self._fetch([self.own_ref]).get(self.own_ref)
        if current is None:
            return None, None
        self._carry_parked(current)
        seen = self.beat_at(current)  # an unreadable record is no revocation: overwritten
        if seen is None or not seen.revoked:
            return current, None
        held = self.job
        mine = seen.session == self.session or (
            held is not None and (seen.session == "" or held.job in seen.jobs)
        )
        return current, seen if mine else None

    def say_gone(self) -> bool:
        """Write this worker's last liveness record (``Beat.gone``): it runs no job and
        asks for none, so no one waits for it.  Only when it holds nothing; returns
        whether the record landed.  A later request for a job writes a live one again."""
        with self.mutex:
            if self.job is not None or self.holding is not None:
                return False
            old = self.beat_oid
            for _ in range(2):
                beat = self.beat.left()
                new_oid = self._beat_commit(beat)
                if self.push([RefUpdate(self.own_ref, old, new_oid)]):
                    self.beat, self.beat_oid = beat, new_oid
                    self.journal(ev.Gone())
                    return True
                # our record moved: written by this worker's earlier life (a restart that
                # never claimed), or revoked; only a revocation of this session stays
                old, revoked = self._own_record()
                if revoked is not None:
                    return False
            return False

    def release_leftovers(self, reason: str) -> None:
        """Release the lock and fail (as interrupted) the jobs that this worker's session
        holds on the remote, as its process stops without its steps having done so.

        Only what carries this session is touched: the lock when its holder and
        session are ours, and the jobs named by our liveness record when that record
        carries our session (each failed under its own token, so a job taken over
        meanwhile is left alone).  Best effort: a lost race is tried again a few times.
        """
        values = self.transport.fetch([self.main_ref, LOCK_REF, self.own_ref])
        lock_oid = values.get(LOCK_REF)
        if lock_oid is not None:
            state = parse_lock_message(self.transport.commit_message(lock_oid))
            if state.holder == self.worker and state.session == self.session:
                released = self._empty_commit(lock_message(state.released()), [lock_oid])
                self.transport.push([RefUpdate(LOCK_REF, lock_oid, released)])
        beat_oid = values.get(self.own_ref)
        main = values.get(self.main_ref)
        if beat_oid is None or main is None:
            return
        beat = parse_beat_message(self.transport.commit_message(beat_oid))
        if beat.session != self.session or not beat.jobs:
            return
        for _ in range(20):
            ledger = self.read_ledger(main)
            after = ledger
            for job in beat.jobs:
                entry = after.running_entry(job)
                if entry is not None and entry.worker == self.worker:
                    after = after.fail(
                        job, self.worker, entry.token, reason, self.max_attempts,
                        interrupted=True, max_interruptions=self.max_interruptions,
                    )
            changes = after.changed_files(ledger)
            if not changes:
                return
            new = self.transport.write_commit(
                parents=[main], base=main, changes=changes,
                message=f"distribute: {self.worker} {reason}; releasing {', '.join(beat.jobs)}",
            )
            if self.transport.push([RefUpdate(self.main_ref, main, new)]):
                return
            main = self.transport.fetch([self.main_ref]).get(self.main_ref)
            if main is None:
                return

    # ---- claiming ----------------------------------------------------------
    def plan(self, snap: Snapshot) -> ClaimPlan:
        return plan_claim(
            snap.outlook, self.worker, self.expired_workers(snap), self.max_attempts,
            self.max_interruptions, self.session,
        )

    # ---- hand-offs -------------------------------------------------------------
    def handoff_targets(self, snap: Snapshot, limit: int = HANDOFF_MAX) -> list[Beat]:
        """The idle workers an unlocked claim on ``snap`` may claim a queued job for, in
        turn order (least recently served first), at most ``limit``.

        A target's liveness record is readable, carries a session, and says it is
        neither gone, revoked nor finishing, and that it takes hand-offs; the ledger
        (with the parked finishes folded in) lists no running job of that worker; this
        worker saw its record change between two readings and knows it was written
        within the last half lease (``LeaseWatch.written_within``; not a dead worker's
        record first seen now, which would count as live for a whole lease, nor one
        whose change this worker, busy elsewhere, noticed long after): a handed job
        waits for its worker's next look, and is taken over like any other once that
        worker's record stayed unchanged for a lease, so it goes only to workers that
        have written their record lately (at a claim, a park or a renewal)."""
        if limit <= 0 or not self.beat.takes_hand_offs:
            return []  # a worker that takes no hand-offs hands none out either
        now = self.clock()
        running = snap.outlook.holders()
        found: dict[str, Beat] = {}
        for ref, oid in snap.refs.items():
            if not ref.startswith(WORKERS_PREFIX) or ref == self.own_ref:
                continue
            beat = self.beat_at(oid)
            if (beat is None or not beat.session or beat.gone or beat.revoked
                    or beat.finishing or not beat.takes_hand_offs
                    or worker_ref(beat.worker) != ref
                    or beat.worker in running):
                continue
            # idle workers do not renew their records: one not surely written within
            # half a lease belongs to a worker that has waited long (or died, maybe while
            # this one was not looking); it claims for itself
            if not self.watch.written_within(ref, self.lease / 2, now):
                continue
            found[beat.worker] = beat
        if not found:
            return []
        return [found[w] for w in in_turn(found, snap.outlook)[:limit]]

    def handed(self, snap: Snapshot) -> Entry | None:
        """The job another worker claimed for this process on ``snap``, to take up
        (:meth:`take_handed`), if this worker runs none."""
        if self.job is not None:
            return None
        # the outlook: a finish of it that is parked (on our own record, say) is done
        entry = snap.outlook.handed_to(self.worker, self.session)
        if entry is None or (entry.job, entry.token) in self._taken_up:
            return None  # taken up once already: a view older than its finish shows it
        return entry

    def take_handed(self, snap: Snapshot) -> JobHolding | None:
        """Take up the job another worker's claim handed to this process (``snap``'s
        ledger lists it under this worker and session; see :meth:`handoff_targets`).

        Nothing moves the main branch or the lock: the claim was made in the claimer's
        push, with the job branch.  Nor, mostly, this worker's liveness record: a
        hand-off goes only to a worker whose record was written lately (at its last
        claim, park or renewal), and the record is renewed here only when the heartbeat
        would be due (a third of the lease since it was sent), so it moves no later
        than it would for a job this worker claimed itself; the heartbeat and the
        finish move it next, naming the job.  A renewal made here that is refused
        because the record was revoked meanwhile (the job was taken over after this
        worker fell silent for a lease) drops the job before it runs.  A takeover that
        finds the record not yet naming the job names it in the revocation
        (:meth:`Beat.revoking`), so a restarted life of this worker that adopted the
        job to complete its finish recognises the revocation as its own.  ``None``:
        nothing to take up, or it was taken over."""
        with self.mutex:
            entry = self.handed(snap)
            if entry is None or self.holding is not None:
                return None
            ref = job_branch_ref(self.worker, entry.job, entry.token)
            # the look brought it; unless it read the branch before the claim landed
            tip = snap.refs.get(ref) or self._fetch([ref]).get(ref)
            if tip is None:
                return None  # deleted by an administrator's gc: the ledger decides later
            job = JobHolding(entry.job, entry.token, entry.attempt,
                             job_branch(self.worker, entry.job, entry.token), tip,
                             confined_from=tip)
            self.job = job
            due = (self.revoked or not self.renewed_in_background
                   or self.clock() - self.beat_sent_at >= self.lease / 3)
            seen = snap.refs.get(self.own_ref)
            if self.beat_oid is None and seen is not None:
                # a lost claim left the record to be read again, and this look read it:
                # adopted unless it revokes us (then the push below is refused, and says so)
                current, revoked = self._own_record(seen)
                if revoked is None:
                    self.beat_oid = current
                else:
                    due = True
            try:
                # a second try when our record had moved (an earlier life of ours wrote it)
                landed = not due or self.renew_beat() or (
                    not self.revoked and self.renew_beat())
            except BaseException:
                self.job = None
                raise
            if not landed:
                self.job = None
                return None
            self._taken_up.add((job.job, job.token))
            self.stats.count("handed_taken")
            self.journal(ev.Claim(job=job.job, token=job.token, attempt=job.attempt,
                                  branch=job.branch, revoked="", by=entry.by))
            return job

    def give_up(self, snap: Snapshot, plan: GiveUp) -> Snapshot:
        """Move a job with no attempts left to ``failed.txt`` (under the lock)."""
        with self.mutex:
            new_ledger = snap.view.expire(plan.entry.job, plan.reason)
            new_main = self.transport.write_commit(
                parents=[snap.base],
                base=snap.base,
                changes=new_ledger.changed_files(snap.view),
                message=f"distribute: job {plan.entry.job} failed: {plan.reason}",
            )
            h = self.holding
            if h is None:
                raise LostHolding()
            # renewing the lock in the same atomic push fences it on our holding
            state = h.state.renewed()
            lock_oid = self._empty_commit(lock_message(state), [h.oid])
            updates = [
                RefUpdate(self.main_ref, snap.main, new_main),
                RefUpdate(LOCK_REF, h.oid, lock_oid),
                *self._revoke_updates(snap, plan.revoke, h.state.token, plan.entry.job),
            ]
            sent = self.clock()
            if self.push(updates):
                self.holding = Holding(state, lock_oid, sent)
                self._journal_folds(snap.folds)
                self.journal(ev.GiveUp(job=plan.entry.job, reason=plan.reason))
            snap = self.observe()
            if self.holding is not None and snap.lock_oid != self.holding.oid:
                self.holding = None
            return snap

    def _revoke_updates(self, snap: Snapshot, dead: str, token: int, job: str) -> list[RefUpdate]:
        """Revoke ``dead``'s record, which ``job`` is taken from (nothing when ``dead`` is
        empty)."""
        if not dead:
            return []
        ref = worker_ref(dead)
        old = snap.refs.get(ref)
        # an unreadable record is replaced all the same: the push still names its value
        revoked = Beat.revoking(self.beat_at(old) if old else None, dead, self.worker, token,
                                taken=(job,))
        return [RefUpdate(ref, old, self._beat_commit(revoked))]

    def claim(
        self,
        snap: Snapshot,
        plan: Retry | CallNextJobFunction,
        job: str | None,
        edits: Oid | None = None,
    ) -> JobHolding | None:
        """:meth:`claim_step`, for callers that only ask whether it claimed."""
        got = self.claim_step(snap, plan, job, edits)
        return got if isinstance(got, JobHolding) else None

    def claim_step(
        self,
        snap: Snapshot,
        plan: Retry | CallNextJobFunction,
        job: str | None,
        edits: Oid | None = None,
    ) -> JobHolding | ev.NotClaimed:
        """Claim a job and release the lock in one atomic push.

        Args:
            snap: the observation the holder decided on.
            plan: a :class:`Retry` of an orphaned job, or a new job.
            job: the new job's name (with :class:`CallNextJobFunction`).
            edits: a commit whose parent is ``snap.main`` holding the
                next-job function's file edits, or ``None``.

        Returns:
            The new :class:`JobHolding`, or why nothing was claimed
            (:class:`~distribute.core.events.NotClaimed`; start again).
        """
        with self.mutex:
            first_main = snap.main
            while True:
                if self.holding is None or not self.holding_valid():
                    self.holding = None
                    return ev.NotClaimed.LOCK_LOST
                h = self.holding
                token = h.state.token
                if self.handed(snap) is not None:
                    return self._replan(snap)  # a job handed to us comes first
                if isinstance(plan, Retry):
                    entry = snap.view.running_entry(plan.entry.job)
                    if entry is None or entry != plan.entry:
                        return self._replan(snap)
                    name, attempt = entry.job, entry.attempt + 1
                    ledger = snap.view.retry(
                        name, self.worker, token, interrupted=plan.interrupted
                    )
                else:
                    assert job is not None
                    name, attempt = job, 1
                    if snap.main != first_main and snap.view.state_of(job) is not None:
                        # the function decided on a main branch that was not the newest
                        # (a claim landed unseen); its answer is stale, so start over
                        self.journal(ev.StaleDecision(job=job))
                        self.release(snap.main)
                        return ev.NotClaimed.STALE
                    ledger = snap.view.claim(job, self.worker, token)
                tree = self.transport.commit_tree(edits) if edits else None
                if edits and snap.base != first_main:
                    merged = self.transport.merge(snap.base, edits)
                    if not merged.clean:
                        self.release(snap.main)
                        raise MergeConflict(
                            "the next-job function's file edits conflict with the main branch "
                            f"in {', '.join(merged.conflicts)}; nothing was claimed",
                            paths=list(merged.conflicts),
                        )
                    tree = merged.tree
                revoke = plan.revoke if isinstance(plan, Retry) else ""
                previous = plan.entry if isinstance(plan, Retry) else None
                claim = self._build_claim(
                    snap, ledger, name, token, attempt, tree, revoke, h.oid, h.state.released,
                    previous,
                )
                if self._push_claim(claim):
                    self.holding = None
                    return self.job or ev.NotClaimed.DROPPED
                # lost: learn why and replay on what is there now
                self.stats.replays += 1
                snap = self.observe()
                if snap.lock_oid != h.oid:
                    self.holding = None
                    self.journal(ev.LockLost(token=token))
                    return ev.NotClaimed.LOCK_LOST
                if snap.refs.get(self.own_ref) != claim.own_old:
                    self.beat_oid = snap.refs.get(self.own_ref)
                if isinstance(plan, Retry):
                    return self._replan(snap)

    def claim_unlocked(
        self, snap: Snapshot, job: str, edits: Oid | None = None,
        handed: Sequence[tuple[Beat, str]] = (),
    ) -> JobHolding | None:
        """:meth:`claim_unlocked_step`, for callers that only ask whether it claimed."""
        got = self.claim_unlocked_step(snap, job, edits, handed)
        return got if isinstance(got, JobHolding) else None

    def claim_unlocked_step(
        self, snap: Snapshot, job: str, edits: Oid | None = None,
        handed: Sequence[tuple[Beat, str]] = (),
    ) -> JobHolding | ev.NotClaimed:
        """Claim a new job with no separate acquire: a holding of zero length.

        One atomic push moves the lock from the free value observed in
        ``snap`` to a free value with the next token, and claims ``job``
        under that token on the main branch.  Either ref having moved
        refuses the whole push, and nothing is written.  When only the main
        branch moved (a finish landed) and the lock is still as observed,
        nobody claimed meanwhile, so the claim is replayed on the new main
        branch like a holder's: the function's edits by a three-way merge,
        the ledger line by re-applying the decision.  When the lock moved,
        the function's answer may be stale: the caller observes again and
        asks its next-job function again.  So only functions that touch
        nothing but the local copy's files may decide this way (see
        :func:`distribute.sources.repo_only`): several workers may run them
        at once, and a run whose claim lost leaves no trace.

        ``handed``: (liveness record, job) pairs: the same push claims each job for
        that record's worker and session (:meth:`handoff_targets`), under the tokens
        after this worker's own, and the free lock moves on past the last of them.
        ``edits`` then holds the function's edits for all the jobs.  Each of those
        workers takes its job up at its next look (:meth:`take_handed`); one that
        never does (it died) loses it like any holder, when its lease expires.

        Returns:
            The new :class:`JobHolding`, or ``NotClaimed.TAKEN`` when someone else
            claimed first (or the replays ran out, or the edits no longer merge),
            ``NotClaimed.DROPPED`` when it landed too late to run.
        """
        with self.mutex:
            if self.holding is not None or self.job is not None:
                raise DistributeError("claim_unlocked needs a worker with no holding and no job")
            first = snap
            names = [job, *(name for _, name in handed)]
            for _ in range(UNLOCKED_TRIES):
                if snap.lock_oid != first.lock_oid or not snap.lock.free or self.torn(snap):
                    return ev.NotClaimed.TAKEN
                if self.handed(snap) is not None:
                    return ev.NotClaimed.TAKEN  # a job handed to us comes first
                if snap is not first and (
                    any(snap.view.state_of(name) is not None for name in names)
                    or not isinstance(self.plan(snap), CallNextJobFunction)
                ):
                    return ev.NotClaimed.TAKEN  # the job is known by now, or an orphan first
                token = snap.lock.token + 1
                ledger = snap.view.claim(job, self.worker, token)
                for n, (beat, name) in enumerate(handed, 1):
                    ledger = ledger.claim(name, beat.worker, token + n, by=self.worker,
                                          session=beat.session)
                tree = self.transport.commit_tree(edits) if edits else None
                if edits and snap.base != first.main:
                    merged = self.transport.merge(snap.base, edits)
                    if not merged.clean:
                        return ev.NotClaimed.TAKEN  # the function must see the new files
                    tree = merged.tree
                freed = partial(snap.lock.claimed_unlocked, self.worker, count=1 + len(handed))
                others = [(beat.worker, name, token + n)
                          for n, (beat, name) in enumerate(handed, 1)]
                claim = self._build_claim(
                    snap, ledger, job, token, 1, tree, "", snap.lock_oid, freed, handed=others
                )
                if self._push_claim(claim, unlocked=True):
                    self.stats.count("unlocked_claims")
                    for worker, name, t in others:
                        self.stats.count("handed_out")
                        self.journal(ev.HandOff(job=name, token=t, to=worker, with_token=token))
                    return self.job or ev.NotClaimed.DROPPED
                self.stats.count("unlocked_lost")
                self.beat_oid = None  # a stale liveness value may have refused it: re-read
                snap = self.observe()
                self.stats.replays += 1
            return ev.NotClaimed.TAKEN

    def _build_claim(
        self,
        snap: Snapshot,
        ledger: Ledger,
        name: str,
        token: int,
        attempt: int,
        tree: Oid | None,
        revoke: str,
        lock_old: Oid | None,
        lock_after: Callable[[str], LockState],
        previous: Entry | None = None,
        handed: Sequence[tuple[str, str, int]] = (),
    ) -> _Claim:
        """The commits and ref updates of one claim (see :meth:`claim`); ``handed``:
        (worker, job, token) of the jobs claimed for other workers in the same push."""
        also = "".join(f"\n{j}\tfor {w} (token {t})" for w, j, t in handed)
        new_main = self.transport.write_commit(
            parents=[snap.base],
            base=None if tree else snap.base,
            tree=tree,
            changes=ledger.changed_files(snap.view),
            message=(f"distribute: claim {name} by {self.worker} (token {token}, "
                     f"attempt {attempt})" + (f"\n\nand, handed to idle workers:{also}\n"
                                              if handed else "")),
        )
        branch = job_branch(self.worker, name, token)
        start, resumed, superseded = new_main, None, None
        if previous is not None and self.resume:
            start, resumed, tip = self._resume_from(new_main, previous)
            if resumed is not None and tip is not None and previous.released:
                # an attempt that ended (failed, or interrupted and given back): its worker
                # pushes no more to that branch.  A taken-over holder may still, and a
                # branch it is refused to push to would lose that update; so only these.
                superseded = ("refs/heads/" + resumed, tip)
        # a new holding: a finish's request for its turn belongs to the holding it was
        # made for, even when this one is of the same job (run again); this worker's
        # parked finishes that this push folds in leave its record
        folded = {p for w, p, _ in snap.folds.entries if w == self.worker} if snap.folds else set()
        beat = replace(self.beat.next((name,)), finishing="",
                       parked=tuple(p for p in self.beat.parked if p not in folded))
        beat_oid = self._beat_commit(beat)
        lock_parents = [lock_old] if lock_old else []
        lock_new = self._empty_commit(lock_message(lock_after(new_main)), lock_parents)
        own_old = snap.refs.get(self.own_ref) if self.beat_oid is None else self.beat_oid
        updates = [
            RefUpdate(self.main_ref, snap.main, new_main),
            RefUpdate(LOCK_REF, lock_old, lock_new),
            RefUpdate("refs/heads/" + branch, None, start),
            RefUpdate(self.own_ref, own_old, beat_oid),
            *self._revoke_updates(snap, revoke, token, name),
            *(RefUpdate(job_branch_ref(w, j, t), None, new_main) for w, j, t in handed),
            # and each one's marker, so that its peeks see it has a job to take up
            *(RefUpdate(handed_ref(w), snap.refs.get(handed_ref(w)), new_main)
              for w, _, _ in handed),
        ]
        job = JobHolding(name, token, attempt, branch, start, resumed,
                         confined_from=start if resumed is None else None)
        return _Claim(updates, job, beat, beat_oid, own_old, revoke, snap.folds, superseded)

    def _resume_from(
        self, new_main: Oid, previous: Entry
    ) -> tuple[Oid, str | None, Oid | None]:
        """Where a retried job's branch starts: the claim's main branch commit merged with
        the previous attempt's branch, so that the new attempt finds what the last one
        wrote (a checkpoint, say); with that branch's name and the tip merged.  Without
        that branch, or when the two do not merge cleanly, the claim's commit alone; the
        previous branch stays on the remote."""
        holder = previous.worker or previous.was
        if not holder:
            return new_main, None, None
        branch = job_branch(holder, previous.job, previous.token)
        ref = "refs/heads/" + branch
        tip = self._fetch([ref]).get(ref)
        if tip is None or self._holds(new_main, tip):
            return new_main, None, None
        merged = self.transport.merge(new_main, tip)
        if not merged.clean:
            self.journal(ev.ResumeConflict(job=previous.job, branch=branch))
            return new_main, None, None
        start = self.transport.write_commit(
            parents=[new_main, tip], tree=merged.tree,
            message=f"distribute: resume {previous.job} from {branch}",
        )
        return start, branch, tip

    def _push_claim(self, claim: _Claim, unlocked: bool = False) -> bool:
        """Push ``claim``; when it lands, this worker runs its job."""
        sent = self.clock()
        if not self.push(claim.updates):
            return False
        job = claim.job
        self.beat, self.beat_oid, self.beat_sent_at = claim.beat, claim.beat_oid, sent
        self.revoked = False
        self.job = job
        if claim.superseded is not None:
            self.superseded.append(claim.superseded)
        self._journal_folds(claim.folds)
        if unlocked:
            self.journal(ev.LockAcquire(token=job.token, takeover=False, previous="",
                                        unlocked=True))
        self.journal(ev.Claim(
            job=job.job, token=job.token, attempt=job.attempt, branch=job.branch,
            revoked=claim.revoke,
        ))
        # the push's answer came a whole lease after it was sent (it stalled, or its answer
        # was lost and read back later): the job may have been taken over meanwhile, and a
        # holder stops acting a lease after its send.  If our record says so, the job is
        # dropped before anything runs it; else the renewal confirms it.
        if holder_verdict(sent, self.clock(), self.lease) == "lost":
            try:
                renewed = self.renew_beat()
            except DistributeError:
                # the claim landed; whether it was revoked since is for the heartbeat to
                # learn (a retry of the whole claim would find the holding expired)
                return True
            if not renewed and self.revoked:
                self.job = None
        return True

    def _replan(self, snap: Snapshot) -> ev.NotClaimed:
        """The orphan we meant to retry changed; release and let the caller start over."""
        self.release(snap.main)
        return ev.NotClaimed.REPLAN

    # ---- while running -------------------------------------------------------
    def adopt(self, job: JobHolding) -> None:
        """Take up a job this worker's earlier process was running (a restart): its
        ``tip`` must be the job branch's value on the remote.  Later steps are fenced
        as usual, so a job taken over meanwhile is refused with ``LeaseLost``."""
        with self.mutex:
            if self.job is not None:
                raise DistributeError(f"this worker already runs {self.job.job!r}")
            self.job = job
            self.journal(ev.Adopt(job=job.job, token=job.token, tip=job.tip))

    def drop_job(self) -> None:
        """Forget the running job without writing anything (after :meth:`adopt` only
        saved what a dead attempt left; the ledger decides what happens next)."""
        with self.mutex:
            self.job = None

    def update(self, tip: Oid, within_folder: bool = False) -> None:
        """Push a new tip of the job branch (fast-forward of our own branch).

        ``within_folder``: ``tip`` changes nothing but files in the job's own folder (the
        caller knows what it committed); a finish that parks then needs no merge to know
        its branch merges cleanly (:meth:`_merges_alone`).

        The push runs without :attr:`mutex`: a checkpoint may take minutes to upload,
        and the heartbeat must keep this worker's liveness record moving meanwhile, or
        another worker would take the job over mid-upload.  Only this worker's own
        thread moves its job branch (and :attr:`job`), so the heartbeat cannot meet
        it there; a revocation it learns of meanwhile is raised below."""
        with self.mutex:
            job = self._job()
            if not within_folder:
                job.confined_from = None
        for _ in range(3):
            if self.push([RefUpdate(job.branch_ref, job.tip, tip)]):
                break
            current = self._fetch([job.branch_ref]).get(job.branch_ref)
            if current == tip:
                break
            if current != job.tip:
                with self.mutex:
                    self.job = None
                raise LeaseLost(
                    f"the branch {job.branch} of job {job.job!r} was changed by someone else; "
                    "this update was not pushed",
                    job=job.job,
                )
            # the branch is still at our last tip: the push just did not land
        else:
            raise TransportError(
                f"the update of branch {job.branch} was refused three times; retrying"
            )
        with self.mutex:
            job.tip = tip
            self.journal(ev.Update(job=job.job, token=job.token, tip=tip))
            if self.revoked:
                self.job = None
                raise LeaseLost(
                    f"job {job.job!r} was taken over by another worker after this worker's lease "
                    f"expired; the update is kept on branch {job.branch}",
                    job=job.job,
                )

    def _job(self) -> JobHolding:
        if self.job is None:
            raise NoRunningJob("this worker runs no job; call get_next_job first")
        return self.job

    def finish(
        self, sleep: Callable[[float], None], delays: Callable[[], float], park: bool = True,
        park_first: bool = False,
    ) -> ev.FinishOutcome:
        """Merge the job branch into the main branch and move the job to ``done.txt``.

        With ``park``, a finish whose push lost the race for the main branch (someone
        else moved it meanwhile) is recorded on this worker's own liveness record
        instead (:meth:`park_step`): durable there, fenced like the finish itself, and
        folded into the main branch by the next worker that moves it.  So a finish
        never races a second time, and a job moves the main branch once when several
        workers run.  Without ``park``, lost races are retried, sleeping ``delays()``
        between tries.  With ``park_first`` (other workers are about, so one of them
        claims soon), the finish is parked without a push of the main branch, after one
        fetch of it: a branch that does not merge cleanly onto it (with what is parked
        folded in) is recorded failed and raises, as without parking.

        Raises:
            LeaseLost: the job was taken over; nothing changed, the branch stays.
            MergeConflict: the job is recorded in ``failed.txt``; the branch stays.
        """
        if park and park_first:
            # one look at the main branch as it is now (with what is parked on it): a
            # branch that conflicts is recorded failed and raises here, as without
            # parking; one that merges cleanly is parked, with no race for the branch
            tried = self._finish_try(park_instead=True)
            if tried is _Lost.PARKED:
                return ev.FinishOutcome.PARKED
            if not isinstance(tried, _Lost):
                return ev.FinishOutcome.MERGED  # an earlier try had landed
            if tried is _Lost.READY and self._park():
                self._remember_after_finish()
                return ev.FinishOutcome.PARKED

        def step() -> ev.FinishOutcome | None:
            landed = self._finish_try()
            if landed is _Lost.PARKED:
                return ev.FinishOutcome.PARKED
            if not isinstance(landed, _Lost):
                self._remember_after_finish(landed)
                return ev.FinishOutcome.MERGED
            if landed is _Lost.MAIN and park and self._park():
                return ev.FinishOutcome.PARKED
            return None

        return self._until_landed(step, sleep, delays)

    def _remember_after_finish(self, main: Oid | None = None) -> None:
        """Keep what the finish that just landed leaves this worker knowing of the
        remote (:attr:`after_finish`): the refs its fetch read, with the main branch it
        moved to (``main``; its own record, which a park moved, is filled in when the
        view is taken).  Only the values: the snapshot is made if and when the next
        wait takes them, so the finish returns as soon as it has landed."""
        with self.mutex:
            values = dict(self._finish_read)
            if main is not None:
                values[self.main_ref] = main
            self.after_finish = (values, self.clock())

    def take_after_finish(self, max_age: float) -> Snapshot | None:
        """A snapshot of :attr:`after_finish` if it is at most ``max_age`` seconds old;
        once either way (the next caller gets ``None``)."""
        with self.mutex:
            kept, self.after_finish = self.after_finish, None
            if kept is None or self.clock() - kept[1] > max_age:
                return None
            values = kept[0]
            if self.beat_oid is not None:  # the park's record, or a renewal since
                values[self.own_ref] = self.beat_oid
            try:
                snap = self._snapshot(values)
            except DistributeError:  # the next wait looks for itself
                return None
            self.stats.count("views_reused")
            return snap

    def _park(self) -> bool:
        """:meth:`park_step`, a few times: ``False`` when our record kept moving (an
        earlier life of this worker writing it); the caller tries the finish again."""
        return any(self.park_step() for _ in range(3))

    def park_step(self) -> bool:
        """Record the running job's finish on this worker's liveness record (see
        :meth:`finish`).  The push is a compare-and-swap from this worker's last record,
        which a takeover of its job replaces (revoked) by a compare-and-swap too, so at
        most one of the two lands.  Returns whether it landed; ``False``: the record
        moved (an earlier life of this worker wrote it), try again.

        Raises:
            LeaseLost: the record says this worker's job was taken over.
        """
        with self.mutex:
            job = self._job()
            entry = Parked(job.job, job.token, job.attempt, job.tip)
            # already listed when an earlier try landed unseen and was taken up from our
            # record (its answer was lost, and the retry's CAS met it)
            parked = self.beat.parked + (() if entry in self.beat.parked else (entry,))
            beat = replace(self.beat.next(()), finishing="", parked=parked)
            new_oid = self._beat_commit(beat)
            sent = self.clock()
            if self.push([RefUpdate(self.own_ref, self.beat_oid, new_oid)]):
                self.beat, self.beat_oid, self.beat_sent_at = beat, new_oid, sent
                self.stats.count("parked")
                self.journal(ev.Finish(job=job.job, token=job.token, tip=job.tip,
                                       outcome=ev.FinishOutcome.PARKED))
                self.job = None
                return True
            current, revoked = self._own_record()
            if revoked is not None:
                self.revoked, self.revoked_by = True, revoked.revoked_by
                self.journal(ev.Revoked(by=revoked.revoked_by, token=revoked.token))
                self.journal(ev.FinishRefused(job=job.job, token=job.token))
                self.job = None
                raise LeaseLost(
                    f"job {job.job!r} was taken over by {revoked.revoked_by or 'another worker'} "
                    f"before its finish landed; its results stay on branch {job.branch}",
                    job=job.job,
                )
            self.beat_oid = current
            return False

    def _until_landed(
        self, step: Callable[[], T | None], sleep: Callable[[float], None],
        delays: Callable[[], float],
    ) -> T:
        """Run a step on the main branch until it lands (it returns ``None`` when it
        lost a race).  After :data:`FINISH_PRIORITY_AFTER` losses in a row, this worker's
        liveness record asks the others to claim nothing until its job is finished
        (``Beat.finishing``); from then on only moves already under way can beat it, at
        most two per other worker (a claim decided before it saw the request, and that
        worker's own finish), so the step lands within
        ``FINISH_PRIORITY_AFTER + 2 * (workers - 1)`` tries."""
        lost = 0
        while True:
            result = step()
            if result is not None:
                return result
            lost += 1
            if lost == FINISH_PRIORITY_AFTER and self.job is not None:
                self.ask_for_priority()
            sleep(delays())

    def ask_for_priority(self) -> bool:
        """Mark this worker's liveness record with the job it is finishing (see
        :meth:`_until_landed`); returns whether the record landed."""
        with self.mutex:
            job = self._job()
            beat = replace(self.beat.next((job.job,)), finishing=job.job)
            new_oid = self._beat_commit(beat)
            sent = self.clock()
            if not self.push([RefUpdate(self.own_ref, self.beat_oid, new_oid)]):
                return False  # revoked, or our record moved: the finish itself will tell
            self.beat, self.beat_oid, self.beat_sent_at = beat, new_oid, sent
            self.stats.count("priority_requests")
            self.journal(ev.FinishPriority(job=job.job, token=job.token))
            return True

    def others_finishing(self, snap: Snapshot) -> str | None:
        """A live worker whose finish asked for its turn (``Beat.finishing``) and still
        holds that job: claims wait until it lands.  ``None`` when there is none."""
        now = self.clock()
        for ref, oid in snap.refs.items():
            if not ref.startswith(WORKERS_PREFIX) or ref == self.own_ref:
                continue
            beat = self.beat_at(oid)
            if beat is None or not beat.finishing or beat.gone or beat.revoked:
                continue
            if self.watch.expired(ref, now):
                continue
            entry = snap.ledger.running_entry(beat.finishing)
            if entry is not None and entry.worker == beat.worker:
                return beat.worker
        return None

    def finish_step(self) -> Oid | None:
        """One try of :meth:`finish` without parking: the new main branch commit, or
        ``None`` when the push lost a race."""
        landed = self._finish_try()
        if landed is _Lost.PARKED:
            return self._finish_read[self.main_ref]  # finished: the main branch it saw
        return None if isinstance(landed, _Lost) else landed

    def _finish_try(self, park_instead: bool = False) -> Oid | _Lost:
        """One try of the finish on the main branch: the new main branch commit, or
        which push lost its race (the finish's own, or a merge conflict's record).
        With ``park_instead``, a branch that merges cleanly is not pushed: ``READY``
        says it is to be parked (:meth:`park_step`)."""
        job = self._job()
        # the parked finishes go first (as at any move of the main branch): a finish that
        # lands after them is merged onto their results.  The fetch may bring much (what
        # others finished meanwhile), so the heartbeat does not wait for it
        # (the lock too, so that what it read can serve the next wait: see after_finish)
        values = self._fetch([self.main_ref, LOCK_REF, WORKERS_PREFIX + "*", HANDED_PREFIX + "*"])
        with self.mutex:
            main = values.get(self.main_ref)
            if main is None:
                raise RemoteStateError(f"the remote lost its branch {self.branch!r}")
            self._finish_read = values
            raw = self.read_ledger(main)
            ours = runs(raw, job.job, self.worker, job.token)
            if not ours:
                # not ours by this read; but a fetch reads refs one at a time, and the
                # liveness refs sort before the main branch: a push of both (our own
                # claim, say) can show here with the main branch from before it.  The
                # verdict (refused, or landed earlier) is made on the main branch alone
                main = self._fetch([self.main_ref]).get(self.main_ref) or main
                values[self.main_ref] = main
                raw = self.read_ledger(main)
                ours = runs(raw, job.job, self.worker, job.token)
            # a job is in one ledger at a time: while it runs as ours it is not done, and
            # done.txt (a line per finished job) need not be searched
            if not ours and self._recorded(raw.done, job):
                # an earlier try landed though its answer was lost
                self.journal(ev.Finish(job=job.job, token=job.token, tip=job.tip))
                self.merged.append((job.branch_ref, job.tip))
                self.job = None
                return main
            parked = self._parked_at(values, raw)
            if any(w == self.worker and (p.job, p.token) == (job.job, job.token)
                   for w, p in parked):
                # an earlier try parked it, and the answer was lost: it is finished
                self.stats.count("parked")
                self.journal(ev.Finish(job=job.job, token=job.token, tip=job.tip,
                                       outcome=ev.FinishOutcome.PARKED))
                self.job = None
                return _Lost.PARKED
            # a park that is known to merge cleanly needs no merge: the folds are written
            # by the step that pushes them
            alone = park_instead and self._merges_alone(job, main, parked)
            folds = self._fold(main, raw, parked) if parked and not alone else None
            base, ledger = (folds.tip, folds.ledger) if folds else (main, raw)
            try:
                done = ledger.finish(job.job, self.worker, job.token)
            except LeaseLost:
                self.journal(ev.FinishRefused(job=job.job, token=job.token))
                self.job = None
                raise
            if alone:
                return _Lost.READY
            merged = self.transport.merge(base, job.tip)
            if not merged.clean:
                self._record_conflict(main, base, ledger, job, merged.conflicts, folds)
                return _Lost.CONFLICT
            if park_instead:
                return _Lost.READY
            new_main = self.transport.write_commit(
                parents=[base, job.tip],
                tree=merged.tree,
                changes=done.to_files(),
                message=(
                    f"distribute: finish {job.job} by {self.worker} "
                    f"(token {job.token}, attempt {job.attempt})"
                ),
            )
            if not self.push([RefUpdate(self.main_ref, main, new_main)]):
                self.stats.count("finish_lost")
                return _Lost.MAIN
            self._journal_folds(folds)
            self.journal(ev.Finish(job=job.job, token=job.token, tip=job.tip))
            self.merged.append((job.branch_ref, job.tip))
            self.job = None
            return new_main

    def _merges_alone(
        self, job: JobHolding, main: Oid, parked: Sequence[tuple[str, Parked]],
    ) -> bool:
        """Is ``job``'s branch known to merge cleanly onto ``main`` with ``parked`` folded
        in, without running a merge?  It is when every commit on the branch since it
        started (``confined_from``) wrote nothing but the job's own folder, and the main
        branch and every parked tip hold that folder exactly as the branch started with
        it, with folders (not files) on the way to it: then nothing on the other side
        touches what the branch changed, and the merges are clean whatever else they
        hold.  In a fleet most finishes park, and checking by merging would merge every
        parked finish again at each one.  ``False``: not known; a merge tells."""
        start = job.confined_from
        if start is None:
            return False
        folder = job_dir(job.job)
        above = [folder[:i] for i, c in enumerate(folder) if c == "/"]
        want = self.transport.entry(start, folder)
        for commit in dict.fromkeys((main, *(p.tip for _, p in parked))):
            if self.transport.entry(commit, folder) != want:
                return False
            for path in above:
                found = self.transport.entry(commit, path)
                if found is not None and found[0] != "folder":
                    return False
        return True

    def prune_merged(self, at_least: int = PRUNE_BATCH) -> int:
        """Delete the remote branches of the jobs this worker finished, and of the released
        attempts its retries started from, once ``at_least`` of them (or of the branches
        to archive) wait: the first in one atomic push of deletions, the second in
        another (each from the tip merged, so a branch that moved stays); archive the
        branches of the jobs that failed here for good (:func:`archive_branches`, in
        this worker's archive, the deletions in the same push); return how many went.

        A finished job's commits stay on the remote: the main branch's finish commit
        has the branch's tip as its second parent, so the ref only costs (every ref is
        advertised on every fetch and push).  A released attempt's commits are the
        second parent of its retry's first commit, on the retry's branch.  Best effort:
        a refused or failed push leaves that batch of branches in place (``distribute
        gc`` deletes those of done jobs later, and archives those of failed ones).
        """
        with self.mutex:
            waiting = len(self.merged) + len(self.superseded) + len(self.failed_here)
            if not waiting or waiting < at_least:
                return 0
            batches = [list(dict.fromkeys(self.merged)), list(dict.fromkeys(self.superseded))]
            failed = dict(self.failed_here)
            self.merged, self.superseded, self.failed_here = [], [], []
            deleted = 0
            for batch in batches:
                if not batch:
                    continue
                try:
                    landed = self.push([RefUpdate(ref, tip, None) for ref, tip in batch])
                except DistributeError:
                    continue
                deleted += len(batch) if landed else 0
        if failed:
            # its fetch of the archive runs without the mutex, as every read of the remote
            with contextlib.suppress(DistributeError):  # else left for `distribute gc`
                deleted += archive_branches(self.transport, failed, push=self.push)
        return deleted

    def queue_leftovers(self) -> int:
        """Queue for deletion (:meth:`prune_merged`) this worker's branches of the jobs it
        finished (``done.txt`` lists them under this worker and the branch's token) that
        the main branch holds and this process did not finish, and for archiving those
        of the jobs that failed for good under it (``failed.txt`` lists them so, not on
        a merge conflict): those an earlier life left when it was killed before its
        batch.  A listing of this worker's branches and a fetch of the main branch (and
        a second of each when ``failed.txt`` names this worker); return how many were
        queued."""
        found = merged_branches(self.transport, self.branch, self.worker, finished_only=True)
        with self.mutex:
            seen = self.after_finish[0].get(self.main_ref) if self.after_finish else None
        failed: dict[str, Oid] = {}
        # what the finish just read tells whether failed.txt names this worker at all:
        # most often not, and then a listing and a fetch are saved
        if seen is None or any(e.worker == self.worker for e in self.read_ledger(seen).failed):
            failed = archivable_branches(self.transport, self.branch, worker=self.worker)
        with self.mutex:
            known = {ref for ref, _ in (*self.merged, *self.superseded, *self.failed_here)}
            new = [(ref, tip) for ref, tip in found.items() if ref not in known]
            self.merged.extend(new)
            lost = [(ref, tip) for ref, tip in failed.items() if ref not in known]
            self.failed_here.extend(lost)
            return len(new) + len(lost)

    def _record_conflict(
        self, main: Oid, base: Oid, ledger: Ledger, job: JobHolding, conflicts: Sequence[str],
        folds: Folds | None = None,
    ) -> None:
        """Move the job to ``failed.txt`` (its branch kept), on ``base`` (``main`` with the
        ``folds`` that ``ledger`` includes); raise :class:`MergeConflict` once it landed."""
        reason = conflict_reason(conflicts, job.branch)
        failed = ledger.fail(job.job, self.worker, job.token, reason, max_attempts=0)
        new_main = self.transport.write_commit(
            parents=[base], base=base, changes=failed.changed_files(ledger),
            message=f"distribute: job {job.job} failed: {reason}",
        )
        if self.push([RefUpdate(self.main_ref, main, new_main)]):
            self._journal_folds(folds)
            self.journal(ev.Fail(job=job.job, token=job.token, reason=reason))
            self.job = None
            raise MergeConflict(
                f"job {job.job!r} conflicts with the main branch in {', '.join(conflicts)}; it is "
                f"recorded in failed.txt and its results stay on branch {job.branch} -- merge "
                "it by hand, then `distribute requeue` it if it should run again",
                job=job.job,
                paths=list(conflicts),
                branch=job.branch,
            )

    def fail(
        self, reason: str, sleep: Callable[[float], None], delays: Callable[[], float],
        interrupted: bool = False,
    ) -> ev.FailOutcome:
        """Record a failed (or ``interrupted``) attempt; return what it did to the job.
        Retries lost races."""
        return self._until_landed(partial(self.fail_step, reason, interrupted), sleep, delays)

    def fail_step(self, reason: str, interrupted: bool = False) -> ev.FailOutcome | None:
        """One try of :meth:`fail`: ``None`` when the push lost a race."""
        job = self._job()
        main = self.transport.fetch([self.main_ref]).get(self.main_ref)  # not under the mutex
        with self.mutex:
            if main is None:
                raise RemoteStateError(f"the remote lost its branch {self.branch!r}")
            ledger = self.read_ledger(main)
            landed = self._landed_fail(ledger, job)
            if landed is not None:
                self.journal(ev.Fail(job=job.job, token=job.token, reason=reason, outcome=landed))
                if landed is ev.FailOutcome.FAILED:
                    self.failed_here.append((job.branch_ref, job.tip))
                self.job = None
                return landed
            try:
                after = ledger.fail(
                    job.job, self.worker, job.token, reason, self.max_attempts,
                    interrupted=interrupted, max_interruptions=self.max_interruptions,
                )
            except LeaseLost:
                self.job = None
                raise
            retry = after.running_entry(job.job) is not None
            outcome = ev.FailOutcome.RETRY if retry else ev.FailOutcome.FAILED
            new_main = self.transport.write_commit(
                parents=[main], base=main, changes=after.changed_files(ledger),
                message=f"distribute: job {job.job} attempt {job.attempt} failed ({outcome})",
            )
            if not self.push([RefUpdate(self.main_ref, main, new_main)]):
                return None
            self.journal(ev.Fail(job=job.job, token=job.token, reason=reason, outcome=outcome))
            if outcome is ev.FailOutcome.FAILED:
                self.failed_here.append((job.branch_ref, job.tip))
            self.job = None
            return outcome

    def _landed_fail(self, ledger: Ledger, job: JobHolding) -> ev.FailOutcome | None:
        """Did an earlier try of :meth:`fail_step` land (its answer lost)?"""
        entry = ledger.running_entry(job.job)
        if entry is not None and entry.released and entry.token == job.token:
            return ev.FailOutcome.RETRY
        if self._recorded(ledger.failed, job):
            return ev.FailOutcome.FAILED
        return None

    def _recorded(self, entries: Sequence[Entry], job: JobHolding) -> bool:
        """Is ``job``, under this worker and its token, among ``entries``?"""
        return any(
            e.job == job.job and e.token == job.token and e.worker == self.worker
            for e in entries
        )


def record_parents(beat: Beat) -> list[Oid]:
    """The parents of a liveness record's (empty) commit: the tips of the finishes it
    parks, so that a fetch of the record brings their results along."""
    return list(dict.fromkeys(p.tip for p in beat.parked))


def find_parked(
    refs: Mapping[str, Oid], ledger: Ledger, beat_at: Callable[[Oid], Beat | None],
) -> list[tuple[str, Parked]]:
    """The parked finishes the liveness records among ``refs`` hold (read by ``beat_at``)
    that are still to be folded (:func:`parked_valid`), as (worker, entry), in ref order."""
    found: list[tuple[str, Parked]] = []
    seen: set[tuple[str, int]] = set()
    for ref in sorted(refs):
        if not ref.startswith(WORKERS_PREFIX):
            continue
        beat = beat_at(refs[ref])
        if beat is None or [beat.worker] != _worker_name(ref):
            continue
        for p in beat.parked:
            if (p.job, p.token) not in seen and parked_valid(ledger, beat.worker, p):
                seen.add((p.job, p.token))
                found.append((beat.worker, p))
    return found


def fold_parked(
    transport: Transport, main: Oid, ledger: Ledger, parked: Sequence[tuple[str, Parked]],
) -> Folds:
    """Write, on ``main``, one commit per parked finish: the merge of its branch's tip with
    its ledger line moved to ``done.txt`` (the commit a finish of its own worker would
    have written), or on a merge conflict its line moved to ``failed.txt`` with the
    branch kept.  Nothing is pushed; the caller's push names ``main`` as the old value."""
    tip, entries = main, []
    for worker, p in parked:
        branch = job_branch(worker, p.job, p.token)
        try:
            merged = transport.merge(tip, p.tip)
        except DistributeError:
            # the objects come with the record's fetch; a record rewritten by a
            # revocation may lack them, and the job's branch still holds them
            transport.fetch(["refs/heads/" + branch])
            merged = transport.merge(tip, p.tip)
        if merged.clean:
            after = ledger.finish(p.job, worker, p.token)
            tip = transport.write_commit(
                parents=[tip, p.tip], tree=merged.tree, changes=after.to_files(),
                message=(f"distribute: finish {p.job} by {worker} "
                         f"(token {p.token}, attempt {p.attempt})"),
            )
        else:
            reason = conflict_reason(merged.conflicts, branch)
            after = ledger.fail(p.job, worker, p.token, reason, max_attempts=0)
            tip = transport.write_commit(
                parents=[tip], base=tip, changes=after.changed_files(ledger),
                message=f"distribute: job {p.job} failed: {reason}",
            )
        ledger = after
        entries.append((worker, p, merged.clean))
    return Folds(tip, ledger, tuple(entries))


#: how the reason ``failed.txt`` gives for a finish whose branch did not merge begins
CONFLICT_REASON = "merge conflict in "


def conflict_reason(conflicts: Sequence[str], branch: str) -> str:
    """The reason ``failed.txt`` gives for a finish whose branch did not merge."""
    return f"{CONFLICT_REASON}{', '.join(conflicts)}; results kept on branch {branch}"


def parked_valid(ledger: Ledger, worker: str, parked: Parked) -> bool:
    """Is a finish that ``worker`` parked still to be folded: does ``ledger`` list its job
    as running under that worker and token?  Once folded (in ``done.txt`` or, on a
    merge conflict, ``failed.txt``), or once an admin command or a takeover changed the
    line, it is not: fencing tokens never repeat, so that line never comes back."""
    return runs(ledger, parked.job, worker, parked.token)


def runs(ledger: Ledger, job: str, worker: str, token: int) -> bool:
    """Does ``ledger`` list ``job`` as running under ``worker`` and ``token``?"""
    entry = ledger.running_entry(job)
    return (entry is not None and not entry.released and entry.worker == worker
            and entry.token == token)


# ---- writes from outside a worker's steps ------------------------------------------------
def read_lock(transport: Transport) -> tuple[Oid | None, LockState]:
    """The lock ref's value and the lock record there (``None`` and a free lock: no ref)."""
    oid = transport.fetch([LOCK_REF]).get(LOCK_REF)
    if oid is None:
        return None, LockState()
    return oid, parse_lock_message(transport.commit_message(oid))


def _no_lock() -> RemoteStateError:
    return RemoteStateError(
        "the remote has no lock (refs/distribute/lock); prepare it with `distribute init REMOTE`"
    )


def break_lock(transport: Transport) -> tuple[LockState, LockState | None]:
    """CAS the lock from its observed value to free with the next token: a holder that
    was alive finds its next push refused (``distribute unlock``).

    Returns:
        ``(observed, new)``; ``new`` is ``None`` when the lock was free already.

    Raises:
        RemoteStateError: no lock ref, or the lock changed meanwhile.
    """
    oid, state = read_lock(transport)
    if oid is None:
        raise _no_lock()
    if state.free:
        return state, None
    new = LockState(token=state.token + 1)
    commit = transport.write_commit(parents=[oid], message=lock_message(new), changes={})
    if not transport.push([RefUpdate(LOCK_REF, oid, commit)]):
        _, now = read_lock(transport)
        who = f"held by {now.holder!r} (token {now.token})" if not now.free else "free"
        raise RemoteStateError(
            f"the lock changed while it was being broken (it is now {who}); nothing was "
            "written -- look again with `distribute status` before retrying"
        )
    return state, new


def new_lock(transport: Transport, old: Oid | None, token: int) -> RefUpdate:
    """The update that writes a lock anew: a free lock at ``token`` on a commit of its own,
    by compare-and-swap from ``old`` (``None``: the ref does not exist; else the damaged
    value being replaced).  ``token`` must be above every token the remote records, so
    that no later claim reuses one (see :func:`highest_token`)."""
    lock = transport.write_commit(
        parents=[], message=lock_message(LockState(token=token)), changes={}
    )
    return RefUpdate(LOCK_REF, old, lock)


def _ledger_files(transport: Transport, commit: Oid) -> dict[str, bytes | None]:
    return {name: transport.read_file(commit, name) for name in LEDGER_FILES}


#: sealed parts of ``done.txt`` parsed, by the id of their contents: a part is read and
#: parsed once per process, however many looks see it
_PARTS: dict[str, tuple[Entry, ...]] = {}
_PARTS_KEPT = 4096
_PARTS_LOCK = threading.Lock()


def read_parts(transport: Transport, commit: Oid) -> Parts:
    """The sealed parts of ``done.txt`` at ``commit`` (path, entries), in order."""
    listing = transport.folder(commit, DONE_PARTS)
    parts = []
    for name in parts_in_order(listing):
        path, oid = f"{DONE_PARTS}/{name}", listing[name]
        with _PARTS_LOCK:
            entries = _PARTS.get(oid)
        if entries is None:
            entries = parse_ledger_text(transport.read_file(commit, path) or b"", path, None)
            with _PARTS_LOCK:
                while len(_PARTS) >= _PARTS_KEPT:
                    del _PARTS[next(iter(_PARTS))]
                _PARTS[oid] = entries
        parts.append((path, entries))
    return tuple(parts)


def read_ledger(transport: Transport, commit: Oid, branch: str) -> Ledger:
    """The ledgers of the main branch ``branch`` at ``commit``, ``done.txt`` with its
    sealed parts."""
    return Ledger.from_files(_ledger_files(transport, commit), branch,
                             read_parts(transport, commit))


def highest_token(transport: Transport, main: Oid, branch: str) -> int:
    """The highest fencing token the remote records: in the ledgers at ``main`` and in
    the names of job branches (``jobs/<worker>/<job>/<token>``).  A lock written anew
    starts from it, so every later claim gets a token no earlier holding had (a lock
    holding that claimed nothing leaves no record, and needs none: its pushes name
    the old lock commit, which is gone)."""
    highest = 0
    files = _ledger_files(transport, main)
    if all(files.get(n) is not None for n in (RUNNING, DONE)):
        ledger = Ledger.from_files(files, branch, read_parts(transport, main))
        for entry in (*ledger.running, *ledger.done, *ledger.failed):
            highest = max(highest, entry.token)
    archived = read_archive(transport)
    for ref in (*transport.list_refs("refs/heads/" + JOB_BRANCH_PREFIX), *archived):
        last = ref.rsplit("/", 1)[-1]
        if last.isascii() and last.isdigit() and len(last) <= 18:
            highest = max(highest, int(last))
    return highest


def prepare_remote(transport: Transport, branch: str, files: Mapping[str, bytes]) -> None:
    """Make a remote ready for workers: the ledgers and ``files`` (name: content) on the
    main branch where missing, and the lock ref, in one atomic push (what exists is
    kept).  A remote whose lock was deleted (the repair of a damaged one) gets a lock
    above the tokens it records (:func:`highest_token`).

    Raises:
        RemoteStateError: the remote kept changing.
    """
    main_ref = "refs/heads/" + branch
    wanted = {**{name: b"" for name in LEDGER_FILES}, **files}
    for _ in range(20):
        values = transport.fetch([main_ref, LOCK_REF])
        main = values.get(main_ref)
        changes: dict[str, bytes | None] = {
            name: content for name, content in wanted.items()
            if main is None or transport.read_file(main, name) is None
        }
        updates = []
        if changes:
            new = transport.write_commit(
                parents=[main] if main else [], base=main, changes=changes,
                message="distribute: prepare the remote",
            )
            updates.append(RefUpdate(main_ref, main, new))
        if LOCK_REF not in values:
            token = highest_token(transport, main, branch) if main is not None else 0
            updates.append(new_lock(transport, None, token))
        if not updates or transport.push(updates):
            return
    raise RemoteStateError("the remote kept changing while it was being prepared; try again")


def repair_lock(transport: Transport, branch: str) -> tuple[Oid, LockState] | None:
    """Replace a lock ref that holds no lock record with a free lock whose token is
    above every token the remote records (compare-and-swap from the damaged value).

    Returns:
        ``(the damaged value, the new state)``, or ``None`` when the lock is readable
        (nothing to repair; see :func:`break_lock`).

    Raises:
        RemoteStateError: no lock ref, or it changed meanwhile.
    """
    main_ref = "refs/heads/" + branch
    values = transport.fetch([main_ref, LOCK_REF])
    damaged = values.get(LOCK_REF)
    if damaged is None:
        raise _no_lock()
    try:
        parse_lock_message(transport.commit_message(damaged))
        return None
    except RemoteStateError:
        pass
    main = values.get(main_ref)
    state = LockState(token=highest_token(transport, main, branch) if main is not None else 0)
    if not transport.push([new_lock(transport, damaged, state.token)]):
        raise RemoteStateError(
            "the lock changed while it was being repaired; nothing was written -- look "
            "again with `distribute status` before retrying"
        )
    return damaged, state


Edit = Callable[[Ledger, list[str]], "tuple[Ledger, list[str], str] | None"]


class EditTarget(Protocol):
    """What :class:`FencedEdit` reads the remote through (``distribute.remote.RemoteView``)."""

    transport: Transport
    main_ref: str

    def main(self) -> Oid: ...

    def ledger(self, main: Oid) -> Ledger: ...


class _LockLost(Exception):
    """Internal: the lock was broken while we edited under it."""


class FencedEdit:
    """Edit ``jobs.txt`` and the ledgers under the remote lock, in one atomic push.

    A worker's next-job function reads ``jobs.txt`` while it holds the lock; an
    edit made beside it (queueing, requeueing, cancelling) would make its claim
    conflict.  So every such edit takes the lock like a worker does
    (compare-and-swap from the observed value), then pushes ``{main branch: the
    edit, lock: released}`` in one atomic push.  If the lock was broken
    meanwhile (``distribute unlock``) the push is refused whole and the edit is
    redone on what is there now.  An edit is a pure function ``edit(ledger,
    queue) -> (ledger, queue, message) | None`` so that it can run again on a
    newer state (the edits themselves are in :mod:`distribute.fenced`).

    An edit that takes a job from a live holding (``cancel`` of a running job,
    ``requeue --force``) revokes that holder's liveness record in the same atomic
    push, as a takeover by another worker does: the holder learns it at its next
    heartbeat, stops the job's command, and can no longer finish or update it
    (its ledger line is gone).  If the holder wrote its record meanwhile the push
    is refused and the edit is made again on the new values.

    Args:
        view: the remote.
        who: the lock holder name written to the lock record.
        wait: seconds to wait for a lock whose record does not change before
            giving up (a dead holder's lock; ``distribute unlock`` breaks it).
    """

    def __init__(
        self,
        view: EditTarget,
        who: str,
        wait: float = 60.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.who = who
        self.wait = wait
        self.session = uuid.uuid4().hex
        self._sleep = sleep
        self._clock = clock

    def apply(self, edit: Edit) -> bool:
        """Apply ``edit(ledger, queue) -> (ledger, queue, message) | None``.

        ``edit`` may run more than once (on newer states after lost races); it
        must be a pure function of its arguments.  Returns ``True`` when a
        commit was pushed, ``False`` when ``edit`` had nothing to change.
        """
        self.view.ledger(self.view.main())  # a remote without ledgers: say so before locking
        backoff = Backoff(0.05, 1.0)
        for _ in range(100):
            held = self._acquire()
            try:
                return self._edit(held, edit)
            except _LockLost:
                self._sleep(backoff.next())
            except BaseException:
                self._release(held)
                raise
        raise RemoteStateError("the lock kept being broken while editing; try again")

    def _acquire(self) -> tuple[Oid, LockState]:
        """Take a free lock, waiting while it is held; give up, naming ``distribute
        unlock``, once the holding has been seen unchanged for :attr:`wait` (the same
        expiry by observation, :class:`LeaseWatch`, that workers use).

        Unlike a worker (:func:`decide_acquire`), an edit never takes a holding over:
        it does not know the holder's lease (the lock record does not say it), and
        its holder name is per process, not per edit, so two edits of one process
        must not read each other's holdings as an earlier life's."""
        transport = self.view.transport
        backoff = Backoff(0.05, 1.0)
        watch = LeaseWatch(self.wait, 0.0)
        started = self._clock()
        while True:
            if self._clock() - started > 5 * self.wait:
                raise RemoteStateError(
                    f"the lock stayed busy for {5 * self.wait:.0f} s (workers kept taking it); "
                    "try again"
                )
            oid, state = read_lock(transport)
            if oid is None:
                raise _no_lock()
            if state.free:
                held = state.acquired_by(self.who, self.session, uuid.uuid4().hex[:12])
                new = transport.write_commit(parents=[oid], message=lock_message(held), changes={})
                if transport.push([RefUpdate(LOCK_REF, oid, new)]):
                    return new, held
                continue
            now = self._clock()
            watch.observe(LOCK_REF, oid, now)
            if watch.expired(LOCK_REF, now):
                raise RemoteStateError(
                    f"the lock is held by {state.holder!r} (token {state.token}) and has not "
                    f"changed for {self.wait:.0f} s; if that worker is dead, break the lock "
                    "with `distribute unlock REMOTE`, or try again later"
                )
            self._sleep(backoff.next())

    def _edit(self, held: tuple[Oid, LockState], edit: Edit) -> bool:
        transport = self.view.transport
        held_oid, state = held
        for _ in range(50):
            main = self.view.main()
            raw = self.view.ledger(main)
            # finishes parked on liveness records are folded in first, in the same push:
            # an edit must see a job whose finish landed as done, not as running
            records = transport.fetch([WORKERS_PREFIX + "*"])
            folds = fold_parked(transport, main, raw, find_parked(records, raw, self._beat_at))
            base, ledger = folds.tip, folds.ledger
            # the queue as the folds left it: a job's results may edit jobs.txt
            queue = read_queue((transport.read_file(base, JOBS_FILE) or b"").decode("utf-8"))
            out = edit(ledger, queue)
            changes: dict[str, bytes | None] = {}
            if out is not None:
                new_ledger, new_queue, message = out
                changes = new_ledger.changed_files(ledger)
                if new_queue != queue:
                    changes[JOBS_FILE] = format_queue(new_queue).encode("utf-8")
            if not changes:
                self._release(held)
                return False
            assert out is not None
            new_main = transport.write_commit(
                parents=[base], base=base, changes=changes, message=out[2]
            )
            released = transport.write_commit(
                parents=[held_oid], message=lock_message(state.released(new_main)), changes={}
            )
            # revoked from the very values the folds were read from: a park that landed
            # since then refuses this push (at most one of a park and a revocation lands)
            revocations = self._revocations(ledger, out[0], state.token, records)
            if transport.push(
                [RefUpdate(self.view.main_ref, main, new_main),
                 RefUpdate(LOCK_REF, held_oid, released), *revocations]
            ):
                return True
            if transport.list_refs(LOCK_REF).get(LOCK_REF) != held_oid:
                raise _LockLost()
        raise RemoteStateError("the main branch kept moving; try again")

    def _beat_at(self, oid: Oid) -> Beat | None:
        try:
            return parse_beat_message(self.view.transport.commit_message(oid))
        except DistributeError:
            return None

    def _revocations(
        self, before: Ledger, after: Ledger, token: int, current: Mapping[str, Oid],
    ) -> list[RefUpdate]:
        """The liveness records to revoke: those of workers whose live holding of a job
        ``after`` no longer shows (compare-and-swap from their values in ``current``,
        the read the edit was decided on)."""
        taken: dict[str, set[str]] = {}  # the jobs taken, by worker
        for e in before.running:
            if not e.released and not _same_holding(after.running_entry(e.job), e):
                taken.setdefault(e.worker, set()).add(e.job)
        transport = self.view.transport
        updates = []
        for worker, jobs in sorted(taken.items()):
            ref = worker_ref(worker)
            old = current.get(ref)
            record = None
            if old is not None:
                with contextlib.suppress(DistributeError):
                    record = parse_beat_message(transport.commit_message(old))
            revoked = Beat.revoking(record, worker, self.who, token, taken=tuple(sorted(jobs)))
            new = transport.write_commit(
                parents=record_parents(revoked), message=beat_message(revoked), changes={}
            )
            updates.append(RefUpdate(ref, old, new))
        return updates

    def _release(self, held: tuple[Oid, LockState]) -> None:
        transport = self.view.transport
        held_oid, state = held
        with contextlib.suppress(DistributeError):
            released = transport.write_commit(
                parents=[held_oid], message=lock_message(state.released()), changes={}
            )
            transport.push([RefUpdate(LOCK_REF, held_oid, released)])


def merged_branches(transport: Transport, branch: str, worker: str | None = None,
                    finished_only: bool = False) -> dict[str, Oid]:  # fmt: skip
    """The job branches on the remote whose job ``done.txt`` lists (the finished
    attempt's branch, and those of earlier attempts a retry merged) and whose tip the
    main branch holds: what :func:`delete_merged_branches` deletes (ref name: tip).
    ``worker``: only that worker's branches.  ``finished_only``: only the branches of
    the attempts that finished (not of earlier ones: a taken-over holder may still
    push to its branch, so only a person's ``distribute gc`` deletes those)."""
    prefix = "refs/heads/" + JOB_BRANCH_PREFIX
    only = prefix if worker is None else f"{prefix}{encode_component(worker)}/"
    branches = transport.list_refs(only)
    if not branches:
        return {}
    main, ledger = _main_ledger(transport, branch)
    parts_of = {ref: ref[len(prefix):].split("/") for ref in branches}
    done_entries = _done_of(ledger, {parts[1] for parts in parts_of.values() if len(parts) == 3})
    done = {encode_component(e.job) for e in done_entries}
    finished = {job_branch_ref(e.worker, e.job, e.token) for e in done_entries}
    held = {job_branch_ref(e.worker, e.job, e.token) for e in ledger.running if not e.released}
    found = {}
    for ref, tip in branches.items():
        parts = parts_of[ref]
        if finished_only and ref not in finished:
            continue
        if len(parts) == 3 and parts[1] in done and ref not in held:
            with contextlib.suppress(DistributeError):  # a tip not in main's history: kept
                if holds(transport, main, tip):
                    found[ref] = tip
    return found


def _main_ledger(transport: Transport, branch: str) -> tuple[Oid, Ledger]:
    """The main branch ``branch`` (fetched) and its ledgers."""
    main_ref = "refs/heads/" + branch
    main = transport.fetch([main_ref]).get(main_ref)
    if main is None:
        raise RemoteStateError(f"the remote has no branch {branch!r}")
    return main, read_ledger(transport, main, branch)


def _done_of(ledger: Ledger, components: set[str]) -> list[Entry]:
    """The lines of ``done.txt`` whose job encodes to one of ``components`` (job
    components of branch names).  Cheap with many done jobs and few branches: the
    components are decoded and matched by name (a match may still encode differently:
    the caller compares encodings); a hashed (long) name's component cannot be decoded,
    and then every line is encoded."""
    if any("%%" in c for c in components):
        return [e for e in ledger.done if encode_component(e.job) in components]
    names = set()
    for c in components:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            names.add(decode_component(c))
    return [e for e in ledger.done if e.job in names]


def delete_merged_branches(
    transport: Transport, branches: Mapping[str, Oid], *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete ``branches`` (ref name: tip, from :func:`merged_branches`) in pushes of
    :data:`GC_BATCH`, each deletion from the tip seen (``distribute gc``); return how
    many went.  A batch refused because one of its branches moved is tried again one
    branch at a time."""
    items = sorted(branches.items())
    deleted = 0
    for start in range(0, len(items), GC_BATCH):
        batch = items[start:start + GC_BATCH]
        if transport.push([RefUpdate(ref, tip, None) for ref, tip in batch]):
            deleted += len(batch)
        else:
            deleted += sum(transport.push([RefUpdate(ref, tip, None)]) for ref, tip in batch)
        if progress is not None:
            progress(deleted)
    return deleted


# ---- the archive of job branches ----------------------------------------------------------
#: the archives: job branches kept without a ref each, one archive per worker that made
#: them (``<prefix><encoded worker>``, so their number follows the fleet's size, as the
#: liveness records do).  An archive is a chain of commits, each with the chain's commit
#: before it as first parent and up to :data:`ARCHIVE_PARENTS` archived tips as the
#: others, so everything the branches held stays reachable; the last commit's
#: :data:`ARCHIVE_FILE` lists every branch archived there with its tip.
ARCHIVE_PREFIX = "refs/distribute/archive/"
ARCHIVE_FILE = "archived.txt"
ARCHIVE_PARENTS = 16
_ARCHIVE_TRIES = 5


def archive_ref(branch_ref: str) -> str:
    """The archive a job branch (``refs/heads/jobs/<worker>/<job>/<token>``) goes to:
    its worker's."""
    worker = branch_ref[len("refs/heads/" + JOB_BRANCH_PREFIX):].split("/", 1)[0]
    return ARCHIVE_PREFIX + worker


def read_archive(
    transport: Transport, branches: Sequence[str] | None = None,
) -> dict[str, Oid]:
    """What the archives list: branch ref -> tip (the tips fetched).  ``branches``: read
    only the archives those branches would be in; ``None``: every archive."""
    if branches is None:
        refs = sorted(transport.list_refs(ARCHIVE_PREFIX))
    else:
        refs = sorted({archive_ref(ref) for ref in branches})
    if not refs:
        return {}
    found: dict[str, Oid] = {}
    for head in transport.fetch(refs).values():
        found.update(parse_archive(transport.read_file(head, ARCHIVE_FILE) or b""))
    return found


def parse_archive(data: bytes) -> dict[str, Oid]:
    """``archived.txt``: one ``<branch><TAB><tip>`` line per archived branch (its short
    name, ``jobs/<worker>/<job>/<token>``); lines of another shape are skipped."""
    found: dict[str, Oid] = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        name, tab, tip = line.partition("\t")
        if tab and name.startswith(JOB_BRANCH_PREFIX):
            with contextlib.suppress(UsageError):
                found["refs/heads/" + name] = check_oid(tip)
    return found


def format_archive(branches: Mapping[str, Oid]) -> bytes:
    """The text of ``archived.txt`` listing ``branches`` (ref: tip), in their order."""
    return "".join(f"{ref.removeprefix('refs/heads/')}\t{tip}\n"
                   for ref, tip in branches.items()).encode("utf-8", "surrogateescape")


def archivable_branches(
    transport: Transport, branch: str, skip: Collection[str] = (), worker: str | None = None,
) -> dict[str, Oid]:
    """The job branches ``distribute gc`` archives (ref name: tip): every branch of a job
    ``failed.txt`` lists, and the branches of a done job whose tip the main branch does
    not hold (an attempt before a ``requeue``, an update pushed after a takeover).
    Kept: every branch of a job that runs or waits for a retry (a retry starts from
    the last attempt's branch), of a job neither done nor failed (queued again), and of
    a job that failed on a merge conflict (its reason names the branch to merge by
    hand).  ``skip``: refs left out (those :func:`merged_branches` found, say).
    ``worker``: only the branches of the jobs that failed for good under that worker,
    each the attempt ``failed.txt`` lists (what a worker archives itself).  The tips are
    as listed; those of done jobs' branches are fetched, to tell whether the main branch
    holds them (:func:`archive_branches` fetches every one again, to leave those that
    moved)."""
    prefix = "refs/heads/" + JOB_BRANCH_PREFIX
    only = prefix if worker is None else f"{prefix}{encode_component(worker)}/"
    branches = {ref: tip for ref, tip in transport.list_refs(only).items() if ref not in skip}
    if not branches:
        return {}
    main, ledger = _main_ledger(transport, branch)
    parts_of = {ref: ref[len(prefix):].split("/") for ref in branches}
    branches = {ref: tip for ref, tip in branches.items() if len(parts_of[ref]) == 3}
    jobs = {parts_of[ref][1] for ref in branches}
    failed = {encode_component(e.job): e for e in ledger.failed}
    done = {encode_component(e.job) for e in _done_of(ledger, jobs)} if worker is None else set()
    wanted = {}
    for ref, tip in branches.items():
        job = parts_of[ref][1]
        entry = failed.get(job)
        # a conflict's branch is to be merged by hand; a job neither failed nor done
        # runs, waits for a retry or is queued again
        kept = entry.reason.startswith(CONFLICT_REASON) if entry else job not in done
        if entry and worker is not None:
            kept = (kept or entry.worker != worker
                    or ref != job_branch_ref(entry.worker, entry.job, entry.token))
        if not kept:
            wanted[ref] = tip
    tips = transport.fetch(sorted(ref for ref in wanted if parts_of[ref][1] in done))
    found = {}
    for ref, tip in sorted(wanted.items()):
        if parts_of[ref][1] in done:
            fetched = tips.get(ref)
            if fetched is None:
                continue  # gone meanwhile
            tip = fetched
            with contextlib.suppress(DistributeError):
                if holds(transport, main, tip):
                    continue  # merged: gc deletes it (merged_branches)
        found[ref] = tip
    return found


def archive_branches(
    transport: Transport, branches: Mapping[str, Oid], *,
    progress: Callable[[int], None] | None = None,
    push: Callable[[Sequence[RefUpdate]], bool] | None = None,
) -> int:
    """Archive ``branches`` (ref name: tip, from :func:`archivable_branches`), each in its
    worker's archive, and delete their refs, :data:`GC_BATCH` to a push: an archive's
    move (a fast-forward from the value read) and the deletions (each from the tip
    archived) land together or not at all, so a branch leaves only once an archive
    holds its tip.  A branch that moved meanwhile is left as it is; a push refused
    because someone else archived meanwhile is built again.  ``push``: how to push
    (the transport's own by default).  Return how many went."""
    by_archive: dict[str, list[tuple[str, Oid]]] = {}
    for ref, tip in sorted(branches.items()):
        by_archive.setdefault(archive_ref(ref), []).append((ref, tip))
    archived = 0
    for ref, items in sorted(by_archive.items()):
        for start in range(0, len(items), GC_BATCH):
            archived += _archive_batch(transport, ref, items[start:start + GC_BATCH],
                                       push or transport.push)
            if progress is not None:
                progress(archived)
    return archived


def _archive_batch(
    transport: Transport, ref: str, batch: Sequence[tuple[str, Oid]],
    push: Callable[[Sequence[RefUpdate]], bool],
) -> int:
    for _ in range(_ARCHIVE_TRIES):
        now = transport.fetch([ref, *(branch for branch, _ in batch)])
        batch = [(branch, tip) for branch, tip in batch if now.get(branch) == tip]
        if not batch:
            return 0
        head = now.get(ref)
        listed = parse_archive(transport.read_file(head, ARCHIVE_FILE) or b"") if head else {}
        new = _archive_commits(transport, head, listed, batch)
        if push([RefUpdate(ref, head, new),
                 *(RefUpdate(branch, tip, None) for branch, tip in batch)]):
            return len(batch)
    return 0


def _archive_commits(
    transport: Transport, head: Oid | None, listed: Mapping[str, Oid],
    batch: Sequence[tuple[str, Oid]],
) -> Oid:
    """An archive's new last commit: a chain from ``head`` whose commits take the tips
    of ``batch`` as parents, :data:`ARCHIVE_PARENTS` at a time; the last one lists
    ``listed`` and ``batch``."""
    names: dict[Oid, list[str]] = {}
    for ref, tip in batch:
        names.setdefault(tip, []).append(ref)
    tips = list(names)
    tree = transport.commit_tree(head) if head is not None else None
    chunks = [tips[i:i + ARCHIVE_PARENTS] for i in range(0, len(tips), ARCHIVE_PARENTS)]
    parent = head
    for number, chunk in enumerate(chunks, 1):
        lines = "".join(f"{ref.removeprefix('refs/heads/')} {tip}\n"
                        for tip in chunk for ref in names[tip])
        last = number == len(chunks)
        changes = {ARCHIVE_FILE: format_archive({**listed, **dict(batch)})} if last else None
        parent = transport.write_commit(
            parents=[*([parent] if parent is not None else []), *chunk],
            tree=tree, changes=changes,
            message=f"distribute: archive {sum(len(names[t]) for t in chunk)} job "
                    f"branch(es)\n\n{lines}",
        )
    assert parent is not None
    return parent


def _same_holding(entry: Entry | None, held: Entry) -> bool:
    return entry is not None and (entry.worker, entry.token) == (held.worker, held.token)


def _worker_name(ref: str) -> list[str]:
    """The worker a liveness ref belongs to (none for a ref name that is no encoding)."""
    try:
        return [decode_component(ref[len(WORKERS_PREFIX):])]
    except ValueError:
        return []


__all__ = [
    "Coordinator",
    "Edit",
    "EditTarget",
    "FencedEdit",
    "Holding",
    "JobHolding",
    "LostHolding",
    "Snapshot",
    "Stats",
    "ARCHIVE_PREFIX",
    "archivable_branches",
    "archive_branches",
    "break_lock",
    "delete_merged_branches",
    "highest_token",
    "merged_branches",
    "new_lock",
    "prepare_remote",
    "read_ledger",
    "read_lock",
    "repair_lock",
]
