"""Exponential backoff with jitter, for polling the lock and retrying lost races."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``base`` up to ``cap``, each drawn from [d (1 - spread), d].

    The random part spreads waiting workers apart so they do not poll the
    remote in lock step; ``spread`` (a half by default) is how much of each
    delay is random.
    """

    def __init__(
        self, base: float, cap: float, rng: random.Random | None = None, spread: float = 0.5
    ) -> None:
        if base <= 0 or cap < base or not 0 <= spread <= 1:
            raise ValueError(
                f"need 0 < base <= cap and 0 <= spread <= 1, got base={base} cap={cap} "
                f"spread={spread}"
            )
        self.base = base
        self.cap = cap
        self.spread = spread
        self.rng = rng or random.Random()
        self._n = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self._n, 30)))
        self._n += 1
        return self.rng.uniform(delay * (1 - self.spread), delay)

    def reset(self) -> None:
        self._n = 0
