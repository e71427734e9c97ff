"""Mutation testing of the library (slow tier): every plausible one-line bug in
``mutate.MUTATIONS`` must be caught by a test that passes without it.

How a mutation is tried is told in ``mutate.py``: a copy of the repository per
mutation, the mutation applied to the copy only, the chosen tests run there in a
subprocess (``-x``, no shrinking), and the catching test run again on an unmutated copy.
The terminal summary lists which test caught each one.

The mutations, and the tests that catch each (the first of the list to fail):

* ``ledger-unfenced``: ``Ledger._fenced`` checks the holder but not the fencing token;
  ``unit/test_ledger.py`` (then the protocol machine).
* ``lease-no-margin``: ``LeaseWatch.expired`` compares with the lease alone, no margin;
  ``unit/test_lock_and_lease.py`` (then the protocol machine).
* ``resolve-trusts``: ``Coordinator.resolve_unknown`` takes a lost answer as landed;
  ``property/test_regressions.py`` (then the protocol machine).
* ``torn-never``: ``Coordinator.torn`` is always ``False``; ``property/test_regressions.py``.
* ``retry-live-holder``: ``plan_claim`` retries a job whose holder has not expired;
  ``unit/test_plan.py`` (then the protocol machine).
* ``peek-keeps-watching``: ``after_peek`` keeps watching a held lock that moved;
  ``property/test_pacing_liveness.py``.
* ``turns-uncapped``: ``turn_wait`` waits a turn for every idle worker ahead;
  ``integration/test_worker_edges.py`` (the pacing property does not see it).
* ``worker-tiny-margin``: the Worker's default ``margin_seconds`` is a thousandth of
  the lease; ``property/test_margin_default.py``, written for it (no test saw it).
* ``finishing-ignored``: ``Coordinator.others_finishing`` always returns ``None``;
  ``property/test_finish_priority.py``.
* ``holder-acts-past-lease``: ``holder_verdict`` lets a holder act for two leases;
  ``unit/test_lock_and_lease.py`` (then the regressions and the protocol machine).
* ``acquire-ignores-session``: ``decide_acquire`` takes over any other session's
  holding at once; ``unit/test_lock_and_lease.py`` (then the protocol machine).
* ``takeover-without-revoke``: a takeover does not revoke the dead worker's liveness
  record; ``property/test_protocol_machine.py``.
* ``seal-drops-a-line``: a sealed part of ``done.txt`` leaves out its first line;
  ``unit/test_done_parts.py`` (then ``property/test_sealed_parts.py``).
* ``rewritten-parts-kept``: a part no longer needed after a rewrite stays, its lines
  listed twice; ``unit/test_done_parts.py``.

The fast checks at the end run in the default tier: every mutation still applies to the
code as it is and names tests that exist, and one whose text is gone is reported as no
longer applying.  Two slow ones check the other verdicts of the harness: a mutation no
test notices is reported as survived, and a run that collects nothing is an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mutate import MUTATIONS, ROOT, Mutation, copy_tree, judge


@pytest.fixture(scope="session")
def mutants(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutants")


@pytest.fixture(scope="session")
def clean(mutants: Path) -> Path:
    """An unmutated copy, to run each catching test again."""
    return copy_tree(mutants / "clean")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_mutation_is_caught(mutation: Mutation, mutants: Path, clean: Path, record_property):
    verdict = judge(mutation, mutants, clean)
    record_property("mutation", f"{mutation.id}: {verdict.summary} ({verdict.seconds:.1f} s)")
    assert verdict.caught, f"{mutation.id} ({mutation.description}): {verdict.summary}\n" + (
        verdict.output)


def test_there_are_eight_to_fifteen_distinct_mutations():
    assert 8 <= len(MUTATIONS) <= 15
    assert len({m.id for m in MUTATIONS}) == len(MUTATIONS)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_mutation_still_applies(mutation: Mutation):
    """The original text is in the library exactly once (else the mutation must be updated:
    the slow run would report it as no longer applying), the replacement changes it, and
    the mutation is of the library, not of the tests."""
    assert mutation.path.startswith("distribute/")
    text = (ROOT / mutation.path).read_text(encoding="utf-8")
    assert text.count(mutation.original) == 1, (
        f"mutation {mutation.id!r} no longer applies to {mutation.path}")
    assert mutation.replacement != mutation.original


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_mutation_names_tests_that_exist(mutation: Mutation):
    assert mutation.tests
    for test in mutation.tests:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), f"{mutation.id}: no test file {path}"
        if name:
            assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(encoding="utf-8"), (
                f"{mutation.id}: no test {name} in {path}")


# ---- the harness's own verdicts -------------------------------------------------------------
# Mutations of this folder's plugin, which no test reads: the tests pass whatever it says.
HARMLESS = Mutation("harmless", "tests/mutation/no_shrinking.py", 'NAME = "mutation-run"',
                    'NAME = "mutation-run-too"', "renames a profile", ("tests/unit/test_names.py",))


def test_a_mutation_whose_text_is_gone_is_reported_not_skipped(tmp_path):
    gone = Mutation("gone", HARMLESS.path, "text that is nowhere", "x", "", HARMLESS.tests)
    verdict = judge(gone, tmp_path)
    assert not verdict.caught
    assert verdict.summary.startswith("mutation 'gone' no longer applies")


@pytest.mark.slow
def test_a_survivor_is_reported_as_survived(tmp_path):
    verdict = judge(HARMLESS, tmp_path)
    assert not verdict.caught and verdict.summary.startswith("SURVIVED")


@pytest.mark.slow
def test_a_collection_error_is_not_a_catch(tmp_path):
    missing = Mutation("missing", HARMLESS.path, HARMLESS.original, HARMLESS.replacement,
                       "", ("tests/unit/no_such_test_file.py",))
    verdict = judge(missing, tmp_path)
    assert not verdict.caught and "exited with 4" in verdict.summary
