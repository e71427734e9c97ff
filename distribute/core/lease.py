"""Lease expiry judged by observation, never by comparing two machines' clocks.

Theory of operation
-------------------
An observer records, for each ref it watches, the value it saw and the time
*on its own monotonic clock* when it first saw that value.  A lease counts as
expired when the observer has seen the ref unchanged for the lease period
plus a margin.  Any change of value restarts the wait.  A ref first seen now
has been unchanged for zero seconds, however old its commit claims to be:
the wall-clock dates inside commits are never read.  This is how Kubernetes'
leader election judges a lease, and why hosts whose wall clocks differ by
hours, or whose clocks run at slightly different rates, still agree.

The caller passes ``now``; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The value of a ref that does not exist.
ABSENT = ""


@dataclass(slots=True)
class LeaseWatch:
    """What one observer has seen of a set of refs, and since when.

    Attributes:
        lease: the lease period in seconds.
        margin: extra seconds an observer waits beyond the lease, to cover
            clock-rate differences and the holder's renewal latency.
    """

    lease: float
    margin: float
    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: ref -> when this observer last read it, whatever the value
    _checked: dict[str, float] = field(default_factory=dict)
    #: ref -> a time before which its current value cannot have been written: the
    #: previous reading, when this observer saw the value change
    _written_after: dict[str, float] = field(default_factory=dict)
    _last_sweep: float | None = None  # the last :meth:`observe_all`

    def observe(self, ref: str, value: str | None, now: float) -> bool:
        """Record one observation; return ``True`` when the value changed."""
        value = value or ABSENT
        previous = self._seen.get(ref)
        checked = self._checked.get(ref)
        self._checked[ref] = now
        if previous is not None and previous[0] == value:
            return False
        if previous is not None and checked is not None:
            self._written_after[ref] = checked
        self._seen[ref] = (value, now)
        return True

    def written_within(self, ref: str, seconds: float, now: float) -> bool:
        """Was ``ref``'s current value surely written less than ``seconds`` ago?  Only a
        change this observer saw tells: the value was written after the reading before
        it.  A value seen only as it is could be a dead worker's, written long ago (a
        ref first seen now is judged unexpired for a whole lease), and one seen to change
        after a long gap between readings may be as old as the gap."""
        after = self._written_after.get(ref)
        return after is not None and now - after < seconds

    def observe_all(self, values: Mapping[str, str], refs: Iterable[str], now: float,
                    new_is_move: bool = False) -> None:
        """Observe every ref in ``refs``; those missing from ``values`` are absent.
        ``new_is_move``: ``values`` lists every ref of their kind, so a ref never seen
        before was written since the previous call (it appeared)."""
        for ref in refs:
            if new_is_move and ref not in self._seen and self._last_sweep is not None:
                self._written_after[ref] = self._last_sweep
            self.observe(ref, values.get(ref), now)
        self._last_sweep = now

    def unchanged_for(self, ref: str, now: float) -> float:
        """Seconds this observer has seen ``ref`` at its current value (0 if never seen)."""
        seen = self._seen.get(ref)
        return 0.0 if seen is None else max(0.0, now - seen[1])

    def expired(self, ref: str, now: float) -> bool:
        """Has ``ref`` been seen unchanged for the lease plus the margin?"""
        return self.unchanged_for(ref, now) >= self.lease + self.margin

    def value(self, ref: str) -> str | None:
        seen = self._seen.get(ref)
        return None if seen is None or seen[0] == ABSENT else seen[0]

    def forget(self, ref: str) -> None:
        self._seen.pop(ref, None)
        self._checked.pop(ref, None)
        self._written_after.pop(ref, None)

    def remaining(self, ref: str, now: float) -> float:
        """Seconds until ``ref`` would expire if it stays unchanged."""
        return max(0.0, self.lease + self.margin - self.unchanged_for(ref, now))
