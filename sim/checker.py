"""The history checker: the guarantees of docs/protocol.md (section 4), verified from the
journals and the remote's final state.

Theory of operation
-------------------
Pure: no processes, no git, no clocks.  Input is the journal records of every
worker process life and of the fault injector (dicts, one per JSON line, see
:mod:`sim.journal`) plus a dict describing what the runner read from the
remote at the end (see :func:`check`).  Output is a :class:`CheckResult`:
the violations found and the figures of the run.

Times are ``time.monotonic()`` readings, comparable across processes on one
Linux host.  Each check is phrased so that the uncertainty of a journal (an
event is written after its push returned, and a process may be killed in
between) can only make it more lenient, never report a violation that did
not happen:

* a lock holding is valid from its ``lock-acquire`` event (written after the
  CAS landed) until the earliest of: the sending of the push that released
  it (a claim or a release), a ``lock-lost`` event, the kill of its process,
  and the sending of its last successful acquire or renewal plus the lease;
* a re-claim is timed by the sending of its claim push, the previous
  holder's liveness by the sending of its latest push that touched its own
  liveness ref (a claim or a renewal) and may have landed.

The checker parses ledger lines, lock messages and commit subjects itself,
so that a bug in the code under test is not shared by its oracle.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distribute.core.events import EVENT_KINDS

LOCK_REF = "refs/distribute/lock"
WORKERS_PREFIX = "refs/distribute/workers/"

#: Push outcomes (journalled by :class:`sim.faults.FaultyTransport`) after which
#: the pushed refs may hold the new values.
#: ``None``: the push record has no outcome (its process died while pushing).
MAY_HAVE_LANDED = frozenset({"applied", "unknown-applied", "error", "unknown", None})

RULES = {
    "lock-overlap": "two valid lock holdings overlapped in time",
    "lock-token": "fencing tokens did not strictly increase across holdings",
    "double-finish": "a job was finished (or listed in done.txt) more than once",
    "double-claim": "a job was claimed as new more than once, or ran twice without faults",
    "finish-missing": "a finish that reported success is not in done.txt",
    "stale-write": "a write from a holder whose job was taken over was accepted",
    "early-reclaim": "a job was re-claimed before its previous holder's lease could expire",
    "lost-update": "an update of a finished job is not reachable from the main branch",
    "branch-lost": "the branch of a refused finish is gone from the remote",
    "failed-lost": "an update of a job that failed for good is on neither its branch nor "
    "an archive",
    "unfinished": "a job did not finish, or the ledgers are not empty at the end",
    "lost-write": "a push its worker saw succeed is missing from the remote's history",
    "crash": "a worker process ended with an unexpected error",
    "idle-tail": "liveness: with the queue drained and nothing left running, a worker took "
    "longer than the idle-tail bound (idle_tail_bound) to return from get_next_job",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken guarantee.

    Attributes:
        rule: a key of :data:`RULES`.
        message: what happened, naming jobs, workers, tokens and times.
        job: the job concerned, if any.
    """

    rule: str
    message: str
    job: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "job": self.job}


@dataclass(slots=True)
class Holding:
    """One lock holding as its holder saw it (process ``proc``)."""

    proc: str
    worker: str
    token: int
    start: float
    last_sent: float
    lease: float
    sent: float = 0.0
    end: float = math.inf
    end_reason: str = "lease"

    @property
    def valid_until(self) -> float:
        """The earliest of its explicit end and its last renewal's sending plus the lease."""
        return min(self.end, self.last_sent + self.lease)


@dataclass(slots=True)
class CheckResult:
    """What :func:`check` found."""

    violations: list[Violation] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    holdings: list[Holding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, rule: str, message: str, job: str | None = None) -> None:
        assert rule in RULES, rule
        self.violations.append(Violation(rule, message, job))

    def by_rule(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.rule] += 1
        return dict(counts)


# ---- parsing what the runner read from the remote ------------------------------


def parse_ledger(text: str) -> list[dict[str, Any]]:
    """Ledger lines as dicts: ``job`` plus the ``key=value`` fields (token and attempt as ints)."""
    entries = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        job, *fields = line.split("\t")
        entry: dict[str, Any] = {"job": job, "worker": "", "token": 0, "attempt": 1}
        for f in fields:
            key, _, value = f.partition("=")
            entry[key] = value
        for key in ("token", "attempt"):
            try:
                entry[key] = int(entry[key])
            except (TypeError, ValueError):
                entry[key] = -1
        entries.append(entry)
    return entries


def parse_lock_record(message: str) -> dict[str, Any] | None:
    """The JSON body of a lock commit message, or ``None`` when it has none."""
    body = message.strip().rsplit("\n\n", 1)[-1]
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != "lock":
        return None
    return data


_SUBJECT = re.compile(
    r"^distribute: (?P<what>claim|finish) (?P<job>.+) by (?P<worker>.+) "
    r"\(token (?P<token>\d+), attempt (?P<attempt>\d+)\)$"
)


def parse_main_subject(subject: str) -> dict[str, Any] | None:
    """A claim or finish commit subject on the main branch, parsed; ``None`` otherwise."""
    m = _SUBJECT.match(subject.strip())
    if not m:
        return None
    return {
        "what": m["what"], "job": m["job"], "worker": m["worker"],
        "token": int(m["token"]), "attempt": int(m["attempt"]),
    }


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """``count``, ``p50``, ``p99`` and ``max`` (nearest rank) of ``values``."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "p50": round(rank(0.50), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1], 3),
    }


# ---- the journal, organised ---------------------------------------------------


def proc_key(record: Mapping[str, Any]) -> str:
    """The process life a record belongs to: ``<worker>#<life>``."""
    return f"{record.get('worker')}#{record.get('life', 0)}"


@dataclass(slots=True)
class _Claim:
    job: str
    worker: str
    proc: str
    token: int
    attempt: int
    branch: str
    t_event: float
    t_sent: float
    revoked: str = ""


@dataclass(slots=True)
class _History:
    """Journals grouped for the checks."""

    by_proc: dict[str, list[Mapping[str, Any]]]
    faults: list[Mapping[str, Any]]
    claims: list[_Claim]
    kill_at: dict[str, float]

    @classmethod
    def build(cls, records: Iterable[Mapping[str, Any]]) -> _History:
        by_proc: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        faults: list[Mapping[str, Any]] = []
        for r in records:
            if r.get("kind") == "fault":
                faults.append(r)
            else:
                by_proc[proc_key(r)].append(r)
        for recs in by_proc.values():
            recs.sort(key=lambda r: (r.get("t", 0.0), r.get("seq", 0)))
        faults.sort(key=lambda r: r.get("t", 0.0))
        kill_at = {
            f"{f.get('worker')}#{f.get('life', 0)}": float(f["t"])
            for f in faults if f.get("fault") == "kill"
        }
        claims: list[_Claim] = []
        # a job another worker's claim handed over is claimed when that push landed (the
        # hand-off's journal); its worker's own claim event says when it took it up
        handed: dict[tuple[str, int], _Claim] = {}
        taken_up: list[tuple[str, Mapping[str, Any]]] = []
        for proc, recs in by_proc.items():
            last_push: dict[str, float] = {}
            for r in recs:
                if r.get("kind") == "push" and r.get("phase") == "invoke":
                    for ref, *_ in r.get("refs", ()):
                        last_push[ref] = float(r["t"])
                if r.get("kind") != "event":
                    continue
                if r.get("event") == "claim" and r.get("by"):
                    taken_up.append((proc, r))
                elif r.get("event") in ("claim", "hand-off"):
                    c = _Claim(
                        job=str(r["job"]), worker=str(r.get("to") or r["worker"]), proc=proc,
                        token=int(r["token"]), attempt=int(r.get("attempt", 1)),
                        branch=str(r.get("branch", "")), t_event=float(r["t"]),
                        t_sent=last_push.get(LOCK_REF, float(r["t"])),
                        revoked=str(r.get("revoked", "")),
                    )
                    claims.append(c)
                    if r.get("event") == "hand-off":
                        c.proc = f"{c.worker}#handed"  # whichever life takes it up
                        # the claimer's push is no sign of life of the worker it handed the
                        # job to: that worker's lease runs from its own record's pushes
                        c.t_sent = 0.0
                        handed[(c.job, c.token)] = c
        for proc, r in taken_up:
            c = handed.get((str(r["job"]), int(r["token"])))
            if c is not None and c.proc.endswith("#handed"):
                c.proc, c.branch = proc, str(r.get("branch", ""))
            else:  # no hand-off journalled (its claimer was killed at once), or taken twice
                claims.append(_Claim(
                    job=str(r["job"]), worker=str(r["worker"]), proc=proc,
                    token=int(r["token"]), attempt=int(r.get("attempt", 1)),
                    branch=str(r.get("branch", "")), t_event=float(r["t"]),
                    t_sent=float(r["t"]), revoked="",
                ))
        claims.sort(key=lambda c: c.token)
        return cls(dict(by_proc), faults, claims, kill_at)

    def events(self, name: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """The journalled events of kind ``name`` (one of :data:`EVENT_KINDS`: a misspelt
        kind would silently match nothing, and a check on it would pass for ever)."""
        if name not in EVENT_KINDS:
            raise ValueError(f"{name!r} is no event a worker reports; see distribute.core.events")
        for proc, recs in self.by_proc.items():
            for r in recs:
                if r.get("kind") == "event" and r.get("event") == name:
                    yield proc, r


# ---- the checks -----------------------------------------------------------------


def check(
    records: Iterable[Mapping[str, Any]],
    final: Mapping[str, Any],
    *,
    lease: float,
    expected_jobs: Iterable[str] | None = None,
    allow_failed: bool = False,
    poll: float | None = None,
    max_poll: float | None = None,
) -> CheckResult:
    """Check a run's history against the guarantees of docs/protocol.md (section 4).

    Args:
        records: every journal record of the run (workers and injector).
        final: what the runner read from the remote at the end:
            ``done``, ``running``, ``failed``, ``jobs`` -- the texts of
            ``done.txt``, ``running.txt``, ``failed.txt`` and ``jobs.txt`` on
            the final main branch (``jobs`` may be ``None`` if absent);
            ``lock_history`` -- the lock ref's commit messages, oldest first;
            ``main_subjects`` -- first-parent commit subjects of the main
            branch, oldest first; ``branches`` -- job branch short name ->
            tip; ``reachable`` -- commit id -> reachable from the final main
            branch (for every tip the journals name); ``timed_out`` -- the
            run hit its duration cap; ``result_files`` -- optional, done job
            -> whether the file the default job function writes is on the
            final main branch; ``exits`` -- process key -> exit code
            of worker processes that were not killed by the injector.
        lease: the lease period the workers ran with, in seconds.
        expected_jobs: every job the queue held at the start (``None`` when
            jobs came from a next-job function: then every claimed job).
        allow_failed: jobs may end in ``failed.txt`` (job failures injected).
        poll, max_poll: the workers' ``poll_seconds`` and ``max_poll_seconds``
            (``None``: the Worker's defaults; see :func:`idle_tail_bound`).

    Returns:
        A :class:`CheckResult`.
    """
    result = CheckResult()
    hist = _History.build(records)
    done = parse_ledger(final.get("done") or "")
    running = parse_ledger(final.get("running") or "")
    failed = parse_ledger(final.get("failed") or "")

    _check_lock(hist, final, lease, result)
    _check_finishes(hist, final, done, result)
    _check_reclaims(hist, lease, result)
    _check_updates(hist, final, done, result)
    _check_failed_kept(hist, final, failed, result)
    _check_liveness(hist, final, done, running, failed, expected_jobs, allow_failed, result)
    _check_writes_landed(hist, final, result)
    _check_crashes(hist, final, result)
    result.stats.update(_figures(hist, final, done, failed))
    tail = idle_tail(hist, lease=lease, poll=poll, max_poll=max_poll)
    result.stats.update(tail.figures())
    _check_idle_tail(tail, final, result)
    return result


def _check_lock(
    hist: _History, final: Mapping[str, Any], lease: float, result: CheckResult
) -> None:
    holdings: list[Holding] = []
    for proc, recs in hist.by_proc.items():
        kill = hist.kill_at.get(proc, math.inf)
        last_lock_push = None
        current: Holding | None = None
        for r in recs:
            t = float(r.get("t", 0.0))
            if r.get("kind") == "push" and r.get("phase") == "invoke":
                if any(ref == LOCK_REF for ref, *_ in r.get("refs", ())):
                    last_lock_push = t
                continue
            if r.get("kind") != "event":
                continue
            event = r.get("event")
            sent = last_lock_push if last_lock_push is not None else t
            if event == "lock-acquire":
                _close(current, sent, "re-acquired")
                current = Holding(proc, str(r.get("worker")), int(r["token"]), t, sent, lease,
                                  sent=sent)
                holdings.append(current)
            elif current is None:
                continue
            elif event in ("lock-renew", "give-up"):
                current.last_sent = sent
            elif event in ("claim", "lock-release"):
                _close(current, sent, str(event))
                current = None
            elif event == "lock-lost":
                _close(current, t, "lock-lost")
                current = None
        for h in holdings:
            if h.proc == proc:
                _close(h, kill, "killed")
    result.holdings = sorted(holdings, key=lambda h: h.start)

    ordered = result.holdings
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.start >= a.valid_until:
                break  # sorted by start: no later holding begins before a ends either
            if a.proc == b.proc or b.start >= b.valid_until:
                continue  # b was already void when its holder journalled it (a pause)
            result.add(
                "lock-overlap",
                f"{a.proc} held the lock (token {a.token}) from {a.start:.3f} until "
                f"{a.valid_until:.3f} ({a.end_reason}), and {b.proc} acquired it (token "
                f"{b.token}) at {b.start:.3f}",
            )
    seen: dict[int, str] = {}
    for h in ordered:
        if h.token in seen and seen[h.token] != h.proc:
            result.add("lock-token", f"token {h.token} was acquired twice: by {seen[h.token]} "
                       f"and by {h.proc}")
        seen.setdefault(h.token, h.proc)
    # a higher token must land later: flag one whose acquire was journalled (so had landed)
    # before a lower token's acquire was even sent
    latest: Holding | None = None
    for h in sorted(ordered, key=lambda h: h.token):
        if latest is not None and h.start < latest.sent and h.token > latest.token:
            result.add("lock-token", f"{h.proc} acquired token {h.token} (journalled at "
                       f"{h.start:.3f}) before {latest.proc} sent its acquire of the lower token "
                       f"{latest.token} at {latest.sent:.3f}")
        if latest is None or h.sent > latest.sent:
            latest = h

    previous: dict[str, Any] | None = None
    top = -1
    for i, message in enumerate(final.get("lock_history") or ()):
        rec = parse_lock_record(message)
        if rec is None:
            result.add("lock-token", f"lock commit #{i} carries no lock record: {message[:80]!r}")
            continue
        token, holder = int(rec.get("token", 0)), str(rec.get("holder", ""))
        session = str(rec.get("session", ""))
        if previous is not None:
            if token < int(previous["token"]):
                result.add("lock-token", f"lock commit #{i}: token went down from "
                           f"{previous['token']} to {token}")
            same = (holder, session) == (previous["holder"], previous["session"])
            if holder and not same and token <= top:
                result.add("lock-token", f"lock commit #{i}: {holder!r} holds token {token}, "
                           f"which is not above the highest earlier token {top}")
        top = max(top, token)
        previous = {"token": token, "holder": holder, "session": session}


def _close(h: Holding | None, at: float, why: str) -> None:
    if h is not None and at < h.end:
        h.end, h.end_reason = at, why


def _check_finishes(
    hist: _History, final: Mapping[str, Any], done: list[dict[str, Any]], result: CheckResult
) -> None:
    done_by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in done:
        done_by_job[e["job"]].append(e)
    for job, entries in done_by_job.items():
        if len(entries) > 1:
            result.add("double-finish", f"done.txt lists {job!r} {len(entries)} times", job)

    finishes: dict[str, list[tuple[str, Mapping[str, Any]]]] = defaultdict(list)
    for proc, r in hist.events("finish"):
        finishes[str(r["job"])].append((proc, r))
    for job, events in finishes.items():
        # a token names one holding: a restarted life that completes the finish its
        # earlier life had begun, and finds it landed, reports that same finish again
        holdings = {(r.get("worker"), r.get("token")) for _, r in events}
        if len(holdings) > 1:
            who = ", ".join(f"{p} (token {r.get('token')})" for p, r in events)
            result.add("double-finish", f"{job!r} was finished {len(events)} times: {who}", job)
        for proc, r in events:
            entries = done_by_job.get(job, [])
            if not entries:
                result.add("finish-missing", f"{proc} finished {job!r} (token {r.get('token')}) "
                           "but done.txt does not list it", job)
            elif all(e["token"] != int(r["token"]) for e in entries):
                result.add("stale-write", f"{proc} finished {job!r} under token {r['token']}, "
                           f"but done.txt records token {entries[0]['token']}", job)

    main_finishes: dict[str, int] = defaultdict(int)
    for subject in final.get("main_subjects") or ():
        parsed = parse_main_subject(subject)
        if parsed and parsed["what"] == "finish":
            main_finishes[parsed["job"]] += 1
    for job, n in main_finishes.items():
        if n > 1:
            result.add("double-finish", f"the main branch has {n} finish commits for {job!r}", job)

    latest: dict[str, _Claim] = {}
    for c in hist.claims:
        if c.job not in latest or c.token > latest[c.job].token:
            latest[c.job] = c
    for job, entries in done_by_job.items():
        e = entries[-1]
        if job not in latest:
            continue
        c = latest[job]
        if e["token"] < c.token:
            result.add("stale-write", f"done.txt records {job!r} under token {e['token']} by "
                       f"{e['worker']!r}, but {c.proc} re-claimed it later under token {c.token}",
                       job)
        elif e["token"] == c.token and e["worker"] != c.worker:
            result.add("stale-write", f"done.txt records {job!r} under token {e['token']} by "
                       f"{e['worker']!r}, but {c.worker!r} holds that token", job)


def _check_reclaims(hist: _History, lease: float, result: CheckResult) -> None:
    by_job: dict[str, list[_Claim]] = defaultdict(list)
    for c in hist.claims:
        by_job[c.job].append(c)
    failed_tokens = {
        (str(r["job"]), int(r["token"])) for _, r in hist.events("fail")
    }
    beats = _liveness_pushes(hist)
    faults = bool(hist.faults) or _any_push_faults(hist)
    for job, claims in by_job.items():
        claims.sort(key=lambda c: c.token)
        new = [c for c in claims if c.attempt == 1]
        if len(new) > 1:
            who = ", ".join(f"{c.proc} (token {c.token})" for c in new)
            result.add("double-claim", f"{job!r} was claimed as a new job {len(new)} times: {who}",
                       job)
        tokens = [c.token for c in claims]
        if len(set(tokens)) != len(tokens):
            result.add("double-claim", f"{job!r} was claimed twice under one token: {tokens}", job)
        if not faults and len(claims) > 1 and not any((job, c.token) in failed_tokens
                                                      for c in claims):
            result.add("double-claim", f"{job!r} was claimed {len(claims)} times in a run "
                       "without faults", job)
        for prev, nxt in zip(claims, claims[1:], strict=False):
            if nxt.attempt != prev.attempt + 1:
                continue  # an attempt in between went unjournalled (its process was killed)
            if (job, prev.token) in failed_tokens:
                continue
            if prev.worker == nxt.worker and prev.proc != nxt.proc:
                continue  # a restarted life of the same worker takes its own job back at once
            evidence = [prev.t_sent] + [
                t for t in beats.get(prev.worker, ()) if t < nxt.t_sent
            ]
            last = max(evidence)
            if nxt.t_sent - last < lease:
                result.add(
                    "early-reclaim",
                    f"{nxt.proc} re-claimed {job!r} (attempt {nxt.attempt}, token {nxt.token}) at "
                    f"{nxt.t_sent:.3f}, only {nxt.t_sent - last:.3f} s after {prev.worker!r}'s "
                    f"last sign of life at {last:.3f} (lease {lease} s)",
                    job,
                )


def _liveness_pushes(hist: _History) -> dict[str, list[float]]:
    """Per worker: when each push of its own liveness ref that may have landed was sent."""
    beats: dict[str, list[float]] = defaultdict(list)
    for recs in hist.by_proc.values():
        invoked: dict[Any, tuple[str, float]] = {}
        outcome: dict[Any, Any] = {}
        for r in recs:
            if r.get("kind") != "push":
                continue
            if r.get("phase") == "invoke":
                own = r.get("own_ref") or ""
                if own.startswith(WORKERS_PREFIX) and any(
                    ref == own for ref, *_ in r.get("refs", ())
                ):
                    invoked[r.get("id")] = (str(r.get("worker")), float(r["t"]))
            else:
                outcome[r.get("id")] = r.get("outcome")
        for pid, (worker, t) in invoked.items():
            if outcome.get(pid) in MAY_HAVE_LANDED:
                beats[worker].append(t)
    return beats


def _any_push_faults(hist: _History) -> bool:
    return any(
        r.get("kind") == "push" and r.get("phase") == "done"
        and r.get("outcome") not in ("applied", "rejected", "error")
        for recs in hist.by_proc.values() for r in recs
    ) or any(True for _ in hist.events("fail"))


def _check_updates(
    hist: _History, final: Mapping[str, Any], done: list[dict[str, Any]], result: CheckResult
) -> None:
    reachable: Mapping[str, bool] = final.get("reachable") or {}
    branches: Mapping[str, str] = final.get("branches") or {}
    accepted = {(e["job"], e["token"]) for e in done}
    tips: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for name in ("update", "finish"):
        for proc, r in hist.events(name):
            tips[(str(r["job"]), int(r["token"]))].append((proc, str(r["tip"])))
    for key, pushed in tips.items():
        if key not in accepted:
            continue
        for proc, tip in pushed:
            if not reachable.get(tip, False):
                result.add("lost-update", f"{proc} pushed {tip[:12]} for {key[0]!r} (token "
                           f"{key[1]}), which finished, but the final main branch does not reach "
                           "it", key[0])
                break
    for job, present in (final.get("result_files") or {}).items():
        if not present and (job, _token_of(done, job)) in accepted:
            result.add("lost-update", f"done.txt lists {job!r}, but the result file its job "
                       "function wrote is not on the final main branch", job)
    branch_of = {(c.job, c.token): c.branch for c in hist.claims}
    for proc, r in hist.events("finish-refused"):
        key = (str(r["job"]), int(r["token"]))
        branch = branch_of.get(key)
        if branch and branch not in branches:
            result.add("branch-lost", f"{proc}'s finish of {key[0]!r} (token {key[1]}) was "
                       f"refused, and its branch {branch} is gone from the remote", key[0])
        elif branch and pushed_last(tips.get(key, []), proc) not in (None, branches[branch]):
            result.add("branch-lost", f"{proc}'s finish of {key[0]!r} was refused and its branch "
                       f"{branch} no longer points at its last update", key[0])


def _check_failed_kept(
    hist: _History, final: Mapping[str, Any], failed: list[dict[str, Any]], result: CheckResult
) -> None:
    """Every update of a job ``failed.txt`` lists (under the token it lists) is kept: by a
    job branch, the main branch, or an archive (``kept``: tip -> whether it is)."""
    kept: Mapping[str, bool] | None = final.get("kept")
    if kept is None:  # a final state read before archives existed
        return
    listed = {(str(e["job"]), int(e.get("token", -1))) for e in failed}
    for proc, r in hist.events("update"):
        key = (str(r["job"]), int(r["token"]))
        if key in listed and not kept.get(str(r["tip"]), True):
            result.add("failed-lost", f"{proc} pushed {str(r['tip'])[:12]} for {key[0]!r} "
                       f"(token {key[1]}), which failed for good, and neither its branch nor "
                       "an archive holds it", key[0])
            listed.discard(key)


def _token_of(done: list[dict[str, Any]], job: str) -> int:
    return next((int(e["token"]) for e in done if e["job"] == job), -1)


def pushed_last(pushed: list[tuple[str, str]], proc: str) -> str | None:
    mine = [tip for p, tip in pushed if p == proc]
    return mine[-1] if mine else None


def _check_liveness(
    hist: _History,
    final: Mapping[str, Any],
    done: list[dict[str, Any]],
    running: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    expected_jobs: Iterable[str] | None,
    allow_failed: bool,
    result: CheckResult,
) -> None:
    done_jobs = {e["job"] for e in done}
    failed_jobs = {e["job"] for e in failed}
    expected = set(expected_jobs) if expected_jobs is not None else {c.job for c in hist.claims}
    missing = sorted(expected - done_jobs - (failed_jobs if allow_failed else set()))
    if final.get("timed_out"):
        result.add("unfinished", f"the run hit its duration cap with {len(missing)} job(s) not "
                   "done")
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        result.add("unfinished", f"{len(missing)} job(s) never finished: {shown}")
    if not allow_failed:
        for e in failed:
            result.add("unfinished", f"{e['job']!r} ended in failed.txt: {e.get('reason', '')}",
                       e["job"])
    if running:
        shown = ", ".join(f"{e['job']} ({e['worker'] or 'released'})" for e in running[:10])
        result.add("unfinished", f"running.txt is not empty at the end: {shown}")
    queue = final.get("jobs")
    if queue and queue.strip():
        left = [line for line in queue.split("\n") if line.strip()]
        result.add("unfinished", f"jobs.txt still holds {len(left)} job(s) at the end")


def _check_writes_landed(hist: _History, final: Mapping[str, Any], result: CheckResult) -> None:
    """Every acquire, release, claim and finish a worker journalled is in the remote's history.

    The lock ref's and the main branch's first-parent histories hold every
    value those refs ever had (each write is a compare-and-swap from its
    parent), so a write that landed is there.  Claims and finishes are matched
    by commit subject; if no subject parses, that half is skipped.
    """
    held: set[tuple[int, str]] = set()
    freed: set[int] = set()
    # an unlocked claim moves a free lock to a free one, past its token and one per job it
    # handed off: (worker, first token, last token) of each such move
    unlocked: list[tuple[str, int, int]] = []
    top = 0
    for message in final.get("lock_history") or ():
        rec = parse_lock_record(message)
        if rec is None:
            continue
        token = int(rec.get("token", 0))
        if rec.get("holder"):
            held.add((token, str(rec["holder"])))
        else:
            freed.add(token)
            if token > top:
                unlocked.append((str(rec.get("last", "")), top + 1, token))
        top = max(top, token)
    if final.get("lock_history"):
        for proc, r in hist.events("lock-acquire"):
            token, worker = int(r["token"]), str(r.get("worker"))
            if r.get("unlocked"):
                if not any(w == worker and lo <= token <= hi for w, lo, hi in unlocked):
                    result.add("lost-write", f"{proc} journalled an unlocked claim under token "
                               f"{token}, which the lock ref's history does not hold")
                continue
            if (token, worker) not in held:
                result.add("lost-write", f"{proc} journalled acquiring the lock with token "
                           f"{r['token']}, which the lock ref's history does not hold")
        for proc, r in hist.events("lock-release"):
            if r.get("ok") and int(r["token"]) not in freed:
                result.add("lost-write", f"{proc} journalled releasing the lock (token "
                           f"{r['token']}), which the lock ref's history does not hold")
    parsed = [p for p in map(parse_main_subject, final.get("main_subjects") or ()) if p]
    if not parsed:
        return
    on_main = {(p["what"], p["job"], p["worker"], p["token"]) for p in parsed}
    claims_on_main = {(p["worker"], p["token"]) for p in parsed if p["what"] == "claim"}
    for proc, r in hist.events("hand-off"):
        # handed over in the push of its claimer's own claim, whose subject names that one
        if (str(r.get("worker")), int(r["with_token"])) not in claims_on_main:
            result.add("lost-write", f"{proc} journalled handing {r['job']!r} to {r['to']!r} "
                       f"(token {r['token']}), but the main branch's history does not hold the "
                       f"claim it rode on (token {r['with_token']})", str(r["job"]))
    for what in ("claim", "finish"):
        for proc, r in hist.events(what):
            if what == "claim" and r.get("by"):
                continue  # taken up after a hand-off: the hand-off's push is checked above
            key = (what, str(r["job"]), str(r.get("worker")), int(r["token"]))
            if key not in on_main:
                result.add("lost-write", f"{proc} journalled the {what} of {r['job']!r} (token "
                           f"{r['token']}), which the main branch's history does not hold",
                           str(r["job"]))


def _check_crashes(hist: _History, final: Mapping[str, Any], result: CheckResult) -> None:
    for proc, recs in hist.by_proc.items():
        for r in recs:
            if r.get("kind") == "exit" and r.get("error"):
                result.add("crash", f"{proc} stopped on {r.get('error_type')}: {r.get('error')}")
    for proc, code in (final.get("exits") or {}).items():
        if code not in (0, None) and proc not in hist.kill_at:
            result.add("crash", f"{proc} exited with code {code}")


def _figures(
    hist: _History,
    final: Mapping[str, Any],
    done: list[dict[str, Any]],
    failed: list[dict[str, Any]],
) -> dict[str, Any]:
    outcomes: dict[str, int] = defaultdict(int)
    times: list[float] = []
    for recs in hist.by_proc.values():
        for r in recs:
            if "t" in r:
                times.append(float(r["t"]))
            if r.get("kind") == "push" and r.get("phase") == "done":
                outcomes[str(r.get("outcome"))] += 1
    times += [float(f["t"]) for f in hist.faults]
    span = (max(times) - min(times)) if times else 0.0
    counts = {name: sum(1 for _ in hist.events(name)) for name in (
        "finish", "finish-refused", "lock-acquire", "lock-lost", "revoked", "fail", "give-up",
    )}
    takeovers = sum(1 for _, r in hist.events("lock-acquire") if r.get("takeover"))
    faults: dict[str, int] = defaultdict(int)
    for f in hist.faults:
        if not f.get("at_end"):
            faults[str(f.get("fault"))] += 1
    kinds: dict[str, int] = defaultdict(int)
    for recs in hist.by_proc.values():
        for r in recs:
            kinds[str(r.get("kind"))] += 1
    return {
        "duration_s": round(span, 3),
        "jobs_done": len({e["job"] for e in done}),
        "jobs_failed": len(failed),
        "jobs_per_s": round(len(done) / span, 3) if span > 0 else None,
        "claims": len(hist.claims),
        "retries": sum(1 for c in hist.claims if c.attempt > 1),
        "fenced_finishes": counts["finish-refused"],
        "lease_lost": counts["lock-lost"],
        "revoked": counts["revoked"],
        "lock_acquires": counts["lock-acquire"],
        "lock_takeovers": takeovers,
        "job_failures": counts["fail"],
        "pushes": sum(outcomes.values()),
        "lost_races": outcomes.get("rejected", 0) + outcomes.get("unknown-rejected", 0),
        "push_faults": outcomes.get("failed", 0),
        "unknown_outcomes": sum(n for o, n in outcomes.items() if o.startswith("unknown")),
        "lies": outcomes.get("lied", 0),
        "push_errors": outcomes.get("error", 0),
        "kills": faults.get("kill", 0),
        "pauses": faults.get("pause", 0),
        "restarts": faults.get("restart", 0),
        "cleanups": kinds.get("cleanup", 0),
        "processes": len(hist.by_proc),
        "recovery_s": percentiles(recovery_times(hist)),
    }


def recovery_times(hist: _History) -> list[float]:
    """For each kill or pause of a worker running a job: seconds until that job's next claim."""
    held: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)
    ends: dict[tuple[str, int], float] = {}
    for name in ("finish", "finish-refused", "fail"):
        for _, r in hist.events(name):
            key = (str(r["job"]), int(r["token"]))
            ends[key] = min(ends.get(key, math.inf), float(r["t"]))
    for c in hist.claims:
        held[c.proc].append((c.t_event, ends.get((c.job, c.token), math.inf), c.job, c.token))
    out = []
    for f in hist.faults:
        if f.get("fault") not in ("kill", "pause"):
            continue
        proc, t = f"{f.get('worker')}#{f.get('life', 0)}", float(f["t"])
        for start, end, job, token in held.get(proc, ()):
            if start <= t < end:
                later = [c.t_event for c in hist.claims
                         if c.job == job and c.token > token and c.t_event >= t]
                if later:
                    out.append(min(later) - t)
    return out


# ---- liveness at the end: the idle tail ------------------------------------------------

#: Journal events after which the ledgers changed for good: a job left ``running.txt``.
JOB_ENDS = ("finish", "fail", "give-up")
#: Injector faults whose time restarts the idle tail's clock (see :func:`idle_tail`).
TAIL_FAULTS = ("kill", "pause", "resume", "restart")


def poll_ceiling(lease: float, poll: float | None = None, max_poll: float | None = None) -> float:
    """A waiting worker's longest sleep between two looks at the remote while the queue is
    drained and others' jobs run: the Worker's ``idle_poll_seconds``, whose default is
    ``max(max_poll_seconds, min(20, lease_seconds / 6))``, where ``max_poll_seconds``
    defaults to ``max(poll_seconds, min(5, lease_seconds / 4))``.  ``poll=None`` stands
    for any ``poll_seconds`` no larger than a quarter lease."""
    turn = max_poll or max(poll or 0.0, min(5.0, lease / 4))
    return max(turn, min(20.0, lease / 6))


def lease_margin(lease: float) -> float:
    """The extra wait on top of a lease before an observer calls a holding expired (the
    Worker's default ``margin_seconds``)."""
    return max(0.5, lease / 10)


def idle_tail_slack(lease: float) -> float:
    """The part of :func:`idle_tail_bound` that is not the poll ceiling; see there."""
    return min(2.0, max(0.75, lease / 2))


def idle_tail_bound(
    lease: float, poll: float | None = None, max_poll: float | None = None
) -> float:
    """The longest a worker may take, once the queue is drained and nothing runs any more,
    to return ``None`` from ``get_next_job``: the one place this bound is stated.

    A worker waiting for the last job sleeps at most its poll ceiling
    (:func:`poll_ceiling`) between looks.  The look after the last finish sees
    ``running.txt`` empty, the next-job function has nothing, and the worker
    returns: one poll ceiling plus one look.  Nothing in that path has to wait
    for a lease, so a tail as long as a lease is a liveness failure, the stall
    this bound exists to catch.

    On top of the poll ceiling comes :func:`idle_tail_slack`, for the look itself
    (a fetch, the next-job function, maybe a release of the lock) and for
    process scheduling: on a loaded 2-core machine with a dozen worker processes
    a process can sit a few hundred milliseconds between runnable and running.
    The slack is ``lease / 2`` clamped to 0.75 s .. 2 s.  A flat 2 s (the
    first idea) would be plenty for scheduling, but it would make the check
    blind where the simulator runs: a stalled worker waits a lease plus its
    margin (:func:`lease_margin`), 2.5 s at the simulator's default lease of
    2 s, while the poll ceiling plus 2 s is 2.5 s too.  With half a lease,
    the bound is ``lease / 4 + lease / 2`` (0.5 + 1 = 1.5 s at a lease of
    2 s), a quarter of a lease and the margin below a stall, for every lease
    the simulator uses; the unit tests hold it below the stall from a lease
    of 1 s to 120 s.  The cap of 2 s keeps the bound far below the leases
    real workers use (120 s by default: a bound of 22 s).  The floor of
    0.75 s is what a look plus a scheduling delay may take under load; below
    a lease of about a second the gap to a stall shrinks to tenths, and a run
    with such a lease proves little here.  Measured on 2 busy cores: the
    judged waits of runs with 4 to 16 workers, with and without faults,
    stayed under half a second, against 2.5 to 3 s for the stall.
    """
    return poll_ceiling(lease, poll, max_poll) + idle_tail_slack(lease)


@dataclass(slots=True)
class IdleTail:
    """The end of a run as :func:`idle_tail` measured it.

    Attributes:
        seconds: from the last job end journalled (a finish, a failure or a
            give-up, after its push returned) to the last ``no-job`` record;
            ``None`` without either.
        judged: the longest wait of one process, from its own starting point
            (see :func:`idle_tail`) to its ``no-job`` record; ``None`` when no
            process recorded one.
        bound: :func:`idle_tail_bound` for the run's settings.
        proc: the process whose wait was longest.
        since: what that wait was counted from, in words.
        since_t: when that was (``time.monotonic()``).
    """

    seconds: float | None
    judged: float | None
    bound: float
    proc: str = ""
    since: str = ""
    since_t: float = 0.0

    def figures(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {"idle_tail_s": r(self.seconds), "idle_tail_judged_s": r(self.judged),
                "idle_tail_bound_s": r(self.bound), "idle_tail_worker": self.proc or None,
                "idle_tail_from": self.since or None}


def idle_tail(
    hist: _History,
    *,
    lease: float,
    poll: float | None = None,
    max_poll: float | None = None,
) -> IdleTail:
    """The run's idle tail, and the longest wait the bound judges.

    The idle tail is the time from the last job end (finish, fail or give-up
    event; each is journalled after its push returned, so the landing was no
    later) to the last ``no-job`` record (a worker leaving its loop).  Every
    time is a ``time.monotonic()`` reading, one clock for every process of the
    host.

    The judged wait of a process that recorded ``no-job`` at ``n`` counts from
    the latest of these starting points, each a moment after which the
    process had everything it needed to return within a poll and a look:

    * the last job end of the run;
    * its own ``session`` record (its Worker was open): process start-up is not
      the protocol's wait;
    * the last release of the lock by another process before ``n`` (a
      ``lock-release`` or a ``claim``): a next-job function that runs under the
      lock makes workers go one at a time, and each one waits for the one before;
    * every fault of the injector (kill, pause, resume, restart); a kill or a
      pause counts from its time plus a lease and its margin (:func:`lease_margin`);
    * for a restarted life (``life`` above 0), its ``session`` record plus a
      lease and its margin.

    The last two are the waits a fault may rightly force.  A killed or paused
    worker keeps the lock, if it held it, until its lease runs out, and its
    liveness record looks like an idle worker's for as long, so the others may
    give it its turns at a free lock (up to four, each up to a poll ceiling:
    a lease when turns are slow).  A new process has watched no record yet, so
    it cannot tell a dead worker's from a live one's for its first lease and
    margin.  A job held by a killed or paused worker needs no rule of its own:
    it is taken over after its lease and finished, and that finish is a later
    job end.

    So a run without faults is judged from its last finish (or the release of
    the lock just before a worker's own turn), and a fault in the last lease
    of a run only moves the start later: the check may let a stall right after
    a fault pass, but never blames a wait a fault forced.
    """
    bound = idle_tail_bound(lease, poll, max_poll)
    expiry = lease + lease_margin(lease)
    ends = [float(r["t"]) for name in JOB_ENDS for _, r in hist.events(name)]
    last_end = max(ends, default=None)
    starts: list[tuple[float, str]] = []  # starting points every process shares
    if last_end is not None:
        starts.append((last_end, "the last job end"))
    for f in hist.faults:
        fault = f.get("fault")
        if fault not in TAIL_FAULTS or f.get("at_end"):
            continue
        if fault in ("kill", "pause"):
            starts.append((float(f["t"]) + expiry, f"a lease after the {fault} of {proc_key(f)}"))
        else:
            starts.append((float(f["t"]), f"the {fault} of {proc_key(f)}"))
    releases: list[tuple[float, str]] = []  # (when, process) the lock was freed
    for proc, recs in hist.by_proc.items():
        for r in recs:
            if r.get("kind") == "event" and (
                r.get("event") == "claim" or (r.get("event") == "lock-release" and r.get("ok"))
            ):
                releases.append((float(r["t"]), proc))
    releases.sort()
    tail = IdleTail(None, None, bound)
    last_gone = None
    for proc, recs in hist.by_proc.items():
        own = [
            (float(r["t"]), "its Worker opening") if not r.get("life")
            else (float(r["t"]) + expiry, "a lease after its restarted Worker opened")
            for r in recs if r.get("kind") == "session"
        ]
        for r in recs:
            if r.get("kind") != "no-job":
                continue
            n = float(r["t"])
            last_gone = n if last_gone is None else max(last_gone, n)
            freed = [(t, f"the lock's release by {p}") for t, p in releases if p != proc and t <= n]
            since_t, since = max(starts + own + freed[-1:], default=(n, "its no-job record"))
            wait = max(0.0, n - since_t)
            if tail.judged is None or wait > tail.judged:
                tail.judged, tail.proc, tail.since, tail.since_t = wait, proc, since, since_t
    if last_end is not None and last_gone is not None:
        tail.seconds = max(0.0, last_gone - last_end)
    return tail


def _check_idle_tail(tail: IdleTail, final: Mapping[str, Any], result: CheckResult) -> None:
    if final.get("timed_out") or tail.judged is None or tail.judged <= tail.bound:
        return  # a run cut short by its cap is already reported unfinished
    result.add(
        "idle-tail",
        f"liveness: {tail.proc} returned no job {tail.judged:.2f} s after {tail.since} (at "
        f"{tail.since_t:.3f}), over the idle-tail bound of {tail.bound:.2f} s (a poll ceiling "
        "and a look, see sim.checker.idle_tail_bound)",
    )
