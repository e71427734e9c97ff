"""Fault injection at the transport boundary.

Theory of operation
-------------------
:class:`FaultyTransport` keeps the :class:`~distribute.transport.base.Transport`
contract around another transport and, driven by a seeded
:class:`random.Random`, makes the remote slow and unreliable the way a real
network does:

* every remote operation (fetch, list_refs, push) first waits an injected
  latency drawn from ``[latency/2, 3*latency/2]``;
* a push may fail before sending: nothing is applied and
  :class:`~distribute.core.errors.TransportError` is raised;
* a push may have an unknown outcome: half of these are sent (and applied if
  their expectations hold), half are not sent, and both raise
  :class:`~distribute.core.errors.OutcomeUnknown`.

It also journals every push -- an ``invoke`` record before sending and a
``done`` record with its outcome after -- which is how the checker learns when
renewals were sent.  ``lie_rate`` breaks the contract on purpose (a push
reported as applied that was never sent); only the checker's own tests use it.
The Worker wraps its transport with this through ``Worker(wrap_transport=...)``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distribute.core.errors import OutcomeUnknown, TransportError
from distribute.transport.base import MergeResult, Oid, RefUpdate, Transport


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """How unreliable the remote is; every rate is a probability per push.

    Attributes:
        latency: mean injected delay of each remote operation, in seconds.
        push_fail_rate: a push fails before sending (``TransportError``).
        unknown_rate: a push's outcome is unknown (``OutcomeUnknown``); half
            of these were applied, half never sent.
        lie_rate: a push is reported applied but never sent -- a broken
            transport, for testing the checker only.
    """

    latency: float = 0.0
    push_fail_rate: float = 0.0
    unknown_rate: float = 0.0
    lie_rate: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.push_fail_rate, self.unknown_rate, self.lie_rate)
        if self.latency < 0 or any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"latency must be >= 0 and rates in [0, 1] summing to <= 1: {self}")

    @property
    def active(self) -> bool:
        return bool(self.latency or self.push_fail_rate or self.unknown_rate or self.lie_rate)


Recorder = Callable[..., None]


class FaultyTransport:
    """A transport that delays, fails and loses pushes, and journals each push.

    Args:
        inner: the transport to wrap.
        plan: which faults, how often.
        rng: the seeded source of every random draw.
        record: optional ``record(kind, **fields)`` journal callback.
        own_ref: the worker's liveness ref, written into push records so
            the checker can tell renewals of it apart.
        sleep: how to wait (tests pass a fake).
    """

    def __init__(
        self,
        inner: Transport,
        plan: FaultPlan,
        rng: random.Random,
        *,
        record: Recorder | None = None,
        own_ref: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.plan = plan
        self.rng = rng
        self.own_ref = own_ref
        self._record = record
        self._sleep = sleep
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.outcomes: dict[str, int] = {}

    # ---- faults --------------------------------------------------------------
    def _draw(self) -> float:
        with self._lock:
            return self.rng.random()

    def _delay(self) -> None:
        if self.plan.latency > 0:
            with self._lock:
                delay = self.rng.uniform(self.plan.latency / 2, self.plan.latency * 1.5)
            self._sleep(delay)

    def _log(self, **fields: Any) -> None:
        if self._record is not None:
            self._record("push", **fields)

    def _done(self, push_id: int, outcome: str) -> None:
        with self._lock:  # the worker's heartbeat pushes from a thread of its own
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self._log(phase="done", id=push_id, outcome=outcome)

    # ---- remote refs ---------------------------------------------------------
    def fetch(self, refs: Sequence[str]) -> dict[str, Oid]:
        self._delay()
        return self.inner.fetch(refs)

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        self._delay()
        return self.inner.list_refs(prefix)

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        push_id = next(self._ids)
        self._log(
            phase="invoke", id=push_id, own_ref=self.own_ref,
            refs=[[u.ref, u.old, u.new] for u in updates],
        )
        self._delay()
        roll = self._draw()
        plan = self.plan
        if roll < plan.push_fail_rate:
            self._done(push_id, "failed")
            raise TransportError("injected fault: the push failed before it was sent")
        roll -= plan.push_fail_rate
        if roll < plan.unknown_rate:
            if self._draw() < 0.5:
                self._done(push_id, "unknown-dropped")
            else:
                applied = self._inner_push(push_id, updates)
                self._done(push_id, "unknown-applied" if applied else "unknown-rejected")
            raise OutcomeUnknown("injected fault: the connection died after the push was sent")
        roll -= plan.unknown_rate
        if roll < plan.lie_rate:
            self._done(push_id, "lied")
            return True
        applied = self._inner_push(push_id, updates)
        self._done(push_id, "applied" if applied else "rejected")
        return applied

    def _inner_push(self, push_id: int, updates: Sequence[RefUpdate]) -> bool:
        try:
            return self.inner.push(updates)
        except OutcomeUnknown:
            self._done(push_id, "unknown")
            raise
        except TransportError:
            self._done(push_id, "error")
            raise

    # ---- local object store: passed through -----------------------------------
    def read_file(self, commit: Oid, path: str) -> bytes | None:
        return self.inner.read_file(commit, path)

    def folder(self, commit: Oid, path: str) -> dict[str, str]:
        return self.inner.folder(commit, path)

    def entry(self, commit: Oid, path: str) -> tuple[str, str] | None:
        return self.inner.entry(commit, path)

    def commit_message(self, commit: Oid) -> str:
        return self.inner.commit_message(commit)

    def commit_tree(self, commit: Oid) -> Oid:
        return self.inner.commit_tree(commit)

    def write_commit(
        self,
        *,
        parents: Sequence[Oid],
        message: str,
        base: Oid | None = None,
        tree: Oid | None = None,
        changes: Mapping[str, bytes | None] | None = None,
    ) -> Oid:
        return self.inner.write_commit(
            parents=parents, message=message, base=base, tree=tree, changes=changes
        )

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        return self.inner.merge(ours, theirs)

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        return self.inner.is_ancestor(ancestor, descendant)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # anything beyond the contract (diagnostics of the git transport) passes through
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
