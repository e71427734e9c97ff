"""The protocol machine over real git: bare repository, one clone per worker.

The same rules, audit and invariants as over the in-memory remote, with far fewer
examples and steps: every step costs several git processes.  Unknown push outcomes are
injected by the machine's wire (the push is applied or not, then the answer is lost).
"""

from __future__ import annotations

import pytest

pytest.importorskip("distribute.transport.git")

from hypothesis import Phase  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402
from protocol_machine import GitWorld, ProtocolMachine, machine_settings  # noqa: E402


class GitProtocolMachine(ProtocolMachine):
    world_class = GitWorld


def test_protocol_over_git():
    run_state_machine_as_test(
        GitProtocolMachine,
        settings=machine_settings(max_examples=5, stateful_step_count=15,
                                  phases=[Phase.explicit, Phase.generate]),
    )
