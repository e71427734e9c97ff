"""When a waiting worker looks at the remote, and when it tries: pure decisions.

Theory of operation
-------------------
A worker that wants a job alternates two kinds of look at the remote:

* a *full look* (``Coordinator.observe``: a fetch of the main branch, the lock
  and the liveness records, and a read of the ledgers), after which it may
  try to take the lock or claim;
* a *peek* (``Coordinator.peek``: the values of the lock and liveness refs
  only, one ``ls-remote`` or a read of a local remote's ref files), used while
  it waits for something to change.

Between full looks it keeps a :class:`Watch`: what the last full look said
about the lock (free or held, and its value) and which idle workers were
before it in turn.  :func:`after_peek` decides from one peek whether to keep
waiting or to look in full.  The rule that keeps the wait bounded is that a
watch never outlives the fact it was built on: a *held* lock that moved (it
was released, or taken over) always sends the worker back to a full look,
because only a full look can tell what the new value means.  Carrying the old
"held" verdict past that change made waiters sleep until the *free* lock
looked expired, a whole lease after the last job.

At a free lock, idle workers take turns, least recently served first
(:func:`~distribute.core.plan.ahead_in_turn`).  A worker waits at most
:data:`TURNS_WAITED` turns of :meth:`Pacer.slot` seconds for those ahead of
it; each of them moves its liveness record when it claims, so a peek tells who
is still waiting.  Records of workers that said they are gone are not counted
(see ``Beat.gone``).

A :class:`Pacer` learns how long looks and claims take on this machine and
how fast turns go, and turns that into delays.  It reads no clock: every
method that needs the time takes ``now``.  Randomness stays out too: delays
come back as an upper bound ``d`` and the caller draws from ``[d/2, d]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from distribute.core.names import HANDED_PREFIX, WORKERS_PREFIX

#: At a free lock, a worker waits for at most this many workers before it in turn.
TURNS_WAITED = 4
#: How long what a waiting worker saw of the pace of turns keeps counting.
TURN_MEMORY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Watch:
    """What a waiting worker keeps between two full looks.

    Attributes:
        lock_free: the lock was free at the full look.
        lock_oid: the lock ref's value at the full look.
        latest: the lock ref's value at the latest peek.
        ahead: liveness refs of the idle workers still before this one in turn.
        ahead_oids: their values at the full look, and those of their hand-off markers
            (:func:`marker_of`) that existed then; a record or a marker that moved since
            belongs to a worker that has taken its turn (a claim moves the claimer's
            record, a hand-off the marker of the worker it serves, which may take the
            job up without writing its record).
        handed: this worker's hand-off marker at the full look (``None``: none); a
            claim that hands it a job moves it.
    """

    lock_free: bool
    lock_oid: str | None
    latest: str | None
    ahead: tuple[str, ...] = ()
    ahead_oids: Mapping[str, str] = field(default_factory=dict)
    handed: str | None = None


@dataclass(frozen=True, slots=True)
class KeepWatching:
    """Sleep (at most ``wake_by`` seconds when it is set) and peek again."""

    watch: Watch
    wake_by: float | None = None


@dataclass(frozen=True, slots=True)
class LookAgain:
    """Stop watching: make a full look now.  ``why`` is for logs and tests."""

    why: str


PeekVerdict = KeepWatching | LookAgain


#: waits shorter than this are no wait (:func:`turn_wait`)
TURN_RESOLUTION = 1e-6


def turn_wait(ahead: int, slot: float, unchanged_for: float, waiting_for: float) -> float:
    """Seconds left before a free lock is ours to try.

    Each idle worker before us gets one ``slot``, up to :data:`TURNS_WAITED` of
    them, counted from when the lock took its current value, but never from
    before this wait began (a value seen long ago says nothing about turns).
    Less than a microsecond counts as none: a rounding error's worth of wait is
    no reason to sleep (on a clock that reads the same after so short a sleep,
    the wait would never end).
    """
    left = min(ahead, TURNS_WAITED) * slot - min(unchanged_for, waiting_for)
    return left if left >= TURN_RESOLUTION else min(left, 0.0)


def marker_of(record_ref: str) -> str:
    """The hand-off marker of the worker whose liveness ref is ``record_ref``."""
    return HANDED_PREFIX + record_ref.removeprefix(WORKERS_PREFIX)


def still_ahead(watch: Watch, refs: Mapping[str, str]) -> tuple[str, ...]:
    """The workers of ``watch.ahead`` whose liveness records and hand-off markers have not
    moved: those that have not taken their turn yet."""
    return tuple(
        r for r in watch.ahead
        if refs.get(r) == watch.ahead_oids.get(r)
        and refs.get(marker_of(r)) == watch.ahead_oids.get(marker_of(r))
    )


def after_peek(
    watch: Watch, refs: Mapping[str, str], lock_ref: str, *, expired: bool, wait: float,
    handed_ref: str | None = None,
) -> PeekVerdict:
    """Decide what one peek means for a waiting worker.

    Args:
        watch: the current watch.
        refs: what the peek read (ref name to value; absent refs missing).
        lock_ref: the lock's ref name.
        expired: the lock has been seen unchanged for its lease and margin.
        wait: :func:`turn_wait` for the workers still ahead after this peek
            (the caller computes it for :func:`still_ahead`).
        handed_ref: this worker's hand-off marker (``None``: it takes no
            hand-offs).  A claim that hands it a job moves the marker in the same
            push, and the peek that shows it moved sends it to a full look, with
            workers still ahead or not (each handed worker drops out of the line
            only once it has taken its job up, so the take-ups of one claim would
            otherwise go down the line one peek at a time).  A worker whose marker
            did not move has nothing to take up, whatever else moved.

    Returns:
        :class:`LookAgain` when the lock is worth a full look (it may be
        taken over, it moved while held, or our turn has come), else
        :class:`KeepWatching` with the updated watch.
    """
    value = refs.get(lock_ref)
    ahead = still_ahead(watch, refs)
    now = replace(watch, latest=value, ahead=ahead)
    if expired:
        return LookAgain("the lock has not moved for a lease")
    if handed_ref is not None and refs.get(handed_ref) != watch.handed:
        return LookAgain("a claim handed us a job")
    if not watch.lock_free:
        if value == watch.lock_oid:
            return KeepWatching(now)
        return LookAgain("the held lock moved")
    if value != watch.latest:
        # a turn was taken (a claim moves the lock); those that took theirs dropped out
        if not ahead:
            return LookAgain("those ahead have had their turns")
        return KeepWatching(now)
    if wait > 0:
        return KeepWatching(now, wake_by=wait)
    return LookAgain("our turn")


def looks_in_full(watch: Watch, look_seconds: float, peek_seconds: float) -> bool:
    """Whether a waiting worker's next look should be a full one rather than a peek.

    At a free lock with one idle worker left before it in turn, what this worker
    waits for is that worker's claim, and a peek that shows it must be followed by
    a full look before this one can claim: two trips to the remote where one does.
    Over a network a full look that finds nothing new costs about what a peek costs
    (a fetch with nothing to bring only lists refs), so there the next in line looks
    in full, and claims on the look that shows the turn taken.  Where looks cost
    more than twice what peeks do (``look_seconds`` and ``peek_seconds`` as timed
    here; a remote on this machine, whose refs a peek reads as files), it peeks, as
    does everyone further back and a worker watching a held lock (its holder may
    keep it for as long as its next-job function takes).
    """
    return (
        watch.lock_free and len(watch.ahead) == 1
        and 0 < look_seconds <= 2 * peek_seconds
    )


@dataclass(frozen=True, slots=True)
class Try:
    """Try now: take the lock (or take it over), or claim with it free."""


LookVerdict = KeepWatching | Try


def after_look(watch: Watch, wait: float) -> LookVerdict:
    """Decide what one full look means for a worker that wants a job.

    ``watch`` is built from the look (its ``latest`` is the lock's value then) and
    ``wait`` is :func:`turn_wait` for its ``ahead``.  At a free lock a worker whose turn
    has not come keeps watching, to wake by ``wait``; otherwise it tries (a held lock
    is then taken over only when it looks expired, else watched until it moves).
    """
    if watch.lock_free and wait > 0:
        return KeepWatching(watch, wake_by=wait)
    return Try()


def after_failed_try(watch: Watch) -> Watch | None:
    """After a try that got nothing: watch a held lock with peeks until it moves; a free
    one (a lost race, a torn read) gets a full look again (``None``)."""
    return None if watch.lock_free else watch


def average(mean: float, sample: float) -> float:
    """A moving average of durations that starts at the first sample, not at zero."""
    return sample if mean == 0 else mean + (sample - mean) / 4


@dataclass(slots=True)
class Pacer:
    """What a worker has learnt about timing here, and the delays that follow.

    Args:
        poll: ``poll_seconds``: the next in turn looks this often at most.
        ceiling: ``max_poll_seconds``: no delay between looks is longer.
    """

    poll: float
    ceiling: float
    claim_seconds: float = 0.0  # how long claims take here (moving average)
    observe_seconds: float = 0.0  # how long a full look takes
    peek_seconds: float = 0.0  # how long a peek takes
    turns: tuple[float, float] = (0.0, 0.0)  # turns seen taken, and in how long (fading)
    last_peek: tuple[float, dict[str, str]] | None = None

    def looked(self, seconds: float) -> None:
        self.observe_seconds = average(self.observe_seconds, seconds)

    def peeked(self, seconds: float) -> None:
        self.peek_seconds = average(self.peek_seconds, seconds)

    def claimed(self, seconds: float) -> None:
        self.claim_seconds = average(self.claim_seconds, seconds)

    def new_wait(self) -> None:
        """Turns are counted while waiting, not across jobs."""
        self.last_peek = None

    def slot(self) -> float:
        """The time one worker's turn takes: noticing the free lock (``poll``), a full
        look and a claim, with a margin: twice what claims, or else looks, take here.
        Both grow on a loaded machine or with a slow remote, so those further back give
        those ahead longer instead of stampeding.  At most ``ceiling``, but never less
        than half as much again as a look and a claim take here: a turn judged shorter
        than that (a slow remote under a low ceiling) sends the next in turn to race a
        claim still under way."""
        work = max(2 * self.claim_seconds, 2 * self.observe_seconds)
        floor = 1.5 * (self.observe_seconds + self.claim_seconds)
        return max(min(self.poll + self.observe_seconds + work, self.ceiling), floor)

    def count_turns(self, refs: Mapping[str, str], now: float, prefix: str) -> None:
        """Learn how fast turns go: a claim moves its worker's liveness record (under
        ``prefix``), so the records that moved between two peeks count the turns taken
        meanwhile.  Counts and time fade over :data:`TURN_MEMORY_SECONDS`."""
        if self.last_peek is not None:
            then, before = self.last_peek
            fade = math.exp(-(now - then) / TURN_MEMORY_SECONDS)
            moved = sum(
                1 for ref, oid in refs.items()
                if ref.startswith(prefix) and before.get(ref, oid) != oid
            )  # fmt: skip
            self.turns = (self.turns[0] * fade + moved, self.turns[1] * fade + now - then)
        self.last_peek = (now, dict(refs))

    def turn_pace(self) -> float:
        """Seconds per turn as last seen (``poll`` before any turn was seen)."""
        turns, seconds = self.turns
        return seconds / turns if turns >= 1 else self.poll

    def poll_delay(self, ahead: int) -> float:
        """The longest wait before the next look (the caller draws from ``[d/2, d]``).

        The first two in turn (the second takes over as soon as the first claims)
        look every ``poll``, or more often when a look is cheap here -- down to a
        quarter of it while looking stays under a tenth of the time.  Each one further
        back waits a turn's time more, but wakes by half the time the places ahead
        take at the pace turns go now, so as not to sleep through its turn.
        """
        if ahead <= 1:
            cheap = max(self.poll / 4, 10 * self.peek_seconds)
            return min(self.poll, cheap, self.ceiling)
        pace = max(self.poll, (ahead - 1) * self.turn_pace() / 2)
        delay = self.poll + self.slot() * (ahead - 1)
        return min(self.ceiling, delay, pace)


__all__ = [
    "TURNS_WAITED",
    "TURN_MEMORY_SECONDS",
    "KeepWatching",
    "LookAgain",
    "LookVerdict",
    "Try",
    "Pacer",
    "PeekVerdict",
    "Watch",
    "after_failed_try",
    "after_look",
    "after_peek",
    "average",
    "looks_in_full",
    "marker_of",
    "still_ahead",
    "turn_wait",
]
