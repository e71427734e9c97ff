"""Liveness of a waiting worker, in model time, driven through the real pacing code.

A Hypothesis-drawn world moves the lock (held by others, released, claimed in turns) and
the liveness records of idle workers ahead in turn, at random moments.  One waiter is
run through exactly the decisions ``Worker.get_next_job`` makes --
:func:`~distribute.core.pacing.after_look`, :func:`~distribute.core.pacing.after_peek`,
:func:`~distribute.core.pacing.looks_in_full` (the next in turn looks in full, not peeks),
:func:`~distribute.core.pacing.after_failed_try`, :func:`~distribute.core.pacing.turn_wait`,
a real :class:`~distribute.core.pacing.Pacer` and a real
:class:`~distribute.core.lease.LeaseWatch` -- sleeping the longest delay it may draw.

The property: once the lock is free and stays unchanged, the waiter tries within
``TURNS_WAITED`` turns plus one poll ceiling (it never waits for a lease to expire on a
free lock); and once the world stops moving with the lock held by a silent holder, it
tries by the lease plus margin plus one poll ceiling.  A broken variant that keeps the
stale "held" snapshot while waiting (the bug that stalled workers for a whole lease at
the end of a queue) is required to be caught.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distribute.core.lease import LeaseWatch
from distribute.core.pacing import (
    TURNS_WAITED,
    KeepWatching,
    LookAgain,
    Pacer,
    PeekVerdict,
    Watch,
    after_failed_try,
    after_look,
    after_peek,
    looks_in_full,
    still_ahead,
    turn_wait,
)

LOCK = "refs/distribute/lock"
LEASE, MARGIN, POLL, CEILING = 60.0, 6.0, 0.1, 1.0


@dataclass(frozen=True)
class Event:
    """At ``at`` seconds: the lock takes a new value (free or held), or one of the idle
    workers ahead moves its liveness record (it took its turn)."""

    at: float
    lock_free: bool | None = None  # None: this event is a record moving
    mover: int = -1


@st.composite
def worlds(draw: st.DrawFn) -> tuple[int, bool, list[Event]]:
    ahead = draw(st.integers(0, 6))
    start_free = draw(st.booleans())
    times = draw(st.lists(st.floats(0.01, 20.0), max_size=12))
    events = []
    for t in sorted(times):
        if ahead and draw(st.booleans()):
            events.append(Event(t, mover=draw(st.integers(0, ahead - 1))))
        else:
            events.append(Event(t, lock_free=draw(st.booleans())))
    return ahead, start_free, events


class World:
    def __init__(self, ahead: int, start_free: bool, events: list[Event]) -> None:
        self.events = events
        self.lock = (start_free, 0)  # (free, value number)
        self.records = {f"refs/distribute/workers/w{i}": 0 for i in range(ahead)}
        self.applied = 0

    def advance(self, now: float) -> None:
        while self.applied < len(self.events) and self.events[self.applied].at <= now:
            e = self.events[self.applied]
            self.applied += 1
            if e.lock_free is None:
                ref = f"refs/distribute/workers/w{e.mover}"
                self.records[ref] += 1
            else:
                self.lock = (e.lock_free, self.lock[1] + 1)

    def refs(self) -> dict[str, str]:
        out = {ref: f"r{n}" for ref, n in self.records.items()}
        out[LOCK] = f"l{self.lock[1]}"
        return out


#: how long a full look and a peek take, as a worker times them: over a network they cost
#: about the same (the next in turn then looks in full); on this machine a peek is far cheaper
NETWORK, LOCAL = (0.5, 0.35), (0.02, 0.001)


def run_waiter(
    world: World, decide: Callable[..., PeekVerdict], horizon: float,
    timing: tuple[float, float] = LOCAL,
) -> float | None:
    """Drive one waiter until it tries at a free lock (or a held one it may take over);
    return the model time of that try, or ``None`` past ``horizon``."""
    look_seconds, peek_seconds = timing
    now, start = 0.0, 0.0
    pacer, lease = Pacer(POLL, CEILING), LeaseWatch(LEASE, MARGIN)
    watch: Watch | None = None
    moved: set[str] = set()  # records seen to move: those workers took their turn
    while now <= horizon:
        world.advance(now)
        refs = world.refs()
        lease.observe(LOCK, refs[LOCK], now)
        in_full = watch is not None and looks_in_full(watch, look_seconds, peek_seconds)
        if watch is not None and not in_full:  # a peek
            pacer.count_turns(refs, now, "refs/distribute/workers/")
            wait = turn_wait(len(still_ahead(watch, refs)), pacer.slot(),
                             lease.unchanged_for(LOCK, now), now - start)
            verdict = decide(watch, refs, LOCK, expired=lease.expired(LOCK, now), wait=wait)
            if isinstance(verdict, KeepWatching):
                watch = verdict.watch
                delay = pacer.poll_delay(len(watch.ahead))
                if verdict.wake_by is not None:
                    delay = min(delay, verdict.wake_by)
                now += max(delay, 1e-3)
                continue
            watch = None
        # a full look: idle workers whose records moved have had their turn
        moved |= {r for r, v in refs.items() if r != LOCK and v != "r0"}
        ahead = tuple(r for r in sorted(world.records) if r not in moved)
        free, _ = world.lock
        look = Watch(lock_free=free, lock_oid=refs[LOCK], latest=refs[LOCK], ahead=ahead,
                     ahead_oids={r: refs[r] for r in ahead})
        wait = turn_wait(len(ahead), pacer.slot(), lease.unchanged_for(LOCK, now), now - start)
        verdict = after_look(look, wait)
        if isinstance(verdict, KeepWatching):
            watch = verdict.watch
            now += max(min(verdict.wake_by or 0.0, pacer.poll_delay(len(ahead))), 1e-3)
            continue
        if free or lease.expired(LOCK, now):
            return now
        watch = after_failed_try(look)
        now += max(pacer.poll_delay(len(ahead)), 1e-3)
    return None


def liveness(
    decide: Callable[..., PeekVerdict], timing: tuple[float, float] = LOCAL
) -> Callable[[], None]:
    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(worlds())
    def check(world_spec: tuple[int, bool, list[Event]]) -> None:
        ahead, start_free, events = world_spec
        last = events[-1].at if events else 0.0
        free_at_end = _final_free(start_free, events)
        turns = TURNS_WAITED * CEILING
        bound = last + (turns + 2 * CEILING if free_at_end else LEASE + MARGIN + 2 * CEILING)
        tried = run_waiter(World(ahead, start_free, events), decide, bound + 1.0, timing)
        assert tried is not None and tried <= bound, (
            f"the waiter tried only at {tried} (bound {bound:.1f} s; last change at "
            f"{last:.2f} s, lock {'free' if free_at_end else 'held'} at the end)"
        )

    return check


def _final_free(start_free: bool, events: list[Event]) -> bool:
    free = start_free
    for e in events:
        if e.lock_free is not None:
            free = e.lock_free
    return free


def stale_snapshot(watch: Watch, refs: Mapping[str, str], lock_ref: str, *, expired: bool,
                   wait: float) -> PeekVerdict:
    """The old rule, kept as a broken variant: a moved lock with workers still ahead only
    updates the latest value, and the "held" verdict of the last full look stays."""
    value = refs.get(lock_ref)
    ahead = still_ahead(watch, refs)
    now = replace(watch, latest=value, ahead=ahead)
    if expired:
        return LookAgain("expired")
    if value == watch.latest and (not watch.lock_free or wait > 0):
        return KeepWatching(now, wake_by=wait if watch.lock_free else None)
    if value != watch.latest and ahead:
        return KeepWatching(now)
    return LookAgain("moved")


@pytest.mark.parametrize("timing", [LOCAL, NETWORK], ids=["peeks", "next-in-turn-looks"])
def test_a_waiter_tries_within_its_bound(timing):
    liveness(after_peek, timing)()


def test_the_stale_snapshot_variant_is_caught():
    with pytest.raises(AssertionError, match="tried only at"):
        liveness(stale_snapshot)()
