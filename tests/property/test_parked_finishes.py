"""Parked finishes: a finish that lost its race for the main branch is recorded on its
worker's own liveness record, and the next push that moves the main branch folds it in.

The first tests play the steps by hand on the in-memory remote; the last ones show that
the protocol machine catches a coordinator that folds wrongly (``broken.py``'s pattern:
the variant must deviate, and the machine must then find a violation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from broken import Broken, hunt
from protocol_machine import (
    MAIN_REF,
    AdminMachine,
    MemoryWorld,
)
from test_regressions import LEASE, MARGIN, Clock, claim, coordinator

from distribute.coordination import Coordinator, Folds, fold_parked
from distribute.core import events as ev
from distribute.core.errors import LeaseLost
from distribute.core.ledger import Ledger
from distribute.core.lock import Parked, parse_beat_message
from distribute.core.names import worker_ref
from distribute.core.plan import CallNextJobFunction, Retry
from distribute.sources import JOBS_FILE, format_queue, read_queue
from distribute.transport.base import Oid, RefUpdate


def queue_job(world: MemoryWorld, job: str) -> None:
    """An administrator appends ``job`` to jobs.txt: the main branch moves."""
    main = world.refs()[MAIN_REF]
    queue = read_queue((world.read_file(main, JOBS_FILE) or b"").decode())
    new = world.auditor.write_commit(
        parents=[main], base=main, message=f"queue {job}",
        changes={JOBS_FILE: format_queue([*queue, job]).encode()},
    )
    assert world.auditor.push([RefUpdate(MAIN_REF, main, new)])


def lose_the_next_race(world: MemoryWorld, name: str) -> None:
    """Just before ``name``'s next push to the main branch, the main branch moves."""

    def hook(pusher: str, updates: Sequence[RefUpdate]) -> None:
        if pusher == name and any(u.ref == MAIN_REF for u in updates):
            world.remote.fault_hook = None
            queue_job(world, "late")

    world.remote.fault_hook = hook


def lines(world: MemoryWorld, name: str) -> list[str]:
    return (world.read_file(world.refs()[MAIN_REF], name) or b"").decode().splitlines()


def test_a_lost_finish_parks_and_the_next_claim_folds_it_in_the_same_push():
    world, clock = MemoryWorld(["j0", "j1"]), Clock()
    seen: list[tuple[str, dict[str, object]]] = []
    a = coordinator(world, "a", clock)
    b = Coordinator(
        world.transport("b"), worker="b", session="b#1", branch="main", lease=LEASE,
        margin=MARGIN, max_attempts=2, clock=clock,
        journal=lambda kind, **fields: seen.append((kind, fields)),
    )
    held = claim(a, "j0")
    tip = a.transport.write_commit(parents=[held.tip], base=held.tip, message="work",
                                   changes={"j0/out.txt": b"result\n"})
    a.update(tip)

    lose_the_next_race(world, "a")
    assert a.finish(lambda s: None, lambda: 0.0) == ev.FinishOutcome.PARKED
    assert a.job is None
    assert a.beat.parked == (Parked("j0", held.token, 1, tip),)
    assert not any(line.startswith("j0\t") for line in lines(world, "done.txt"))
    record = parse_beat_message(world.message(world.refs()[worker_ref("a")]))
    assert record.parked == a.beat.parked
    assert tip in world.parents(world.refs()[worker_ref("a")])  # the results travel with it

    snap = b.observe()
    assert snap.folds is not None and [(w, p.job) for w, p, _ in snap.folds.entries] == [
        ("a", "j0")]
    assert snap.view.state_of("j0") == "done" and snap.ledger.state_of("j0") == "running"
    before = world.refs()[MAIN_REF]
    assert b.try_acquire(snap)
    assert b.claim(snap, CallNextJobFunction(), "j1", None) is not None
    main = world.refs()[MAIN_REF]
    # one push: the claim's commit sits on the fold's, which sits on the main branch seen
    claim_commit = main
    (fold_commit,) = world.parents(claim_commit)
    assert world.parents(fold_commit) == (before, tip)
    assert world.message(fold_commit).startswith(
        f"distribute: finish j0 by a (token {held.token}, attempt 1)")
    assert any(line.startswith("j0\t") and "worker=a\t" in line
               and f"token={held.token}\t" in line for line in lines(world, "done.txt"))
    assert any(line.startswith("j1\t") and "worker=b\t" in line
               for line in lines(world, "running.txt"))
    assert world.is_ancestor(tip, main)
    assert ("fold", {"job": "j0", "token": held.token, "parker": "a", "merged": True}) in seen

    a.observe()  # a learns that its finish is on the main branch
    assert a.beat.parked == ()
    assert (held.branch_ref, tip) in a.merged
    assert a.renew_beat()
    assert parse_beat_message(world.message(world.refs()[worker_ref("a")])).parked == ()


def takeover_ready(world: MemoryWorld) -> tuple[Coordinator, Coordinator, Retry, object]:
    """a holds j0 and has gone quiet for a lease; b holds the lock and plans the takeover
    from a snapshot that names a's liveness record as it is now."""
    clock = Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    claim(a, "j0")
    b.observe()
    clock.now += LEASE + MARGIN + 1
    snap = b.observe()
    assert b.try_acquire(snap)
    plan = b.plan(snap)
    assert isinstance(plan, Retry) and plan.revoke == "a", plan
    return a, b, plan, snap


def test_a_park_first_refuses_the_takeover_and_the_finish_is_folded():
    world = MemoryWorld(["j0"])
    a, b, plan, snap = takeover_ready(world)
    token = a.job.token if a.job else -1
    assert a.park_step()
    assert b.claim(snap, plan, None) is None  # its CAS on a's record is refused
    assert "j0" in (world.read_file(world.refs()[MAIN_REF], "running.txt") or b"").decode()
    assert a.fold(a.observe())  # a worker with no job folds its own parked finishes
    done = lines(world, "done.txt")
    assert any(line.startswith("j0\t") and "worker=a\t" in line and f"token={token}\t" in line
               for line in done), done


def test_a_takeover_first_refuses_the_park():
    world = MemoryWorld(["j0"])
    a, b, plan, snap = takeover_ready(world)
    token = a.job.token if a.job else -1
    held = b.claim(snap, plan, None)
    assert held is not None and held.token > token
    with pytest.raises(LeaseLost):
        a.park_step()
    assert a.job is None and a.revoked
    record = parse_beat_message(world.message(world.refs()[worker_ref("a")]))
    assert record.revoked_by == "b" and record.parked == ()
    assert b.observe().folds is None  # nothing to fold: the job is b's now
    running = lines(world, "running.txt")
    assert any(line.startswith("j0\t") and "worker=b\t" in line for line in running), running


# ---- broken folds, and the machine catching them -----------------------------------------


class FoldWithoutMergeParent(Broken):
    """Folds a parked finish with the merged files but without the finish's tip as a second
    parent: the job's history (and every update commit of it) is not on the main branch."""

    seam = "Coordinator._fold"

    def _fold(self, main: Oid, ledger: Ledger, parked: Sequence[tuple[str, Parked]]) -> Folds:
        self.reached()
        return fold_parked(OneParent(self), main, ledger, parked)  # type: ignore[arg-type]


class OneParent:
    """The transport of a :class:`FoldWithoutMergeParent`, writing merges as plain commits."""

    def __init__(self, coordinator: FoldWithoutMergeParent) -> None:
        self.coordinator = coordinator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.coordinator.transport, name)

    def write_commit(self, *, parents: Sequence[Oid], **kwargs: Any) -> Oid:
        if len(parents) > 1:
            self.coordinator.deviated()
            parents = parents[:1]
        return self.coordinator.transport.write_commit(parents=list(parents), **kwargs)


class FoldIgnoresTheToken(Broken):
    """Folds a parked finish whenever its job is running, under whatever holding runs it
    now: a record that still lists a finish folded long ago (its worker has not written
    it since) finishes a later run of the same job with the old results."""

    seam = "Coordinator.parked_in"

    def parked_in(self, refs: Mapping[str, Oid], ledger: Ledger) -> list[tuple[str, Parked]]:
        self.reached()
        found = super().parked_in(refs, ledger)
        jobs = {p.job for _, p in found}
        for ref in sorted(refs):
            beat = self.beat_at(refs[ref]) if ref.startswith("refs/distribute/workers/") else None
            for p in beat.parked if beat is not None else ():
                e = ledger.running_entry(p.job)
                if e is not None and not e.released and p.job not in jobs and (
                        e.worker, e.token) != (beat.worker, p.token):
                    self.deviated()
                    jobs.add(p.job)
                    found.append((e.worker, replace(p, token=e.token, attempt=e.attempt)))
        return found


def test_the_machine_catches_a_fold_without_its_merge_parent():
    catch = hunt("fold without merge parent", FoldWithoutMergeParent)
    assert catch.deviations > 0
    assert "not part of the main branch" in catch.message, catch.message


#: the administrator reruns finished jobs, so that a record can still list a finish of an
#: earlier run of a job that runs again (without hand-offs, which leave fewer finishes to
#: park and fold)
RERUNS = type("Reruns", (AdminMachine,), {
    "admin_ops": ("requeue-done",), "admin_waits_for": "done", "hand_offs": False})


def test_the_machine_catches_a_fold_under_another_token():
    catch = hunt("fold ignores the token", FoldIgnoresTheToken, RERUNS)
    assert catch.deviations > 0
