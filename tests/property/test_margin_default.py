"""A Worker's default margin covers the clock-rate differences it is meant to cover.

No clock is compared across machines: a holder stops acting once a lease has passed
on its own monotonic clock since it last renewed, and an observer takes over once it
has seen the ref unchanged for the lease plus a margin on *its* clock.  When the
observer's clock runs faster than the holder's, its lease plus margin passes sooner in
real time; the margin a Worker gets by default (a tenth of the lease) must make up for
rates up to 10 % apart, so that the observer never takes over a holding the holder
still believes valid.

Two Workers with their defaults share a remote; one takes the lock, the other sees it
at once and then looks again every few seconds of real time, its clock running up to 8 %
faster, until its acquire succeeds.  That must not come before the holder's own verdict
says its lease is lost.  (With no margin, or a tiny one, it comes about 8 % too early.)
"""

from __future__ import annotations

import pytest

pytest.importorskip("distribute.transport.git")

from distribute.core.lock import holder_verdict  # noqa: E402
from distribute.dist import worker_from_url  # noqa: E402
from distribute.remote import init_remote  # noqa: E402

LEASE = 60.0
STEP = LEASE / 100  # real seconds between two looks of the observer


class HostClock:
    """A monotonic clock that reads ``base + rate * real``."""

    def __init__(self, real: list[float], base: float, rate: float) -> None:
        self.real, self.base, self.rate = real, base, rate

    def __call__(self) -> float:
        return self.base + self.rate * self.real[0]


@pytest.mark.parametrize("holder_rate, observer_rate", [
    (1.0, 1.0), (1.0, 1.05), (1.0, 1.08), (0.95, 1.02), (0.93, 1.0),
])
def test_an_observer_with_a_faster_clock_never_takes_over_a_valid_holding(
        tmp_path, holder_rate, observer_rate):
    url = init_remote(tmp_path / "remote.git", jobs=["j1"])
    real = [0.0]
    holder_clock = HostClock(real, 3_600.0, holder_rate)
    observer_clock = HostClock(real, 90_000.0, observer_rate)

    def no_sleep(seconds: float) -> None:
        raise AssertionError("the test drives both workers; nobody sleeps")

    options = {"lease_seconds": LEASE, "heartbeat": False, "sleep": no_sleep}
    with worker_from_url(url, tmp_path / "holder", name="holder", clock=holder_clock,
                         **options) as holder, \
            worker_from_url(url, tmp_path / "observer", name="observer",
                            clock=observer_clock, **options) as observer:
        assert holder.coord.try_acquire(holder.coord.observe())
        sent_at = holder.coord.holding.sent_at
        observer.coord.observe()  # the observer sees the holding at once
        while real[0] < 3 * LEASE:
            real[0] += STEP
            if observer.coord.try_acquire(observer.coord.observe()):
                break
        else:
            pytest.fail("the observer never took the lock over")
        verdict = holder_verdict(sent_at, holder_clock(), LEASE)
        assert verdict == "lost", (
            f"the observer took the lock over {real[0]:.1f} s after it was taken, while the "
            f"holder's own clock says its lease is still {verdict!r} (clock rates "
            f"{holder_rate} and {observer_rate}; margin {observer.coord.watch.margin} s)")
