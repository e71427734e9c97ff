"""Tests of the tests: the state machine must catch every deliberately broken protocol.

Each variant in ``broken.py`` breaks one rule of protocol v1.  Running the
machine on it under the current profile (derandomized ``ci`` by default) must
end in a :class:`~protocol_machine.Violation`.  Shrinking is skipped -- we
only need the verdict -- and the number of examples until the first failure
is recorded for the terminal summary.
"""

from __future__ import annotations

import pytest
from broken import VARIANTS
from hypothesis import Phase
from hypothesis.stateful import run_state_machine_as_test
from protocol_machine import CAUGHT, STATS, VIOLATIONS, Violation, machine_settings, variant


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_machine_catches_broken_variant(name):
    machine = variant(VARIANTS[name])
    runs, seen = STATS["runs"], len(VIOLATIONS)
    with pytest.raises(Violation):
        run_state_machine_as_test(
            machine,
            settings=machine_settings(
                phases=[Phase.generate], report_multiple_bugs=False, print_blob=False
            ),
        )
    first_run, message = VIOLATIONS[seen]
    CAUGHT[name] = (first_run - runs, message[:100])
