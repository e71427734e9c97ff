"""Exponential backoff with jitter, for polling the lock and retrying lost races."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from distribute.core.errors import OutcomeUnknown, TransportError
from distribute.core.names import scrub_url

T = TypeVar("T")


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


def retry_transport(
    step: Callable[[], T],
    *,
    seconds: float,
    backoff: Backoff,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    failed: str,
    answered: Callable[[], int] | None = None,
) -> T:
    """Run ``step``; while it raises :class:`TransportError` (nothing was sent, or the
    remote did not answer), wait the next ``backoff`` delay and run it again, for at most
    ``seconds`` by ``clock``.  Then raise ``TransportError("<failed> for N s: <why>")``.

    ``answered``: a count of the remote's answers (a refused push is one).  When it grew
    since the last failure the remote was reachable meanwhile, so the failures start
    counting again: a step that kept losing races for a while and then met one
    transient error is retried, not given up as "unreachable for N s".

    :class:`OutcomeUnknown` is never retried here: a push whose answer was lost may
    have landed, and only its caller knows how to find out.
    """
    deadline = clock() + seconds
    heard = answered() if answered is not None else 0
    while True:
        try:
            return step()
        except OutcomeUnknown:
            raise
        except TransportError as err:
            if answered is not None and answered() != heard:
                heard = answered()
                deadline = clock() + seconds
                backoff.reset()
            if clock() >= deadline:
                why = scrub_url(str(err))
                raise TransportError(f"{failed} for {seconds:.0f} s: {why}") from None
            sleep(backoff.next())
