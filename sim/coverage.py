"""Fault coverage: how often a run hit each fault and each interesting event, against minimums.

Theory of operation
-------------------
A run that passes the checker proves little if the faults it was meant to
exercise never happened: a kill rate that fired twice, or unknown push
outcomes that all landed, leave whole recovery paths untested.  So every run
counts, from its journals alone (see :mod:`sim.journal`), the faults that were
injected and the situations they led to, and compares the counts with the
minimums of :data:`COVERAGE`, the one place they are stated.

Every item names the settings that make it possible (``needs``).  An item is
required only when the run enables all of them, and its minimum is scaled
down in proportion when the run is smaller than the reference profile
(:data:`REFERENCE`): fewer jobs, a lower rate or a shorter job means fewer
chances, so a small hand-made run requires little or nothing, and a run with
no kills requires no kill.  The minimums were set at no more than about a
third of the lowest count measured over repeated runs of the default
profile and of the test suite's profile, on an idle and on a loaded machine.

Pure: records in, counts out.  :func:`evaluate` turns counts and a
:class:`~sim.runner.SimConfig` (any object with its fields) into a
:class:`Coverage`, whose shortfalls make the "not enough coverage" verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOCK_REF = "refs/distribute/lock"
MAIN_REF = "refs/heads/main"

#: The exit status of ``python -m sim`` for a run that kept every guarantee but fell short
#: of a coverage minimum.
EXIT_NOT_ENOUGH_COVERAGE = 3

#: The settings the minimums are stated for: those of the default profile (``python -m sim``
#: with no options).  A run below one of them gets the minimums that depend on it scaled
#: down in proportion.
REFERENCE: dict[str, float] = {
    "jobs": 40,
    "job_seconds": 0.3,
    "kill_rate": 0.6,
    "pause_rate": 0.6,
    "push_fail_rate": 0.05,
    "unknown_rate": 0.08,
    "job_fail_rate": 0.05,
}


@dataclass(frozen=True, slots=True)
class Item:
    """One counted fault or event.

    Attributes:
        name: its key in the counts.
        meaning: what is counted, in words.
        needs: the settings that must all be above zero for it to happen; ``workers``
            stands for a fleet of at least two workers.
        minimum: how many a run of the reference profile must see.
    """

    name: str
    meaning: str
    needs: tuple[str, ...]
    minimum: int


#: Every counted item and its minimum: the one table of coverage minimums.  Each minimum is
#: at most a third of the lowest count seen over repeated runs of the default profile (random
#: seeds) and of the test suite's profile (tests/integration/test_sim.py), one at a time and
#: two at once.  An item whose lowest count was below 3 has the minimum 0: it is counted and
#: shown, but a run of this length sees it too rarely to require it without flaking.
COVERAGE: tuple[Item, ...] = (
    # faults injected
    Item("kills", "kill -9 of a running worker process", ("kill_rate",), 1),
    Item("restarts", "a killed worker started again on its local copy", ("kill_rate",), 1),
    Item("pauses", "SIGSTOP of a worker for 1.5 to 3 leases, then SIGCONT", ("pause_rate",), 1),
    Item("push_failures", "a push failed before it was sent", ("push_fail_rate",), 1),
    Item("unknown_landed", "a push's answer was lost, and the push had landed",
         ("unknown_rate",), 3),
    Item("unknown_not_landed", "a push's answer was lost, and the push had not landed",
         ("unknown_rate",), 3),
    # what the faults hit
    Item("kills_holding_job", "a kill while the process held a job", ("kill_rate", "jobs"), 0),
    Item("kills_mid_push", "a kill while a push of the process was in flight",
         ("kill_rate",), 0),
    Item("kills_mid_claim", "a kill between the process's lock acquire and its claim",
         ("kill_rate",), 0),
    Item("kills_mid_finish", "a kill during finish_job", ("kill_rate", "jobs"), 0),
    Item("pauses_holding_job", "a pause while the process held a job", ("pause_rate", "jobs"), 0),
    # how the fleet recovered
    Item("restart_adopts", "a restarted process took up the job its killed life held "
         "(adopt)", ("kill_rate", "jobs"), 0),
    Item("retries_own_job", "a job re-claimed by a later life of the worker that held it",
         ("kill_rate", "jobs"), 0),
    Item("takeovers_of_dead", "a job taken over from a holder whose process was killed",
         ("kill_rate", "jobs", "workers"), 0),
    Item("takeovers_of_live", "a job taken over from a holder whose process was still alive "
         "(paused or slow)", ("pause_rate", "jobs", "workers"), 0),
    Item("lock_takeovers_of_dead", "the lock taken from an expired holding of a killed process",
         ("kill_rate", "workers"), 0),
    Item("lock_takeovers_of_live", "the lock taken from an expired holding of a live process",
         ("pause_rate", "workers"), 0),
    Item("revocations_seen", "a holder learned from its liveness ref that its job was taken "
         "over", ("pause_rate", "jobs", "workers"), 0),
    Item("late_updates_refused", "commit_update of a job taken over was refused (LeaseLost)",
         ("pause_rate", "jobs", "workers"), 0),
    Item("late_finishes_refused", "finish_job or fail_job of a job taken over was refused "
         "(LeaseLost)", ("pause_rate", "jobs", "workers"), 0),
    # races for the main branch are rare since finishes park (a finish moves the main
    # branch only when its worker is alone): counted and shown, not required; the property
    # machine forces them instead
    Item("claim_races", "a claim push lost a race (the claim is replayed or dropped)",
         ("jobs", "workers"), 0),
    Item("finish_races", "a finish push lost a race to another push of the main branch "
         "(the finish parks, or is retried)", ("jobs", "workers"), 0),
    Item("job_failures", "a job function failed and its attempt was recorded (fail_job)",
         ("job_fail_rate",), 0),
    Item("parked_finishes", "a finish that lost its race was parked on its worker's own "
         "liveness record", ("jobs", "workers"), 10),
    Item("folds_by_others", "a parked finish folded into the main branch by another worker's "
         "push", ("jobs", "workers"), 1),
    Item("hand_offs", "a claim also claimed a queued job for an idle worker (jobs.txt queue "
         "answered from the files)", ("jobs", "workers"), 0),
    Item("handed_taken", "a worker took up a job another worker's claim handed to it",
         ("jobs", "workers"), 0),
)

ITEMS: dict[str, Item] = {item.name: item for item in COVERAGE}


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One counted item below its minimum."""

    name: str
    count: int
    minimum: int

    @property
    def missing(self) -> int:
        return self.minimum - self.count

    def __str__(self) -> str:
        return f"{self.name}: {self.count} < {self.minimum} (short by {self.missing})"


@dataclass(slots=True)
class Coverage:
    """A run's counts, the minimums that applied to it and what fell short.

    Attributes:
        counts: item name -> how many the run saw (every item of :data:`COVERAGE`).
        minimums: item name -> the minimum that applied (0: not required).
        checked: ``False`` when the check was turned off (``--min-coverage off``).
    """

    counts: dict[str, int]
    minimums: dict[str, int]
    checked: bool = True
    shortfalls: list[Shortfall] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.checked and not self.shortfalls:
            self.shortfalls = [
                Shortfall(name, self.counts.get(name, 0), need)
                for name, need in self.minimums.items()
                if self.counts.get(name, 0) < need
            ]

    @property
    def ok(self) -> bool:
        return not self.shortfalls

    def message(self) -> str:
        """The "not enough coverage" verdict in one line, naming each shortfall."""
        return "not enough coverage: " + "; ".join(str(s) for s in self.shortfalls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "counts": dict(self.counts),
            "minimums": dict(self.minimums),
            "short": {s.name: {"count": s.count, "minimum": s.minimum, "missing": s.missing}
                      for s in self.shortfalls},
        }


# ---- the minimums a run's settings call for ---------------------------------------------


def scale(config: Any, needs: Iterable[str]) -> float:
    """How much of the reference profile's chances a run with ``config`` offers for an
    item that ``needs`` these settings: 0 when one is off, else the product of each
    setting's share of its reference value (capped at 1)."""
    factor = 1.0
    for need in needs:
        if need == "workers":
            if int(getattr(config, "workers", 1)) < 2:
                return 0.0
            continue
        if need == "jobs":
            if getattr(config, "next_job_func", ""):
                continue  # an open-ended queue: the reference size is assumed
            jobs = float(getattr(config, "jobs", 0))
            seconds = float(getattr(config, "job_seconds", 0.0))
            if getattr(config, "job_func", ""):
                seconds = REFERENCE["job_seconds"]  # a job function of its own: unknown length
            factor *= min(1.0, jobs / REFERENCE["jobs"]) * min(
                1.0, seconds / REFERENCE["job_seconds"])
            continue
        value = float(getattr(config, need, 0.0))
        if value <= 0:
            return 0.0
        factor *= min(1.0, value / REFERENCE[need])
    return factor


def parse_overrides(text: str) -> dict[str, int]:
    """``NAME=N[,NAME=N...]`` (the form ``--min-coverage`` takes besides ``auto`` and
    ``off``) as a dict; raises ``ValueError`` naming what is wrong."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in ITEMS:
            known = ", ".join(ITEMS)
            raise ValueError(f"--min-coverage takes auto, off or NAME=N,... with NAME one of "
                             f"{known}; not {part.strip()!r}")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"--min-coverage {name}= needs a whole number, not {value!r}") \
                from None
        if out[name] < 0:
            raise ValueError(f"--min-coverage {name}= must be >= 0")
    return out


def check_spec(spec: str) -> None:
    """Raise ``ValueError`` unless ``spec`` is a valid ``--min-coverage`` value."""
    if spec not in ("auto", "off"):
        parse_overrides(spec)


def minimums(config: Any) -> dict[str, int]:
    """The minimum of every item for a run with ``config``: :data:`COVERAGE` scaled by
    :func:`scale` (rounded down), then the ``NAME=N`` overrides of its ``min_coverage``;
    empty when that is ``off``."""
    spec = str(getattr(config, "min_coverage", "auto") or "auto")
    if spec == "off":
        return {}
    out = {item.name: math.floor(item.minimum * scale(config, item.needs) + 1e-9)
           for item in COVERAGE}
    if spec != "auto":
        out.update(parse_overrides(spec))
    return out


def evaluate(counts: Mapping[str, int], config: Any) -> Coverage:
    """The coverage verdict of a run with ``config`` that saw ``counts``."""
    spec = str(getattr(config, "min_coverage", "auto") or "auto")
    full = {item.name: int(counts.get(item.name, 0)) for item in COVERAGE}
    return Coverage(full, minimums(config), checked=spec != "off")


# ---- counting, from the journals -----------------------------------------------------


def _proc(record: Mapping[str, Any]) -> str:
    return f"{record.get('worker')}#{record.get('life', 0)}"


@dataclass(slots=True)
class _State:
    """What one process was doing at some moment, replayed from its journal."""

    job: str | None = None
    lock: bool = False
    pushes: set[Any] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=dict)

    def step(self, r: Mapping[str, Any]) -> None:
        kind = r.get("kind")
        if kind == "push":
            if r.get("phase") == "invoke":
                self.pushes.add(r.get("id"))
            else:
                self.pushes.discard(r.get("id"))
        elif kind == "op":
            name = str(r.get("op"))
            opened = self.ops.get(name, 0) + (1 if r.get("phase") == "invoke" else -1)
            self.ops[name] = max(0, opened)
            if r.get("phase") == "fail" and r.get("error_type") == "LeaseLost":
                self.job = None
            if name in ("finish_job", "fail_job") and r.get("phase") == "ok":
                self.job = None
        elif kind == "event":
            event = r.get("event")
            if event == "lock-acquire":
                self.lock = True
            elif event in ("lock-release", "lock-lost"):
                self.lock = False
            if event in ("claim", "adopt"):
                self.job, self.lock = str(r.get("job")), False
            elif event in ("finish", "finish-refused", "fail") and r.get("job") == self.job:
                self.job = None

    def busy(self, op: str) -> bool:
        return self.ops.get(op, 0) > 0


def _state_at(recs: list[Mapping[str, Any]], t: float) -> _State:
    state = _State()
    for r in recs:
        if float(r.get("t", 0.0)) > t:
            break
        state.step(r)
    return state


def count(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count every item of :data:`COVERAGE` in a run's journal records."""
    by_proc: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    faults: list[Mapping[str, Any]] = []
    for r in records:
        (faults if r.get("kind") == "fault" else by_proc[_proc(r)]).append(r)
    for recs in by_proc.values():
        recs.sort(key=lambda r: (float(r.get("t", 0.0)), r.get("seq", 0)))
    faults.sort(key=lambda r: float(r.get("t", 0.0)))
    n: dict[str, int] = {item.name: 0 for item in COVERAGE}

    kill_at: dict[str, float] = {}
    for f in faults:
        if f.get("at_end"):
            continue
        fault, proc, t = f.get("fault"), _proc(f), float(f.get("t", 0.0))
        if fault == "restart":
            n["restarts"] += 1
        if fault not in ("kill", "pause"):
            continue
        state = _state_at(by_proc.get(proc, []), t)
        if fault == "kill":
            kill_at.setdefault(proc, t)
            n["kills"] += 1
            n["kills_holding_job"] += state.job is not None
            n["kills_mid_push"] += bool(state.pushes)
            n["kills_mid_claim"] += state.lock and state.busy("get_next_job")
            n["kills_mid_finish"] += state.busy("finish_job")
        else:
            n["pauses"] += 1
            n["pauses_holding_job"] += state.job is not None

    claims: list[tuple[int, str, Mapping[str, Any]]] = []
    failed: set[tuple[str, int]] = set()
    acquires: dict[str, list[tuple[float, str]]] = defaultdict(list)  # worker -> (t, proc)
    for proc, recs in by_proc.items():
        invoked: dict[Any, list[str]] = {}
        for r in recs:
            kind = r.get("kind")
            if kind == "push":
                if r.get("phase") == "invoke":
                    invoked[r.get("id")] = [str(u[0]) for u in r.get("refs") or () if u]
                    continue
                outcome = r.get("outcome")
                refs = invoked.get(r.get("id"), [])
                if outcome == "failed":
                    n["push_failures"] += 1
                elif outcome == "unknown-applied":
                    n["unknown_landed"] += 1
                elif outcome in ("unknown-dropped", "unknown-rejected"):
                    n["unknown_not_landed"] += 1
                if outcome in ("rejected", "unknown-rejected") and MAIN_REF in refs:
                    n["claim_races" if LOCK_REF in refs else "finish_races"] += 1
            elif kind == "op" and r.get("phase") == "fail" and r.get("error_type") == "LeaseLost":
                if r.get("op") == "commit_update":
                    n["late_updates_refused"] += 1
                elif r.get("op") in ("finish_job", "fail_job"):
                    n["late_finishes_refused"] += 1
            elif kind == "event":
                event = r.get("event")
                if event == "claim":
                    claims.append((int(r.get("token", 0)), proc, r))
                    n["handed_taken"] += 1 if r.get("by") else 0
                elif event == "hand-off":
                    n["hand_offs"] += 1
                elif event == "fail":
                    n["job_failures"] += 1
                    failed.add((str(r.get("job")), int(r.get("token", 0))))
                elif event == "finish" and r.get("outcome") == "parked":
                    n["parked_finishes"] += 1
                elif event == "fold" and r.get("parker") != r.get("worker"):
                    n["folds_by_others"] += 1
                elif event == "adopt":
                    n["restart_adopts"] += 1
                elif event == "revoked":
                    n["revocations_seen"] += 1
                elif event == "lock-acquire":
                    acquires[str(r.get("worker"))].append((float(r.get("t", 0.0)), proc))

    def dead(proc: str, t: float) -> bool:
        return kill_at.get(proc, math.inf) <= t

    last_claim: dict[str, tuple[int, str, Mapping[str, Any]]] = {}
    for token, proc, r in sorted(claims, key=lambda c: c[0]):
        job, t = str(r.get("job")), float(r.get("t", 0.0))
        prev = last_claim.get(job)
        last_claim[job] = (token, proc, r)
        if int(r.get("attempt", 1)) <= 1 or (prev is not None and (job, prev[0]) in failed):
            continue
        if prev is None:
            continue  # the earlier attempt's claim went unjournalled: its process was killed
        if prev[2].get("worker") == r.get("worker"):
            n["retries_own_job"] += 1
        elif dead(prev[1], t):
            n["takeovers_of_dead"] += 1
        else:
            n["takeovers_of_live"] += 1

    for recs in by_proc.values():
        for r in recs:
            if r.get("kind") != "event" or r.get("event") != "lock-acquire" \
                    or not r.get("takeover"):
                continue
            t = float(r.get("t", 0.0))
            before = [p for at, p in acquires.get(str(r.get("previous") or ""), []) if at < t]
            if before and not dead(before[-1], t):
                n["lock_takeovers_of_live"] += 1
            else:
                n["lock_takeovers_of_dead"] += 1
    return n


def table_rows(coverage: Coverage) -> list[tuple[str, int, str, str]]:
    """Rows of the report's coverage table: item, count, minimum (``-`` when none), and
    ``ok``, ``SHORT by N`` or empty (not required)."""
    rows = []
    for item in COVERAGE:
        got = coverage.counts.get(item.name, 0)
        need = coverage.minimums.get(item.name, 0) if coverage.checked else 0
        verdict = "" if need == 0 else ("ok" if got >= need else f"SHORT by {need - got}")
        rows.append((item.name, got, str(need) if need else "-", verdict))
    return rows


__all__ = [
    "COVERAGE",
    "EXIT_NOT_ENOUGH_COVERAGE",
    "REFERENCE",
    "Coverage",
    "Item",
    "Shortfall",
    "check_spec",
    "count",
    "evaluate",
    "minimums",
    "parse_overrides",
    "scale",
    "table_rows",
]
