"""Tests of the tests: the state machine must catch every deliberately broken protocol.

Each variant in ``broken.py`` breaks one rule of protocol v1.  Running the
machine on it under the current profile (derandomized ``ci`` by default) must
end in a :class:`~protocol_machine.Violation`, in a run in which the variant
had already deviated from the correct behaviour (:func:`broken.hunt`).  A
variant whose seam is no longer reached is reported as not exercised, never
as caught or as "did not raise".  Shrinking is skipped -- we only need the
verdict -- and the number of examples until the first failure is recorded for
the terminal summary.

The last tests check the verdict itself: variants whose seam the machine never
reaches (a method only ``Worker.close`` calls, a method that no longer exists,
and variant 7 on a machine that never loses a push's answer), one that breaks
the machine without ever deviating, and one that deviates in a way no
guarantee can see.
"""

from __future__ import annotations

import pytest
from broken import VARIANTS, Broken, NotCaught, UnknownMeansFailed, hunt
from protocol_machine import BUDGET, ProtocolMachine, Violation

from distribute.transport.base import Oid, RefUpdate


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_machine_catches_broken_variant(name):
    catch = hunt(name, VARIANTS[name])
    assert catch.deviations > 0


class ForcedGoodbye(Broken):
    """Overrides ``say_gone``, which only ``Worker.close`` calls: the machine's workers never
    reach it, however broken the override is."""

    seam = "Coordinator.say_gone"

    def say_gone(self) -> bool:
        self.reached()
        self.deviated()
        with self.mutex:
            beat = self.beat.left()
            oid = self._empty_commit("not even a liveness record")
            now = self.transport.list_refs(self.own_ref).get(self.own_ref)
            if self.push([RefUpdate(self.own_ref, now, oid)]):
                self.beat, self.beat_oid = beat, oid
            return True


class RenamedSeam(Broken):
    """Overrides ``renew_liveness``, as if ``renew_beat`` had once had that name: after
    such a rename the override is dead code, and the variant tests nothing."""

    seam = "Coordinator.renew_liveness"

    def renew_liveness(self) -> bool:
        self.reached()
        self.deviated()
        return True


class Saboteur(ForcedGoodbye):
    """Never reaches its seam either, but trips the machine some other way (as a variant
    that crashes in an unrelated place would): that must not count as a catch."""

    def read_ledger(self, commit: Oid):
        if self.job is not None:
            raise Violation("a violation the variant's seam had no part in")
        return super().read_ledger(commit)


class HarmlessDeviation(Broken):
    """Deviates in a way that breaks no guarantee (its liveness records get another first
    line; only the record's body is ever read): the machine rightly finds nothing, and
    the verdict says so instead of calling it caught."""

    seam = "Coordinator._empty_commit"

    def _empty_commit(self, message: str, parents=()) -> Oid:
        self.reached()
        if message.startswith("distribute worker "):
            self.deviated()
            message = "a liveness record, reworded\n\n" + message.split("\n\n", 1)[1]
        return super()._empty_commit(message, parents)


SMALL = {"max_examples": 3, "stateful_step_count": 40}


@pytest.mark.parametrize("cls", [ForcedGoodbye, RenamedSeam], ids=lambda c: c.__name__)
def test_a_seam_the_library_never_calls_is_reported_as_not_exercised(cls):
    seam = cls.seam.replace(".", r"\.")
    with pytest.raises(NotCaught, match=rf"variant 'dummy' not exercised: its seam {seam} was "
                                        r"never reached in \d+ runs$"):
        hunt("dummy", cls, **SMALL)


def test_a_real_variant_whose_path_goes_unused_is_not_exercised():
    """Variant 7 on a machine that never loses a push's answer: ``resolve_unknown`` is
    never called, which is reported as such (a "did not raise" would hide why)."""
    no_lost_answers = type("NoLostAnswers", (ProtocolMachine,), {
        "budgets": {**BUDGET, "fault": 0, "lost-answer": 0}})
    with pytest.raises(NotCaught, match=r"variant '7' not exercised: its seam "
                                        r"Coordinator\.resolve_unknown was never reached"):
        hunt("7", UnknownMeansFailed, no_lost_answers, **SMALL)


def test_a_violation_without_a_deviation_is_not_a_catch():
    with pytest.raises(NotCaught, match=r"not exercised: its seam Coordinator\.say_gone was "
                                        r"never reached .*not its doing: a violation the "
                                        r"variant's seam had no part in"):
        hunt("saboteur", Saboteur, **SMALL)


def test_a_deviation_no_guarantee_sees_is_reported_as_not_caught():
    with pytest.raises(NotCaught, match=r"variant 'harmless' deviated \d+ times in \d+ runs, yet "
                                        r"the machine found no violation"):
        hunt("harmless", HarmlessDeviation, **SMALL)
