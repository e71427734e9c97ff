"""Hypothesis profiles for the property tier, chosen by ``HYPOTHESIS_PROFILE``.

* ``ci`` (the default): derandomized, so every CI run tests the same examples;
  sized so that the whole tier takes well under three minutes on two cores.
* ``dev``: random, the same size; failures are saved to the local database.
* ``nightly``: at least 1,000 examples of at least 100 steps per state machine.

Run e.g. ``HYPOTHESIS_PROFILE=nightly pytest tests/property -m "nightly or not nightly"``.
The terminal summary reports how much each state machine ran, the protocol events it
saw, and after how many examples each broken protocol variant was caught.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    stateful_step_count=200,
    print_blob=True,
    suppress_health_check=_SLOW_DATA,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    stateful_step_count=200,
    suppress_health_check=_SLOW_DATA,
)
settings.register_profile(
    "nightly",
    deadline=None,
    max_examples=1000,
    stateful_step_count=200,
    print_blob=True,
    suppress_health_check=_SLOW_DATA,
)
settings.load_profile(PROFILE)

_RUNS: dict[str, tuple[int, int]] = {}


@pytest.fixture(autouse=True)
def _count_machine_runs(request):
    from protocol_machine import STATS

    runs, steps = STATS["runs"], STATS["steps"]
    yield
    if STATS["runs"] > runs:
        _RUNS[request.node.nodeid.split("::", 1)[1]] = (STATS["runs"] - runs,
                                                        STATS["steps"] - steps)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from protocol_machine import CAUGHT, EVENTS, STATS

    if not STATS["runs"]:
        return
    tr = terminalreporter
    tr.section("protocol state machines")
    tr.write_line(f"profile {PROFILE}: {STATS['runs']} state-machine runs, "
                  f"{STATS['steps']} steps in all, then {STATS['drain steps']} drain steps")
    for test, (runs, steps) in _RUNS.items():
        tr.write_line(f"  {test}: {runs} runs, {steps} steps")
    tr.write_line("events: " + ", ".join(f"{k} {v}" for k, v in sorted(EVENTS.items())))
    if CAUGHT:
        tr.write_line("broken variant -> caught after N examples: the first violation")
        for name, (n, message) in sorted(CAUGHT.items()):
            tr.write_line(f"  {name:<26} {n:>4}  {message}")
