"""The administrator's commands inside the protocol state machine.

``AdminMachine.admin_command`` (protocol_machine.py) runs the real fenced edits of
``distribute add``, ``requeue`` (``--done``, ``--force``) and ``cancel`` (after
``distribute unlock`` when the lock's holder is dead or its holding ran out) between the
workers' steps; every push they make is audited (``audit_admin``).  Here: the admin
machine's own runs, and each broken admin edit in ``broken_admin.py`` caught by a
violation in a run in which it had deviated (:func:`broken.hunt`).  The bug the machine
found in ``requeue --force`` (it took a holding made while the command waited for the
lock) is fixed; tests/unit/test_requeue_force.py reproduces it.
"""

from __future__ import annotations

import pytest
from broken import hunt
from broken_admin import ADMIN_VARIANTS, AdminHeavyMachine, admin_variant
from protocol_machine import AdminMachine, machine_settings

# What the administrator's commands import (protocol_machine.py imports them only when the
# admin machine runs): imported with this module, so that every project module is loaded
# once collection ends.  Hypothesis draws constants from the source of the loaded project
# modules; a module loaded by a test would change what the tests after it draw.
import distribute.cli  # noqa: F401
import distribute.fenced  # noqa: F401
import distribute.remote  # noqa: F401

pytestmark = pytest.mark.timeout(900)

TestAdminProtocol = AdminMachine.TestCase
TestAdminProtocol.settings = machine_settings(max_examples=80)


@pytest.mark.parametrize("name", sorted(ADMIN_VARIANTS))
def test_machine_catches_broken_admin_edit(name):
    catch = hunt(name, ADMIN_VARIANTS[name], AdminHeavyMachine, make=admin_variant)
    assert catch.deviations > 0

