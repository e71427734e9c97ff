"""The protocol machine with ``done.txt`` sealed into parts every two lines.

With the default of 1,000 lines a part, no run of the machine ever seals one.  Here
parts are sealed all the time, by claims, finishes, folds of parked finishes, fails
and (in the admin machine) re-runs of done jobs, under the same faults, audit and
invariants.  The auditor reads the parts itself, one number after another, and joins
them without the workers' reader, and checks the layout: each part holds exactly two
lines, ``done.txt`` fewer, and the parts are numbered from 1 without a gap.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from unittest import mock

from hypothesis.stateful import run_state_machine_as_test
from protocol_machine import BRANCH, AdminMachine, ProtocolMachine, machine_settings, require

from distribute.core import ledger as ledger_module
from distribute.core.ledger import (
    DONE,
    DONE_PARTS,
    LEDGER_FILES,
    Ledger,
    parse_ledger_text,
    part_path,
)
from distribute.transport.base import Oid

LINES = 2


class Sealing:
    """Seal ``done.txt`` every :data:`LINES` lines, and audit the parts."""

    world: Any
    ledgers: dict[Oid, Ledger]

    def __init__(self) -> None:
        super().__init__()
        self._sealing = mock.patch.object(ledger_module, "DONE_PART_LINES", LINES)
        self._sealing.start()

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[misc]
        finally:
            self._sealing.stop()

    def ledger_at(self, commit: Oid) -> Ledger:
        if commit not in self.ledgers:
            files = {name: self.world.read_file(commit, name) for name in LEDGER_FILES}
            whole = Ledger.from_files(files, BRANCH)
            done: list[Any] = []
            number = 1
            while (data := self.world.read_file(commit, part_path(number))) is not None:
                entries = parse_ledger_text(data, part_path(number), None)
                require(len(entries) == LINES,
                        f"{part_path(number)} at {commit[:10]} holds {len(entries)} lines")
                done += entries
                number += 1
            require(not self.world.read_file(commit, part_path(number + 1)),
                    f"the parts at {commit[:10]} skip number {number}")
            require(len(whole.done) < LINES,
                    f"{DONE} at {commit[:10]} holds {len(whole.done)} lines, a part's worth")
            self.ledgers[commit] = replace(whole, done=(*done, *whole.done))
        return self.ledgers[commit]


class SealedMachine(Sealing, ProtocolMachine):
    pass


class SealedAdminMachine(Sealing, AdminMachine):
    pass


def test_the_protocol_holds_with_done_txt_sealed_every_two_lines():
    run_state_machine_as_test(SealedMachine, settings=machine_settings(max_examples=120))


def test_re_runs_of_done_jobs_rewrite_the_parts_and_the_protocol_holds():
    run_state_machine_as_test(SealedAdminMachine, settings=machine_settings(max_examples=50))


def test_parts_are_sealed_in_these_runs():
    # the machine above must see parts, or it tests nothing new: count the commits
    # with at least one part in a short run
    seen: list[int] = []

    class Counting(SealedMachine):
        def ledger_at(self, commit: Oid) -> Ledger:
            known = commit in self.ledgers
            ledger = super().ledger_at(commit)
            if not known and self.world.read_file(commit, part_path(1)) is not None:
                seen.append(1)
            return ledger

    run_state_machine_as_test(Counting, settings=machine_settings(max_examples=10))
    assert len(seen) > 20, f"only {len(seen)} commits with parts: {DONE_PARTS}/ never sealed"
