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
    _moved: set[str] = field(default_factory=set)

    def observe(self, ref: str, value: str | None, now: float) -> bool:
        """Record one observation; return ``True`` when the value changed."""
        value = value or ABSENT
        previous = self._seen.get(ref)
        if previous is not None and previous[0] == value:
            return False
        if previous is not None:
            self._moved.add(ref)
        self._seen[ref] = (value, now)
        return True

    def seen_moving(self, ref: str) -> bool:
        """Has this observer seen ``ref`` change (appear included) at least once?  A value
        seen only as it is could belong to a worker long dead: a ref first seen now is
        judged unexpired for a whole lease."""
        return ref in self._moved

    def observe_all(self, values: Mapping[str, str], refs: Iterable[str], now: float,
                    new_is_move: bool = False) -> None:
        """Observe every ref in ``refs``; those missing from ``values`` are absent.
        ``new_is_move``: a ref never seen before counts as seen moving (it appeared
        since an earlier observation that listed every ref of its kind)."""
        for ref in refs:
            if new_is_move and ref not in self._seen:
                self._moved.add(ref)
            self.observe(ref, values.get(ref), now)

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
        self._moved.discard(ref)

    def remaining(self, ref: str, now: float) -> float:
        """Seconds until ``ref`` would expire if it stays unchanged."""
        return max(0.0, self.lease + self.margin - self.unchanged_for(ref, now))
