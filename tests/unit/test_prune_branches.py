"""Finished jobs' branches leave the remote (their commits stay, held by the main branch):
a worker deletes them in batches, and `distribute gc` deletes what is left."""

from __future__ import annotations

import pytest

from distribute.coordination import (
    ARCHIVE_FILE,
    ARCHIVE_PREFIX,
    Coordinator,
    _archive_commits,
    archivable_branches,
    archive_branches,
    delete_merged_branches,
    format_archive,
    highest_token,
    merged_branches,
    parse_archive,
    prepare_remote,
    read_archive,
)
from distribute.core.errors import MergeConflict
from distribute.core.names import job_dir
from distribute.core.plan import CallNextJobFunction
from distribute.transport.base import RefUpdate, holds
from distribute.transport.memory import MemoryRemote

MAIN = "refs/heads/main"


def setup(jobs: list[str], max_attempts: int = 2) -> tuple[MemoryRemote, Coordinator]:
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": "".join(
        j + "\n" for j in jobs).encode()})
    c = Coordinator(remote.transport("w"), worker="w", session="s", branch="main", lease=10,
                    margin=2, max_attempts=max_attempts, clock=lambda: 0.0)
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


def fail_attempt(c: Coordinator, job: str, text: str, finish: bool = False) -> tuple[str, str]:
    """Claim ``job`` (a retry when it was released), push ``text`` to its branch, fail it
    (or finish it); return its branch ref and tip."""
    snap = c.observe()
    assert c.try_acquire(snap)
    plan = c.plan(snap)
    held = c.claim(snap, plan, None if not isinstance(plan, CallNextJobFunction) else job)
    assert held is not None and held.job == job
    tip = c.transport.write_commit(parents=[held.tip], base=held.tip, message="checkpoint",
                                   changes={job_dir(job) + "/ckpt": text.encode()})
    c.update(tip)
    if finish:
        assert c.finish_step() is not None
    else:
        assert c.fail_step("preempted") is not None
    return held.branch_ref, tip


def test_a_retry_deletes_the_branch_of_the_attempt_it_resumed_and_keeps_its_commits():
    remote, c = setup(["a"], max_attempts=3)
    first, first_tip = fail_attempt(c, "a", "epoch 1")
    assert first in branches(remote)  # a released attempt keeps its branch for the retry
    second, second_tip = fail_attempt(c, "a", "epoch 2")  # resumes from the first
    assert c.superseded == [(first, first_tip)]
    assert c.prune_merged(at_least=1) == 1
    assert set(branches(remote)) == {second}
    t = remote.transport("r")
    assert holds(t, second_tip, first_tip)  # the retry's branch holds the first attempt
    ref, _ = fail_attempt(c, "a", "done", finish=True)  # resumes from the second
    assert c.prune_merged(at_least=1) == 2 and branches(remote) == {}
    main = t.fetch([MAIN])[MAIN]
    assert holds(t, main, first_tip) and holds(t, main, second_tip)
    assert ref not in branches(remote)


def take_over_from_the_dead():
    """Worker w claims job "a" and falls silent; worker b takes the job over once w's
    record stayed unchanged for a lease: the remote, w's holding, b and b's holding."""
    remote, dead = setup(["a"])
    snap = dead.observe()
    assert dead.try_acquire(snap)
    held = dead.claim(snap, CallNextJobFunction(), "a", None)
    assert held is not None
    now = [0.0]
    c = Coordinator(remote.transport("b"), worker="b", session="s2", branch="main", lease=10,
                    margin=2, max_attempts=2, clock=lambda: now[0])
    c.observe()
    now[0] = 100.0  # the dead worker's record stayed silent for longer than a lease
    snap = c.observe()
    assert c.try_acquire(snap)
    plan = c.plan(snap)
    assert not isinstance(plan, CallNextJobFunction) and plan.revoke == "w"
    again = c.claim(snap, plan, None)
    assert again is not None
    return remote, held, c, again


def test_a_taken_over_attempt_keeps_its_branch_and_gc_deletes_it_once_the_job_is_done():
    remote, held, c, again = take_over_from_the_dead()
    assert c.superseded == []  # its holder may still push to it
    t = remote.transport("admin")
    # while the job runs, gc keeps both branches: the job is not done
    assert merged_branches(t, "main") == {}
    tip = c.transport.write_commit(parents=[again.tip], base=again.tip, message="r",
                                   changes={job_dir("a") + "/out": b"x"})
    c.update(tip)
    assert c.finish_step() is not None
    found = merged_branches(t, "main")
    assert held.branch_ref in found and again.branch_ref in found


def test_a_restarted_worker_deletes_the_finished_branches_its_killed_life_left():
    remote, c = setup(["a", "b", "c"])
    refs = {run(c, "a"), run(c, "b")}  # finished; killed before its batch of deletions
    again = Coordinator(remote.transport("w2"), worker="w", session="s2", branch="main",
                        lease=10, margin=2, max_attempts=2, clock=lambda: 0.0)
    other = Coordinator(remote.transport("x"), worker="x", session="x", branch="main",
                        lease=10, margin=2, max_attempts=2, clock=lambda: 0.0)
    kept = run(other, "c")  # another worker's finished branch is its own business
    assert again.queue_leftovers() == 2
    assert again.queue_leftovers() == 0  # already queued
    assert again.prune_merged(at_least=1) == 2
    assert set(branches(remote)) == {kept} and not refs & set(branches(remote))


def test_a_restarted_worker_leaves_its_taken_over_attempts_branch_to_gc():
    """Its killed life's attempt was taken over, and the job finished by the taker (whose
    retry merged that branch): the branch is the taken-over holder's, which may still push
    to it (a later life that resumed the job, say), so only gc deletes it."""
    remote, held, c, _ = take_over_from_the_dead()
    assert c.finish_step() is not None
    restarted = Coordinator(remote.transport("w2"), worker="w", session="s3", branch="main",
                            lease=10, margin=2, max_attempts=2, clock=lambda: 0.0)
    assert restarted.queue_leftovers() == 0
    assert held.branch_ref in branches(remote)
    assert held.branch_ref in merged_branches(remote.transport("admin"), "main")  # for gc


def test_gc_finds_the_branches_of_jobs_with_names_that_encode_differently():
    # a long name is hashed in refs, "%41" and unicode are escaped: each must still be
    # matched to its line of done.txt, and a job not done ("A", which "%41" decodes to) not
    names = ["x" * 300, "%41", "ünï job", "plain", "A"]
    remote, c = setup(names)
    refs = {job: run(c, job) for job in names[:-1]}
    t = remote.transport("admin")
    snap = c.observe()
    assert c.try_acquire(snap)
    held = c.claim(snap, CallNextJobFunction(), "A", None)
    assert held is not None
    found = merged_branches(t, "main")
    assert set(found) == set(refs.values())
    assert set(merged_branches(t, "main", worker="w", finished_only=True)) == set(refs.values())


# ---- the archive: failed jobs' branches kept without a ref each --------------------------
def conflicting_failure(c: Coordinator, job: str) -> str:
    """Claim ``job``, write ``shared.txt`` on its branch while another commit on the main
    branch writes it too, finish: the finish records a merge conflict.  Its branch ref."""
    snap = c.observe()
    assert c.try_acquire(snap)
    held = c.claim(snap, CallNextJobFunction(), job, None)
    assert held is not None
    t = c.transport
    c.update(t.write_commit(parents=[held.tip], base=held.tip, message="r",
                            changes={"shared.txt": b"mine"}))
    main = t.fetch([MAIN])[MAIN]
    theirs = t.write_commit(parents=[main], base=main, message="edit",
                            changes={"shared.txt": b"theirs"})
    assert t.push([RefUpdate(MAIN, main, theirs)])
    with pytest.raises(MergeConflict):
        c.finish_step()
    return held.branch_ref


def test_gc_archives_the_branches_of_failed_jobs_and_their_commits_stay_reachable():
    remote, c = setup(["a", "b", "c", "d", "e"], max_attempts=1)
    failed_a, tip_a = fail_attempt(c, "a", "epoch 3")
    merged = run(c, "b")
    kept = conflicting_failure(c, "c")
    t = remote.transport("admin")
    # b's branch is merged (deleted by gc, not archived); c's is named by its reason
    assert archivable_branches(t, "main") == {failed_a: tip_a}
    assert set(merged_branches(t, "main")) == {merged}
    assert archive_branches(t, {failed_a: tip_a}) == 1
    assert set(branches(remote)) == {merged, kept}
    archive = ARCHIVE_PREFIX + "w"  # the archive of the worker that made the branch
    assert t.list_refs(ARCHIVE_PREFIX).keys() == {archive}
    head = t.fetch([archive])[archive]
    assert read_archive(t) == {failed_a: tip_a} and holds(t, head, tip_a)
    assert t.read_file(head, ARCHIVE_FILE) == (
        failed_a.removeprefix("refs/heads/") + "\t" + tip_a + "\n").encode()
    assert archivable_branches(t, "main") == {}
    # a later run adds to the chain: the earlier archive is the first parent, both listed
    failed_d, tip_d = fail_attempt(c, "d", "epoch 1")
    assert archive_branches(t, archivable_branches(t, "main")) == 1
    again = t.fetch([archive])[archive]
    assert read_archive(t) == {failed_a: tip_a, failed_d: tip_d}
    assert read_archive(t, [failed_d]) == read_archive(t)
    assert holds(t, again, head) and holds(t, again, tip_d)
    assert failed_d.removeprefix("refs/heads/") in t.commit_message(again)


def test_a_worker_archives_the_branches_of_the_jobs_that_failed_for_good_here():
    remote, c = setup(["a", "b", "c", "d"], max_attempts=1)
    failed_a, tip_a = fail_attempt(c, "a", "epoch 3")
    assert c.failed_here == [(failed_a, tip_a)]
    conflicting_failure(c, "b")  # its branch is for a person to merge: not archived
    assert c.failed_here == [(failed_a, tip_a)]
    merged = run(c, "c")
    assert c.prune_merged(at_least=3) == 0  # two wait
    assert c.prune_merged(at_least=2) == 2
    assert failed_a not in branches(remote) and merged not in branches(remote)
    t = remote.transport("r")
    assert read_archive(t) == {failed_a: tip_a}
    assert holds(t, t.fetch([ARCHIVE_PREFIX + "w"])[ARCHIVE_PREFIX + "w"], tip_a)
    assert c.failed_here == []
    # an attempt with attempts left is released for a retry, which starts from its branch
    remote, c = setup(["a"], max_attempts=2)
    released, _ = fail_attempt(c, "a", "epoch 1")
    assert c.failed_here == [] and released in branches(remote)


def test_gc_keeps_the_branches_of_running_jobs_and_of_jobs_waiting_for_a_retry():
    remote, c = setup(["a", "b"], max_attempts=2)
    released, _ = fail_attempt(c, "a", "epoch 1")  # one attempt left: a retry resumes it
    snap = c.observe()
    assert c.try_acquire(snap)
    held = c.claim(snap, c.plan(snap), None)
    assert held is not None
    t = remote.transport("admin")
    assert {released, held.branch_ref} <= set(branches(remote))
    assert archivable_branches(t, "main") == {}


def test_the_branch_of_a_done_job_that_the_main_branch_does_not_hold_is_archived():
    remote, held, c, again = take_over_from_the_dead()
    t = remote.transport("admin")
    late = held.tip
    zombie = t.write_commit(parents=[late], base=late, message="after the takeover",
                            changes={job_dir("a") + "/late": b"x"})
    assert t.push([RefUpdate(held.branch_ref, late, zombie)])
    assert c.finish_step() is not None
    assert merged_branches(t, "main") == {again.branch_ref: again.tip}
    assert archivable_branches(t, "main") == {held.branch_ref: zombie}


def test_an_archive_run_builds_again_on_a_moved_archive_and_leaves_a_moved_branch():
    remote, c = setup(["a", "b", "x"], max_attempts=1)
    found = dict([fail_attempt(c, "a", "1"), fail_attempt(c, "b", "1")])
    other = dict([fail_attempt(c, "x", "1")])
    t = remote.transport("admin")

    class Racing:
        """A transport whose first archive push is preceded by another gc's run, and
        whose branch "b" moves before its second."""

        def __init__(self) -> None:
            self.pushes = 0

        def __getattr__(self, name: str):
            return getattr(t, name)

        def push(self, updates):
            self.pushes += 1
            if self.pushes == 1:
                assert archive_branches(remote.transport("gc2"), other) == 1
            return t.push(updates)

    racing = Racing()
    assert archive_branches(racing, found) == 2  # type: ignore[arg-type]
    assert racing.pushes == 2  # refused once: the archive had moved
    assert read_archive(t) == {**other, **found}
    assert branches(remote) == {}
    # a branch that moved after it was found is left where it is
    remote, c = setup(["a", "b"], max_attempts=1)
    found = dict([fail_attempt(c, "a", "1"), fail_attempt(c, "b", "1")])
    t = remote.transport("admin")
    ref_b = next(ref for ref in found if "/b/" in ref)
    moved = t.write_commit(parents=[found[ref_b]], message="later", changes={})
    assert t.push([RefUpdate(ref_b, found[ref_b], moved)])
    assert archive_branches(t, found) == 1
    assert branches(remote) == {ref_b: moved} and ref_b not in read_archive(t)


def test_the_highest_token_counts_archived_branches():
    remote, _ = setup(["a"])
    t = remote.transport("admin")
    main = t.fetch([MAIN])[MAIN]
    head = _archive_commits(t, None, {}, [("refs/heads/jobs/w/gone/999", main)])
    assert t.push([RefUpdate(ARCHIVE_PREFIX + "w", None, head)])
    assert highest_token(t, main, "main") == 999


def test_the_archive_file_reads_back_what_was_written_and_skips_other_lines():
    listed = {"refs/heads/jobs/w/a%20b/3": "a" * 40, "refs/heads/jobs/x/c/12": "b" * 64}
    text = format_archive(listed)
    assert parse_archive(text) == listed
    assert parse_archive(text + b"notes\tabc\njobs/w/d/1\tnot-an-id\n\n") == listed


def test_a_restarted_worker_archives_the_failed_branches_its_killed_life_left():
    remote, c = setup(["a", "b", "c", "d"], max_attempts=1)
    failed_a, tip_a = fail_attempt(c, "a", "epoch 3")  # killed before its batch
    conflicting_failure(c, "b")  # to be merged by hand: stays
    other = Coordinator(remote.transport("x"), worker="x", session="x", branch="main",
                        lease=10, margin=2, max_attempts=1, clock=lambda: 0.0)
    failed_c, _ = fail_attempt(other, "c", "1")  # another worker's: its own business
    again = Coordinator(remote.transport("w2"), worker="w", session="s2", branch="main",
                        lease=10, margin=2, max_attempts=1, clock=lambda: 0.0)
    snap = again.observe()
    assert again.try_acquire(snap)
    held = again.claim(snap, CallNextJobFunction(), "d", None)
    assert held is not None
    finished = held.branch_ref
    # its first job's end: what the finish read names this worker in failed.txt
    assert again.finish(lambda _s: None, lambda: 0.0) is not None
    assert again.after_finish is not None
    assert again.queue_leftovers() == 1 and again.failed_here == [(failed_a, tip_a)]
    assert again.queue_leftovers() == 0  # already queued
    assert again.prune_merged(at_least=1) == 2
    t = remote.transport("r")
    assert read_archive(t) == {failed_a: tip_a}
    assert not {failed_a, finished} & set(branches(remote)) and failed_c in branches(remote)


def test_a_restarted_worker_leaves_its_taken_over_unmerged_branch_to_gc():
    remote, held, c, _ = take_over_from_the_dead()
    t = remote.transport("admin")
    late = t.write_commit(parents=[held.tip], base=held.tip, message="after the takeover",
                          changes={job_dir("a") + "/late": b"x"})
    assert t.push([RefUpdate(held.branch_ref, held.tip, late)])
    assert c.finish_step() is not None  # done by the taker; w's branch holds more
    restarted = Coordinator(remote.transport("w2"), worker="w", session="s3", branch="main",
                            lease=10, margin=2, max_attempts=2, clock=lambda: 0.0)
    assert restarted.queue_leftovers() == 0 and restarted.failed_here == []
    assert archivable_branches(t, "main") == {held.branch_ref: late}  # for gc
