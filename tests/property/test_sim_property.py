"""The simulator as a property: small fleets of real worker processes under drawn faults
keep every guarantee its history checker knows.

Worker processes race for real, so a run does not replay exactly: there is no shrinking
(a failure prints the ``python -m sim`` command that repeats its settings and seed).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sim_runner = pytest.importorskip("sim.runner")

EXAMPLES = {"nightly": 20}.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), 4)
RATES = st.sampled_from([0.0, 0.1, 0.3])


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(
    workers=st.integers(2, 4),
    jobs=st.integers(5, 15),
    kill_rate=st.sampled_from([0.0, 0.5, 1.0]),
    pause_rate=st.sampled_from([0.0, 0.3]),
    push_fail_rate=RATES,
    unknown_rate=RATES,
    seed=st.integers(0, 2**16),
)
def test_simulated_fleet_keeps_the_guarantees(workers, jobs, kill_rate, pause_rate,
                                              push_fail_rate, unknown_rate, seed):
    config = sim_runner.SimConfig(
        workers=workers, jobs=jobs, seed=seed, duration=90.0, lease=2.0, job_seconds=0.05,
        kill_rate=kill_rate, pause_rate=pause_rate, push_fail_rate=push_fail_rate,
        unknown_rate=unknown_rate,
    )
    outcome = sim_runner.run(config)
    found = "\n".join(f"  {v}" for v in outcome.result.violations[:10])
    assert outcome.ok, (
        f"the simulator's checker found {outcome.result.by_rule()} -- repeat with "
        f"`{config.command()}`\n{found}"
    )
