"""Parked finishes racing administrators and lost answers: each test plays the steps by
hand on the in-memory remote and says in its docstring what docs/protocol.md asks for.
Each failed on the first version of parking and folding, and passes since its fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from protocol_machine import MAIN_REF, MemoryWorld
from test_parked_finishes import lines
from test_regressions import Clock, claim, coordinator

from distribute.coordination import FencedEdit, read_ledger
from distribute.core import events as ev
from distribute.core.errors import LeaseLost, TransportError, UsageError
from distribute.core.lock import parse_beat_message
from distribute.core.names import job_dir, worker_ref
from distribute.fenced import cancel_edit, queue_edit, requeue_edit
from distribute.transport.base import Oid, RefUpdate


class AdminView:
    """What an administrator's command reads the remote through (a scratch clone)."""

    def __init__(self, world: MemoryWorld, name: str = "admin") -> None:
        self.transport = world.transport(name)
        self.main_ref = MAIN_REF

    def main(self) -> Oid:
        return self.transport.fetch([MAIN_REF])[MAIN_REF]

    def ledger(self, main: Oid):
        return read_ledger(self.transport, main, "main")


def with_work(c, job: str):
    """``c`` holds ``job`` and has pushed one update to its branch."""
    held = claim(c, job)
    tip = c.transport.write_commit(parents=[held.tip], base=held.tip, message="work",
                                   changes={job_dir(job) + "/out.txt": b"result\n"})
    c.update(tip)
    return held


def park_during_the_revocation_read(world: MemoryWorld, parker, landed: list[bool]) -> None:
    """Once the administrator's edit has read the liveness records (the read its folds
    and its decision are made on), the worker whose job it takes parks its finish: just
    before any later read of its record by the edit (an edit once read the record again
    to revoke it, and revoked from that newer value), or else just before the edit's
    push."""
    before_fetch, before_push = world.remote.fetch_fault_hook, world.remote.fault_hook
    ref = worker_ref(parker.worker)
    reads: list[tuple[str, ...]] = []

    def park() -> None:
        if not landed:
            landed.append(parker.park_step())

    def fetch_hook(name: str, refs: Sequence[str]) -> str | None:
        if name == "admin" and any(r == ref or r.endswith("*") and ref.startswith(r[:-1])
                                   for r in refs):
            if reads:
                park()
            reads.append(tuple(refs))
        return before_fetch(name, refs) if before_fetch else None

    def push_hook(name: str, updates: Sequence[RefUpdate]) -> str | None:
        if name == "admin" and any(u.ref == ref for u in updates):
            park()
        return before_push(name, updates) if before_push else None

    world.remote.fetch_fault_hook = fetch_hook
    world.remote.fault_hook = push_hook


@pytest.mark.parametrize("op", ["cancel", "requeue-force"])
def test_an_admin_edit_does_not_override_a_park_that_landed_after_its_look(op):
    """A park that landed (``finish_job()`` returned) is a finish: the doc says a park and
    a revocation of the same record cannot both land, because each is a compare-and-swap
    from the value its writer decided on.  ``FencedEdit`` decides on the liveness records
    it fetched to fold (the job looked running, not parked) but revokes from values it
    fetches again later, so a park landing between the two reads is overwritten: both
    land, the acknowledged finish never reaches done.txt, and with ``requeue --force``
    the job is queued to run again.  Expected: the edit's push is refused (it is redone
    on the new values and then sees the job as done), so the finish reaches done.txt."""
    world, clock = MemoryWorld([]), Clock()  # j0 is claimed by name, not from the queue
    a = coordinator(world, "a", clock)
    held = with_work(a, "j0")
    landed: list[bool] = []
    park_during_the_revocation_read(world, a, landed)
    view = AdminView(world)
    result: dict[str, list[str]] = {}
    seen = {"j0": ("a", held.token)}
    edit = (cancel_edit(["j0"], result, "cli@admin") if op == "cancel"
            else requeue_edit(["j0"], True, result, seen=seen))
    fenced = FencedEdit(view, "cli@admin", 30.0, sleep=lambda s: None, clock=clock)
    if op == "cancel":
        fenced.apply(edit)
    else:  # redone on the new values, the edit finds the job done: nothing to requeue
        with pytest.raises(UsageError, match="is done"):
            fenced.apply(edit)
    assert landed == [True], "the park must have landed for this case"
    assert a.job is None  # finish_job() would have returned: the finish is acknowledged
    record = parse_beat_message(world.message(world.refs()[worker_ref("a")]))
    b = coordinator(world, "b", clock)
    b.fold(b.observe(), everyone=True)  # anyone folding what is left
    done = lines(world, "done.txt")
    assert any(line.startswith("j0\t") and f"token={held.token}\t" in line for line in done), (
        f"the acknowledged finish of j0 is lost: done.txt={done}, "
        f"failed.txt={lines(world, 'failed.txt')}, jobs.txt={lines(world, 'jobs.txt')}, "
        f"a's record revoked by {record.revoked_by!r} still parks {record.parked}")


def test_a_finish_retried_after_its_park_landed_unseen_is_not_reported_lost():
    """A park whose answer was lost and whose read-back failed (a transport error the
    worker's retry loop retries) has landed; the retried ``finish`` must say so
    (``PARKED``, or ``MERGED`` once folded), as the retry of a park does when it parks
    first.  With ``park_first=False`` (a worker that saw no other worker about, whose
    finish then lost a race) the retry's try on the main branch takes up its own parked
    entry, folds it into its view, and then finds its job no longer running: it raises
    ``LeaseLost`` ("taken over; the main branch is unchanged") while the fold it just
    refused to push lands the job in done.txt at the next move of the main branch."""
    world, clock = MemoryWorld(["j0", "j1"]), Clock()
    a = coordinator(world, "a", clock)
    held = with_work(a, "j0")
    own = worker_ref("a")
    step = []

    def push_hook(name: str, updates: Sequence[RefUpdate]) -> str | None:
        if name != "a":
            return None
        if any(u.ref == MAIN_REF for u in updates) and not step:
            step.append("main moved")  # an administrator queues a job meanwhile
            main = world.refs()[MAIN_REF]
            new = world.auditor.write_commit(parents=[main], base=main, message="queue",
                                             changes={"jobs.txt": b"j1\nlate\n"})
            assert world.auditor.push([RefUpdate(MAIN_REF, main, new)])
            return None
        if any(u.ref == own for u in updates) and step == ["main moved"]:
            step.append("park answered nothing")
            return "unknown-applied"
        return None

    def fetch_hook(name: str, refs: Sequence[str]) -> str | None:
        if name == "a" and tuple(refs) == (own,) and step == ["main moved",
                                                            "park answered nothing"]:
            step.append("read-back failed")
            return "drop"
        return None

    world.remote.fault_hook = push_hook
    world.remote.fetch_fault_hook = fetch_hook
    with pytest.raises(TransportError):
        a.finish(lambda s: None, lambda: 0.0, park_first=False)
    record = parse_beat_message(world.message(world.refs()[own]))
    assert [p.job for p in record.parked] == ["j0"]  # the park landed
    world.remote.fault_hook = world.remote.fetch_fault_hook = None
    try:
        outcome = a.finish(lambda s: None, lambda: 0.0, park_first=False)  # the retry
    except LeaseLost as exc:
        b = coordinator(world, "b", clock)
        b.fold(b.observe(), everyone=True)
        done = lines(world, "done.txt")
        pytest.fail(f"finish raised LeaseLost ({exc}) although its park had landed; "
                    f"done.txt now: {done}")
    assert outcome in (ev.FinishOutcome.PARKED, ev.FinishOutcome.MERGED), held


def test_an_admin_edit_keeps_the_queue_a_folded_finish_wrote():
    """A job's results may change ``jobs.txt`` (say, it queues follow-up jobs); its finish
    merges that in.  An administrator's ``add`` that folds a parked finish builds on the
    fold, but reads the queue from the main branch before the fold and writes that queue
    back: the follow-up the job queued is dropped, which a finish that had landed on the
    main branch before the ``add`` would not suffer.  Expected: jobs.txt after the ``add``
    holds both the job's follow-up and the added job."""
    world, clock = MemoryWorld(["j1"]), Clock()
    a = coordinator(world, "a", clock)
    held = claim(a, "j0")
    tip = a.transport.write_commit(parents=[held.tip], base=held.tip, message="work",
                                   changes={"jobs.txt": b"j1\nfollow-up\n"})
    a.update(tip)
    assert a.park_step()
    result: dict[str, list[str]] = {}
    FencedEdit(AdminView(world), "cli@admin", 30.0, sleep=lambda s: None,
               clock=clock).apply(queue_edit(["j5"], result))
    assert any(line.startswith("j0\t") for line in lines(world, "done.txt"))
    queue = lines(world, "jobs.txt")
    assert "j5" in queue and "follow-up" in queue, f"jobs.txt after the add: {queue}"
