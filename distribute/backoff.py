"""Exponential backoff with jitter, for polling the lock and retrying lost races."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``base`` up to ``cap``, each drawn from [d/2, d].

    The random half spreads waiting workers apart so they do not poll the
    remote in lock step.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()
        self._n = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self._n, 30)))
        self._n += 1
        return self.rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._n = 0
