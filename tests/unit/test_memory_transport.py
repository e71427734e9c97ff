"""The in-memory remote's own promises: fault hooks, latency, counters, visibility, merge bases."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from distribute.core.errors import OutcomeUnknown, TransportError, UsageError
from distribute.transport.base import Oid, RefUpdate, Transport
from distribute.transport.memory import MemoryRemote, MemoryTransport

MAIN = "refs/heads/main"
LOCK = "refs/distribute/lock"


@pytest.fixture
def remote() -> MemoryRemote:
    remote = MemoryRemote()
    seed = remote.transport("seed")
    remote.set_ref(MAIN, seed.write_commit(parents=[], message="root", changes={"a": b"a"}))
    return remote


def tip(remote: MemoryRemote) -> Oid:
    main = remote.get_ref(MAIN)
    assert main is not None
    return main


def child(t: MemoryTransport, parent: Oid, message: str) -> Oid:
    return t.write_commit(parents=[parent], message=message, base=parent)


def test_it_is_a_transport(remote: MemoryRemote) -> None:
    assert isinstance(remote.transport(), Transport)


def test_transports_get_distinct_deterministic_names() -> None:
    remote = MemoryRemote()
    assert [remote.transport().name for _ in range(3)] == ["t1", "t2", "t3"]
    assert remote.transport("w7").name == "w7"


def test_ids_are_content_addresses(remote: MemoryRemote) -> None:
    other = MemoryRemote()
    a = remote.transport().write_commit(parents=[], message="m", changes={"x": b"1"})
    b = other.transport().write_commit(parents=[], message="m", changes={"x": b"1"})
    c = other.transport().write_commit(parents=[], message="n", changes={"x": b"1"})
    assert a == b != c
    assert len(a) == 40 and int(a, 16) >= 0
    t = other.transport()
    assert t.commit_tree(b) == t.commit_tree(c)


class Recorder:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __call__(self, name: str, items: Sequence[object]) -> str | None:
        self.calls.append((name, tuple(items)))
        return self.answer


def test_drop_raises_and_applies_nothing(remote: MemoryRemote) -> None:
    t = remote.transport("w1")
    main = tip(remote)
    new = child(t, main, "new")
    hook = Recorder("drop")
    remote.fault_hook = hook
    update = RefUpdate(MAIN, main, new)
    with pytest.raises(TransportError) as caught:
        t.push([update])
    assert not isinstance(caught.value, OutcomeUnknown)
    assert remote.get_ref(MAIN) == main
    assert hook.calls == [("w1", (update,))]
    assert remote.stats.faults == 1 and remote.stats.pushes == 1
    assert remote.stats.rejected_pushes == 0


def test_unknown_applied_applies_then_raises(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    new = child(t, main, "new")
    remote.fault_hook = Recorder("unknown-applied")
    with pytest.raises(OutcomeUnknown) as caught:
        t.push([RefUpdate(MAIN, main, new), RefUpdate(LOCK, None, new)])
    assert caught.value.context["refs"] == [MAIN, LOCK]
    assert remote.get_ref(MAIN) == new and remote.get_ref(LOCK) == new


def test_unknown_applied_still_checks_expectations(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    new = child(t, main, "new")
    remote.fault_hook = Recorder("unknown-applied")
    with pytest.raises(OutcomeUnknown):
        t.push([RefUpdate(MAIN, new, child(t, main, "other"))])  # stale expectation
    assert remote.get_ref(MAIN) == main
    assert remote.stats.rejected_pushes == 1


def test_unknown_lost_applies_nothing_and_raises(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    new = child(t, main, "new")
    remote.fault_hook = Recorder("unknown-lost")
    with pytest.raises(OutcomeUnknown):
        t.push([RefUpdate(MAIN, main, new)])
    assert remote.get_ref(MAIN) == main


def test_a_hook_can_fault_one_push_and_let_the_next_through(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    new = child(t, main, "new")
    answers = iter(["drop", None])
    remote.fault_hook = lambda name, updates: next(answers)
    with pytest.raises(TransportError):
        t.push([RefUpdate(MAIN, main, new)])
    assert t.push([RefUpdate(MAIN, main, new)])
    assert remote.get_ref(MAIN) == new


def test_an_unknown_fault_is_a_test_bug(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    remote.fault_hook = Recorder("explode")
    with pytest.raises(ValueError, match="explode"):
        t.push([RefUpdate(MAIN, main, main)])
    remote.fault_hook = None
    remote.fetch_fault_hook = Recorder("unknown-lost")
    with pytest.raises(ValueError, match="unknown-lost"):
        t.fetch([MAIN])


def test_fetch_fault_hook_drops_fetch_and_list_refs(remote: MemoryRemote) -> None:
    t = remote.transport("w2")
    hook = Recorder("drop")
    remote.fetch_fault_hook = hook
    with pytest.raises(TransportError):
        t.fetch([MAIN, "refs/distribute/workers/*"])
    with pytest.raises(TransportError):
        t.list_refs("refs/heads/")
    assert hook.calls == [("w2", (MAIN, "refs/distribute/workers/*")), ("w2", ("refs/heads/",))]
    assert t.mirror == {}
    assert remote.stats.faults == 2 and remote.stats.fetches == 0
    hook.answer = None
    assert t.fetch([MAIN]) == {MAIN: tip(remote)}


def test_a_torn_read_sees_the_last_push_half_done(remote: MemoryRemote) -> None:
    """Like git's files backend: refs change one at a time, in name order."""
    writer, reader = remote.transport(), remote.transport()
    main = tip(remote)
    lock1 = child(writer, main, "lock 1")
    assert writer.push([RefUpdate(LOCK, None, lock1)])
    new_main, lock2 = child(writer, main, "claim"), child(writer, lock1, "lock 2")
    branch = "refs/heads/jobs/w1/x"
    assert writer.push(
        [
            RefUpdate(MAIN, main, new_main),
            RefUpdate(LOCK, lock1, lock2),
            RefUpdate(branch, None, new_main),
        ]
    )
    remote.fetch_fault_hook = Recorder("torn")
    # name order: refs/distribute/lock, refs/heads/jobs/w1/x, refs/heads/main
    assert reader.fetch([MAIN, LOCK, "refs/heads/*"]) == {LOCK: lock2, MAIN: main}
    # of the refs read, the first in name order shows its new value
    assert reader.list_refs("refs/heads/") == {branch: new_main, MAIN: main}
    assert reader.fetch([MAIN]) == {MAIN: new_main}  # one ref alone cannot tear
    assert remote.stats.faults == 3 and remote.stats.fetches == 2
    remote.fetch_fault_hook = None
    assert reader.fetch([MAIN, LOCK]) == {MAIN: new_main, LOCK: lock2}


def test_a_torn_read_after_a_one_ref_push_is_whole(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    new = child(t, main, "new")
    assert t.push([RefUpdate(MAIN, main, new), RefUpdate(LOCK, None, None)])
    remote.fetch_fault_hook = Recorder("torn")
    assert t.fetch([MAIN, LOCK]) == {MAIN: new}


def test_latency_sleeps_once_per_remote_operation_only(remote: MemoryRemote) -> None:
    slept: list[float] = []
    remote.latency, remote.sleep = 0.25, slept.append
    t = remote.transport()
    main = t.fetch([MAIN])[MAIN]
    t.list_refs("refs/")
    new = child(t, main, "local work costs nothing")
    t.read_file(new, "a")
    t.merge(new, main)
    t.is_ancestor(main, new)
    assert slept == [0.25, 0.25]
    assert t.push([RefUpdate(MAIN, main, new)])
    assert slept == [0.25, 0.25, 0.25]
    assert MemoryRemote().latency == 0


def test_zero_latency_never_sleeps(remote: MemoryRemote) -> None:
    slept: list[float] = []
    remote.sleep = slept.append
    t = remote.transport()
    t.fetch([MAIN])
    assert slept == []


def test_stats_count_pushes_rejections_fetches_and_listings(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = t.fetch([MAIN])[MAIN]
    new = child(t, main, "new")
    assert t.push([RefUpdate(MAIN, main, new)])
    assert not t.push([RefUpdate(MAIN, main, child(t, main, "late"))])
    t.list_refs("refs/")
    assert (remote.stats.pushes, remote.stats.rejected_pushes) == (2, 1)
    assert (remote.stats.fetches, remote.stats.ref_listings, remote.stats.faults) == (1, 1, 0)


def test_only_a_fetch_makes_ref_values_visible(remote: MemoryRemote) -> None:
    writer, reader = remote.transport(), remote.transport()
    main = tip(remote)
    reader.fetch([MAIN, "refs/distribute/*"])
    assert reader.mirror == {MAIN: main}
    new = child(writer, main, "new")
    assert writer.push([RefUpdate(MAIN, main, new), RefUpdate(LOCK, None, new)])
    assert reader.mirror == {MAIN: main}  # not fetched yet
    assert reader.list_refs("refs/") == {MAIN: new, LOCK: new}  # list_refs reads the remote
    assert reader.mirror == {MAIN: main}
    reader.fetch(["refs/distribute/*"])
    assert reader.mirror == {MAIN: main, LOCK: new}
    assert writer.push([RefUpdate(LOCK, new, None)])
    reader.fetch(["refs/distribute/*", MAIN])
    assert reader.mirror == {MAIN: new}


def test_set_ref_is_an_unchecked_administrator_write(remote: MemoryRemote) -> None:
    main = tip(remote)
    remote.set_ref(LOCK, main)
    assert remote.refs == {MAIN: main, LOCK: main}
    remote.set_ref(LOCK, None)
    assert remote.get_ref(LOCK) is None
    with pytest.raises(TransportError):
        remote.set_ref(LOCK, "f" * 40)
    with pytest.raises(UsageError):
        remote.set_ref("lock", main)
    assert remote.stats.pushes == 0


def test_pushing_an_unknown_or_malformed_id_fails(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    with pytest.raises(TransportError):
        t.push([RefUpdate(MAIN, main, "e" * 40)])
    with pytest.raises(UsageError):
        t.push([RefUpdate(MAIN, main, "E" * 40)])
    with pytest.raises(UsageError):
        t.push([RefUpdate(MAIN, main, main), RefUpdate(MAIN, main, main)])
    assert remote.stats.pushes == 0


def test_write_commit_checks_its_inputs(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    with pytest.raises(TransportError):
        t.write_commit(parents=["d" * 40], message="unknown parent")
    with pytest.raises(UsageError):
        t.write_commit(parents=[main], message="nul \0 byte")
    with pytest.raises(UsageError):
        t.write_commit(parents=[main], message="text", changes={"x": "not bytes"})  # type: ignore[dict-item]
    assert t.files(t.write_commit(parents=[main], message="ok", base=main)) == {"a": b"a"}


def test_merge_base_is_the_lowest_common_ancestor(remote: MemoryRemote) -> None:
    t = remote.transport()
    root = tip(remote)
    old = t.write_commit(parents=[root], message="old", base=root, changes={"f": b"1"})
    low = t.write_commit(parents=[old], message="low", base=old, changes={"f": b"2"})
    # theirs reaches `old` in one step but `low` only through a longer path
    side = t.write_commit(parents=[low], message="side", base=low, changes={"f": b"3", "g": b"g"})
    theirs = t.write_commit(parents=[old, side], message="theirs", base=side)
    ours = t.write_commit(parents=[low], message="ours", base=low, changes={"h": b"h"})
    result = t.merge(ours, theirs)
    # against `old` (f=1) both sides changed f differently; against `low` only theirs did
    assert result.clean
    assert t._merge_base(ours, theirs) == low
    assert result.tree is not None
    merged = t.write_commit(parents=[ours, theirs], message="m", tree=result.tree)
    assert t.files(merged) == {"a": b"a", "f": b"3", "g": b"g", "h": b"h"}


def test_criss_cross_merge_base_is_deterministic(remote: MemoryRemote) -> None:
    t = remote.transport()
    root = tip(remote)
    x = t.write_commit(parents=[root], message="x", base=root, changes={"x": b"x"})
    y = t.write_commit(parents=[root], message="y", base=root, changes={"y": b"y"})
    a = t.write_commit(parents=[x, y], message="a", base=x, changes={"y": b"y"})
    b = t.write_commit(parents=[y, x], message="b", base=y, changes={"x": b"x"})
    assert t._merge_base(a, b) == min(x, y)
    assert t._merge_base(b, a) == min(x, y)


def test_unrelated_histories_merge_against_an_empty_tree(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    other = t.write_commit(parents=[], message="other root", changes={"b": b"b", "a": b"A"})
    result = t.merge(main, other)
    assert result.conflicts == ("a",)
    clean = t.write_commit(parents=[], message="clean root", changes={"b": b"b"})
    assert t.merge(main, clean).clean


def test_a_merge_that_makes_a_path_file_and_directory_conflicts(remote: MemoryRemote) -> None:
    t = remote.transport()
    main = tip(remote)
    ours = t.write_commit(parents=[main], message="o", base=main, changes={"d": b"file"})
    theirs = t.write_commit(parents=[main], message="t", base=main, changes={"d/x": b"below"})
    assert t.merge(ours, theirs).conflicts == ("d", "d/x")


def test_many_threads_push_safely(remote: MemoryRemote) -> None:
    """Counters and refs stay consistent when threads hammer one remote."""
    workers, rounds = 8, 25
    transports = [remote.transport() for _ in range(workers)]
    wins = [0] * workers

    def work(i: int) -> None:
        t = transports[i]
        for n in range(rounds):
            main = t.fetch([MAIN])[MAIN]
            new = t.write_commit(parents=[main], message=f"{i}-{n}", base=main)
            wins[i] += t.push([RefUpdate(MAIN, main, new)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stats = remote.stats
    assert stats.pushes == workers * rounds
    assert stats.pushes - stats.rejected_pushes == sum(wins)
    t = remote.transport()
    depth, commit = 0, tip(remote)
    while t.commit_message(commit) != "root":
        (commit,) = t.remote._commit(commit).parents
        depth += 1
    assert depth == sum(wins)  # every win is one step of a single linear history
