"""The simulator's per-worker wall clock: skewed and drifting, the monotonic clock untouched."""

from __future__ import annotations

import time

import pytest

from sim.runner import MAX_CLOCK_SKEW, SimConfig
from sim.worker import WorkerConfig, skew_wall_clock


@pytest.fixture
def restore_clock(monkeypatch):
    # monkeypatch puts back what it saw here, whatever skew_wall_clock assigns later
    monkeypatch.setattr(time, "time", time.time)
    monkeypatch.setattr(time, "time_ns", time.time_ns)


def test_a_skewed_clock_is_offset_and_drifts(restore_clock):
    real_time, real_mono = time.time, time.monotonic
    skew_wall_clock(-3600.0, 1.5)
    assert time.time() - real_time() == pytest.approx(-3600.0, abs=0.5)
    assert abs(time.time_ns() / 1e9 - time.time()) < 0.5
    t0, w0 = real_mono(), time.time()
    time.sleep(0.2)
    elapsed, walled = real_mono() - t0, time.time() - w0
    assert walled == pytest.approx(1.5 * elapsed, rel=0.2)  # runs half as fast again
    assert time.monotonic is real_mono


def test_no_skew_leaves_the_clock_alone(restore_clock):
    before = time.time
    skew_wall_clock(0.0, 1.0)
    assert time.time is before


def test_the_skew_travels_in_the_worker_config_and_is_bounded():
    cfg = WorkerConfig(url="u", copy="c", name="w", journal="j", clock_offset=12.5,
                       clock_rate=0.97)
    back = WorkerConfig.from_json(cfg.to_json())
    assert (back.clock_offset, back.clock_rate) == (12.5, 0.97)
    SimConfig(clock_skew=0).validate()
    with pytest.raises(ValueError, match="clock-skew"):
        SimConfig(clock_skew=MAX_CLOCK_SKEW + 1).validate()
    assert "--clock-skew 0" in SimConfig(clock_skew=0).command()
