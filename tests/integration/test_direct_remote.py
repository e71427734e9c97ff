"""A bare repository on this machine, written directly (no git push, no git fetch).

When is the direct path taken, and when does it give way to git push (a
``file://`` URL, ``direct=False``, a hook or a ``receive.*`` rule, also one
added later)?  Do direct and pushing writers share a remote safely?  Are
packed objects read and written correctly, is only what is missing copied,
and does a copy cut short leave every commit and tree with what it names?
How are ref files read, and what does a stale lock in the local repository do?
What happens when the remote's folder is moved away or replaced while workers use it
(a transport error, and nothing written at its path)?
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import git
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distribute.core.errors import RemoteStateError, TransportError, UsageError
from distribute.transport import direct as direct_module
from distribute.transport import git as git_transport_module
from distribute.transport.base import Oid, RefUpdate
from distribute.transport.direct import ObjectStore, copy_objects, read_ref_files
from distribute.transport.git import GitTransport
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.repository import PARTIAL_CLONE_SETTINGS

MAIN = "refs/heads/main"
WORKERS = "refs/distribute/workers/"
RunGit = Callable[..., str]


@pytest.fixture
def opened() -> Iterator[list[GitTransport | GitLocalCopy]]:
    """Transports and copies a test opens, closed at its end."""
    things: list[GitTransport | GitLocalCopy] = []
    yield things
    for thing in things:
        thing.close()


@pytest.fixture
def clone(
    tmp_path: Path, opened: list[GitTransport | GitLocalCopy]
) -> Callable[[str, str], GitTransport]:
    """``clone(url, name)``: the transport of a new clone of ``url`` in ``tmp_path/name``."""

    def make(url: str, name: str) -> GitTransport:
        copy = GitLocalCopy.clone(url, tmp_path / name)
        transport = copy.transport()
        opened.extend([copy, transport])
        return transport

    return make


def child(t: GitTransport, parent: Oid, message: str, **files: bytes | None) -> Oid:
    return t.write_commit(parents=[parent], message=message, base=parent, changes=files)


def hook(remote: Path, name: str, body: str) -> Path:
    path = remote / "hooks" / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def local_dir(t: GitTransport) -> Path:
    """The ``.git`` folder of the clone behind ``t``."""
    return t._repo.git_dir


def loose_objects(objects: Path) -> list[Path]:
    return [p for p in objects.glob("??/*") if len(p.parent.name) == 2]


# ---- when the direct path is taken -----------------------------------------------------------


def test_a_bare_path_is_direct_its_file_url_and_direct_false_are_not(
    bare_remote: Path, clone: Callable[[str, str], GitTransport]
) -> None:
    t = clone(str(bare_remote), "w")
    assert t.direct is True
    main = t.fetch([MAIN])[MAIN]
    copy = local_dir(t).parent
    with GitTransport(copy, str(bare_remote)) as by_path:
        assert by_path.direct is True
    with GitTransport(copy, bare_remote.as_uri()) as by_url:
        assert by_url.direct is False
        assert by_url.fetch([MAIN]) == {MAIN: main}
    with GitTransport(copy, str(bare_remote), direct=False) as pushing:
        assert pushing.direct is False
        new = child(pushing, main, "pushed", a=b"a")
        assert pushing.push([RefUpdate(MAIN, main, new)])
        assert pushing.direct is False
    # git ignores sample hooks and hooks that are not executable: so does the check
    assert (bare_remote / "hooks" / "pre-receive.sample").exists()
    (bare_remote / "hooks" / "post-update").write_text("#!/bin/sh\nexit 1\n")
    with GitTransport(copy, str(bare_remote), direct=True) as required:
        assert required.direct is True


def test_requiring_direct_where_it_is_impossible_names_the_reason(
    bare_remote: Path, clone: Callable[[str, str], GitTransport]
) -> None:
    copy = local_dir(clone(str(bare_remote), "w")).parent
    with pytest.raises(UsageError, match="not a path on this machine") as caught:
        GitTransport(copy, bare_remote.as_uri(), direct=True)
    assert "not a path" in caught.value.context["reason"]
    hook(bare_remote, "pre-receive", "exit 0\n")
    with pytest.raises(UsageError, match="has a pre-receive hook") as caught:
        GitTransport(copy, str(bare_remote), direct=True)
    assert caught.value.context["reason"] == "the remote has a pre-receive hook"


@pytest.mark.parametrize("name", ["pre-receive", "update"])
def test_a_hook_added_later_runs_at_the_next_push(
    bare_remote: Path, tmp_path: Path, clone: Callable[[str, str], GitTransport], name: str
) -> None:
    """Both hooks record that they ran; pre-receive refuses the push, update lets it in."""
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    first = child(t, main, "direct", a=b"1")
    assert t.push([RefUpdate(MAIN, main, first)])
    marker = tmp_path / "hook-ran"
    refuse = int(name == "pre-receive")
    hook(bare_remote, name, f"cat >/dev/null\necho \"$@\" >'{marker}'\nexit {refuse}\n")
    assert t.direct is False
    second = child(t, first, "through git push", a=b"2")
    if name == "pre-receive":
        with pytest.raises(RemoteStateError, match="pre-receive hook declined"):
            t.push([RefUpdate(MAIN, first, second)])
        assert t.fetch([MAIN]) == {MAIN: first}
    else:
        assert t.push([RefUpdate(MAIN, first, second)]) is True
        assert marker.read_text().split() == [MAIN, first, second]
        assert t.fetch([MAIN]) == {MAIN: second}
    assert marker.exists()
    (bare_remote / "hooks" / name).unlink()
    assert t.direct is True  # and back once the hook is gone


def test_deny_deletes_set_later_refuses_a_direct_writers_deletion(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    branch = "refs/heads/jobs/w1/job"
    assert t.push([RefUpdate(branch, None, main)])
    assert t.direct is True
    run_git("--git-dir", bare_remote, "config", "receive.denyDeletes", "true")
    assert t.direct is False
    with pytest.raises(RemoteStateError, match="deletion prohibited"):
        t.push([RefUpdate(branch, main, None)])
    assert run_git("--git-dir", bare_remote, "rev-parse", branch) == main
    run_git("--git-dir", bare_remote, "config", "--unset", "receive.denyDeletes")
    assert t.direct is True
    assert t.push([RefUpdate(branch, main, None)])
    assert t.fetch([branch]) == {}


# ---- direct and pushing writers on one remote --------------------------------------------


def push_at_once(pushes: dict[int, tuple[GitTransport, RefUpdate]]) -> dict[int, object]:
    """Start the pushes together (a barrier); each one's result, or what it raised."""
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(pushes), timeout=30)

    def push(i: int, t: GitTransport, update: RefUpdate) -> None:
        barrier.wait()
        try:
            results[i] = t.push([update])
        except BaseException as err:  # reported by the caller, never swallowed
            results[i] = err

    threads = [threading.Thread(target=push, args=(i, *p)) for i, p in pushes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == sorted(pushes), "a push did not finish"
    return results


def test_direct_and_pushing_writers_race_with_exactly_one_winner(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    """Two direct writers (the path) and two pushing ones (the file:// URL) race one
    compare-and-swap per round.  Some rounds hold one side back until the other side
    is done, so that each side also meets a ref the other has just moved."""
    writers = [clone(str(bare_remote), f"direct{i}") for i in range(2)]
    writers += [clone(bare_remote.as_uri(), f"push{i}") for i in range(2)]
    assert [w.direct for w in writers] == [True, True, False, False]
    for round_number, late in enumerate([None, "direct", "push", None, "direct", "push"]):
        olds = {w.fetch([MAIN])[MAIN] for w in writers}
        assert len(olds) == 1
        old = olds.pop()
        updates = [RefUpdate(MAIN, old, child(w, old, f"round {round_number}", winner=b"%d" % i))
                   for i, w in enumerate(writers)]  # fmt: skip
        held = {i for i, w in enumerate(writers) if late == ("direct" if w.direct else "push")}
        results: dict[int, object] = {}
        for phase in ([i for i in range(len(writers)) if i not in held], sorted(held)):
            if phase:
                results |= push_at_once({i: (writers[i], updates[i]) for i in phase})
        assert all(isinstance(r, bool) for r in results.values()), results
        winners = [i for i, won in results.items() if won]
        assert len(winners) == 1, (round_number, results)
        assert winners[0] not in held, (round_number, results)
        assert run_git("--git-dir", bare_remote, "rev-parse", MAIN) == updates[winners[0]].new
    run_git("--git-dir", bare_remote, "fsck", "--strict", "--no-dangling")


# ---- packed objects -------------------------------------------------------------------------


def test_a_direct_fetch_reads_objects_the_remote_keeps_packed(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    run_git("--git-dir", bare_remote, "gc", "--quiet")
    reader = clone(str(bare_remote), "reader")
    writer = clone(bare_remote.as_uri(), "writer")
    assert reader.direct and not writer.direct
    main = reader.fetch([MAIN])[MAIN]  # the reader has looked at the remote's packs
    # similar contents, so that the repacked remote stores most of them as deltas
    files = {f"data/part{i}.txt": b"".join(b"line %d of %d\n" % (n, i) for n in range(300))
             for i in range(8)}  # fmt: skip
    one = child(writer, main, "one", **files)
    two = child(writer, one, "two", **{"data/part3.txt": files["data/part3.txt"] + b"more\n",
                                       "deep/a/b/c.txt": b"deep\n"})  # fmt: skip
    assert writer.push([RefUpdate(MAIN, main, two)])
    run_git("--git-dir", bare_remote, "repack", "-adf", "--quiet")
    assert loose_objects(bare_remote / "objects") == []
    assert reader.fetch([MAIN]) == {MAIN: two}
    assert reader.read_file(two, "data/part3.txt") == files["data/part3.txt"] + b"more\n"
    assert reader.read_file(two, "deep/a/b/c.txt") == b"deep\n"
    assert reader.read_file(one, "data/part7.txt") == files["data/part7.txt"]
    run_git("--git-dir", local_dir(reader), "fsck", "--strict", "--no-dangling")


def test_a_direct_push_of_objects_packed_in_the_local_repository(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    files = {f"data/part{i}.txt": b"".join(b"line %d of %d\n" % (n, i) for n in range(300))
             for i in range(8)}  # fmt: skip
    one = child(t, main, "one", **files)
    two = child(t, one, "two", **{"data/part3.txt": b"changed\n", "deep/a/b/c.txt": b"deep\n"})
    run_git("--git-dir", local_dir(t), "update-ref", "refs/heads/keep", two)
    run_git("--git-dir", local_dir(t), "repack", "-adf", "--quiet")
    assert loose_objects(local_dir(t) / "objects") == []
    three = child(t, two, "three", **{"deep/a/b/d.txt": b"d\n"})  # built on packed trees
    assert t.direct
    assert t.push([RefUpdate(MAIN, main, three)])
    for commit in (one, two, three):
        run_git("--git-dir", bare_remote, "cat-file", "-e", commit)
    run_git("--git-dir", bare_remote, "fsck", "--strict", "--no-dangling")
    reader = clone(bare_remote.as_uri(), "reader")
    assert reader.fetch([MAIN]) == {MAIN: three}
    assert reader.read_file(three, "data/part5.txt") == files["data/part5.txt"]
    assert reader.read_file(three, "deep/a/b/c.txt") == b"deep\n"


# ---- only what is missing is copied ----------------------------------------------------------


def test_only_the_missing_objects_are_copied(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    files = {f"d{a}/s{b}/f{c}.txt": b"%d %d %d\n" % (a, b, c)
             for a in range(3) for b in range(2) for c in range(50)}  # fmt: skip
    big = child(t, main, "300 files", **files)
    assert t.push([RefUpdate(MAIN, main, big)])
    local = ObjectStore(local_dir(t) / "objects")
    remote = ObjectStore(bare_remote / "objects")
    asked: list[Oid] = []
    real_has = remote.has

    def has(oid: Oid) -> bool:
        asked.append(oid)
        return real_has(oid)

    remote.has = has  # type: ignore[method-assign]
    edited = child(t, big, "edit one file", **{"d1/s1/f7.txt": b"edited\n"})
    # the commit, the trees of "", "d1" and "d1/s1", the blob
    assert copy_objects(local, remote, [edited]) == 1 + 3 + 1
    # the walk looked at the changed path only, not at the 300 files
    assert len(asked) < 20, len(asked)
    assert copy_objects(local, remote, [edited]) == 0
    # a blob the remote holds already (another file's contents) is not copied again
    again = child(t, edited, "copy a file", **{"d2/s0/copy.txt": files["d0/s0/f0.txt"]})
    assert copy_objects(local, remote, [again]) == 1 + 3
    assert t.push([RefUpdate(MAIN, big, again)])
    run_git("--git-dir", bare_remote, "fsck", "--strict", "--no-dangling")


# ---- a copy cut short -----------------------------------------------------------------------


class Crash(Exception):
    """The process died here."""


def crashing(objects: Path, after: int) -> ObjectStore:
    """A store on ``objects`` whose object copies (a link, or a write) fail after ``after``."""
    store = ObjectStore(objects)
    writes = 0

    def limited(write: Callable[..., Oid | None]) -> Callable[..., Oid | None]:
        def wrapped(*args: object) -> Oid | None:
            nonlocal writes
            if writes >= after:
                raise Crash(f"after {after} writes")
            writes += 1
            return write(*args)

        return wrapped

    store.copy_from = limited(store.copy_from)  # type: ignore[method-assign,assignment]
    return store


def named_objects(kind: str, data: bytes) -> list[Oid]:
    """The objects a commit or tree names (gitlinks aside); none for a blob."""
    if kind == "commit":
        head = data.split(b"\n\n", 1)[0].split(b"\n")
        return [line.split(b" ")[1].decode() for line in head
                if line.startswith((b"tree ", b"parent "))]  # fmt: skip
    if kind == "tree":
        named, pos = [], 0
        while pos < len(data):
            nul = data.index(b"\0", pos)
            mode = data[pos : data.index(b" ", pos)]
            if mode != b"160000":
                named.append(data[nul + 1 : nul + 21].hex())
            pos = nul + 21
        return named
    return []


def closure_violations(objects: Path, oids: Iterable[Oid]) -> list[str]:
    """Every commit or tree among ``oids`` present in ``objects`` that names an object
    the store lacks."""
    store = ObjectStore(objects)
    problems = []
    for oid in oids:
        if store.has(oid):
            kind, data = store.read(oid)
            problems += [f"{kind} {oid} lacks {o}" for o in named_objects(kind, data)
                         if not store.has(o)]  # fmt: skip
    return problems


class Scene:
    """A local repository with history the remote lacks (part of it packed, a merge
    among it), and the remote's objects as they were, to copy into again and again."""

    def __init__(self, t: GitTransport, remote: Path, scratch: Path, run_git: RunGit) -> None:
        self.scratch = scratch
        main = t.fetch([MAIN])[MAIN]
        one = child(t, main, "one", **{"a/b/c.txt": b"c", "a/d.txt": b"d", "e/f/g/h.txt": b"h"})
        two = child(t, one, "two", **{"a/b/c.txt": b"c2", "x.txt": b"x", "e/f/i.txt": b"i"})
        run_git("--git-dir", local_dir(t), "update-ref", "refs/heads/keep", two)
        run_git("--git-dir", local_dir(t), "repack", "-ad", "--quiet")
        three = child(t, two, "three", **{"a/b/z.txt": b"z", "e/f/g/h.txt": None})
        side = child(t, main, "side", **{"s/t/u.txt": b"u", "a/e.txt": b"side"})
        merged = t.merge(three, side)
        assert merged.tree is not None
        self.tip = t.write_commit(parents=[three, side], message="merge", tree=merged.tree)
        self.source = ObjectStore(local_dir(t) / "objects")
        self.template = remote / "objects"
        listed = run_git("--git-dir", local_dir(t), "rev-list", "--objects", self.tip)
        self.closure = [line.split()[0] for line in listed.splitlines()]
        target = self.fresh()
        self.total = copy_objects(self.source, ObjectStore(target), [self.tip])
        assert self.total >= 15
        assert closure_violations(target, self.closure) == []
        assert all(ObjectStore(target).has(oid) for oid in self.closure)

    def fresh(self) -> Path:
        """A copy of the remote's objects, in a new folder."""
        target = Path(tempfile.mkdtemp(dir=self.scratch)) / "objects"
        shutil.copytree(self.template, target)
        return target


@pytest.fixture
def scene(
    bare_remote: Path, tmp_path: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> Scene:
    run_git("--git-dir", bare_remote, "gc", "--quiet")  # the remote holds packs too
    scratch = tmp_path / "targets"
    scratch.mkdir()
    return Scene(clone(str(bare_remote), "w"), bare_remote, scratch, run_git)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_copy_cut_short_leaves_no_commit_or_tree_without_what_it_names(
    scene: Scene, data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=0, max_value=scene.total - 1), label="writes")
    target = scene.fresh()
    with pytest.raises(Crash):
        copy_objects(scene.source, crashing(target, k), [scene.tip])
    assert closure_violations(target, scene.closure) == []
    # so a second copy, which stops at what the target holds, completes the closure
    assert copy_objects(scene.source, ObjectStore(target), [scene.tip]) == scene.total - k
    assert all(ObjectStore(target).has(oid) for oid in scene.closure)


def test_a_commit_whose_parent_is_copied_with_it_is_compared_with_the_parents_tree(
    bare_remote: Path, tmp_path: Path, clone: Callable[[str, str], GitTransport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim and the finish on it, fetched together: the finish's tree is compared with
    the claim's (which the same copy brings), not with nothing, so a folder of many jobs
    is not read entry by entry; and the copy is whole."""
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    many = {f"updates/job-{i:03d}/log.txt": b"%d" % i for i in range(200)}
    base = child(t, main, "base", **many)
    target = tmp_path / "target"
    shutil.copytree(bare_remote / "objects", target)
    copy_objects(ObjectStore(local_dir(t) / "objects"), ObjectStore(target), [base])
    claim = child(t, base, "claim", **{"jobs.txt": b"b\n"})
    finish = t.write_commit(parents=[claim, claim], message="finish", base=claim,
                            changes={"done.txt": b"a\n"})
    compared: list[tuple[int, int]] = []
    real = direct_module.new_entries

    def spy(data: bytes, old: bytes, size: int, ids: tuple[str | None, str | None] = (
            None, None)) -> list[tuple[bytes, int, bytes, tuple[int, bytes] | None]]:
        compared.append((len(data), len(old)))
        return real(data, old, size, ids)

    monkeypatch.setattr(direct_module, "new_entries", spy)
    assert copy_objects(ObjectStore(local_dir(t) / "objects"), ObjectStore(target),
                        [finish]) == 6  # two commits, their root trees, two blobs
    assert compared and all(old for _, old in compared), compared


def test_the_closure_check_catches_a_copy_written_parents_first(scene: Scene) -> None:
    """The check above is no tautology: objects written in the reverse of copy_objects'
    order (parents first) leave a commit or tree without its children when cut short."""

    def parents_first(source: ObjectStore, target: ObjectStore, tips: list[Oid]) -> None:
        order: list[Oid] = []

        def plan(source: ObjectStore, oid: Oid) -> None:  # writes nothing, notes the order
            order.append(oid)

        planner = ObjectStore(target.root)
        planner.copy_from = plan  # type: ignore[method-assign]
        copy_objects(source, planner, tips)
        for oid in reversed(order):
            target.copy_from(source, oid)

    caught = []
    for k in range(scene.total):
        target = scene.fresh()
        with pytest.raises(Crash):
            parents_first(scene.source, crashing(target, k), [scene.tip])
        if closure_violations(target, scene.closure):
            caught.append(k)
    assert caught, "the closure check never saw a commit or tree without what it names"
    assert 0 not in caught  # nothing written, nothing wrong


# ---- ref files -------------------------------------------------------------------------------


def test_read_ref_files_as_git_reads_them(bare_remote: Path, run_git: RunGit) -> None:
    def git(*args: str) -> str:
        return run_git("--git-dir", bare_remote, *args)

    main = git("rev-parse", MAIN)
    other = git("commit-tree", "-p", main, "-m", "other", main + "^{tree}")
    for name in ("loose", "packed", "gone", "locked"):
        git("update-ref", f"refs/distribute/{name}", main)
    git("update-ref", "refs/distributed/x", main)  # shares a prefix, not the folder
    git("tag", "-a", "-m", "a tag", "v1", main)  # packed with a peeled (^) line
    git("pack-refs", "--all")
    git("update-ref", "refs/distribute/gone-loose", main)
    git("update-ref", "refs/distribute/loose", other)  # loose now, its packed line is stale
    git("update-ref", "-d", "refs/distribute/gone")  # was packed
    git("update-ref", "-d", "refs/distribute/gone-loose")
    packed = (bare_remote / "packed-refs").read_text()
    assert f"{main} refs/distribute/loose\n" in packed  # the stale line is really there
    assert "refs/distribute/gone" not in packed and f"^{main}" in packed
    refs = bare_remote / "refs" / "distribute"
    (refs / "locked.lock").write_text(other + "\n")  # a writer holds it: old value stands
    (refs / "new.lock").write_text(other + "\n")  # a ref being created: not there yet
    (refs / "junk").write_text("not an object id\n")
    (refs / "symbolic").write_text(f"ref: {MAIN}\n")
    (refs / "binary").write_bytes(b"\xff\xfe\0")
    (refs / "deeper").mkdir()
    (refs / "deeper" / "w1").write_text(other + "\n")
    expected = {
        "refs/distribute/loose": other,
        "refs/distribute/packed": main,
        "refs/distribute/locked": main,
        "refs/distribute/deeper/w1": other,
    }
    assert read_ref_files(bare_remote, ["refs/distribute"]) == expected
    assert read_ref_files(bare_remote, ["refs/distribute/loose", "refs/distribute/gone"]) == {
        "refs/distribute/loose": other
    }
    tag = git("rev-parse", "refs/tags/v1")
    assert tag != main
    assert read_ref_files(bare_remote, ["refs/tags", MAIN]) == {"refs/tags/v1": tag, MAIN: main}
    assert read_ref_files(bare_remote, ["refs/nothing"]) == {}


def test_direct_reads_of_refs_agree_with_git(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    """The same ref states through the transport: loose over packed, deletions seen."""
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    one = child(t, main, "one")
    assert t.push([RefUpdate(WORKERS + "a", None, main), RefUpdate(WORKERS + "b", None, main)])
    run_git("--git-dir", bare_remote, "pack-refs", "--all")
    assert t.push([RefUpdate(WORKERS + "a", main, one), RefUpdate(WORKERS + "b", main, None)])
    expected = {WORKERS + "a": one}
    assert t.direct
    assert t.fetch([WORKERS + "*"]) == expected
    assert t.list_refs(WORKERS) == expected
    listed = run_git("--git-dir", bare_remote, "for-each-ref", "--format=%(refname) %(objectname)",
                     WORKERS)  # fmt: skip
    assert listed == f"{WORKERS}a {one}"


# ---- a stale lock in the local repository ----------------------------------------------------


@pytest.mark.parametrize("how", ["direct", "push"])
def test_a_stale_mirror_lock_never_yields_a_wrong_value(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit, how: str
) -> None:
    reader = clone(str(bare_remote) if how == "direct" else bare_remote.as_uri(), "reader")
    writer = clone(str(bare_remote), "writer")
    assert reader.direct is (how == "direct")
    main = reader.fetch([MAIN])[MAIN]
    new = child(writer, main, "new", a=b"new")
    stale = child(writer, main, "what the stale lock holds", a=b"stale")
    assert writer.push([RefUpdate(MAIN, main, new), RefUpdate(WORKERS + "w1", None, new)])
    wanted = [MAIN, WORKERS + "*"]
    expected = {MAIN: new, WORKERS + "w1": new}
    mirrors = {ref: reader.mirror_prefix + ref[len("refs/") :] for ref in expected}
    locks = [local_dir(reader) / (mirror + ".lock") for mirror in mirrors.values()]
    for lock in locks:  # one on a mirrored ref, one where a new ref will go
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(stale + "\n")

    def mirrored(ref: str) -> str | None:
        value = run_git("--git-dir", local_dir(reader), "for-each-ref",
                        "--format=%(objectname)", mirrors[ref])  # fmt: skip
        return value or None

    if how == "direct":
        # a direct fetch writes no mirror refs at all: the local repository keeps
        # unreachable objects instead, so a stale lock there is never in the way
        assert reader.fetch(wanted) == expected
        assert {ref: mirrored(ref) for ref in expected} == {MAIN: None, WORKERS + "w1": None}
        prune = run_git("--git-dir", local_dir(reader), "config", "gc.pruneExpire")
        assert prune == "never"
        assert reader.read_file(new, "a") == b"new"
        return
    try:
        got = reader.fetch(wanted)
    except TransportError:
        assert mirrored(MAIN) in (main, new)
        assert mirrored(WORKERS + "w1") in (None, new)
    else:
        assert got == expected
        assert {ref: mirrored(ref) for ref in expected} == expected
    assert stale not in {mirrored(ref) for ref in expected}
    for lock in locks:
        lock.unlink()
    assert reader.fetch(wanted) == expected
    assert {ref: mirrored(ref) for ref in expected} == expected
    assert reader.read_file(new, "a") == b"new"


# ---- found in review ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["direct", "push"])
def test_listing_every_ref_includes_packed_ones(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit, how: str
) -> None:
    """``list_refs("refs/")`` once read the whole repository folder and no packed refs."""
    t = clone(str(bare_remote) if how == "direct" else bare_remote.as_uri(), "w")
    main = t.fetch([MAIN])[MAIN]
    assert t.push([RefUpdate("refs/distribute/lock", None, main)])
    run_git("--git-dir", bare_remote, "pack-refs", "--all")
    assert t.push([RefUpdate("refs/heads/mains", None, main)])  # loose, after the packing
    everything = {MAIN: main, "refs/distribute/lock": main, "refs/heads/mains": main}
    assert t.list_refs("refs/") == everything
    assert t.list_refs("refs/heads/") == {MAIN: main, "refs/heads/mains": main}
    assert t.list_refs("refs/heads/main") == {MAIN: main, "refs/heads/mains": main}


def test_a_hook_made_executable_later_is_noticed(
    bare_remote: Path, clone: Callable[[str, str], GitTransport]
) -> None:
    """Making an existing hook file executable changes no folder's time stamp."""
    path = bare_remote / "hooks" / "pre-receive"
    path.write_text("#!/bin/sh\necho refused by the hook >&2\nexit 1\n")
    path.chmod(0o644)
    t = clone(str(bare_remote), "w")
    assert t.direct
    main = t.fetch([MAIN])[MAIN]
    path.chmod(0o755)
    assert not t.direct
    with pytest.raises(RemoteStateError):
        t.push([RefUpdate(MAIN, main, child(t, main, "x", x=b"1"))])


def test_annotated_tags_bring_what_they_point_at(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    """A tag object names a commit; copying the tag alone left both stores broken."""
    writer = clone(str(bare_remote), "writer")
    main = writer.fetch([MAIN])[MAIN]
    tagged = child(writer, main, "tagged", **{"t.txt": b"tagged"})
    tag = run_git("--git-dir", local_dir(writer), "mktag",
                  input=(f"object {tagged}\ntype commit\ntag v1\n"
                         "tagger t <t@localhost> 0 +0000\n\nversion one\n").encode())  # fmt: skip
    assert writer.push([RefUpdate("refs/tags/v1", None, tag)])
    run_git("--git-dir", bare_remote, "fsck", "--strict", "--no-dangling")
    reader = clone(str(bare_remote), "reader")
    assert reader.fetch(["refs/tags/*"]) == {"refs/tags/v1": tag}
    assert reader.read_file(tagged, "t.txt") == b"tagged"
    run_git("--git-dir", local_dir(reader), "fsck", "--strict", "--no-dangling")


def test_hidden_refs_keep_the_pack_protocol(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    run_git("--git-dir", bare_remote, "config", "uploadpack.hideRefs", "refs/secret")
    assert not clone(str(bare_remote), "w").direct


def test_a_remote_that_serves_partial_clones_is_still_written_directly(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit
) -> None:
    """Those settings only widen what a fetch may ask for; `distribute init` sets them."""
    for key in PARTIAL_CLONE_SETTINGS:
        run_git("--git-dir", bare_remote, "config", key, "true")
    assert clone(str(bare_remote), "w").direct


def test_a_lock_file_left_by_a_dead_git_is_a_clear_error_a_fresh_one_a_lost_race(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """git never breaks another process's ref lock; one left by a killed git would make
    every compare-and-swap look lost for ever.  A lock is taken for stale only after this
    process saw it in the way, unchanged, for longer than a git run of ours may last:
    its time stamp alone proves nothing (a file server's clock may be far behind)."""
    import os
    import time

    import distribute.transport.direct_remote as direct_remote_module

    monkeypatch.setattr(direct_remote_module, "_STALE_LOCK_SECONDS", 0.3)
    t = clone(str(bare_remote), "w")
    assert t._direct is not None
    t._direct.timeout = 0.5  # so a stale lock is one seen for over 1 s
    main = t.fetch([MAIN])[MAIN]
    lock = bare_remote / "refs" / "heads" / "main.lock"
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))  # an hour old by its stamp: still a lost race at first
    new = child(t, main, "x", x=b"1")
    assert t.push([RefUpdate(MAIN, main, new)]) is False
    time.sleep(1.1)
    with pytest.raises(RemoteStateError, match="main.lock") as caught:
        t.push([RefUpdate(MAIN, main, new)])
    assert "delete" in str(caught.value)
    lock.unlink()
    lock.write_text("")  # another writer's lock, seen for the first time: a lost race
    assert t.push([RefUpdate(MAIN, main, new)]) is False
    lock.unlink()
    assert t.push([RefUpdate(MAIN, main, new)]) is True


def test_a_tree_left_without_its_blob_by_a_killed_git_is_completed(
    tmp_path: Path, run_git: RunGit
) -> None:
    """Git promises that everything below an object is present only for objects a ref
    reaches: a killed receive-pack moves its objects in hash order, a killed prune deletes
    in any.  A re-run job writes the very same trees, so a tree present in the target is
    no proof that its blobs are; commits are (no two writers make the same commit)."""
    local, remote = tmp_path / "local", tmp_path / "remote.git"
    run_git("init", "-q", local)
    run_git("init", "-q", "--bare", remote)
    blob = run_git("-C", local, "hash-object", "-w", "--stdin", input=b"job output\n")
    tree = run_git("-C", local, "mktree", input=f"100644 blob {blob}\tout.txt\n".encode())
    commit = run_git("-C", local, "commit-tree", tree, "-m", "job")
    half = remote / "objects" / tree[:2]
    half.mkdir(parents=True)
    shutil.copy(local / ".git" / "objects" / tree[:2] / tree[2:], half / tree[2:])
    copy_objects(ObjectStore(local / ".git" / "objects"), ObjectStore(remote / "objects"), [commit])
    run_git("--git-dir", remote, "update-ref", "refs/heads/main", commit)
    run_git("--git-dir", remote, "fsck", "--strict", "--no-dangling")


def test_a_remote_moved_away_mid_look_is_an_error_not_missing_refs(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], tmp_path: Path
) -> None:
    """The folder can go between the check that the remote may be read directly and the
    read itself; then no ref file is found, which must not read as "no such refs"."""
    t = clone(str(bare_remote), "w")
    assert t._direct is not None and t.direct
    t._direct.refusal = lambda: None  # type: ignore[method-assign]  # checked just before
    bare_remote.rename(tmp_path / "away.git")
    with pytest.raises(TransportError, match="gone"):
        t.fetch([MAIN])
    with pytest.raises(TransportError, match="gone"):
        t.list_refs("refs/distribute/")
    (tmp_path / "away.git").rename(bare_remote)
    assert MAIN in t.fetch([MAIN])


# ---- a remote folder that is gone or replaced -------------------------------------------------


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime)`` of every file and folder below ``folder``."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in folder.rglob("*")
    }


def test_a_remote_moved_away_is_a_transport_error_and_nothing_is_created_there(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], tmp_path: Path
) -> None:
    """Every way a worker reaches the remote -- a fetch, a peek (``list_refs``), a push, and
    the direct steps a push is made of -- fails with a ``TransportError`` that names the
    path while the repository is away, and none of them makes a folder at its path: a new
    folder there would keep the repository from being moved back."""
    t = clone(str(bare_remote), "w")
    direct = t._direct
    assert direct is not None and t.direct
    main = t.fetch([MAIN])[MAIN]
    new = child(t, main, "made while the remote is away", a=b"away")
    local = ObjectStore(local_dir(t) / "objects")
    away = tmp_path / "away.git"
    bare_remote.rename(away)
    steps: dict[str, Callable[[], object]] = {
        "fetch": lambda: t.fetch([MAIN, WORKERS + "*"]),
        "peek": lambda: t.list_refs("refs/distribute/"),
        "push": lambda: t.push([RefUpdate(MAIN, main, new)]),
        "push of a new branch": lambda: t.push([RefUpdate("refs/heads/jobs/w/j", None, new)]),
        "object copy": lambda: copy_objects(local, direct.store, [new]),
        "ref update": lambda: direct.update_refs([RefUpdate("refs/heads/jobs/w/j", None, new)]),
        "git in the remote": lambda: direct.run(["gc", "--auto", "--quiet"]),
    }
    for what, step in steps.items():
        with pytest.raises(TransportError, match="gone") as caught:
            step()
        assert str(bare_remote) in str(caught.value), what
        assert not bare_remote.exists(), f"{what} wrote {sorted(listing(bare_remote))}"
    assert t.direct is False
    away.rename(bare_remote)  # back where it was: the same transport carries on
    assert t.direct is True
    assert t.push([RefUpdate(MAIN, main, new)]) is True
    assert t.fetch([MAIN]) == {MAIN: new}


@pytest.mark.parametrize("replacement", ["empty folder", "another repository", "one with a hook"])
def test_a_remote_folder_replaced_by_another_is_neither_read_nor_written(
    bare_remote: Path,
    clone: Callable[[str, str], GitTransport],
    tmp_path: Path,
    run_git: RunGit,
    replacement: str,
) -> None:
    """A new folder at the remote's path is not the repository the transport started with,
    even when it is a repository too: its refs are not taken for the remote's, nothing is
    written into it (directly, or by git push when a hook makes the remote push-only),
    and the original works again once it is back."""
    t = clone(str(bare_remote), "w")
    direct = t._direct
    assert direct is not None and t.direct
    main = t.fetch([MAIN])[MAIN]
    new = child(t, main, "not for the replacement", a=b"x")
    local = ObjectStore(local_dir(t) / "objects")
    away = tmp_path / "away.git"
    bare_remote.rename(away)
    if replacement == "empty folder":
        bare_remote.mkdir()
    else:
        run_git("init", "--quiet", "--bare", "--initial-branch=main", bare_remote)
        tree = run_git("--git-dir", bare_remote, "mktree", input=b"")
        other = run_git("--git-dir", bare_remote, "commit-tree", "-m", "another", tree)
        run_git("--git-dir", bare_remote, "update-ref", MAIN, other)
        if replacement == "one with a hook":
            hook(bare_remote, "pre-receive", "cat >/dev/null\n")
    before = listing(bare_remote)
    steps: dict[str, Callable[[], object]] = {
        "fetch": lambda: t.fetch([MAIN]),
        "peek": lambda: t.list_refs("refs/heads/"),
        "push": lambda: t.push([RefUpdate(MAIN, main, new)]),
        "push of a new branch": lambda: t.push([RefUpdate("refs/heads/jobs/w/j", None, new)]),
        "object copy": lambda: copy_objects(local, direct.store, [new]),
        "ref update": lambda: direct.update_refs([RefUpdate("refs/heads/jobs/w/j", None, new)]),
    }
    for what, step in steps.items():
        with pytest.raises(TransportError, match="no longer the repository") as caught:
            step()
        assert str(bare_remote) in str(caught.value), what
        assert listing(bare_remote) == before, what
    assert t.direct is False
    shutil.rmtree(bare_remote)
    away.rename(bare_remote)
    assert t.direct is True
    assert t.push([RefUpdate(MAIN, main, new)]) is True


def git_that_moves(tmp_path: Path, source: Path, target: Path, point: str) -> Path:
    """A git for the transport to run that moves ``source`` to ``target`` (once) in the
    middle of a ``git update-ref --stdin``:

    * ``found``: after git has found the repository (its trace shows the command's
      name, written once the repository is set up) and before it reads the updates;
    * ``locked``: while git holds the locks of every ref it updates (the
      ``reference-transaction`` hook's "prepared" call, which comes after the last
      lock is taken and before the first is renamed into place).

    Every other git command runs unchanged, and so does every one after the move."""
    real = shutil.which("git")
    assert real is not None
    moved = tmp_path / "moved"  # made by the move: there is one only
    move = f"mv '{source}' '{target}' && touch '{moved}'"
    hooks = tmp_path / "moving-hooks"
    hooks.mkdir()
    (hooks / "reference-transaction").write_text(
        "#!/bin/sh\n"
        "cat >/dev/null\n"
        f"if [ \"$1\" = prepared ] && [ ! -e '{moved}' ]; then {move}; fi\n"
    )
    (hooks / "reference-transaction").chmod(0o755)
    trace = tmp_path / "trace.json"
    if point == "found":
        run = (
            "    { n=0\n"
            f"      until grep -q '\"cmd_name\"' '{trace}' 2>/dev/null || [ $n -ge 3000 ]; do\n"
            "          sleep 0.01; n=$((n + 1))\n"
            "      done\n"
            f"      {move}\n"
            "      cat\n"
            f"    }} | GIT_TRACE2_EVENT='{trace}' '{real}' \"$@\"\n"
            "    exit $?\n"
        )
    else:  # the hooks the transport switches off, switched on again for this one command
        run = (
            '    for arg in "$@"; do\n'
            "        shift\n"
            f"        [ \"$arg\" = core.hooksPath=/dev/null ] && arg='core.hooksPath={hooks}'\n"
            '        set -- "$@" "$arg"\n'
            "    done\n"
            f"    exec '{real}' \"$@\"\n"
        )
    wrapper = tmp_path / "git-that-moves"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{moved}' ]; then\n"
        '    case " $* " in *" update-ref --stdin "*)\n'
        f"{run}"
        "    esac\n"
        "fi\n"
        f"exec '{real}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.parametrize("point", ["found", "locked"])
def test_a_remote_moved_while_git_changes_its_refs_is_changed_where_it_went(
    bare_remote: Path,
    clone: Callable[[str, str], GitTransport],
    tmp_path: Path,
    run_git: RunGit,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    """The cause of "Directory not empty" when a moved-away remote was moved back: git's
    ref transaction makes the folders of a ref's lock file when they are missing, so a
    ``git update-ref`` that had found the repository by its path just before it moved
    made a new folder there, holding ``refs/heads/``.  And one that held its ref locks
    when the repository moved left them behind (git removes or renames a lock by the
    path it had when taken) with part of the transaction applied, so that every later
    update of those refs failed.  git must carry on in the folder it found, wherever
    that went: the whole transaction lands there, no lock is left, nothing is made at
    the old path."""
    t = clone(str(bare_remote), "w")
    assert t.direct
    main = t.fetch([MAIN])[MAIN]
    new = child(t, main, "lands while the remote moves", a=b"moved")
    away = tmp_path / "away.git"
    wrapper = git_that_moves(tmp_path, bare_remote, away, point)
    monkeypatch.setattr(git.Git, "GIT_PYTHON_GIT_EXECUTABLE", str(wrapper))
    updates = [RefUpdate(MAIN, main, new), RefUpdate(WORKERS + "w", None, new),
               RefUpdate("refs/heads/jobs/w/j", None, new)]  # fmt: skip
    landed = t.push(updates)
    assert away.is_dir(), "the wrapper did not move the remote"
    if point == "found":
        assert '"cmd_name"' in (tmp_path / "trace.json").read_text()  # moved after setup
    assert not bare_remote.exists(), f"made again: {sorted(listing(bare_remote))}"
    assert sorted(str(p.relative_to(away)) for p in away.rglob("*.lock")) == []
    assert landed is True  # the update went to the repository git had found
    for update in updates:
        assert run_git("--git-dir", away, "rev-parse", update.ref) == new
    with pytest.raises(TransportError, match="gone"):
        t.fetch([MAIN])
    away.rename(bare_remote)
    assert t.fetch([MAIN]) == {MAIN: new}
    assert t.push([RefUpdate(MAIN, new, main)]) is True  # no lock left in the way


def test_a_hooks_explanation_is_part_of_the_refusal(
    bare_remote: Path, clone: Callable[[str, str], GitTransport]
) -> None:
    """A server's hook says why it refuses (its ``remote:`` lines); the error shows it,
    scrubbed, instead of git's bare "pre-receive hook declined"."""
    t = clone(str(bare_remote), "w")
    main = t.fetch([MAIN])[MAIN]
    hook(bare_remote, "pre-receive",
         "cat >/dev/null\necho 'custom refs are not allowed here'\n"
         "echo 'see https://admin:hunter2@example.com/policy'\nexit 1\n")
    second = child(t, main, "refused", a=b"2")
    with pytest.raises(RemoteStateError, match="custom refs are not allowed here") as caught:
        t.push([RefUpdate(MAIN, main, second)])
    assert "hunter2" not in str(caught.value)
    assert "admin:***@example.com/policy" in caught.value.context["remote_said"]


def test_a_new_packed_refs_file_is_read_again(bare_remote: Path, run_git: RunGit) -> None:
    """``packed-refs`` is parsed once per version; each rewrite by git is seen."""

    def git(*args: str) -> str:
        return run_git("--git-dir", bare_remote, *args)

    main = git("rev-parse", MAIN)
    other = git("commit-tree", "-p", main, "-m", "other", main + "^{tree}")
    git("update-ref", "refs/distribute/a", main)
    git("pack-refs", "--all")
    assert read_ref_files(bare_remote, ["refs/distribute"]) == {"refs/distribute/a": main}
    git("update-ref", "refs/distribute/a", other)
    git("update-ref", "refs/distribute/b", main)
    git("pack-refs", "--all")  # the same size for a, a new line for b
    assert read_ref_files(bare_remote, ["refs/distribute"]) == {
        "refs/distribute/a": other, "refs/distribute/b": main,
    }
    # a same-size rewrite renamed into place, as git writes it
    packed = bare_remote / "packed-refs"
    text = packed.read_text().replace(f"{main} refs/distribute/b", f"{other} refs/distribute/b")
    fresh = bare_remote / "packed-refs.new"
    fresh.write_text(text)
    fresh.replace(packed)
    assert read_ref_files(bare_remote, ["refs/distribute/b"]) == {"refs/distribute/b": other}
    # a version with the same inode, size and time stamp as one read before: file times
    # are coarse and inodes are reused, so nothing about the file but its text tells
    before = packed.stat()
    packed.write_text(text.replace(f"{other} refs/distribute/b", f"{main} refs/distribute/b"))
    os.utime(packed, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = packed.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert read_ref_files(bare_remote, ["refs/distribute/b"]) == {"refs/distribute/b": main}


def test_the_remote_stays_packed_when_lost_races_leave_objects_behind(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], run_git: RunGit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Objects of lost races are unreachable and young: ``git gc --auto`` leaves them loose,
    then warns in ``gc.log`` and stops running for a day while the remote grows.  The
    direct path's housekeeping packs them into a cruft pack instead."""
    import distribute.transport.direct_remote as direct_remote_module

    monkeypatch.setattr(direct_remote_module, "_GC_EVERY", 1)
    monkeypatch.setattr(direct_remote_module, "_LOOSE_LIMIT", 40)
    blobs = "".join(f"what a lost race wrote {i}\n" for i in range(120))
    for line in blobs.splitlines():
        run_git("--git-dir", bare_remote, "hash-object", "-w", "--stdin",
                input=(line + "\n").encode())
    (bare_remote / "gc.log").write_text("warning: There are too many unreachable loose objects\n")
    t = clone(str(bare_remote), "w")
    assert t._direct is not None
    main = t.fetch([MAIN])[MAIN]
    assert t.push([RefUpdate(MAIN, main, child(t, main, "x", x=b"1"))])
    counts = dict(line.split(": ") for line in
                  run_git("--git-dir", bare_remote, "count-objects", "-v").splitlines())
    assert int(counts["count"]) < 40, counts
    assert not (bare_remote / "gc.log").exists()
    assert list((bare_remote / "objects" / "pack").glob("*.mtimes")), "no cruft pack"
    # the unreachable objects are kept (young), only packed
    one = run_git("--git-dir", bare_remote, "hash-object", "--stdin",
                  input=b"what a lost race wrote 7\n")
    assert run_git("--git-dir", bare_remote, "cat-file", "-t", one) == "blob"


def test_a_long_list_of_refs_is_fetched_a_few_hundred_to_a_command(
    bare_remote: Path, clone: Callable[[str, str], GitTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    # thousands of refs on one command line would pass the system's limit; the split
    # is shown with batches of two
    t = clone(bare_remote.as_uri(), "w")
    main = t.fetch([MAIN])[MAIN]
    names = [f"refs/heads/jobs/w/j{i}/{i}" for i in range(5)]
    lines = "".join(f"create {name} {main}\n" for name in names[:4])
    subprocess.run(["git", "--git-dir", str(bare_remote), "update-ref", "--stdin"],
                   input=lines.encode(), check=True)
    monkeypatch.setattr(git_transport_module, "_FETCH_BATCH", 2)
    fetches = []
    run = t._repo.run
    monkeypatch.setattr(t._repo, "run", lambda args, **kw: (
        fetches.append(args) if "fetch" in args else None) or run(args, **kw))
    assert t.fetch([*names, MAIN]) == {**dict.fromkeys(names[:4], main), MAIN: main}
    assert len(fetches) >= 3 and all(len([a for a in f if a.startswith("+refs/")]) <= 2
                                      for f in fetches)
