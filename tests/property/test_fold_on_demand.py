"""Parked finishes are merged only by a look that moves the main branch.

A waiting worker decides by the running lines and the tokens (whose turn it is, who
holds what, whether a job was handed to it, whether anyone still runs one), and those
come out of the folds the same whichever way each merge goes.  So a look finds the
parked finishes without merging them (``Snapshot.outlook``), and the merges run when a
step asks for ``Snapshot.folds`` (``base``, ``view``): a claim, a fold.

These tests count the merges a look makes, and check that the outlook and the folded
view agree wherever a waiting worker reads, with a parked finish that merges and one
that does not.
"""

from __future__ import annotations

import pytest
from protocol_machine import MAIN_REF, MemoryWorld
from test_parked_finishes import lose_the_next_race
from test_regressions import Clock, claim, coordinator

from distribute.coordination import Coordinator
from distribute.core import events as ev
from distribute.core.errors import MergeConflict
from distribute.core.names import job_dir
from distribute.core.plan import in_turn, plan_claim
from distribute.transport.base import RefUpdate


def count_merges(c: Coordinator) -> list[int]:
    """Count the merges ``c``'s transport runs from now on (one element per merge)."""
    merges: list[int] = []
    real = c.transport.merge

    def counted(ours, theirs):
        merges.append(1)
        return real(ours, theirs)

    c.transport.merge = counted  # type: ignore[method-assign]
    return merges


def run(c: Coordinator, job: str, path: str, within_folder: bool = False) -> None:
    """``c`` claims ``job``, commits ``path`` and pushes it, saying whether the commit
    wrote only the job's own folder (as ``Worker.commit_update`` knows)."""
    held = claim(c, job)
    tip = c.transport.write_commit(parents=[held.tip], base=held.tip, message="work",
                                   changes={path: f"{job} by {c.worker}\n".encode()})
    c.update(tip, within_folder)


def park(world: MemoryWorld, c: Coordinator) -> None:
    """``c``'s finish loses its race for the main branch, and parks."""
    lose_the_next_race(world, c.worker)
    assert c.finish(lambda s: None, lambda: 0.0) == ev.FinishOutcome.PARKED


def edit_main(world: MemoryWorld, path: str) -> None:
    """An administrator writes ``path`` on the main branch."""
    main = world.refs()[MAIN_REF]
    new = world.auditor.write_commit(parents=[main], base=main, message=f"edit {path}",
                                     changes={path: b"the administrator's\n"})
    assert world.auditor.push([RefUpdate(MAIN_REF, main, new)])


@pytest.mark.parametrize("conflict", [False, True], ids=["merges", "conflicts"])
def test_a_waiting_look_merges_nothing_and_decides_as_the_folded_view_would(conflict):
    world, clock = MemoryWorld(["j0", "j1", "j2", "j3"]), Clock()
    a, c, b = (coordinator(world, name, clock) for name in ("a", "c", "b"))
    run(a, "j0", "shared.txt" if conflict else "a.txt")
    run(c, "j1", "c.txt")
    park(world, a)
    park(world, c)
    if conflict:
        edit_main(world, "shared.txt")  # a's branch no longer merges onto the main branch
    merges = count_merges(b)

    snap = b.observe()
    # everything a waiting worker asks of one look
    ahead = b.ahead_in_turn(snap)
    expired = b.expired_workers(snap)
    plan = b.plan(snap)
    handed = b.handed(snap)
    targets = b.handoff_targets(snap)
    outlook = snap.outlook
    assert merges == []

    view = snap.view  # asks for the folds
    assert len(merges) == 2
    assert snap.ledger.state_of("j0") == "running"
    assert view.state_of("j0") == ("failed" if conflict else "done")
    assert outlook.state_of("j0") == "done"
    assert view.running == outlook.running
    assert view.served() == outlook.served()
    assert in_turn(["a", "b", "c"], view) == in_turn(["a", "b", "c"], outlook)
    assert plan == plan_claim(view, "b", expired, b.max_attempts, b.max_interruptions,
                              b.session)
    assert (ahead, handed, targets) == (b.ahead_in_turn(snap), b.handed(snap),
                                       b.handoff_targets(snap))
    # asked again: the folds are kept, and the outlook is the folded view from now on
    assert snap.base == snap.folds.tip and snap.outlook is snap.view
    assert len(merges) == 2


def test_a_claim_folds_what_its_look_left_unmerged():
    world, clock = MemoryWorld(["j0", "j1"]), Clock()
    a, b = coordinator(world, "a", clock), coordinator(world, "b", clock)
    run(a, "j0", "a.txt")
    park(world, a)
    merges = count_merges(b)
    snap = b.observe()
    assert merges == []
    before = world.refs()[MAIN_REF]
    assert b.try_acquire(snap)
    assert b.claim(snap, b.plan(snap), "j1", None) is not None
    assert merges  # the claim asked for the folds
    main = world.refs()[MAIN_REF]
    (fold,) = world.parents(main)
    assert world.parents(fold)[0] == before
    done = (world.read_file(main, "done.txt") or b"").decode()
    assert any(line.startswith("j0\t") and "worker=a\t" in line for line in done.splitlines())


def test_a_look_with_nothing_parked_has_no_folds():
    world, clock = MemoryWorld(["j0"]), Clock()
    b = coordinator(world, "b", clock)
    snap = b.observe()
    assert snap.folds is None and snap.pending is None
    assert snap.view is snap.ledger and snap.outlook is snap.ledger and snap.base == snap.main


def test_a_park_that_wrote_only_its_folder_is_checked_without_a_merge():
    world, clock = MemoryWorld(["j0", "j1", "j2"]), Clock()
    a, c, b = (coordinator(world, name, clock) for name in ("a", "c", "b"))
    run(a, "j0", job_dir("j0") + "/out.txt", True)
    run(c, "j1", job_dir("j1") + "/out.txt", True)
    park(world, a)
    merges = count_merges(c)
    assert c.finish(lambda s: None, lambda: 0.0, park_first=True) == ev.FinishOutcome.PARKED
    assert merges == []  # neither the parked finish nor its own branch merged to check
    snap = b.observe()
    assert b.try_acquire(snap) and b.claim(snap, b.plan(snap), "j2", None) is not None
    done = (world.read_file(world.refs()[MAIN_REF], "done.txt") or b"").decode()
    assert {line.split("\t")[0] for line in done.splitlines()} >= {"j0", "j1"}


@pytest.mark.parametrize("how", ["not said", "another wrote into it"])
def test_a_park_not_known_to_merge_is_checked_by_merging_and_a_conflict_raises(how):
    world, clock = MemoryWorld(["j0", "j1", "j2"]), Clock()
    a, c = coordinator(world, "a", clock), coordinator(world, "c", clock)
    mine = job_dir("j1") + "/out.txt"
    # a's job writes into c's job's folder (and says it wrote only its own), or c's
    # update does not say it wrote only its folder
    run(a, "j0", mine if how == "another wrote into it" else job_dir("j0") + "/o.txt",
            True)
    run(c, "j1", mine, how != "not said")
    park(world, a)
    merges = count_merges(c)
    if how == "another wrote into it":
        with pytest.raises(MergeConflict):
            c.finish(lambda s: None, lambda: 0.0, park_first=True)
    else:
        assert c.finish(lambda s: None, lambda: 0.0, park_first=True) == ev.FinishOutcome.PARKED
    assert len(merges) == 2  # a's finish folded, then c's branch onto it


def test_a_file_where_the_results_folder_should_be_is_not_taken_for_a_clean_merge():
    world, clock = MemoryWorld(["j0", "j1"]), Clock()
    a, c = coordinator(world, "a", clock), coordinator(world, "c", clock)
    run(a, "j0", "updates", False)  # a file named like the folder of every job's results
    run(c, "j1", job_dir("j1") + "/out.txt", True)
    park(world, a)
    merges = count_merges(c)
    with pytest.raises(MergeConflict):
        c.finish(lambda s: None, lambda: 0.0, park_first=True)
    assert merges
