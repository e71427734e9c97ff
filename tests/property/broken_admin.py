"""Deliberately broken administrator commands, to show that the state machine's audit of
admin pushes catches each one.

Each variant is a subclass of :class:`~distribute.fenced.FencedEdit` (the machine's
:attr:`~protocol_machine.AdminMachine.fenced_edit_class` seam) that breaks one rule
of the admin edits, and records, like the protocol variants in ``broken.py``, when its
seam was reached and when it deviated from what the correct command would have done, so
that :func:`broken.hunt` counts a violation as a catch only in a run in which it had
deviated before.  The machine hands each command's :class:`~protocol_machine.AdminOp`
to the edit as ``op``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from broken import note_deviation, note_reached
from protocol_machine import BUDGET, AdminMachine, ProtocolMachine

from distribute.core.ledger import Ledger
from distribute.fenced import Edit, FencedEdit
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate


class BrokenFencedEdit(FencedEdit):
    """Base of the broken admin edits."""

    seam: ClassVar[str] = ""
    #: the commands the machine runs against it, and what it waits for before the first
    ops: ClassVar[tuple[str, ...]] = ()
    waits_for: ClassVar[str] = ""
    op: Any = None  # the machine's AdminOp for this command

    def reached(self) -> None:
        note_reached(type(self))

    def deviated(self) -> None:
        note_deviation(type(self))


class AdminHeavyMachine(AdminMachine):
    """The machine with more admin commands per run, so that a broken edit shows early."""

    budgets = {**BUDGET, "admin": 6}


def admin_variant(cls: type[FencedEdit], base: type[ProtocolMachine] = AdminHeavyMachine,
                  ) -> type[ProtocolMachine]:
    """A machine whose administrator runs ``cls``."""
    extra: dict[str, Any] = {"fenced_edit_class": cls}
    if getattr(cls, "ops", ()):
        extra["admin_ops"] = cls.ops  # type: ignore[attr-defined]
    extra["admin_waits_for"] = getattr(cls, "waits_for", "")
    return type(f"{base.__name__}With{cls.__name__}", (base,), extra)


class CancelLeavesTheHolderRunning(BrokenFencedEdit):
    """(A1) ``cancel`` of a running job moves it to ``failed.txt`` but does not revoke its
    holder's liveness record, so the holder goes on running a job no one will merge."""

    seam = "FencedEdit._revocations (cancel)"
    ops = ("cancel",)
    waits_for = "held"

    def _revocations(self, before: Ledger, after: Ledger, token: int,
                     current: Mapping[str, Oid]) -> list[RefUpdate]:
        self.reached()
        revocations = super()._revocations(before, after, token, current)
        if self.op is not None and self.op.op == "cancel" and revocations:
            self.deviated()
            return []
        return revocations


class EditWithoutTheLock(BrokenFencedEdit):
    """(A2) The edit is pushed by a compare-and-swap of the main branch alone, without
    taking the lock."""

    seam = "FencedEdit.apply"

    def apply(self, edit: Edit) -> bool:
        self.reached()
        view, transport = self.view, self.view.transport
        for _ in range(10):
            main = view.main()
            ledger = view.ledger(main)
            queue = read_queue((transport.read_file(main, JOBS_FILE) or b"").decode())
            out = edit(ledger, queue)
            if out is None:
                return False
            new_ledger, new_queue, message = out
            changes = new_ledger.changed_files(ledger)
            if new_queue != queue:
                changes[JOBS_FILE] = format_queue(new_queue).encode()
            if not changes:
                return False
            new = transport.write_commit(parents=[main], base=main, changes=changes,
                                         message=message)
            self.deviated()
            if transport.push([RefUpdate(view.main_ref, main, new)]):
                return True
        return False


class RequeueDoneKeepsTheDoneLine(BrokenFencedEdit):
    """(A3) ``requeue --done`` queues the done job but leaves its line in ``done.txt``."""

    seam = "FencedEdit.apply (requeue --done)"
    ops = ("requeue-done",)
    waits_for = "done"

    def apply(self, edit: Edit) -> bool:
        self.reached()
        if self.op is None or not self.op.done:
            return super().apply(edit)

        def broken(ledger: Ledger, queue: list[str]) -> tuple[Ledger, list[str], str] | None:
            out = edit(ledger, queue)
            if out is None or out[0].done == ledger.done:
                return out
            self.deviated()
            return replace(out[0], done=ledger.done), out[1], out[2]

        return super().apply(broken)


ADMIN_VARIANTS: dict[str, type[BrokenFencedEdit]] = {
    "A1 cancel leaves the holder running": CancelLeavesTheHolderRunning,
    "A2 edit without the lock": EditWithoutTheLock,
    "A3 requeue --done keeps the done line": RequeueDoneKeepsTheDoneLine,
}
