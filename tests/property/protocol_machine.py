"""A model-based state machine of protocol v1: workers, one shared remote, crashes, clocks, faults.

Theory of operation
-------------------
Two to five workers share one remote.  Each has its own
:class:`~distribute.coordination.Coordinator` (own transport, own session) and
its own host clock.  Every rule is one step of one worker -- observe, acquire,
plan (give up an orphan, retry one, or run the next-job function), claim,
release, update, finish, fail, heartbeat -- or something the world does: real
time passes; a host is suspended (it takes no step and its clock stands still
while the others run on); ``kill -9`` and a restart with a new session; a
push whose answer is lost (``unknown-applied``/``unknown-lost`` through the
remote's ``fault_hook``), that stalls while other workers act, or during which
the process is killed; an administrator queues a job.  Nothing runs on a
thread and nothing reads the wall clock, so every run replays exactly.

Steps.  ``act`` is a fair scheduler over every worker's main thread (the
Worker's loop: observe, acquire, plan, claim, then update and finish its job)
and its heartbeat thread (renew when due); hosts differ in speed, so a slow
host's leases run out while it still works.  The other rules take a step of a
worker Hypothesis chooses, out of the natural order.  Disruptions have a
budget per run.  After each run that passed, :meth:`ProtocolMachine.drain`
wakes every host, stops the faults, and lets the workers finish: every job
must end (guarantee 4), and a holder that slept through its takeover acts on
its lost job there.

Targeted rules.  Some stories need several steps in a row that random choices rarely
line up, so three rules play them whole, once per run: a job holder sleeps until its
job is taken over, then wakes and first tries to finish, update, renew or fail
(``holder_wakes_after_takeover``); a push to the main branch lands with its answer lost
and the others move the branch on before the read-back
(``answer_lost_while_others_move``); a worker is killed inside a push and its new
process acts at once (``restart_mid_step``).  A violation found meanwhile names the
scenario (:class:`Found`); ``test_targeted_rules.py`` shows each one catching a broken
coordinator.

Time.  One global real time ``now`` stands for the physical world.  A host's
monotonic clock reads ``base + rate * (now - slept)`` with ``base`` hours
apart between hosts and ``rate`` in [0.9, 1.1]; each read advances it by at
least a nanosecond, so every reading can be mapped back to the real time it
was taken.  A holding is *valid* while, on a clock that kept running, less
than one lease has passed since its acquire or renewal was sent -- the
holder's own verdict, converted to real time so that holdings on different
hosts can be compared.  (A suspended host's own verdict stays "valid" past
that; no lease can prevent it, and the fencing checks below carry the
guarantee there.)

Audit.  Every push of every worker goes through :class:`Wire`, which injects
the scheduled fault and audits the refs the push changed, at the instant it
landed, against the ideal serial system in :class:`Model`: which job is
queued, running (worker, token, attempt), done or failed; which holding
claimed it; which updates each holding pushed.  A push must change the main
branch by a fast-forward and by exactly one legal transition of one job
(claim, retry, give-up, finish, fail), made by the worker entitled to it
(fenced by its lock holding, or by its own job holding); the lock ref moves
along its own history by acquire (token + 1), renewal or release, and never
away from a valid holding; a job or a liveness ref is taken over only once
its holder's lease ran out.  Between steps the invariants compare the ledgers
with the model and the workers' beliefs with the remote.

Test seams: :attr:`ProtocolMachine.coordinator_class` (the broken variants in
``broken.py``), :attr:`ProtocolMachine.world_class` (memory or git),
:attr:`ProtocolMachine.known_bugs` (faults kept away from known bugs), and
:attr:`ProtocolMachine.budgets` (how many disruptions and targeted scenarios per run).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from distribute.coordination import Coordinator, JobHolding, _Lost
from distribute.core.errors import (
    LeaseLost,
    MergeConflict,
    OutcomeUnknown,
    RemoteStateError,
    UsageError,
)
from distribute.core.ledger import (
    DONE,
    FAILED,
    LEDGER_FILES,
    MAX_INTERRUPTIONS,
    RUNNING,
    Entry,
    Ledger,
)
from distribute.core.lock import (
    Beat,
    LockState,
    holder_verdict,
    lock_message,
    parse_beat_message,
    parse_lock_message,
)
from distribute.core.names import (
    HANDED_PREFIX,
    LOCK_REF,
    WORKERS_PREFIX,
    handed_ref,
    job_branch_ref,
    job_dir,
    worker_ref,
)
from distribute.core.plan import CallNextJobFunction, GiveUp, Retry
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate
from distribute.transport.memory import MemoryRemote

if TYPE_CHECKING:
    from distribute.fenced import FencedEdit

BRANCH = "main"
MAIN_REF = "refs/heads/" + BRANCH
#: Lease periods, drawn per run, in scheduling rounds (one step of every worker; a step
#: takes half a second).  With the short lease a slow worker's heartbeat falls behind
#: while others work, and jobs and the lock are taken over from workers still alive.
LEASE_ROUNDS = (4, 12)
STEP_SECONDS = 0.5
#: The observer's extra wait, as a fraction of the lease.  Hosts here run at rates up to
#: 1.1 / 0.9 = 1.22 times each other, so the margin must exceed 22 % of the lease (the
#: Worker's default margin, lease / 10, covers rate ratios up to 1.1 only).
MARGIN = 0.25
#: Awkward on purpose: spaces, slashes, unicode, a leading dash, ``..``.
WORKER_NAMES = ("w0", "b/eta", "γ 2", "-d3", "e..4")
JOB_NAMES = (
    "job 00", "a/b", "ünï", "-dash", "x@{1}", "end.lock", "job 06", "job 07", "job 08",
)
LATE_JOBS = ("late 1", "late 2", "late 3")
#: Jobs an administrator adds with ``distribute add`` (the real fenced edit).
NEW_JOBS = ("new 1", "new/2")
#: The administrator's commands (``distribute add``, ``requeue``, ``requeue --done``,
#: ``requeue --force``, ``cancel``), run through :class:`~distribute.fenced.FencedEdit`.
ADMIN_OPS = ("add", "requeue", "requeue-done", "requeue-force", "cancel")
#: Delays in leases: moments, a third of a lease, just past lease + margin, three leases.
DELAYS = (0.05, 0.1, 0.2, 0.4, 1.3, 3.0)
#: How long a suspended host sleeps, in leases.
SLEEPS = (1.3, 2.0, 3.0, 5.0)
#: What a worker running a job does at its successive natural steps.
JOB_CYCLE = ("update", "update", "update", "finish")
PUSH_FAULTS = (
    "unknown-applied",  # the remote applied it, the answer was lost (remote fault_hook)
    "unknown-lost",  # the remote never saw it, and the worker cannot tell (remote fault_hook)
    "timeout-applied",  # applied; others act while the answer is lost, then it times out
    "timeout-lost",  # not applied; others act meanwhile, then it times out
    "pause",  # the worker stops just before sending (GC pause, SIGSTOP) while others act
    "kill-before",  # kill -9 just before the push leaves
    "kill-after",  # kill -9 just after the remote applied it
)

#: Bugs in distribute/ found by the machine and its audit; see test_regressions.py.
KNOWN_BUGS: frozenset[str] = frozenset()  # none open; test_regressions.py keeps the fixed ones

#: Per run, at most this many of each disruption, so that most steps are protocol steps;
#: the last three are the targeted scenarios (see "targeted rules" below).
BUDGET = {"crash": 2, "suspend": 3, "fault": 6, "time": 4, "release": 2, "fail": 3,
          "stale-wake": 1, "lost-answer": 1, "restart": 1, "park": 3}


class Found(NamedTuple):
    """One violation: the run it was found in, what broke, and the targeted scenario under
    way when it was found (``""`` outside the targeted rules)."""

    run: int
    message: str
    scenario: str = ""


#: Runs and steps of every machine in this process, for the terminal summary.
STATS: dict[str, int] = {"runs": 0, "steps": 0, "drain steps": 0}
#: Every violation found in this process, in order.
VIOLATIONS: list[Found] = []
#: The targeted scenario under way (a stack: scenarios do not nest, but be safe).
SCENARIO: list[str] = []
#: Protocol events counted across runs (phantom holdings, takeovers, ...), for the report.
EVENTS: dict[str, int] = {}
#: Broken variant -> (examples until its first violation, the violation), for the report.
CAUGHT: dict[str, tuple[int, str]] = {}


class Violation(AssertionError):
    """A protocol guarantee does not hold."""


class Killed(BaseException):
    """``kill -9``: the worker's process ends here.  No code under test may catch it."""


def require(condition: object, message: str) -> None:
    if not condition:
        violation(message)


def violation(message: str) -> None:
    VIOLATIONS.append(Found(STATS["runs"], message, SCENARIO[-1] if SCENARIO else ""))
    raise Violation(message)


# ---- the remote, and an auditor's direct view of it ---------------------------


class MemoryWorld:
    """The shared remote in memory.  Unknown push outcomes and torn reads go through its
    ``fault_hook`` and ``fetch_fault_hook``."""

    def __init__(self, jobs: Sequence[str]) -> None:
        self.remote = MemoryRemote()
        self._faults: dict[str, str] = {}
        self._torn: set[str] = set()
        self.remote.fault_hook = lambda name, updates: self._faults.pop(name, None)
        self.remote.fetch_fault_hook = self._tear
        self.auditor = self.remote.transport("auditor")
        main = self.auditor.write_commit(
            parents=[], message="distribute: prepare the remote",
            changes={RUNNING: b"", DONE: b"", FAILED: b"",
                     JOBS_FILE: format_queue(list(jobs)).encode()},
        )
        lock = self.auditor.write_commit(parents=[], message=lock_message(LockState()))
        self.remote.set_ref(MAIN_REF, main)
        self.remote.set_ref(LOCK_REF, lock)

    def transport(self, name: str) -> Any:
        return self.remote.transport(name)

    def fail_next_push(self, transport: Any, action: str) -> None:
        self._faults[transport.name] = action

    def tear_next_read(self, transport: Any) -> None:
        self._torn.add(transport.name)

    def _tear(self, name: str, refs: Sequence[str]) -> str | None:
        if name in self._torn:
            self._torn.discard(name)
            return "torn"
        return None

    def refs(self) -> dict[str, Oid]:
        return self.remote.refs

    def read_file(self, commit: Oid, path: str) -> bytes | None:
        return self.auditor.read_file(commit, path)

    def message(self, commit: Oid) -> str:
        return self.auditor.commit_message(commit)

    def parents(self, commit: Oid) -> tuple[Oid, ...]:
        return self.remote._commit(commit).parents

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        return self.auditor.is_ancestor(ancestor, descendant)

    def close(self) -> None:
        pass


class GitWorld:
    """A bare repository prepared by ``init_remote``; each worker clones it.

    The auditor reads the bare repository with plain git; push faults are
    injected by :class:`Wire` (an unknown outcome: apply or not, then raise).
    """

    def __init__(self, jobs: Sequence[str]) -> None:
        from distribute.remote import init_remote

        self.root = Path(tempfile.mkdtemp(prefix="distribute-machine-"))
        self.bare = self.root / "remote.git"
        self.url = init_remote(self.bare, branch=BRANCH, jobs=list(jobs))
        self._clones = itertools.count()

    def transport(self, name: str) -> Any:
        from distribute.transport.local_copy import GitLocalCopy

        path = self.root / f"copy{next(self._clones)}"
        return GitLocalCopy.clone(self.url, path).transport()

    def fail_next_push(self, transport: Any, action: str) -> None:
        raise NotImplementedError  # Wire injects unknown outcomes itself here

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", "-C", str(self.bare), *args], capture_output=True, check=check
        )

    def refs(self) -> dict[str, Oid]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)").stdout.decode()
        return dict(line.rsplit(" ", 1) for line in out.splitlines() if line)

    def read_file(self, commit: Oid, path: str) -> bytes | None:
        done = self.git("cat-file", "blob", f"{commit}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    def message(self, commit: Oid) -> str:
        raw = self.git("cat-file", "commit", commit).stdout.decode()
        return raw.split("\n\n", 1)[1]

    def parents(self, commit: Oid) -> tuple[Oid, ...]:
        out = self.git("rev-list", "--parents", "-n", "1", commit).stdout.decode().split()
        return tuple(out[1:])

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        return self.git("merge-base", "--is-ancestor", ancestor, descendant,
                        check=False).returncode == 0

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---- hosts, workers and their pushes --------------------------------------------


class HostClock:
    """One host's monotonic clock, driven by the machine's real time.

    While the host is suspended (a VM paused by its hypervisor, a laptop lid
    closed) nothing on it runs and its monotonic clock stands still.
    """

    def __init__(self, real: Callable[[], float], base: float, rate: float, lease: float) -> None:
        self.real = real
        self.lease = lease
        self.base = base
        self.rate = rate
        self.sleeps: list[tuple[float, float]] = []
        self.last = float("-inf")
        self.read_at: dict[float, float] = {}

    def asleep(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.sleeps)

    def local(self, now: float) -> float:
        """The reading at real time ``now``, without taking it."""
        frozen = sum(max(0.0, min(now, end) - start) for start, end in self.sleeps)
        return self.base + self.rate * (now - frozen)

    def __call__(self) -> float:
        now = self.real()
        value = max(self.local(now), self.last + 1e-9)
        self.last = value
        self.read_at[value] = now
        return value

    def valid_until(self, sent_at: float) -> float:
        """Real time at which a lease sent at ``sent_at`` (local) ends, had the clock kept on."""
        if sent_at == float("-inf"):
            return float("-inf")
        return self.read_at[sent_at] + self.lease / self.rate


@dataclass
class Fault:
    kind: str
    delay: float = 0.0
    interlude: tuple[int, ...] = ()
    #: which push it hits: the next one, or the next that moves the main branch / the lock
    aim: str = "any"
    #: after the interlude, the other workers keep taking turns until the pushed ref has
    #: moved on from what the push left (bounded): the read-back then sees a descendant
    until_moved: bool = False

    def hits(self, updates: Sequence[RefUpdate]) -> bool:
        refs = {u.ref for u in updates}
        return self.aim == "any" or {"main": MAIN_REF, "lock": LOCK_REF}[self.aim] in refs


@dataclass
class WorkerState:
    """One worker process as the machine sees it; a crash replaces ``coord`` and ``session``."""

    name: str
    host: HostClock
    coord: Coordinator
    session: str
    speed: int = 1
    beat_ran_at: float = float("-inf")
    turns: dict[str, float] = field(default_factory=lambda: {"main": 0.0, "heartbeat": 0.5})
    alive: bool = True
    snap: Any = None
    #: ``snap`` was taken after this worker's last try_acquire (the Worker loop observes
    #: before each attempt; an acquire from an older snapshot is its own test).
    fresh: bool = False
    pending: tuple[str, Oid | None] | None = None
    fault: Fault | None = None
    updates: int = 0
    cursor: int = 0
    #: every lock commit this session has believed to be its holding
    believed: set[str] = field(default_factory=set)
    #: its next-job function is repo-only: at a free lock it claims with no acquire
    unlocked: bool = False

    def holding_valid_until(self) -> float:
        h = self.coord.holding
        return float("-inf") if h is None else self.host.valid_until(h.sent_at)

    def beat_valid_until(self) -> float:
        return self.host.valid_until(self.coord.beat_sent_at)


class Wire:
    """A worker's transport as the machine sees it: faults go in and every push is audited."""

    def __init__(self, inner: Any, machine: ProtocolMachine, ws_name: str) -> None:
        self.inner = inner
        self.machine = machine
        self.ws_name = ws_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        return self.machine.push_through(self.machine.by_name[self.ws_name], self.inner, updates)


@dataclass
class AdminOp:
    """One administrator command as the audit sees it: what was asked (``op`` is ``add``,
    ``requeue``, ``cancel`` or ``unlock``; the named ``jobs``; ``--force``, ``--done``) and
    the lock identity its :class:`~distribute.fenced.FencedEdit` writes."""

    op: str
    jobs: tuple[str, ...] = ()
    force: bool = False
    done: bool = False
    who: str = ""
    session: str = ""
    #: worker steps taken right after its acquire landed (the command's process stalls)
    stall: int = 0

    def describe(self) -> str:
        flags = " --force" * self.force + " --done" * self.done
        return f"the administrator ({self.op}{flags} {list(self.jobs)})"


class AdminWire:
    """The administrator's transport: every push it makes is audited like a worker's."""

    def __init__(self, inner: Any, machine: AdminMachine) -> None:
        self.inner = inner
        self.machine = machine
        self.op: AdminOp = AdminOp("none")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        return self.machine.admin_push(self.op, self.inner, updates)


class AdminCopy:
    """Stands in for the scratch clone a :class:`~distribute.remote.RemoteView` reads."""

    def __init__(self, wire: AdminWire) -> None:
        self.wire = wire

    def transport(self) -> AdminWire:
        return self.wire

    def default_branch(self) -> str:
        return BRANCH


# ---- the ideal serial system --------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    worker: str
    session: str
    commit: Oid

    def branch(self, job: str, token: int) -> str:
        return job_branch_ref(self.worker, job, token)


@dataclass
class Model:
    """What the ledgers and the queue must say, moved by legal transitions only."""

    queue: list[str]
    running: dict[str, Entry] = field(default_factory=dict)
    done: dict[str, Entry] = field(default_factory=dict)
    failed: dict[str, Entry] = field(default_factory=dict)
    claims: dict[tuple[str, int], Claim] = field(default_factory=dict)
    taken_over: set[tuple[str, int]] = field(default_factory=set)
    tips: dict[tuple[str, int], list[Oid]] = field(default_factory=dict)
    #: (job, token) -> (worker, tip) of every finish parked on a liveness record (kept after
    #: it was folded in: records may carry a folded entry until their worker looks again)
    parked: dict[tuple[str, int], tuple[str, Oid]] = field(default_factory=dict)
    #: (job, token) of every finish a push moved to done.txt (its worker's own, or a fold)
    landed: set[tuple[str, int]] = field(default_factory=set)
    #: (job, token) -> worker, for every finish whose worker believes it landed or parked
    believed: dict[tuple[str, int], str] = field(default_factory=dict)
    #: (job, token) of every job a worker took up after another's claim handed it over
    taken_up: set[tuple[str, int]] = field(default_factory=set)

    def state(self, job: str) -> tuple[str | None, Entry | None]:
        for kind, table in (("running", self.running), ("done", self.done),
                            ("failed", self.failed)):
            if job in table:
                return kind, table[job]
        return ("queued", None) if job in self.queue else (None, None)

    def runs(self, job: str, worker: str, token: int) -> bool:
        e = self.running.get(job)
        return e is not None and e.worker == worker and e.token == token

    def held(self, worker: str) -> bool:
        """Does ``worker`` hold a running line (unfinished: its finish is not parked)?"""
        return any(e.worker == worker and not self.parked_line(j)
                   for j, e in self.running.items())

    def parked_line(self, job: str) -> bool:
        """Is ``job``'s running line one whose holder parked its finish?  Then the job is
        finished: only a fold may move it (to done, or failed by a merge conflict)."""
        e = self.running.get(job)
        p = self.parked.get((job, e.token)) if e is not None else None
        return e is not None and not e.released and p is not None and p[0] == e.worker


def ledger_tables(ledger: Ledger) -> tuple[dict[str, Entry], ...]:
    return tuple({e.job: e for e in entries}
                 for entries in (ledger.running, ledger.done, ledger.failed))


def same_line(a: Entry | None, b: Entry | None) -> bool:
    """Equal in every field a transition decides (the reason text is free)."""
    if a is None or b is None:
        return a is b
    return (a.job, a.worker, a.token, a.attempt) == (b.job, b.worker, b.token, b.attempt)


# ---- the machine ----------------------------------------------------------------------


def lock_step_ok(p: LockState, c: LockState) -> bool:
    """One commit of the lock's history: a new holding (token + 1), a renewal, a release, or
    a holding of no length (an unlocked claim: free to free with the next token, or further
    on by one token per job it handed to another worker)."""
    if c.token > p.token + 1:
        return c.free and p.free
    if c.token == p.token + 1:
        return (not c.free and c.renewal == 0) or (c.free and p.free)
    if c.token != p.token or p.free:
        return False
    if c.free:
        return True
    return (c.holder, c.session, c.renewal) == (p.holder, p.session, p.renewal + 1)


def any_can(step: str) -> Callable[[ProtocolMachine], bool]:
    """Precondition: some worker can take ``step`` now."""
    return lambda self: any(self.can(ws, step) for ws in self.workers_list)


def hosts() -> st.SearchStrategy[list[tuple[float, float]]]:
    base = st.integers(0, 48 * 3600).map(float)  # hosts whose clocks differ by hours
    rate = st.floats(0.9, 1.1)
    return st.lists(st.tuples(base, rate), min_size=5, max_size=5)


class ProtocolMachine(RuleBasedStateMachine):
    """Protocol v1 with 2-5 workers on one remote, checked against the ideal serial system."""

    #: Test seams: the coordinator under test and the remote it runs against.
    coordinator_class: type[Coordinator] = Coordinator
    world_class: Callable[[Sequence[str]], Any] = MemoryWorld
    #: Faults that would hit a known bug are not injected where they would hit it (an
    #: unknown outcome of a branch push is not a lost one; a push whose answer is lost
    #: stalls before it lands, not after; no torn reads); each bug has its own
    #: strict-xfail test in ``test_known_bugs.py``.  Remove an entry once it is fixed.
    known_bugs: frozenset[str] = KNOWN_BUGS
    #: Disruptions and targeted scenarios allowed per run.
    budgets: dict[str, int] = BUDGET
    #: Workers that claim without the lock hand jobs to each other (``False``: nobody does).
    hand_offs: bool = True

    workers = Bundle("workers")

    def __init__(self) -> None:
        super().__init__()
        STATS["runs"] += 1
        self.now = 0.0
        self.depth = 0
        self.sessions = itertools.count(1)
        self.world: Any = None
        self.workers_list: list[WorkerState] = []
        self.by_name: dict[str, WorkerState] = {}
        self.ledgers: dict[Oid, Ledger] = {}
        self.lock_states: dict[Oid, LockState] = {}
        self.lock_checked: set[Oid] = set()
        self.late_jobs = list(LATE_JOBS)
        self.budget = dict(self.budgets)
        self.events: dict[str, int] = {}
        self.expect_revoke: set[str] = set()
        self.expect_branch: dict[str, Oid] = {}
        self.expect_marker: dict[str, Oid] = {}
        self.branch_job: dict[str, tuple[str, int]] = {}

    # ---- setup ------------------------------------------------------------------
    @initialize(
        target=workers,
        n=st.integers(2, 5),
        jobs=st.integers(2, 6),
        max_attempts=st.integers(1, 3),
        lease_rounds=st.sampled_from(LEASE_ROUNDS),
        clocks=hosts(),
        speeds=st.lists(st.sampled_from((1, 3)), min_size=5, max_size=5),
        unlocked=st.lists(st.booleans(), min_size=5, max_size=5),
    )
    def start(self, n: int, jobs: int, max_attempts: int, lease_rounds: int,
              clocks: list[tuple[float, float]], speeds: list[int], unlocked: list[bool]):
        queue = list(JOB_NAMES[:jobs])
        self.max_attempts = max_attempts
        self.lease = lease = lease_rounds * n * STEP_SECONDS
        self.world = self.world_class(queue)
        self.model = Model(queue=list(queue))
        for name, (base, rate), speed, quick in zip(
                WORKER_NAMES[:n], clocks, speeds, unlocked, strict=False):
            host = HostClock(lambda: self.now, base, rate, lease)
            ws = WorkerState(name, host, None, "", speed=speed,  # type: ignore[arg-type]
                             unlocked=quick)
            self.workers_list.append(ws)
            self.by_name[name] = ws
            self.boot(ws)
        self.admin = self.world.transport("admin")
        return multiple(*self.by_name)

    def boot(self, ws: WorkerState) -> None:
        """Start a new process for worker ``ws`` (a new session; nothing local survives)."""
        ws.session = f"{ws.name}#s{next(self.sessions)}"
        wire = Wire(self.world.transport(ws.session), self, ws.name)
        # a worker whose function needs the lock is made with hand_off=False: a mixed
        # fleet, where hand-offs go only between the workers that take them
        ws.coord = self.coordinator_class(
            wire, worker=ws.name, session=ws.session, branch=BRANCH, lease=self.lease,
            margin=MARGIN * self.lease, max_attempts=self.max_attempts, clock=ws.host,
            hand_offs=ws.unlocked and self.hand_offs,
        )
        ws.alive, ws.snap, ws.fresh, ws.pending, ws.fault = True, None, False, None, None
        ws.believed = set()

    def teardown(self) -> None:
        try:
            if self.world is not None and sys.exc_info()[0] is None:
                self.drain()
        finally:
            if self.world is not None:
                self.world.close()

    def drain(self) -> None:
        """Guarantee 4 (progress): once the faults stop, the workers finish every job.

        Every host wakes, no push fails any more, and the workers' threads take fair turns
        (the invariants are checked after each step) until nothing is queued or running.
        A stale holder that was asleep wakes here and acts on its lost job, too.
        """
        for ws in self.workers_list:
            ws.host.sleeps = [(start, min(end, self.now)) for start, end in ws.host.sleeps]
            ws.fault = None
        self.budget["park"] = 0
        jobs = len(self.model.queue) + len(self.model.running) + len(self.model.done) + len(
            self.model.failed)
        rounds = (jobs * self.max_attempts + 2) * (self.lease / STEP_SECONDS + 20)
        for _ in range(int(rounds) * 2):
            if not self.model.queue and not self.model.running and all(
                    ws.coord.job is None for ws in self.workers_list):
                self.check_believed_finishes()
                return
            self.schedule(None)
            STATS["drain steps"] += 1
            self.recheck()
        violation(f"progress: with every worker up and no more faults, the work did not end "
                  f"within {int(rounds) * 2} steps (queue {self.model.queue}, running "
                  f"{sorted(self.model.running)})")

    def check_believed_finishes(self) -> None:
        """Every finish a worker believed landed or parked is in ``done.txt`` under its
        token, unless an administrator took the job away meanwhile, or its parked finish
        was folded in as failed because its branch no longer merged."""
        _, done, failed = ledger_tables(self.ledger_at(self.world.refs()[MAIN_REF]))
        for (job, token), worker in sorted(self.model.believed.items()):
            e, f = done.get(job), failed.get(job)
            conflict = (f is not None and f.token == token and (job, token) in self.model.parked
                        and "merge conflict" in f.reason)
            require((job, token) in self.model.taken_over or conflict or (
                (job, token) in self.model.landed and self.finish_kept(job, token, e)),
                    f"{worker!r} believed its finish of {job!r} (token {token}) landed, but "
                    f"done.txt lists {e} after the drain")

    def finish_kept(self, job: str, token: int, done: Entry | None) -> bool:
        """Does ``done.txt`` (its line ``done`` for ``job``) keep the finish of ``job``
        under ``token``?"""
        return done is not None and done.token == token

    def recheck(self) -> None:
        """The invariants, for steps taken inside one rule (the drain, targeted scenarios)."""
        for check in (self.ledgers_agree_with_the_model, self.lock_tokens_increase,
                      self.at_most_one_valid_holding, self.beliefs_agree_with_the_remote):
            check()

    # ---- reading the remote -------------------------------------------------------
    def ledger_at(self, commit: Oid) -> Ledger:
        if commit not in self.ledgers:
            files = {name: self.world.read_file(commit, name) for name in LEDGER_FILES}
            self.ledgers[commit] = Ledger.from_files(files, BRANCH)
        return self.ledgers[commit]

    def queue_at(self, commit: Oid) -> list[str]:
        return read_queue((self.world.read_file(commit, JOBS_FILE) or b"").decode())

    def lock_at(self, oid: Oid | None) -> LockState:
        if oid is None:
            return LockState()
        if oid not in self.lock_states:
            self.lock_states[oid] = parse_lock_message(self.world.message(oid))
        return self.lock_states[oid]

    def say(self, what: Callable[[], str]) -> None:
        """Tell the story of the failing example (only when Hypothesis reports it)."""
        if current_build_context().is_final:
            note(f"t={self.now:8.2f}  {what()}")

    def count(self, event: str) -> None:
        EVENTS[event] = EVENTS.get(event, 0) + 1
        self.events[event] = self.events.get(event, 0) + 1

    def live(self) -> list[WorkerState]:
        return [ws for ws in self.workers_list if ws.alive]

    # ---- pushes: faults in, audit out ------------------------------------------------
    def push_through(self, ws: WorkerState, inner: Any, updates: Sequence[RefUpdate]) -> bool:
        """Push for ``ws`` with its scheduled fault, and audit whatever the push changed."""
        fault = ws.fault
        if fault is not None and not fault.hits(updates):
            fault = None
        if fault is not None and fault.interlude and self.depth > 0:
            fault = None  # no stall inside another worker's stall; keep it for later
        if fault is not None and self.triggers_known_bug(fault, updates):
            fault = None  # keep it for a push it does not break for a known reason
        if fault is None:
            return self.audited_push(ws, inner, updates)
        ws.fault = None
        kind = fault.kind
        if kind in ("unknown-applied", "unknown-lost") and not isinstance(self.world, MemoryWorld):
            kind = "timeout-" + kind.split("-")[1]  # the same, injected here
        stall_first = kind == "pause" or (
            kind == "timeout-applied" and "resolve-by-equality" in self.known_bugs)
        if kind == "kill-before":
            raise Killed(ws.name)
        if stall_first:
            self.interlude(ws, fault, updates[0].ref)
        if kind in ("unknown-applied", "unknown-lost"):
            self.world.fail_next_push(inner, kind)  # the remote's own fault_hook
        ok = kind != "timeout-lost" and self.audited_push(ws, inner, updates)
        if kind == "kill-after":
            raise Killed(ws.name)
        if kind in ("timeout-applied", "timeout-lost"):
            if not stall_first:
                self.interlude(ws, fault, updates[0].ref)
            raise OutcomeUnknown("injected: the push timed out", refs=[u.ref for u in updates])
        return ok

    def audited_push(self, ws: WorkerState, inner: Any, updates: Sequence[RefUpdate]) -> bool:
        pre = self.world.refs()
        try:
            return bool(inner.push(updates))
        finally:
            post = self.world.refs()
            if pre != post:
                self.audit_push(ws, pre, post)

    def triggers_known_bug(self, fault: Fault, updates: Sequence[RefUpdate]) -> bool:
        """Would ``fault`` on this push hit a bug listed in :attr:`known_bugs`?"""
        lost = fault.kind in ("unknown-lost", "timeout-lost")
        branch_only = all(u.ref.startswith("refs/heads/jobs/") for u in updates)
        return "update-unknown-lost" in self.known_bugs and lost and branch_only

    def interlude(self, ws: WorkerState, fault: Fault, ref: str | None = None) -> None:
        """``ws`` is stuck inside a push for ``fault.delay`` seconds; meanwhile the workers
        listed in ``fault.interlude`` take their natural next steps (``-1``: the
        administrator queues a job), spread over the delay.  With ``fault.until_moved``
        the others then go on, in turn, until ``ref`` has moved on from where the push left
        it (a bounded number of steps)."""
        self.count("interlude")
        self.depth += 1
        follow = ref if fault.until_moved else None
        left = self.world.refs().get(follow) if follow is not None else None
        try:
            for index in fault.interlude:
                self.now += fault.delay / len(fault.interlude)
                other = self.workers_list[index % len(self.workers_list)]
                if index < 0:
                    self.queue_late_job()
                elif other is not ws and other.alive:
                    self.count("interlude-step")
                    self.natural_step(other)
            if not fault.interlude:
                self.now += fault.delay
            others = [o for o in self.workers_list if o is not ws]
            for step in range(6 * len(others) if follow is not None else 0):
                if self.world.refs().get(follow) != left:
                    self.count("interlude-moved-on")
                    break
                other = others[step % len(others)]
                if other.alive and not other.host.asleep(self.now):
                    self.now += STEP_SECONDS
                    self.count("interlude-step")
                    self.natural_step(other)
        finally:
            self.depth -= 1

    # ---- the audit of one push, at the instant it landed ---------------------------------
    def audit_push(self, ws: WorkerState | None, pre: dict[str, Oid], post: dict[str, Oid]) -> None:
        changed = sorted(r for r in set(pre) | set(post) if pre.get(r) != post.get(r))
        who = "the administrator" if ws is None else f"worker {ws.name!r} ({ws.session})"
        self.expect_revoke, self.expect_branch, self.expect_marker = set(), {}, {}
        self.unlocked_claim: tuple[str, int] | None = None
        if MAIN_REF in changed:
            self.audit_main(ws, who, pre, post)
        for ref in changed:
            old, new = pre.get(ref), post.get(ref)
            if new is None:
                require(self.merged_branch(ref, old, post),
                        f"{who} deleted {ref}, which is not the branch of a job this push "
                        "finished, or whose tip the main branch does not hold")
                continue
            if ref == MAIN_REF:
                continue
            if ref == LOCK_REF:
                self.audit_lock(ws, who, old, new)  # type: ignore[arg-type]
            elif ref.startswith(WORKERS_PREFIX):
                self.audit_beat(ws, who, ref, new)  # type: ignore[arg-type]
            elif ref.startswith("refs/heads/jobs/"):
                self.audit_branch(ws, who, ref, old, new)  # type: ignore[arg-type]
            elif ref.startswith(HANDED_PREFIX):
                require(self.expect_marker.get(ref) == new,
                        f"{who} moved {ref} to {new}, but handed that worker no job in this "
                        "claim (a marker moves to the claim commit)")
            else:
                violation(f"{who} changed {ref}, which the protocol never writes")
        unmarked = sorted(r for r, oid in self.expect_marker.items() if post.get(r) != oid)
        require(not unmarked, f"{who} handed jobs but did not move the markers {unmarked}")
        missing = self.expect_revoke - set(changed)
        require(not missing, f"{who} took over a job without revoking {sorted(missing)}")
        for ref, oid in self.expect_branch.items():
            got = post.get(ref)
            require(got == oid or (got is not None and self.resumes(ref, oid, got, post)),
                    f"{who} claimed a job but its branch {ref} is not at the claim commit "
                    "(nor at a merge of it with an earlier attempt's branch of that job)")
        self.check_branches(post)

    def audit_main(self, ws: WorkerState | None, who: str, pre: dict[str, Oid],
                   post: dict[str, Oid]) -> None:
        old, new = pre[MAIN_REF], post[MAIN_REF]
        require(self.world.is_ancestor(old, new),
                f"{who} moved the main branch from {old[:10]} to {new[:10]}, which does not "
                "contain it: history on the main branch was lost")
        ledger, queue = self.ledger_at(new), self.queue_at(new)
        try:
            ledger.validate()
        except AssertionError as exc:
            violation(f"after a push by {who}: {exc}")
        running, done, failed = ledger_tables(ledger)
        m = self.model
        if ws is None:
            require(queue[: len(m.queue)] == m.queue and (running, done, failed) ==
                    (m.running, m.done, m.failed), f"{who} changed more than the queue")
            m.queue = queue
            return
        real = Model(queue, running, done, failed)
        jobs = set(running) | set(done) | set(failed) | set(queue) | set(m.running) | set(
            m.done) | set(m.failed) | set(m.queue)
        moved = sorted(j for j in jobs if real.state(j)[0] != m.state(j)[0]
                       or not same_line(real.state(j)[1], m.state(j)[1]))
        folded = [j for j in moved if m.parked_line(j)]
        rest = [j for j in moved if j not in folded]
        # jobs this push claimed for other workers (a hand-off): audited with its own claim
        handed = [j for j in rest if m.state(j)[0] == "queued" and real.state(j)[0] == "running"
                  and real.running[j].by == ws.name and real.running[j].worker != ws.name]
        rest = [j for j in rest if j not in handed]
        require(moved and len(rest) <= 1,
                f"{who} changed the state of {len(rest)} jobs in one push besides folding "
                f"parked finishes ({folded}): {rest}")
        self.audit_folds(who, folded, real, new)
        if not rest:
            require(queue == m.queue, f"after a push by {who} jobs.txt lists {queue}, the "
                    f"model {m.queue}")
            require((running, done, failed) == (m.running, m.done, m.failed),
                    f"after a push by {who} the ledgers differ from the model")
            return
        job = rest[0]
        was, before = m.state(job)
        now_kind, after = real.state(job)
        mine = ws.coord.job if ws.coord.job is not None and ws.coord.job.job == job else None
        lock = self.lock_at(pre.get(LOCK_REF))
        fenced = (not lock.free and (lock.holder, lock.session) == (ws.name, ws.session)
                  and pre.get(LOCK_REF) != post.get(LOCK_REF))
        after_lock = self.lock_at(post.get(LOCK_REF))
        # a holding of no length: the same push moved a free lock to the next token (past
        # one token more per job it handed to another worker)
        unlocked = (lock.free and after_lock.free
                    and after_lock.token == lock.token + 1 + len(handed)
                    and after_lock.last == ws.name
                    and self.world.parents(post[LOCK_REF]) == (pre.get(LOCK_REF),))
        require(not handed or (unlocked and not fenced and was == "queued"
                               and now_kind == "running"),
                f"{who} claimed {handed} for other workers, but not in an unlocked claim of "
                "its own")
        story = f"{who} moved job {job!r} from {was} {before} to {now_kind} {after}"
        expected_queue = m.queue
        assert after is None or after.job == job
        if was == "queued" and now_kind == "running":  # a new claim
            assert after is not None
            require(after.worker == ws.name and after.attempt == 1, story)
            require((fenced and after.token == lock.token)
                    or (unlocked and after.token == lock.token + 1),
                    f"{story} while the lock was {lock}, not its holding under that token: "
                    "a claim must land fenced by the holding it was made under")
            if unlocked and not fenced:
                self.unlocked_claim = (ws.session, after_lock.token)
            expected_queue = [j for j in m.queue if j != job and j not in handed]
            self.record_claim(ws, job, after.token, new)
            self.count("claim")
            self.audit_handed(who, handed, real, lock.token + 1, new)
        elif was == "running" and now_kind == "running":
            assert before is not None and after is not None
            if after.worker == "":  # this worker's own failed attempt, released for a retry
                require(mine is not None and mine.token == before.token == after.token
                        and before.worker == ws.name and before.attempt == after.attempt,
                        f"{story}, but it does not hold that job under that token")
            else:  # a retry: another attempt under a new holding
                require(after.worker == ws.name and after.attempt == before.attempt + 1, story)
                require(fenced and after.token == lock.token and after.token > before.token,
                        f"{story} while the lock was {lock}: a retry must be fenced by the lock")
                self.take_over(ws, job, before, story)
                self.record_claim(ws, job, after.token, new)
                self.count("retry")
        elif was == "running" and now_kind == "done":
            assert before is not None and after is not None
            require(mine is not None and before.worker == ws.name and mine.token == before.token,
                    f"{story}, but its holding is {mine}: a finish from a stale holder was "
                    "accepted")
            require((after.worker, after.token, after.attempt) ==
                    (before.worker, before.token, before.attempt),
                    f"{story}: the finish's token differs from the ledger line it moved")
            for tip in [*m.tips.get((job, before.token), []), mine.tip]:
                require(self.world.is_ancestor(tip, new),
                        f"{story}, but its update {tip[:10]} is not part of the main branch")
            m.landed.add((job, before.token))
            self.count("finish")
        elif was == "running" and now_kind == "failed":
            assert before is not None and after is not None
            require((after.worker, after.token, after.attempt) ==
                    (before.worker, before.token, before.attempt), story)
            if not (mine is not None and before.worker == ws.name
                    and mine.token == before.token):  # a give-up: attempts used up
                require(fenced, f"{story} without holding the lock")
                # failures count toward max_attempts; interruptions (a takeover ends the
                # holder's attempt as one) toward the separate, larger cap
                interruptions = before.interrupted + (0 if before.released else 1)
                require(before.failures >= self.max_attempts
                        or interruptions >= MAX_INTERRUPTIONS, f"{story} with attempts left")
                self.take_over(ws, job, before, story)
                self.count("give-up")
        else:
            violation(f"illegal ledger transition: {story}")
        require(queue == expected_queue,
                f"after a push by {who} jobs.txt lists {queue}, the model {expected_queue}")
        m.queue = queue
        for kind, table in (("running", m.running), ("done", m.done), ("failed", m.failed)):
            table.pop(job, None)
            if now_kind == kind:
                table[job] = after  # type: ignore[assignment]
        for j in handed:
            m.running[j] = real.running[j]
        require((running, done, failed) == (m.running, m.done, m.failed),
                f"after a push by {who} the ledgers differ from the model")

    def audit_handed(self, who: str, handed: list[str], real: Model, own: int,
                     new: Oid) -> None:
        """The jobs an unlocked claim handed to other workers: each a new job, attempt 1,
        under the tokens after the claimer's own (``own``), one each, for a live session
        of a worker that held no job, recorded as that worker's claim."""
        tokens = sorted(real.running[j].token for j in handed)
        require(tokens == list(range(own + 1, own + 1 + len(handed))),
                f"{who} handed {handed} under tokens {tokens}, not those after its own {own}")
        for j in handed:
            e = real.running[j]
            target = self.by_name.get(e.worker)
            require(target is not None and e.attempt == 1 and e.session.startswith(
                        e.worker + "#") and not self.model.held(e.worker),
                    f"{who} handed {j!r} to {e.worker!r} ({e}), which is no idle worker")
            assert target is not None
            self.record_claim_for(target.name, e.session, j, e.token, new)
            self.expect_marker[handed_ref(e.worker)] = new
            self.count("hand-off")

    def audit_folds(self, who: str, folded: list[str], real: Model, new: Oid) -> None:
        """The jobs a push moved whose finish was parked: each must be folded in as its
        parker's finish under the parked token (to done, with the parked tip and every
        update of it on the new main branch; or to failed by a merge conflict), never
        claimed again, taken over or given up."""
        m = self.model
        for job in folded:
            before = m.running[job]
            parker, tip = m.parked[(job, before.token)]
            now_kind, after = real.state(job)
            story = (f"{who} moved job {job!r} from running {before} to {now_kind} {after}; its "
                     f"finish was parked by {parker!r} under token {before.token}")
            require(after is not None and (after.worker, after.token, after.attempt) == (
                before.worker, before.token, before.attempt) and (
                    now_kind == "done" or (now_kind == "failed"
                                           and "merge conflict" in after.reason)),
                    f"{story}: a parked job is finished; only its fold may move it")
            if now_kind == "done":
                for t in [*m.tips.get((job, before.token), []), tip]:
                    require(self.world.is_ancestor(t, new),
                            f"{story}, but its tip {t[:10]} is not part of the main branch")
                m.landed.add((job, before.token))
            self.count("fold" if now_kind == "done" else "fold-conflict")
            del m.running[job]
            (m.done if now_kind == "done" else m.failed)[job] = after  # type: ignore[assignment]

    def audit_parked(self, ws: WorkerState, who: str, ref: str, beat: Beat) -> None:
        """The parked finishes a liveness record lists: a new one only from the worker
        session that runs that job under that token, with the job branch's tip; none of
        its worker's parked finishes that are still to be folded left out."""
        m = self.model
        refs = self.world.refs()
        listed = {(p.job, p.token) for p in beat.parked}
        for p in beat.parked:
            known = m.parked.get((p.job, p.token))
            if known is not None:
                require(known == (beat.worker, p.tip),
                        f"{who} wrote {ref} with a parked finish {p} that was parked as {known}")
                continue
            e = m.running.get(p.job)
            claim = m.claims.get((p.job, p.token))
            require(not beat.revoked and e is not None and e.worker == ws.name
                    and e.token == p.token and e.attempt == p.attempt and claim is not None
                    and claim.session == ws.session,
                    f"{who} parked a finish of {p.job!r} (token {p.token}) it does not hold: "
                    f"the ledger says {m.state(p.job)}")
            assert claim is not None
            require(refs.get(claim.branch(p.job, p.token)) == p.tip,
                    f"{who} parked {p.job!r} at {p.tip[:10]}, which is not its branch's tip")
            m.parked[(p.job, p.token)] = (beat.worker, p.tip)
            self.count("park")
        for (job, token), (parker, _) in m.parked.items():
            require(parker != beat.worker or (job, token) in listed
                    or not m.runs(job, parker, token),
                    f"{who} wrote {ref} without the parked finish of {job!r} (token {token}), "
                    "which is not folded in yet: the finish is lost")

    def record_claim(self, ws: WorkerState, job: str, token: int, commit: Oid) -> None:
        self.record_claim_for(ws.name, ws.session, job, token, commit)

    def record_claim_for(self, worker: str, session: str, job: str, token: int,
                         commit: Oid) -> None:
        claim = Claim(worker, session, commit)
        self.model.claims[(job, token)] = claim
        self.expect_branch[claim.branch(job, token)] = commit
        self.branch_job[claim.branch(job, token)] = (job, token)

    def resumes(self, ref: str, claim_commit: Oid, got: Oid, refs: dict[str, Oid]) -> bool:
        """Does a retried job's new branch start as a resume: a merge whose first parent is
        the claim commit and whose second is an earlier attempt's branch tip of that job?"""
        parents = self.world.parents(got)
        if len(parents) != 2 or parents[0] != claim_commit:
            return False
        job, token = self.branch_job[ref]
        earlier = [c.branch(j, t) for (j, t), c in self.model.claims.items()
                   if j == job and t < token]
        return any(b in refs and self.world.is_ancestor(parents[1], refs[b]) for b in earlier)

    def take_over(self, ws: WorkerState, job: str, before: Entry, story: str) -> None:
        """``ws`` takes ``job`` from its previous holding: that holder's lease must be over."""
        self.model.taken_over.add((job, before.token))
        for other in self.live():
            held = other.coord.job
            if other is not ws and held is not None and held.job == job:
                self.count("takeover-from-live-holder")
                require(self.now >= other.beat_valid_until(),
                        f"{story} while {other.name!r} still runs it with a valid lease (until "
                        f"t={other.beat_valid_until():.3f}, now t={self.now:.3f}): "
                        "the job runs twice")
        if before.worker not in ("", ws.name):
            self.expect_revoke.add(worker_ref(before.worker))

    def audit_lock(self, ws: WorkerState, who: str, old: Oid | None, new: Oid) -> None:
        chain = []
        cur = new
        while cur != old:
            chain.append(cur)
            parents = self.world.parents(cur)
            require(len(parents) == 1,
                    f"{who} set the lock to {new[:10]}, which does not descend from its "
                    "previous value: the lock was forced")
            cur = parents[0]
        for child in reversed(chain):
            parent = self.world.parents(child)[0]
            p, c = self.lock_at(parent), self.lock_at(child)
            require(lock_step_ok(p, c), f"{who} moved the lock from {p} to {c}")
            if c.token != p.token and c.free:  # a holding of no length: with a claim only
                require(self.unlocked_claim == (ws.session, c.token) and c.last == ws.name,
                        f"{who} moved the free lock from token {p.token} to {c.token} "
                        "without claiming a job under it in the same push")
            elif c.token != p.token:  # a new holding
                require((c.holder, c.session) == (ws.name, ws.session),
                        f"{who} wrote a holding for {c.holder!r}")
                for other in self.live():
                    h = other.coord.holding
                    if (h is not None and h.state.token == p.token
                            and other.session == p.session):
                        require(self.now >= other.holding_valid_until(),
                                f"{who} took the lock over from {other.name!r}, whose holding "
                                f"(token {p.token}) is valid until "
                                f"t={other.holding_valid_until():.3f}; now t={self.now:.3f}")
                if not p.free:
                    self.count("lock-takeover")
            else:  # a renewal or a release, by the holder only
                require(p.session == ws.session, f"{who} moved the lock from {p} to {c}, "
                        "a holding that is not its own")

    def audit_beat(self, ws: WorkerState, who: str, ref: str, new: Oid) -> None:
        beat = parse_beat_message(self.world.message(new))
        require(ref == worker_ref(beat.worker), f"{who} wrote {beat} to {ref}")
        self.audit_parked(ws, who, ref, beat)
        if beat.revoked:
            require(ref in self.expect_revoke and beat.revoked_by == ws.name,
                    f"{who} revoked {ref} without taking over one of its jobs")
            for other in self.live():
                if other.session == beat.session:
                    require(self.now >= other.beat_valid_until(),
                            f"{who} revoked the liveness of {other.name!r}, valid until "
                            f"t={other.beat_valid_until():.3f}; now t={self.now:.3f}")
            self.count("revocation")
            return
        require((beat.worker, beat.session) == (ws.name, ws.session),
                f"{who} wrote a live beat for {beat.worker!r} session {beat.session}")
        for job in beat.jobs:
            e = self.model.running.get(job)
            claim = self.model.claims.get((job, e.token)) if e is not None else None
            require(e is not None and e.worker == ws.name and claim is not None
                    and claim.session == ws.session,
                    f"{who} renewed its lease on {job!r}, which it no longer holds "
                    f"(the ledger says {self.model.state(job)})")

    def audit_branch(self, ws: WorkerState, who: str, ref: str, old: Oid | None,
                     new: Oid) -> None:
        if old is None:
            require(ref in self.expect_branch, f"{who} created {ref} without claiming its job")
            return
        job = ws.coord.job
        require(job is not None and job.branch_ref == ref and self.world.is_ancestor(old, new),
                f"{who} moved {ref}, which is not the branch of its job, or not forward")

    def merged_branch(self, ref: str, old: Oid | None, post: dict[str, Oid]) -> bool:
        """May ``ref`` go: the branch of a job the ledger now lists as done under its
        token, whose last tip the main branch holds?"""
        if ref not in self.branch_job or old is None:
            return False
        job, token = self.branch_job[ref]
        done = self.model.done.get(job)
        return (done is not None and done.token == token
                and self.world.is_ancestor(old, post[MAIN_REF]))

    def check_branches(self, refs: dict[str, Oid]) -> None:
        """Nothing lost: every holding's branch is on the remote with all its updates, or,
        for a finished job, merged into the main branch (its ref deleted)."""
        for (job, token), claim in self.model.claims.items():
            ref = claim.branch(job, token)
            done = self.model.done.get(job)
            if ref not in refs and done is not None and done.token == token:
                for tip in self.model.tips.get((job, token), [])[-1:]:
                    require(self.world.is_ancestor(tip, refs[MAIN_REF]),
                            f"the update {tip[:10]} of finished {job!r} is not on the main "
                            "branch, and its branch is gone")
                continue
            require(ref in refs, f"the branch {ref} of job {job!r} (token {token}) is missing")
            for tip in self.model.tips.get((job, token), [])[-1:]:
                require(self.world.is_ancestor(tip, refs[ref]),
                        f"the update {tip[:10]} of {job!r} is gone from {ref}")

    # ---- one step of one worker ------------------------------------------------------------
    def perform(self, ws: WorkerState, step: str) -> None:
        """Run ``step`` for ``ws`` if it applies; a kill -9 inside it ends the process."""
        if not self.can(ws, step):
            return
        self.say(lambda: f"{ws.name} ({ws.session}): {step}")
        try:
            getattr(self, "do_" + step)(ws)
        except Killed:
            self.count("kill")
            self.say(lambda: f"{ws.name}: killed (kill -9) during {step}")
            ws.alive = False
            self.boot(ws)
        if ws.coord.holding is not None:
            ws.believed.add(ws.coord.holding.oid)
        else:
            ws.pending = None  # the function's result dies with the holding

    def can(self, ws: WorkerState, step: str) -> bool:
        c = ws.coord
        if not ws.alive or ws.host.asleep(self.now):
            return False
        return {
            "observe": c.holding is None and not ws.fresh,
            "acquire": c.holding is None and c.job is None and ws.fresh,
            "unlocked": c.holding is None and c.job is None and ws.fresh,
            "adopt": c.holding is None and c.job is None and ws.fresh,
            "holder": c.holding is not None and ws.pending is None,
            "claim": c.holding is not None and ws.pending is not None,
            "release": c.holding is not None,
            "update": c.job is not None,
            "finish": c.job is not None,
            "fail": c.job is not None,
            "heartbeat": c.holding is not None or c.job is not None,
            "renew_beat": c.job is not None,
        }[step]

    def do_observe(self, ws: WorkerState) -> None:
        ws.snap, ws.fresh = ws.coord.observe(), True

    def do_acquire(self, ws: WorkerState) -> None:
        snap, c = ws.snap, ws.coord
        quiet = ws.fault is None
        refs = self.world.refs()
        lock = self.lock_at(refs.get(LOCK_REF))
        ws.fresh = False
        got = c.try_acquire(snap)
        torn = c.torn(snap)  # a free lock next to an older main: must look again
        if quiet and not torn and snap.lock_oid == refs.get(LOCK_REF) and (
                lock.free or (lock.holder == ws.name and lock.session != ws.session)):
            require(got, f"{ws.name!r} failed to take a lock it could take: {lock}")
        if got:
            ws.pending = None

    def may_claim_unlocked(self, ws: WorkerState) -> bool:
        """As the Worker decides: a free lock, a view that is not torn, no orphaned job."""
        c, snap = ws.coord, ws.snap
        return (ws.unlocked and snap is not None and snap.lock.free and not c.torn(snap)
                and isinstance(c.plan(snap), CallNextJobFunction))

    def do_unlocked(self, ws: WorkerState) -> None:
        """A repo-only function decides with the lock free; one push claims and moves the
        lock on.  From a quiet, current observation the claim must land."""
        c, snap = ws.coord, ws.snap
        ws.fresh = False
        pending = self.next_job_function(ws)
        if pending is None:
            self.fold_idle(ws)
            return
        job, edits = pending
        handed: list[tuple[Beat, str]] = []
        targets = c.handoff_targets(snap) if c.beat.takes_hand_offs else []
        if targets:
            # as the Worker asks a queue that decides from files: one job each, in turn
            more = self.next_job_function(ws, take=1 + len(targets))
            assert more is not None
            names, edits = more[0].split("\n"), more[1]
            job, handed = names[0], list(zip(targets, names[1:], strict=False))
        refs = self.world.refs()
        current = (refs.get(MAIN_REF) == snap.main and refs.get(LOCK_REF) == snap.lock_oid
                   and refs.get(c.own_ref) == snap.refs.get(c.own_ref) and c.beat_oid in (
                       None, snap.refs.get(c.own_ref)))
        quiet = ws.fault is None
        replays = c.stats.replays
        got = c.claim_unlocked(snap, job, edits, handed)
        if c.stats.replays > replays:
            self.count("unlocked-replayed")
        if quiet and current:
            require(got is not None, f"{ws.name!r} failed an unlocked claim it could make")
        self.count("unlocked-claim" if got is not None else "unlocked-lost")
        self.claimed(ws, got)

    def do_adopt(self, ws: WorkerState) -> None:
        """Take up a job another worker's claim handed to this one (no push unless its
        record is due for renewal).  From a current look the job is still this worker's,
        unless it was taken over or cancelled since (its later pushes are fenced)."""
        c = ws.coord
        ws.fresh = False
        got = c.take_handed(ws.snap)
        if got is None:
            self.count("handed-dropped")
            return
        require(self.model.runs(got.job, ws.name, got.token)
                or (got.job, got.token) in self.model.taken_over,
                f"{ws.name!r} took up {got}, which the ledger gives to "
                f"{self.model.state(got.job)}")
        require((got.job, got.token) not in self.model.taken_up,
                f"{ws.name!r} took up {got.job!r} (token {got.token}) a second time: the job "
                "runs twice under one holding")
        self.model.taken_up.add((got.job, got.token))
        self.count("handed-taken")

    def do_holder(self, ws: WorkerState) -> None:
        c = ws.coord
        if not c.holding_valid():
            # the holder stops working for a lease it cannot renew (DESIGN 4.5), as the
            # Worker does before it runs the next-job function
            self.count("expired-holder-stops")
            c.release()
            return
        plan = c.plan(ws.snap)
        if isinstance(plan, GiveUp):
            ws.snap = c.give_up(ws.snap, plan)
        elif isinstance(plan, Retry):
            self.claimed(ws, c.claim(ws.snap, plan, None))
        else:
            ws.pending = self.next_job_function(ws)
            if ws.pending is None:
                c.release()
                self.fold_idle(ws)

    def fold_idle(self, ws: WorkerState) -> None:
        """A worker with no job to claim folds the parked finishes it saw, alone; from a
        current look and with no fault, that push must land."""
        snap, quiet = ws.snap, ws.fault is None
        if snap.folds is None:
            return
        landed = ws.coord.fold(snap)
        main = self.world.refs()[MAIN_REF]
        require(landed or not quiet or main != snap.main,
                f"{ws.name!r} failed to fold the parked finishes on a main branch that did "
                "not move")
        if main != snap.main:
            self.count("fold-alone" if landed else "fold-alone-lost")

    def next_job_function(self, ws: WorkerState, take: int = 1) -> tuple[str, Oid | None] | None:
        """The queue's next-job function: take the first line of ``jobs.txt`` (the first
        ``take`` lines, named one per line, for a claim that hands jobs off)."""
        t = ws.coord.transport
        main = ws.snap.main
        queue = read_queue((t.read_file(main, JOBS_FILE) or b"").decode())
        if not queue:
            return None
        taken = queue[:take]
        edits = t.write_commit(
            parents=[main], base=main, changes={JOBS_FILE: format_queue(queue[take:]).encode()},
            message=f"next-job function: take {', '.join(taken)}",
        )
        return "\n".join(taken), edits

    def do_claim(self, ws: WorkerState) -> None:
        assert ws.pending is not None
        job, edits = ws.pending
        ws.pending = None
        try:
            got = ws.coord.claim(ws.snap, CallNextJobFunction(), job, edits)
        except MergeConflict:
            # the queue changed under the function's edit (an administrator queued a job)
            require(self.queue_at(self.world.refs()[MAIN_REF]) != self.queue_at(ws.snap.main)
                    and ws.coord.holding is None, f"{ws.name!r}: unexpected merge conflict")
            self.count("claim-conflict")
            return
        self.claimed(ws, got)

    def claimed(self, ws: WorkerState, got: JobHolding | None) -> None:
        if got is None:
            require(ws.coord.holding is None, f"{ws.name!r} claimed nothing but kept the lock")
            return
        claim = self.model.claims.get((got.job, got.token))
        require(self.model.runs(got.job, ws.name, got.token) and claim is not None
                and claim.session == ws.session and self.model.running[got.job].attempt
                == got.attempt, f"{ws.name!r} believes it claimed {got}, the ledger says "
                f"{self.model.state(got.job)}")

    def do_release(self, ws: WorkerState) -> None:
        ws.pending = None
        ws.coord.release()

    def do_update(self, ws: WorkerState, shared: bool = False) -> None:
        c = ws.coord
        job = c.job
        assert job is not None
        ws.updates += 1
        path = "results.txt" if shared else job_dir(job.job) + "/log.txt"
        data = f"{ws.name} token {job.token} update {ws.updates}\n".encode()
        tip = c.transport.write_commit(parents=[job.tip], base=job.tip, changes={path: data},
                                       message=f"update {ws.updates} of {job.job}")
        try:
            c.update(tip)
        except LeaseLost as exc:
            require(c.revoked, f"{ws.name!r}: update of {job.job!r} raised LeaseLost ({exc}) "
                    f"though its lease was not revoked; the ledger says "
                    f"{self.model.state(job.job)}")
        if self.world.refs().get(job.branch_ref) == tip:
            self.model.tips.setdefault((job.job, job.token), []).append(tip)

    def do_finish(self, ws: WorkerState) -> None:
        c = ws.coord
        job = c.job
        assert job is not None
        # a torn read shows the main branch from before the latest push: its CAS loses
        quiet = ws.fault is None and not self.read_will_tear(c)
        park = (job.token + ws.updates) % 2 == 0  # else lost races are retried unparked
        race = None
        if park and quiet and self.depth == 0 and self.budget["park"] > 0:
            # the others move the main branch between this finish's look and its push
            self.budget["park"] -= 1
            race = ws.fault = Fault("pause", aim="main", until_moved=True)
            quiet = False
        try:
            landed = self.finish_or_park(ws, park)
        except LeaseLost:
            require(not self.model.runs(job.job, ws.name, job.token),
                    f"{ws.name!r}: finishing {job.job!r} was refused though it still holds it")
            self.count("finish-refused")
        except MergeConflict:
            e = self.model.failed.get(job.job)
            require(e is not None and (e.worker, e.token) == (ws.name, job.token),
                    f"{ws.name!r}: merge conflict, but {job.job!r} is not failed under it")
            self.count("finish-conflict")
        else:
            if landed is None:
                require(not quiet, f"{ws.name!r}: a finish of {job.job!r} lost a race without "
                        "any other push")
                require(c.job is job, f"{ws.name!r} dropped its job after a lost race")
                return
            if landed == "parked":
                self.count("park-believed")
            e = self.model.done.get(job.job)
            parked = self.model.parked.get((job.job, job.token))
            require((e is not None and e.token == job.token) or (
                landed == "parked" and parked is not None and parked[0] == ws.name),
                    f"{ws.name!r} believes it finished {job.job!r} ({landed}); the ledger says "
                    f"{self.model.state(job.job)}")
            self.model.believed[(job.job, job.token)] = ws.name
        finally:
            if ws.fault is race:
                ws.fault = None
        require(c.job is None, f"{ws.name!r} still holds {job.job!r} after finishing it")

    def read_will_tear(self, c: Coordinator) -> bool:
        world = self.world
        return isinstance(world, MemoryWorld) and c.transport.inner.name in world._torn

    def finish_or_park(self, ws: WorkerState, park: bool) -> Oid | str | None:
        """One try of the finish: the new main branch commit, ``"parked"`` when it lost its
        race and parked itself on the worker's record (with ``park``), or ``None``."""
        c = ws.coord
        if not park:
            return c.finish_step()
        landed = c._finish_try()
        if landed is _Lost.MAIN:
            self.count("finish-lost")
            return "parked" if c.park_step() else None
        return None if isinstance(landed, _Lost) else landed

    def do_fail(self, ws: WorkerState) -> None:
        c = ws.coord
        job = c.job
        assert job is not None
        try:
            outcome = c.fail_step("the machine failed this attempt")
        except LeaseLost:
            require(not self.model.runs(job.job, ws.name, job.token),
                    f"{ws.name!r}: failing {job.job!r} was refused though it still holds it")
            return
        if outcome is None:
            return
        kind, e = self.model.state(job.job)
        expected = ("running", "") if outcome == "retry" else ("failed", ws.name)
        require(e is not None and (kind, e.worker) == expected and e.token == job.token,
                f"{ws.name!r} believes {job.job!r} is now {outcome}; the ledger says {kind} {e}")

    def do_heartbeat(self, ws: WorkerState) -> None:
        self.heartbeat_of(ws, ws.coord.renew)

    def do_renew_beat(self, ws: WorkerState) -> None:
        self.heartbeat_of(ws, ws.coord.renew_beat)

    def heartbeat_of(self, ws: WorkerState, beat: Callable[[], object]) -> None:
        was = ws.coord.revoked
        beat()
        if ws.coord.revoked and not was:
            self.count("revoked-learned")

    # ---- rules: one step of one worker ----------------------------------------------------
    # ``act`` is the scheduler's step.  Hypothesis picks uniformly among the rules whose
    # preconditions hold, and tries them in the order (arguments, name): as a one-argument
    # rule named ``act``, registered three times, it takes about half the steps (idle
    # workers could always poll instead, which real ones do with backoff).
    @rule(data=st.data())
    def act(self, data: Any) -> None:
        self.schedule(data)

    @rule(data=st.data())
    def act_again(self, data: Any) -> None:
        self.schedule(data)

    @rule(data=st.data())
    def act_once_more(self, data: Any) -> None:
        self.schedule(data)

    def schedule(self, data: Any) -> None:
        """Half a second passes; then one thread of one worker takes its natural next step.

        Each worker has a main thread (observe, acquire, plan and claim, work on its job)
        and a heartbeat thread (renew when due).  A fair scheduler runs the runnable thread
        whose turn is earliest (``skip`` picks a later one instead); threads on fast hosts
        get turns more often (``speed``): on a slow host the heartbeat falls behind and
        leases run out while the worker still works.  A heartbeat a whole lease overdue (the
        host slept) runs first, as a timer that expired during the sleep would.
        """
        self.now += STEP_SECONDS
        turns = sorted(
            (turn - (1000 if thread == "heartbeat" and self.renewal_overdue(ws) else 0),
             i, thread)
            for i, ws in enumerate(self.workers_list)
            for thread, turn in ws.turns.items()
            if ws.alive and not ws.host.asleep(self.now)
            and (thread == "main" or self.renewal_due(ws))
        )
        if not turns:
            return
        late = 0 if data is None else data.draw(st.integers(0, min(3, len(turns) - 1)),
                                                 label="skip")
        _, i, thread = turns[late]
        ws = self.workers_list[i]
        # the heartbeat waits behind the main thread (on a slow host it falls behind), but
        # never delays the main thread: else a slow worker's renewals could use up all its
        # turns, and its job would never finish
        base = ws.turns[thread] if thread == "main" else max(ws.turns.values())
        ws.turns[thread] = base + 1 / ws.speed
        if thread == "main":
            self.natural_step(ws)
        else:
            ws.beat_ran_at = self.now
            self.perform(ws, "heartbeat")

    def natural_step(self, ws: WorkerState) -> None:
        """What the Worker's main thread does next: observe, acquire, plan and claim; or
        work on its job."""
        c = ws.coord
        if c.job is not None and c.revoked:
            step = "finish"  # told it lost the job (LeaseLost), the user's code wraps up
        elif c.job is not None:
            ws.cursor += 1
            step = JOB_CYCLE[ws.cursor % len(JOB_CYCLE)]
        elif c.holding is not None:
            step = "claim" if ws.pending is not None else "holder"
        else:
            step = "acquire" if ws.fresh else "observe"
            if step == "acquire" and c.handed(ws.snap) is not None:
                step = "adopt"  # as the Worker does first after each look
            elif step == "acquire" and self.may_claim_unlocked(ws):
                step = "unlocked"
        if step == "update":
            if self.can(ws, "update"):
                self.update_or_die(ws, shared=ws.cursor % 5 == 0)
        else:
            self.perform(ws, step)

    def renewal_due(self, ws: WorkerState) -> bool:
        """Would the heartbeat renew something now (the lock, or the job's liveness)?"""
        c = ws.coord
        if ws.host.asleep(self.now) or (c.holding is None and c.job is None):
            return False
        now = ws.host.local(self.now)
        lock_due = c.holding is not None and holder_verdict(
            c.holding.sent_at, now, self.lease) == "renew"
        return lock_due or (c.job is not None and now - c.beat_sent_at >= self.lease / 3)

    def renewal_overdue(self, ws: WorkerState) -> bool:
        """A whole lease without renewal (the host slept): the heartbeat's timer fires first,
        once (a revoked worker's renewals keep failing; it gets no priority for that)."""
        c = ws.coord
        if self.now - ws.beat_ran_at < self.lease:
            return False
        now = ws.host.local(self.now)
        sent = [c.beat_sent_at] if c.job is not None else []
        sent += [c.holding.sent_at] if c.holding is not None else []
        return any(now - t >= self.lease for t in sent)

    def update_or_die(self, ws: WorkerState, shared: bool) -> None:
        self.say(lambda: f"{ws.name} ({ws.session}): update{' (shared file)' if shared else ''}")
        try:
            self.do_update(ws, shared)
        except Killed:
            self.count("kill")
            ws.alive = False
            self.boot(ws)

    def pick(self, data: Any, step: str) -> WorkerState:
        names = [ws.name for ws in self.workers_list if self.can(ws, step)]
        return self.by_name[data.draw(st.sampled_from(names), label="worker")]

    @precondition(any_can("observe"))
    @rule(data=st.data())
    def observe(self, data: Any) -> None:
        self.perform(self.pick(data, "observe"), "observe")

    @precondition(any_can("acquire"))
    @rule(data=st.data())
    def try_acquire(self, data: Any) -> None:
        self.perform(self.pick(data, "acquire"), "acquire")

    @precondition(any_can("holder"))
    @rule(data=st.data())
    def plan_and_act(self, data: Any) -> None:
        """Give up an orphan, retry one, or run the next-job function (whichever is next)."""
        self.perform(self.pick(data, "holder"), "holder")

    @precondition(any_can("claim"))
    @rule(data=st.data())
    def claim(self, data: Any) -> None:
        self.perform(self.pick(data, "claim"), "claim")

    @precondition(lambda self: self.budget["release"] > 0 and any_can("release")(self))
    @rule(data=st.data())
    def release(self, data: Any) -> None:
        """The next-job function raised: the Worker releases the lock without a claim."""
        self.budget["release"] -= 1
        self.perform(self.pick(data, "release"), "release")

    @precondition(any_can("update"))
    @rule(data=st.data(), shared=st.booleans())
    def update(self, data: Any, shared: bool) -> None:
        self.update_or_die(self.pick(data, "update"), shared)

    @precondition(any_can("finish"))
    @rule(data=st.data())
    def finish(self, data: Any) -> None:
        self.perform(self.pick(data, "finish"), "finish")

    @precondition(lambda self: self.budget["fail"] > 0 and any_can("fail")(self))
    @rule(data=st.data())
    def fail(self, data: Any) -> None:
        """The job's code failed: record the attempt (retried while attempts are left)."""
        self.budget["fail"] -= 1
        self.perform(self.pick(data, "fail"), "fail")

    @precondition(any_can("heartbeat"))
    @rule(data=st.data())
    def heartbeat(self, data: Any) -> None:
        self.perform(self.pick(data, "heartbeat"), "heartbeat")

    @precondition(any_can("renew_beat"))
    @rule(data=st.data())
    def renew_beat(self, data: Any) -> None:
        self.perform(self.pick(data, "renew_beat"), "renew_beat")

    # ---- rules: what the world does ---------------------------------------------------------
    @precondition(lambda self: self.budget["time"] > 0)
    @rule(dt=st.sampled_from(DELAYS))
    def advance_time(self, dt: float) -> None:
        """Real time passes for everyone (each host's clock at its own rate); ``dt`` in leases."""
        self.budget["time"] -= 1
        self.now += dt * self.lease

    @precondition(lambda self: self.budget["suspend"] > 0 and self.awake("job"))
    @rule(data=st.data(), dt=st.sampled_from(SLEEPS))
    def suspend_job_holder(self, data: Any, dt: float) -> None:
        """A worker running a job is suspended for ``dt`` real seconds (a VM paused by its
        hypervisor, a closed laptop): it takes no step and its monotonic clock stands still,
        while the other workers run on."""
        self.suspend(data, "job", dt)

    @precondition(lambda self: self.budget["suspend"] > 0 and self.awake("holding"))
    @rule(data=st.data(), dt=st.sampled_from(SLEEPS))
    def suspend_lock_holder(self, data: Any, dt: float) -> None:
        """Likewise for a worker that holds the lock."""
        self.suspend(data, "holding", dt)

    def awake(self, what: str) -> list[str]:
        return [ws.name for ws in self.live()
                if not ws.host.asleep(self.now) and getattr(ws.coord, what) is not None]

    def suspend(self, data: Any, what: str, dt: float) -> None:
        self.budget["suspend"] -= 1
        ws = self.by_name[data.draw(st.sampled_from(self.awake(what)), label="worker")]
        ws.host.sleeps.append((self.now, self.now + dt * self.lease))
        self.count("suspend-" + what)

    @precondition(lambda self: self.budget["crash"] > 0)
    @rule(w=workers)
    def crash(self, w: str) -> None:
        """kill -9 between steps, and a restart: same name, new session, local state lost."""
        self.budget["crash"] -= 1
        self.count("kill")
        self.boot(self.by_name[w])

    @precondition(lambda self: self.budget["fault"] > 0)
    @rule(
        w=workers,
        kind=st.sampled_from(PUSH_FAULTS),
        aim=st.sampled_from(("any", "main", "lock")),
        delay=st.sampled_from(DELAYS),
        interlude=st.lists(st.integers(-1, 4), max_size=4).map(tuple),
    )
    def fault_next_push(self, w: str, kind: str, aim: str, delay: float,
                        interlude: tuple[int, ...]) -> None:
        """Something goes wrong with one of this worker's next pushes (see :data:`PUSH_FAULTS`):
        the next one, or the next that moves the main branch or the lock."""
        self.budget["fault"] -= 1
        stalls = kind in ("pause", "timeout-applied", "timeout-lost")
        self.by_name[w].fault = Fault(kind, delay * self.lease if stalls else 0.0,
                                      interlude if stalls else (), aim)

    @precondition(lambda self: self.budget["fault"] > 0 and isinstance(self.world, MemoryWorld)
                  and "torn-observe" not in self.known_bugs)
    @rule(w=workers)
    def torn_read(self, w: str) -> None:
        """This worker's next read of the remote sees the latest push half done (git's files
        backend renames an atomic push's ref locks one at a time)."""
        self.budget["fault"] -= 1
        self.world.tear_next_read(self.by_name[w].coord.transport.inner)

    @precondition(lambda self: self.late_jobs)
    @rule()
    def queue_a_job(self) -> None:
        """An administrator appends a job to ``jobs.txt`` (CAS on the main branch, no lock)."""
        self.queue_late_job()

    def queue_late_job(self) -> None:
        if not self.late_jobs:
            return
        job = self.late_jobs.pop(0)
        for _ in range(3):
            main = self.admin.fetch([MAIN_REF])[MAIN_REF]
            queue = self.queue_at(main)
            new = self.admin.write_commit(
                parents=[main], base=main, message=f"queue {job}",
                changes={JOBS_FILE: format_queue([*queue, job]).encode()},
            )
            pre = self.world.refs()
            if self.admin.push([RefUpdate(MAIN_REF, main, new)]):
                self.audit_push(None, pre, self.world.refs())
                return

    # ---- targeted rules: scenarios that random steps reach too rarely ---------------------------
    # Each rule plays a whole story inside one step of Hypothesis's, once per run (its
    # budget): ``play_*`` takes the steps, checks the invariants after each, and names the
    # scenario in any violation found meanwhile (``Found.scenario``).  The ``*_ready``
    # methods list the workers a story can start from; with none, the rule is not chosen.

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        SCENARIO.append(name)
        self.count("scenario-" + name)
        self.say(lambda: f"--- scenario {name}")
        try:
            yield
        finally:
            SCENARIO.pop()

    def is_up(self, ws: WorkerState) -> bool:
        return ws.alive and not ws.host.asleep(self.now)

    def with_company(self, ws: WorkerState) -> bool:
        return any(self.is_up(o) for o in self.workers_list if o is not ws)

    def job_holders_ready(self) -> list[str]:
        """Awake workers running a job they have not lost yet, with someone awake to take
        it over."""
        return [ws.name for ws in self.workers_list if self.is_up(ws) and ws.coord.job
                is not None and not ws.coord.revoked and self.with_company(ws)]

    def main_movers_ready(self) -> list[str]:
        """Awake workers whose next steps push to the main branch (a job to finish, a holding
        to claim under, a free lock to claim at with no acquire), with company."""
        return [ws.name for ws in self.workers_list if self.is_up(ws) and ws.fault is None
                and self.with_company(ws) and (
                    ws.coord.job is not None or ws.coord.holding is not None
                    or (ws.fresh and self.may_claim_unlocked(ws)))]

    def mid_step_ready(self) -> list[str]:
        """Awake workers about to push: running a job, holding the lock, or about to try."""
        return [ws.name for ws in self.workers_list if self.is_up(ws) and ws.fault is None
                and (ws.coord.job is not None or ws.coord.holding is not None or ws.fresh)]

    def lock_holders_ready(self) -> list[str]:
        return [ws.name for ws in self.workers_list if self.is_up(ws) and ws.fault is None
                and ws.coord.holding is not None]

    def draw_worker(self, data: Any, names: list[str]) -> WorkerState:
        return self.by_name[data.draw(st.sampled_from(names), label="worker")]

    @precondition(lambda self: self.budget["stale-wake"] > 0 and self.job_holders_ready())
    @rule(data=st.data(), first=st.sampled_from(("finish", "update", "renew_beat", "heartbeat",
                                                 "fail")))
    def holder_wakes_after_takeover(self, data: Any, first: str) -> None:
        """A job holder sleeps through the takeover of its job, wakes, and tries ``first``."""
        self.budget["stale-wake"] -= 1
        self.play_stale_wake(self.draw_worker(data, self.job_holders_ready()), first)

    def play_stale_wake(self, ws: WorkerState, first: str) -> None:
        """``ws``, running a job, is suspended; the others carry on until one of them has
        taken the job over (its lease ran out), or for a bounded time; then it wakes and,
        before it has learnt anything, tries ``first``: to finish the job, push an update,
        renew its liveness record, let its heartbeat run (which finds nothing due: the
        host's monotonic clock stood still while it slept), or record a failure; then it
        finishes the job if it still believes it runs it."""
        job = ws.coord.job
        assert job is not None
        with self.scenario("stale-wake-" + first):
            ws.host.sleeps.append((self.now, float("inf")))
            limit = int(4 * self.lease / STEP_SECONDS) + 10 * len(self.workers_list)
            for _ in range(limit):
                if not self.model.runs(job.job, ws.name, job.token):
                    break
                self.schedule(None)
                self.recheck()
            start, _ = ws.host.sleeps.pop()
            ws.host.sleeps.append((start, self.now))
            taken = not self.model.runs(job.job, ws.name, job.token)
            self.count("stale-wake-after-takeover" if taken else "stale-wake-still-holder")
            self.say(lambda: f"{ws.name} ({ws.session}) wakes; its job "
                             f"{job.job!r} is {self.model.state(job.job)}")
            if first == "update":
                if self.can(ws, "update"):
                    self.update_or_die(ws, shared=False)
            else:
                self.perform(ws, first)
            self.recheck()
            if ws.coord.job is not None:
                self.perform(ws, "finish")

    @precondition(lambda self: self.budget["lost-answer"] > 0 and self.main_movers_ready())
    @rule(data=st.data(), delay=st.sampled_from((0.05, 0.2)))
    def answer_lost_while_others_move(self, data: Any, delay: float) -> None:
        """A push to the main branch lands, its answer is lost, the others move it on."""
        self.budget["lost-answer"] -= 1
        self.play_lost_answer(self.draw_worker(data, self.main_movers_ready()), delay)

    def play_lost_answer(self, ws: WorkerState, delay: float) -> None:
        """``ws``'s next push to the main branch lands but its answer is lost for ``delay``
        leases; before it reads the refs back, the other workers take their turns until the
        branch has moved on (a finish, a claim built on it), so the read-back finds a
        descendant of what it pushed rather than the commit itself."""
        with self.scenario("lost-answer"):
            ws.fault = Fault("timeout-applied", delay * self.lease, aim="main", until_moved=True)
            for _ in range(4):
                if ws.fault is None or not ws.alive:
                    break
                c = ws.coord
                if c.job is not None:
                    self.perform(ws, "finish")  # not an update: that is not on the main branch
                elif ws.fresh and c.holding is None and self.may_claim_unlocked(ws):
                    self.perform(ws, "unlocked")
                else:
                    self.natural_step(ws)
                self.recheck()
            self.count("lost-answer-hit" if ws.fault is None else "lost-answer-missed")
            ws.fault = None

    @precondition(lambda self: self.budget["restart"] > 0 and self.mid_step_ready())
    @rule(data=st.data(), kill=st.sampled_from(("kill-before", "kill-after")),
          aim=st.sampled_from(("any", "main", "lock")))
    def restart_mid_step(self, data: Any, kill: str, aim: str) -> None:
        """A worker is killed inside a push and its new process acts at once."""
        self.budget["restart"] -= 1
        self.play_restart(self.draw_worker(data, self.mid_step_ready()), kill, aim)

    def play_restart(self, ws: WorkerState, kill: str, aim: str) -> None:
        """``ws`` is killed inside its next push (the next one, or the next that moves the
        main branch or the lock), just before it leaves (``kill-before``) or just after it
        landed (``kill-after``), and restarts at once (same name, new session): the new
        process looks, takes its previous life's lock over or the lock anew, and picks up
        its own job again, before any other worker moves."""
        with self.scenario("restart-" + kill):
            session = ws.session
            ws.fault = Fault(kill, aim=aim)
            for _ in range(6):
                if ws.session != session:
                    break
                self.natural_step(ws)
                self.recheck()
            if ws.session == session:
                ws.fault = None
                self.count("restart-missed")
                return
            self.count("restart-mid-step")
            for _ in range(5):
                if ws.coord.job is not None or not ws.alive:
                    break
                self.natural_step(ws)
                self.recheck()

    # ---- invariants between steps -------------------------------------------------------------
    @invariant()
    def count_steps(self) -> None:
        STATS["steps"] += 1

    @invariant()
    def ledgers_agree_with_the_model(self) -> None:
        main = self.world.refs()[MAIN_REF]
        ledger = self.ledger_at(main)
        try:
            ledger.validate()
        except AssertionError as exc:
            violation(str(exc))
        running, done, failed = ledger_tables(ledger)
        jobs = [set(running), set(done), set(failed)]
        require(not (jobs[0] & jobs[1] or jobs[0] & jobs[2] or jobs[1] & jobs[2]),
                "a job is in two ledgers")
        m = self.model
        require((running, done, failed) == (m.running, m.done, m.failed),
                "the ledgers differ from the model")
        require(self.queue_at(main) == m.queue, "jobs.txt differs from the model's queue")
        for job, e in m.done.items():
            for tip in m.tips.get((job, e.token), [])[-1:]:  # the others are its ancestors
                require(self.world.is_ancestor(tip, main),
                        f"update {tip[:10]} of finished job {job!r} is not on the main branch")

    @invariant()
    def lock_tokens_increase(self) -> None:
        """Walk the lock ref's history: the token grows by one at each new holding."""
        cur: Oid | None = self.world.refs()[LOCK_REF]
        while cur is not None and cur not in self.lock_checked:
            parents = self.world.parents(cur)
            if parents:
                p, c = self.lock_at(parents[0]), self.lock_at(cur)
                require(lock_step_ok(p, c), f"lock history: {p} is followed by {c}")
            else:
                require(self.lock_at(cur).token == 0, "the lock's first commit has a token")
            self.lock_checked.add(cur)
            cur = parents[0] if parents else None

    @invariant()
    def at_most_one_valid_holding(self) -> None:
        valid = [ws.name for ws in self.live() if self.now < ws.holding_valid_until()]
        require(len(valid) <= 1, f"several workers hold the lock validly at once: {valid}")

    @invariant()
    def beliefs_agree_with_the_remote(self) -> None:
        m = self.model
        lock_oid = self.world.refs()[LOCK_REF]
        lock = self.lock_at(lock_oid)
        for ws in self.live():
            c = ws.coord
            if c.job is not None:
                j = c.job
                require(m.runs(j.job, ws.name, j.token) or (j.job, j.token) in m.taken_over,
                        f"{ws.name!r} believes it runs {j.job!r} under token {j.token}; the "
                        f"ledger says {m.state(j.job)}")
            for e in m.running.values():
                claim = m.claims.get((e.job, e.token))
                mine = c.job is not None and (c.job.job, c.job.token) == (e.job, e.token)
                # a job handed to it is its to take up at its next look
                waiting = bool(e.by) and (e.job, e.token) not in c._taken_up
                require(e.worker != ws.name or claim is None or claim.session != ws.session
                        or mine or m.parked_line(e.job) or waiting,
                        f"{ws.name!r} holds {e.job!r} on the remote (token {e.token}) but does "
                        "not know it")
            if c.holding is not None:
                ws.believed.add(c.holding.oid)
                require(self.world.is_ancestor(c.holding.oid, lock_oid),
                        f"{ws.name!r} believes in a lock holding that never landed")
            if not lock.free and lock.session == ws.session and (
                    c.holding is None or c.holding.oid != lock_oid):
                require(lock_oid in ws.believed, f"{ws.name!r} holds the lock on the remote "
                        f"({lock}) but never learned that its push landed")
                self.count("phantom-holding")  # dropped as lost or expired; waits out one lease


class AdminMachine(ProtocolMachine):
    """The protocol machine plus an administrator whose commands (the real fenced edits of
    ``distribute add / requeue [--done|--force] / cancel`` and ``unlock``) interleave with
    the workers' steps, every push audited (:meth:`audit_admin`).

    With ``requeue --done`` a job runs again: each run must be claimed anew and finished at
    most once, so this machine keeps which run each claim belongs to and which runs
    finished.

    A subclass, and everything it needs lives here (its model of re-runs, its checks, its
    budget, overrides of whole base methods rather than hooks in the base class), so that
    the base machine's derandomized runs stay exactly as they were: Hypothesis seeds a
    derandomized state machine from the source of its class (comments and blank lines
    aside), and draws constants from the source of the project modules loaded when it
    runs, which is why this module imports :mod:`distribute.fenced`, :mod:`distribute.remote`
    and :mod:`distribute.cli` only in :meth:`run_admin`."""

    budgets: dict[str, int] = {**BUDGET, "admin": 2}
    #: The administrator's fenced edit (``None``: the real
    #: :class:`~distribute.fenced.FencedEdit`; ``broken_admin.py`` swaps in broken ones),
    #: the commands it runs, and the jobs it waits for before its first: ``"done"`` or
    #: ``"held"`` (a job a worker runs), or ``""`` (any moment).
    fenced_edit_class: type[FencedEdit] | None = None
    admin_ops: tuple[str, ...] = ADMIN_OPS
    admin_waits_for: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.admin_wire: AdminWire | None = None
        self.admins = itertools.count(1)
        #: lock commits written by ``distribute unlock`` (held -> free, next token)
        self.lock_breaks: set[Oid] = set()
        #: how often each job was put back after it was done (``requeue --done``): each time
        #: it starts a new run, which must be claimed anew and may be finished once
        self.runs_of: dict[str, int] = {}
        #: the run of its job each claim belongs to
        self.claim_run: dict[tuple[str, int], int] = {}
        #: (job, run) -> the token its finish landed under
        self.finished: dict[tuple[str, int], int] = {}

    # ---- the base machine's audit, aware of re-runs -------------------------------------
    def record_claim_for(self, worker: str, session: str, job: str, token: int,
                         commit: Oid) -> None:
        require((job, token) not in self.model.claims,
                f"{worker!r} claimed {job!r} under token {token}, which an earlier claim of "
                "it used already")
        self.claim_run[(job, token)] = self.runs_of.get(job, 0)
        super().record_claim_for(worker, session, job, token, commit)

    def audit_main(self, ws: WorkerState | None, who: str, pre: dict[str, Oid],
                   post: dict[str, Oid]) -> None:
        """The base audit; then, for a finish, that this run of the job was not finished
        already (a finish under a token of an earlier run would do the job twice)."""
        m = self.model
        running, done = dict(m.running), set(m.done)
        super().audit_main(ws, who, pre, post)
        for job in [j for j in m.done if j in running and j not in done]:
            token = running[job].token
            run = self.claim_run.get((job, token))
            require(run == self.runs_of.get(job, 0) and (job, run) not in self.finished,
                    f"{who} finished {job!r} under token {token}, but this run of it (run "
                    f"{run}; the job's current run is {self.runs_of.get(job, 0)}) was finished "
                    f"already under token {self.finished.get((job, run))} (run {run}): the "
                    "job is done twice")
            self.finished[(job, run)] = token  # type: ignore[index]

    def was_finished(self, job: str, token: int) -> bool:
        """Did a finish of ``job`` land under ``token`` (in this run of it or an earlier
        one)?"""
        return self.finished.get((job, self.claim_run.get((job, token), -1))) == token

    def finish_kept(self, job: str, token: int, done: Entry | None) -> bool:
        """A finish is kept once it landed in its run (a later ``requeue --done`` starts a
        new run of the job; ``done.txt`` then lists that one, or none)."""
        return self.was_finished(job, token)

    def merged_branch(self, ref: str, old: Oid | None, post: dict[str, Oid]) -> bool:
        """As the base machine's, with "finished" meaning a finish of the run the branch's
        claim belongs to (the job may be done again, or queued again, since)."""
        if ref not in self.branch_job or old is None:
            return False
        job, token = self.branch_job[ref]
        return (self.was_finished(job, token)
                and self.world.is_ancestor(old, post[MAIN_REF]))

    def check_branches(self, refs: dict[str, Oid]) -> None:
        """As the base machine's, with "finished" as in :meth:`merged_branch`."""
        for (job, token), claim in self.model.claims.items():
            ref = claim.branch(job, token)
            if ref not in refs and self.was_finished(job, token):
                for tip in self.model.tips.get((job, token), [])[-1:]:
                    require(self.world.is_ancestor(tip, refs[MAIN_REF]),
                            f"the update {tip[:10]} of finished {job!r} is not on the main "
                            "branch, and its branch is gone")
                continue
            require(ref in refs, f"the branch {ref} of job {job!r} (token {token}) is missing")
            for tip in self.model.tips.get((job, token), [])[-1:]:
                require(self.world.is_ancestor(tip, refs[ref]),
                        f"the update {tip[:10]} of {job!r} is gone from {ref}")

    @invariant()
    def lock_tokens_increase(self) -> None:
        """As the base machine's (same name: it replaces it), but a break by ``distribute
        unlock`` (held -> free under the next token) is a step too."""
        cur: Oid | None = self.world.refs()[LOCK_REF]
        while cur is not None and cur not in self.lock_checked:
            parents = self.world.parents(cur)
            if parents:
                p, c = self.lock_at(parents[0]), self.lock_at(cur)
                require(lock_step_ok(p, c) or cur in self.lock_breaks,
                        f"lock history: {p} is followed by {c}")
            else:
                require(self.lock_at(cur).token == 0, "the lock's first commit has a token")
            self.lock_checked.add(cur)
            cur = parents[0] if parents else None

    @invariant()
    def queue_lists_no_job_twice(self) -> None:
        main = self.world.refs()[MAIN_REF]
        running, done, failed = ledger_tables(self.ledger_at(main))
        queue = self.queue_at(main)
        require(not set(queue) & (set(running) | set(done) | set(failed))
                and len(set(queue)) == len(queue),
                f"jobs.txt lists a job twice or one that is in a ledger: {queue}")

    # ---- pushes by the administrator -------------------------------------------------------
    def admin_push(self, op: AdminOp, inner: Any, updates: Sequence[RefUpdate]) -> bool:
        """Push for the administrator and audit it; a stalled command lets the workers take
        ``op.stall`` steps right after its acquire landed (before it edits)."""
        pre = self.world.refs()
        try:
            ok = bool(inner.push(updates))
        finally:
            post = self.world.refs()
            if pre != post:
                self.audit_admin(op, pre, post)
        acquired = post.get(LOCK_REF) != pre.get(LOCK_REF) and not self.lock_at(
            post.get(LOCK_REF)).free
        if ok and acquired and op.stall:
            self.say(lambda: f"{op.describe()} stalls {op.stall} steps holding the lock")
            for _ in range(op.stall):
                self.schedule(None)
                self.recheck()
        return ok

    # ---- the audit of an administrator's push ---------------------------------------------
    def audit_admin(self, a: AdminOp, pre: dict[str, Oid], post: dict[str, Oid]) -> None:
        """An admin command writes the main branch and the lock only; the lock by acquire
        (a free lock, for itself), release (its own holding), or, for ``unlock``, a break of
        a holding that is no longer valid; the main branch only fenced by its own holding."""
        who = a.describe()
        changed = sorted(r for r in set(pre) | set(post) if pre.get(r) != post.get(r))
        revoked = set()
        for ref in changed:
            if ref.startswith(WORKERS_PREFIX) and post.get(ref) is not None:
                # an edit that takes a live holding away revokes its holder's record
                beat = parse_beat_message(self.world.message(post[ref]))  # type: ignore[arg-type]
                require(ref == worker_ref(beat.worker) and beat.revoked_by == a.who
                        and a.op in ("cancel", "requeue"),
                        f"{who} wrote {beat} to {ref}, which is no revocation of its own")
                revoked.add(beat.worker)
                continue
            require(ref in (MAIN_REF, LOCK_REF) and post.get(ref) is not None,
                    f"{who} changed {ref} ({pre.get(ref)} -> {post.get(ref)}), which an admin "
                    "command never writes or deletes")
        require(not revoked or MAIN_REF in changed,
                f"{who} revoked {sorted(revoked)} without an edit of the main branch")
        if LOCK_REF in changed:
            self.audit_admin_lock(a, who, pre[LOCK_REF], post[LOCK_REF])
        if MAIN_REF in changed:
            self.audit_admin_main(a, who, pre, post, revoked)
        self.check_branches(post)

    def audit_admin_lock(self, a: AdminOp, who: str, old: Oid, new: Oid) -> None:
        chain = []
        cur = new
        while cur != old:
            chain.append(cur)
            parents = self.world.parents(cur)
            require(len(parents) == 1, f"{who} set the lock to {new[:10]}, which does not "
                    "descend from its previous value: the lock was forced")
            cur = parents[0]
        for child in reversed(chain):
            p, c = self.lock_at(self.world.parents(child)[0]), self.lock_at(child)
            if p.free and not c.free and c.token == p.token + 1 and a.op != "unlock":
                require((c.holder, c.session) == (a.who, a.session),
                        f"{who} wrote a holding for {c.holder!r}")
            elif not p.free and c.free and c.token == p.token and p.session == a.session:
                pass  # its own release
            elif not p.free and c.free and c.token == p.token + 1 and a.op == "unlock":
                for other in self.live():
                    h = other.coord.holding
                    if h is not None and h.state.token == p.token and other.session == p.session:
                        require(self.now >= other.holding_valid_until(),
                                f"{who} broke the lock of {other.name!r}, whose holding (token "
                                f"{p.token}) is valid until t={other.holding_valid_until():.3f}; "
                                f"now t={self.now:.3f}")
                self.lock_breaks.add(child)
                self.count("admin-unlock")
            else:
                violation(f"{who} moved the lock from {p} to {c}")

    def holder_is_gone(self, job: str, e: Entry) -> bool:
        """Is the session that claimed ``job``'s running attempt dead (killed; its worker's
        name may live on in a new process)?"""
        claim = self.model.claims.get((job, e.token))
        return claim is not None and all(ws.session != claim.session for ws in self.live())

    def audit_admin_main(self, a: AdminOp, who: str, pre: dict[str, Oid],
                         post: dict[str, Oid], revoked: frozenset[str] | set[str] = frozenset(),
                         ) -> None:
        old, new = pre[MAIN_REF], post[MAIN_REF]
        require(self.world.is_ancestor(old, new),
                f"{who} moved the main branch from {old[:10]} to {new[:10]}, which does not "
                "contain it: history on the main branch was lost")
        lock = self.lock_at(pre.get(LOCK_REF))
        require(a.op != "unlock" and not lock.free and lock.session == a.session
                and pre.get(LOCK_REF) != post.get(LOCK_REF),
                f"{who} moved the main branch while the lock was {lock}: an admin edit must "
                "land fenced by its own holding (and release it in the same push)")
        ledger, queue = self.ledger_at(new), self.queue_at(new)
        try:
            ledger.validate()
        except AssertionError as exc:
            violation(f"after a push by {who}: {exc}")
        running, done, failed = ledger_tables(ledger)
        listed = set(running) | set(done) | set(failed)
        require(not set(queue) & listed and len(set(queue)) == len(queue),
                f"after a push by {who} jobs.txt lists {queue}: a job twice, or one that is in "
                f"a ledger too ({sorted(set(queue) & listed)})")
        m = self.model
        real = Model(queue, running, done, failed)
        self.admin_folds(a, who, real, new)
        jobs = listed | set(queue) | set(m.running) | set(m.done) | set(m.failed) | set(m.queue)
        moved = sorted(j for j in jobs if real.state(j)[0] != m.state(j)[0]
                       or not same_line(real.state(j)[1], m.state(j)[1]))
        extra = sorted(set(moved) - set(a.jobs))
        require(not extra, f"{who} changed jobs it was not asked to change: {extra}")
        require(moved, f"{who} pushed an edit that moves no job (jobs.txt {queue})")
        for job in moved:
            was, before = m.state(job)
            now_kind, after = real.state(job)
            story = f"{who} moved job {job!r} from {was} {before} to {now_kind} {after}"
            if was == "running" and before is not None and not before.released:
                require(before.worker in revoked,
                        f"{story}, but did not revoke the liveness record of its holder "
                        f"{before.worker!r}, which would go on running it")
                require(a.op == "cancel" or (a.force and a.op == "requeue"
                                             and self.holder_is_gone(job, before)),
                        f"{story}, but worker {before.worker!r} holds it and its process is "
                        "alive: an admin edit changed a job a live worker holds")
            if a.op == "add":
                ok = was is None and now_kind == "queued"
            elif a.op == "cancel":
                ok = (was == "queued" and now_kind is None) or (
                    was == "running" and now_kind == "failed" and before is not None
                    and after is not None
                    and (after.token, after.attempt) == (before.token, before.attempt)
                    and after.interrupted == before.interrupted + (0 if before.released else 1))
            elif a.op == "requeue":
                ok = now_kind == "queued" and (
                    was in ("failed", "running") or (was == "done" and a.done))
            else:
                ok = False
            require(ok, f"illegal admin transition: {story}")
        into = [j for j in moved if real.state(j)[0] == "queued"]
        rest = [j for j in m.queue if j not in moved]
        if a.op == "add":
            expected = rest + [j for j in queue if j in into]
        else:  # requeue puts its jobs first; cancel only takes out
            expected = [j for j in queue if j in into] + rest
        require(queue == expected and set(queue) == set(rest) | set(into),
                f"after a push by {who} jobs.txt lists {queue}, the model {expected}")
        states = {job: (m.state(job), real.state(job)) for job in moved}  # before m.queue moves
        m.queue = queue
        for job in moved:
            (was, before), (now_kind, after) = states[job]
            self.count(f"admin-{a.op}-{was}-{now_kind}")
            for kind, table in (("running", m.running), ("done", m.done), ("failed", m.failed)):
                table.pop(job, None)
                if now_kind == kind:
                    table[job] = after  # type: ignore[assignment]
            if was == "running" and before is not None:
                m.taken_over.add((job, before.token))
            if was == "done":
                self.runs_of[job] = self.runs_of.get(job, 0) + 1
        require((running, done, failed) == (m.running, m.done, m.failed),
                f"after a push by {who} the ledgers differ from the model")

    def admin_folds(self, a: AdminOp, who: str, real: Model, new: Oid) -> None:
        """An edit folds the parked finishes in first, in its own push: audit those folds
        as a worker's, and move the model on, so that the edit is audited on what it saw.
        A job requeued in the same push was folded to done (``--done``) or, by a merge
        conflict, to failed."""
        m = self.model
        folded = [j for j in sorted(m.running) if m.parked_line(j)
                  and not same_line(real.running.get(j), m.running[j])]
        requeued = [j for j in folded if real.state(j)[0] == "queued" and a.op == "requeue"]
        self.audit_folds(who, [j for j in folded if j not in requeued], real, new)
        for job in requeued:
            e = m.running.pop(job)
            (m.done if a.done else m.failed)[job] = e
            self.count("fold-requeued")
        for job in folded:
            e = m.done.get(job)
            if e is not None:
                m.landed.add((job, e.token))
                self.finished[(job, self.claim_run.get((job, e.token), 0))] = e.token

    # ---- the administrator's commands: the real fenced edits, audited like the workers ---------
    def admin_ready(self) -> bool:
        m, wants = self.model, self.admin_waits_for
        return self.budget["admin"] > 0 and (
            not wants or (wants == "done" and bool(m.done))
            or (wants == "held" and any(not e.released for e in m.running.values())))

    def admin_targets(self, data: Any, op: str) -> list[str]:
        """Jobs for ``op``: mostly ones it applies to; for ``cancel`` (and when nothing
        fits) any job, which the command must refuse."""
        m = self.model
        released = [j for j, e in m.running.items() if e.released]
        gone = [j for j, e in m.running.items() if not e.released and self.holder_is_gone(j, e)]
        known = sorted({*m.queue, *m.running, *m.done, *m.failed})
        pool = {
            "add": [j for j in NEW_JOBS if m.state(j)[0] is None] + known[:1],
            "requeue": sorted([*m.failed, *released]) or known,
            "requeue-done": sorted(m.done) or known,
            # --force on a job a live worker holds is the operator's error, not the code's
            "requeue-force": sorted([*gone, *m.failed, *released]),
            "cancel": known,
        }[op]
        if not pool:
            return []
        return data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True),
                         label="jobs")

    def may_break(self, lock: LockState) -> bool:
        """Would an operator who knows the machine run ``distribute unlock`` now: the holder's
        process is dead, or its holding ran out?"""
        if lock.free:
            return False
        holders = [ws for ws in self.live() if ws.session == lock.session]
        return all(self.now >= ws.holding_valid_until() for ws in holders)

    def admin_sleep(self, seconds: float) -> None:
        """``FencedEdit`` waits for a busy lock: the workers go on meanwhile.  Its backoff's
        delays are random and at most a second; it waits a second every time (two steps), so
        that a run replays exactly."""
        self.count("admin-waits")
        for _ in range(2):
            self.schedule(None)
            self.recheck()

    def run_admin(self, op: str, jobs: list[str], stall: int, unlock: bool) -> None:
        # imported here, not with the module: Hypothesis draws constants from the source of
        # the project's imported modules, so importing these at the top would change what
        # the base machine's derandomized runs draw (test_coverage_minimums.py)
        from distribute.cli import break_lock
        from distribute.fenced import FencedEdit, cancel_edit, queue_edit, requeue_edit
        from distribute.remote import RemoteView

        if self.admin_wire is None:
            self.admin_wire = AdminWire(self.world.transport("admin-cli"), self)
        wire = self.admin_wire
        view = RemoteView(AdminCopy(wire), BRANCH)  # type: ignore[arg-type]
        m = self.model
        if unlock and self.may_break(self.lock_at(self.world.refs()[LOCK_REF])):
            wire.op = AdminOp("unlock")
            self.say(lambda: "the administrator: distribute unlock")
            break_lock(view)
        kind = op.split("-")[0]
        seen = None
        if op == "requeue-force":  # as the CLI does: --force takes the holdings seen now
            ledger = view.ledger(view.main())
            seen = {e.job: (e.worker, e.token) for e in ledger.running if not e.released}
        fe = (self.fenced_edit_class or FencedEdit)(
            view, f"cli@admin-{next(self.admins)}", 3 * self.lease, sleep=self.admin_sleep,
            clock=lambda: self.now)
        a = AdminOp(kind, tuple(jobs), op == "requeue-force", op == "requeue-done", fe.who,
                    fe.session, stall)
        wire.op = a
        fe.op = a  # type: ignore[attr-defined]  # what a broken variant may look at
        result: dict[str, list[str]] = {}
        edit = {"add": lambda: queue_edit(jobs, result),
                "requeue": lambda: requeue_edit(jobs, a.force, result, done=a.done, seen=seen),
                "cancel": lambda: cancel_edit(jobs, result, fe.who)}[kind]()

        def can(job: str) -> bool:
            e = m.running.get(job)
            return {"add": m.state(job)[0] is None,
                    "cancel": job in m.queue or (e is not None and e.released),
                    "requeue": job in m.failed or (job in m.done and a.done) or (
                        e is not None and (e.released or a.force))}[kind]

        want = {j: ("queued" if kind != "cancel" else None if j in m.queue else "failed")
                for j in jobs if can(j)}
        waits = self.events.get("admin-waits", 0)
        self.say(lambda: f"{a.describe()}")
        try:
            fe.apply(edit)
        except UsageError:
            self.count("admin-refused")
        except RemoteStateError:
            self.count("admin-gave-up")
            return
        if self.events.get("admin-waits", 0) != waits:
            return  # the workers moved on while it waited: what it could do has changed
        if kind == "requeue" and len(want) < len(jobs):
            return  # refused whole
        for job, expected in want.items():
            after = m.state(job)[0]
            require(after == expected, f"{a.describe()} left {job!r} {after}, though it "
                    f"could have made it {expected}")

    @precondition(lambda self: self.admin_ready())
    @rule(data=st.data(), op=st.sampled_from(ADMIN_OPS), stall=st.sampled_from((0, 0, 1, 3)),
          unlock=st.booleans())
    def admin_command(self, data: Any, op: str, stall: int, unlock: bool) -> None:
        """An administrator runs ``distribute add / requeue [--done|--force] / cancel`` on
        one or two jobs, after ``distribute unlock`` if it chose to and the lock is held by a
        process that is dead or whose holding ran out; the command may stall for ``stall``
        worker steps right after its acquire landed."""
        self.budget["admin"] -= 1
        if op not in self.admin_ops:  # a machine restricted to some commands
            op = self.admin_ops[ADMIN_OPS.index(op) % len(self.admin_ops)]
        jobs = self.admin_targets(data, op)
        if jobs:
            self.run_admin(op, jobs, stall, unlock)


def machine_settings(**overrides: Any) -> settings:
    """The loaded profile, plus what every state machine here needs."""
    return settings(
        settings(),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large],
        **overrides,
    )


def variant(cls: type[Coordinator], base: type[ProtocolMachine] = ProtocolMachine,
            ) -> type[ProtocolMachine]:
    """A machine whose workers run ``cls``."""
    return type(f"{base.__name__}With{cls.__name__}", (base,), {"coordinator_class": cls})

