"""Protocol v1 as a state machine over the in-memory remote: no job runs twice, one valid lock.

See ``protocol_machine.py`` for the rules, the model of the ideal serial system and the
invariants.  A failing run shrinks for up to five minutes (each example replays up to
200 steps and a drain), hence the longer timeout; the reported example tells its story
step by step (``t=...  worker (session): step``).
"""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test
from protocol_machine import ProtocolMachine, machine_settings

pytestmark = pytest.mark.timeout(900)

TestProtocol = ProtocolMachine.TestCase
TestProtocol.settings = machine_settings()


@pytest.mark.nightly
def test_protocol_nightly_size():
    """The nightly size whatever the profile: 1,000 runs of 200 steps."""
    run_state_machine_as_test(
        ProtocolMachine, settings=machine_settings(max_examples=1000, stateful_step_count=200)
    )
