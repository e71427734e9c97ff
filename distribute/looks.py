"""What `distribute status` saw last time, so that one look can tell who renews.

One observation of a liveness record cannot say whether its worker is alive: that
needs the record seen twice, some time apart.  ``status --watch S`` looks twice within
one run.  Without it, ``status`` compares with the look this machine's last ``status``
of the same remote and branch remembered: a record that changed since was renewed, one
that did not has been silent for at least that long.  Both times are this machine's own
clock (a file's time stamp of another machine is never used); a remembered look older
than :data:`FORGET_AFTER`, or from the future (the clock was set back), is not used.

The memory is one small JSON file per remote and branch in the user's cache folder
(``looks/``, readable by this user only): ref names and commit ids, no URL, no secret.
Losing it only costs the comparison.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from distribute.credentials import private_folder, public_url

#: A remembered look older than this is not compared with (seconds).
FORGET_AFTER = 24 * 3600.0


@dataclass(frozen=True)
class Comparison:
    """The last look's values compared with this one's.

    Attributes:
        seconds: how long ago (by this machine's clock) the last look was.
        changed: by ref, whether its value differs from the last look's (a ref the last
            look did not see counts as changed).
        since: by ref whose value did not change, when (by this machine's clock) looks
            first saw that value.
        now: the time of this look.
    """

    seconds: float
    changed: dict[str, bool]
    since: dict[str, float]
    now: float

    @property
    def unchanged_for(self) -> dict[str, float]:
        """By ref whose value did not change, how long looks have seen that value."""
        return {ref: self.now - first for ref, first in self.since.items()}


def memory_path(cache: Path, remote: str, branch: str) -> Path:
    """The file that remembers the last look at ``remote``'s ``branch``."""
    key = hashlib.sha256(f"{public_url(remote)}\0{branch}".encode()).hexdigest()[:20]
    return cache / "looks" / f"{key}.json"


def compare(previous: Mapping[str, object] | None, refs: Mapping[str, str],
            now: float) -> Comparison | None:
    """Compare ``refs`` (ref -> commit id, read now) with a remembered look; ``None`` when
    there is none to compare with (none, damaged, too old, or from the future)."""
    if not previous:
        return None
    at, seen = previous.get("at"), previous.get("refs")
    if not isinstance(at, int | float) or not isinstance(seen, dict):
        return None
    ago = now - float(at)
    if not 0 < ago <= FORGET_AFTER:
        return None
    known = previous.get("since")
    known = known if isinstance(known, dict) else {}
    changed = {ref: seen.get(ref) != oid for ref, oid in refs.items()}
    since = {}
    for ref, moved in changed.items():
        first = known.get(ref, at)
        if not moved and isinstance(first, int | float) and first <= now:
            since[ref] = float(first)
    return Comparison(ago, changed, since, now)


def recall(path: Path) -> dict[str, object] | None:
    """The remembered look in ``path``, ``None`` if there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remember(path: Path, refs: Mapping[str, str], now: float,
             comparison: Comparison | None = None) -> None:
    """Remember this look, and since when each value has been seen (carried over from
    ``comparison`` with the last look for a value that did not change).  Best effort: a
    cache that cannot be written costs only the next comparison."""
    since = comparison.since if comparison is not None else {}
    with contextlib.suppress(OSError):
        private_folder(path.parent)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"at": now, "refs": dict(refs), "since": since}, handle)
        os.replace(scratch, path)


def now() -> float:
    """This machine's clock, the only one the comparison uses."""
    return time.time()


__all__ = ["FORGET_AFTER", "Comparison", "compare", "memory_path", "recall", "remember"]
