"""The protocol machine's targeted rules, each shown to catch a broken coordinator.

Random steps reach some stories only by luck.  Three rules of
:class:`~protocol_machine.ProtocolMachine` play them out whole, once per run:

* ``holder_wakes_after_takeover``: a job holder is suspended until another
  worker has taken its job over, then wakes and first tries to finish, to push
  an update, to renew its liveness, or to record a failure;
* ``answer_lost_while_others_move``: a push to the main branch lands, its
  answer is lost, and the other workers move the ref on before the read-back;
* ``restart_mid_step``: a worker is killed inside a push (just before it
  leaves, or just after it landed) and its new process acts at once.

Here each is made likely (a machine with four more rules that run it, a larger
budget, and the random crashes, suspensions, push faults and jumps in time
switched off) and run against a variant from ``broken.py`` that only such a
story exposes.  :func:`broken.hunt` requires a violation that the variant
caused; these tests also require that it was found inside the targeted
scenario, within a few examples.  The same machines with the real
coordinator must find nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from broken import (
    Broken,
    FinishTrustsItsHolding,
    FinishWithoutToken,
    ForcedRenewBeat,
    ResolveByEquality,
    RestartKeepsItsHolding,
    UnknownMeansFailed,
    UpdateRenewsByForce,
    hunt,
)
from hypothesis import Phase
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from protocol_machine import BUDGET, ProtocolMachine, machine_settings

from distribute.coordination import Coordinator

#: Examples a focused machine may take to catch its variant.
WITHIN = 10


#: Random disruptions and the scenarios' own rules, switched off in a focused machine.
QUIET = {"crash": 0, "suspend": 0, "fault": 0, "time": 0,
         "stale-wake": 0, "lost-answer": 0, "restart": 0}


def focused(label: str, ready: str, play: Callable[..., None], *args: Any,
            ) -> type[ProtocolMachine]:
    """``ProtocolMachine`` with no random disruption (no crash, suspension, push fault or
    jump in time) and none of the targeted rules, but with four rules that each call
    ``play(machine, worker, *args)`` on a worker from ``getattr(machine, ready)()``, three
    times per run in all.  Slow hosts still lose leases now and then."""
    namespace: dict[str, Any] = {"budgets": {**BUDGET, **QUIET, "focus": 3}}
    for i in range(4):

        @precondition(lambda self: self.budget["focus"] > 0 and getattr(self, ready)())
        @rule(data=st.data())
        def targeted(self: ProtocolMachine, data: Any) -> None:
            self.budget["focus"] -= 1
            play(self, self.draw_worker(data, getattr(self, ready)()), *args)

        namespace[f"targeted_{i}"] = targeted
    return type(f"Focused_{label}", (ProtocolMachine,), namespace)


def stale_wake(first: str) -> type[ProtocolMachine]:
    return focused("stale_wake", "job_holders_ready", ProtocolMachine.play_stale_wake, first)


def lost_answer() -> type[ProtocolMachine]:
    return focused("lost_answer", "main_movers_ready", ProtocolMachine.play_lost_answer, 0.05)


def restart(kill: str, aim: str, ready: str = "mid_step_ready") -> type[ProtocolMachine]:
    return focused("restart", ready, ProtocolMachine.play_restart, kill, aim)


CASES: dict[str, tuple[type[Broken], Any, str]] = {
    # a finish that ignores the token at the coordinator level only (the Ledger is right)
    "stale finish, coordinator unfenced": (FinishTrustsItsHolding, lambda: stale_wake("finish"),
                                           "stale-wake-finish"),
    "stale finish, ledger unfenced": (FinishWithoutToken, lambda: stale_wake("finish"),
                                      "stale-wake-finish"),
    "stale renewal forced": (ForcedRenewBeat, lambda: stale_wake("renew_beat"),
                             "stale-wake-renew_beat"),
    "stale update renews by force": (UpdateRenewsByForce, lambda: stale_wake("update"),
                                     "stale-wake-update"),
    "lost answer read by equality": (ResolveByEquality, lost_answer, "lost-answer"),
    "lost answer taken as failure": (UnknownMeansFailed, lost_answer, "lost-answer"),
    "restart keeps the old holding": (RestartKeepsItsHolding,
                                      lambda: restart("kill-before", "lock", "lock_holders_ready"),
                                      "restart-kill-before"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_targeted_rule_catches(case):
    cls, machine, scenario = CASES[case]
    catch = hunt(case, cls, machine(), max_examples=WITHIN)
    assert catch.scenario == scenario, (
        f"caught, but outside the targeted scenario {scenario!r} "
        f"({catch.scenario or 'a random step'}): {catch.message}")


@pytest.mark.parametrize("machine", [
    lambda: stale_wake("finish"), lambda: stale_wake("update"), lambda: stale_wake("renew_beat"),
    lost_answer, lambda: restart("kill-after", "any"),
    lambda: restart("kill-before", "lock", "lock_holders_ready"),
], ids=["stale-finish", "stale-update", "stale-renew", "lost-answer", "restart-after",
        "restart-before"])
def test_focused_machines_pass_with_the_real_coordinator(machine):
    cls = machine()
    cls.coordinator_class = Coordinator
    run_state_machine_as_test(cls, settings=machine_settings(
        max_examples=5, stateful_step_count=100, phases=[Phase.explicit, Phase.generate]))
