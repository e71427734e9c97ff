"""Finished jobs' branches leave the remote (their commits stay, held by the main branch):
a worker deletes them in batches, and `distribute gc` deletes what is left."""

from __future__ import annotations

from distribute.coordination import (
    Coordinator,
    delete_merged_branches,
    merged_branches,
    prepare_remote,
)
from distribute.core.names import job_dir
from distribute.core.plan import CallNextJobFunction
from distribute.transport.base import RefUpdate, holds
from distribute.transport.memory import MemoryRemote

MAIN = "refs/heads/main"


def setup(jobs: list[str]) -> tuple[MemoryRemote, Coordinator]:
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": "".join(
        j + "\n" for j in jobs).encode()})
    c = Coordinator(remote.transport("w"), worker="w", session="s", branch="main", lease=10,
                    margin=2, max_attempts=2, clock=lambda: 0.0)
    return remote, c


def run(c: Coordinator, job: str) -> str:
    snap = c.observe()
    assert c.try_acquire(snap)
    held = c.claim(snap, CallNextJobFunction(), job, None)
    assert held is not None
    tip = c.transport.write_commit(parents=[held.tip], base=held.tip, message="result",
                                   changes={job_dir(job) + "/out.txt": job.encode()})
    c.update(tip)
    assert c.finish_step() is not None
    return held.branch_ref


def branches(remote: MemoryRemote) -> dict[str, str]:
    return remote.transport("r").list_refs("refs/heads/jobs/")


def test_a_worker_deletes_its_finished_branches_once_a_batch_is_full(tmp_path):
    remote, c = setup(["a", "b", "c"])
    refs = [run(c, "a"), run(c, "b")]
    assert c.prune_merged(at_least=3) == 0 and set(refs) <= set(branches(remote))
    tips = {ref: branches(remote)[ref] for ref in refs}
    assert c.prune_merged(at_least=2) == 2
    assert not set(refs) & set(branches(remote))
    t = remote.transport("r")
    main = t.fetch([MAIN])[MAIN]
    assert all(holds(t, main, tip) for tip in tips.values())  # nothing lost
    run(c, "c")
    assert c.prune_merged(at_least=1) == 1 and branches(remote) == {}


def test_a_branch_that_moved_stays_and_gc_finds_only_merged_branches_of_done_jobs():
    remote, c = setup(["a", "b"])
    ref_a, ref_b = run(c, "a"), run(c, "b")
    t = remote.transport("admin")
    tips = t.fetch([ref_a, ref_b])
    moved = t.write_commit(parents=[tips[ref_b]], message="later", changes={})
    assert t.push([RefUpdate(ref_b, tips[ref_b], moved)])
    assert c.prune_merged(at_least=1) == 0  # refused whole: b moved
    assert set(branches(remote)) == {ref_a, ref_b}
    # gc: a's branch is merged and done; b's now holds a commit main does not
    found = merged_branches(t, "main")
    assert found == {ref_a: tips[ref_a]}
    assert delete_merged_branches(t, found) == 1
    assert set(branches(remote)) == {ref_b}
    assert merged_branches(t, "main") == {}
