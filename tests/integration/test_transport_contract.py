"""One contract suite for every transport: the in-memory remote, a bare repository, git daemon,
and hosted remotes (sshd, smart HTTP; see ``tests/servers.py``).

Each backend hands out fresh transports (for git: each on its own clone) and
reads the remote's refs out of band, so a test can check what really
happened on the remote.  The bare repository runs the suite twice: given as
a path ("bare": written directly, no git push) and as a ``file://`` URL
("bare-push": git push and fetch); each backend checks that its transports
take the path it names.  Git-only behaviour (the local copy, timeouts,
server refusals) follows in its own classes.  Over the hosted remotes a part of the suite
runs in the default tier (:data:`HOSTED_DEFAULT_TIER`), the rest with ``-m slow``.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from distribute.core.errors import (
    OutcomeUnknown,
    RemoteStateError,
    TransportError,
    UsageError,
)
from distribute.transport.base import Oid, RefUpdate, Transport
from distribute.transport.git import GitTransport, init_bare_repo
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.memory import MemoryRemote

MAIN = "refs/heads/main"
LOCK = "refs/distribute/lock"
WORKERS = "refs/distribute/workers/"
RACERS = 4


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RunGit(Protocol):
    def __call__(self, *args: str | os.PathLike[str], input: bytes | None = None) -> str: ...


class Backend:
    """What a contract test needs from a remote, whatever implements it."""

    name: str
    readme: bytes  # what README.md on main holds at the start

    def transport(self) -> Transport:
        raise NotImplementedError

    def remote_value(self, ref: str) -> Oid | None:
        raise NotImplementedError

    def unreachable(self) -> Transport:
        """A transport whose remote cannot be reached (URL with credentials, for git)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, remote: MemoryRemote, readme: bytes) -> None:
        self.remote, self.readme = remote, readme

    def transport(self) -> Transport:
        return self.remote.transport()

    def remote_value(self, ref: str) -> Oid | None:
        return self.remote.get_ref(ref)

    def unreachable(self) -> Transport:
        self.remote.fault_hook = lambda name, updates: "drop"
        self.remote.fetch_fault_hook = lambda name, refs: "drop"
        return self.remote.transport()


class GitBackend(Backend):
    """A git remote; ``direct`` (when not ``None``) is what every transport handed out must
    say about writing the remote directly, so the suite cannot test the other path."""

    def __init__(
        self,
        name: str,
        url: str,
        path: Path,
        scratch: Path,
        readme: bytes,
        git: RunGit,
        *,
        direct: bool | None = None,
    ) -> None:
        self.name, self.url, self.path, self.scratch = name, url, path, scratch
        self.readme, self.git, self.direct = readme, git, direct
        self._numbers = itertools.count()
        self._open: list[GitTransport | GitLocalCopy] = []

    def clone(self) -> GitLocalCopy:
        copy = GitLocalCopy.clone(self.url, self.scratch / f"worker{next(self._numbers)}")
        self._open.append(copy)
        return copy

    def transport(self) -> Transport:
        transport = self.clone().transport()
        self._open.append(transport)
        if self.direct is not None:
            assert transport.direct is self.direct, f"{self.name}: direct={transport.direct}"
        return transport

    def remote_value(self, ref: str) -> Oid | None:
        value = self.git("--git-dir", self.path, "for-each-ref", "--format=%(objectname)", ref)
        return value or None

    def unreachable(self) -> Transport:
        url = f"https://user:secret@127.0.0.1:{closed_port()}/x.git"
        transport = GitTransport(self.clone().path, url, timeout=20)
        self._open.append(transport)
        return transport

    def close(self) -> None:
        for thing in self._open:
            thing.close()


BACKENDS = ["memory", "bare", "bare-push", pytest.param("daemon", marks=pytest.mark.daemon)]
#: hosted backends (real servers on 127.0.0.1): the fixture in tests/conftest.py giving
#: each one's (URL, path on disk)
HOSTED = {"ssh": "ssh_remote", "http": "http_remote", "ssh-latency": "ssh_latency_remote"}
#: what runs over each hosted backend in the default tier (a test's name, or its class's
#: name for all of its tests); everything else over them is in the slow tier
HOSTED_DEFAULT_TIER: dict[str, set[str]] = {
    "ssh": {
        "test_exactly_one_writer_wins_a_race",
        "test_atomic_push_is_all_or_nothing",
        "test_fetch_glob_follows_creations_and_deletions",
    },
    "http": {"TestRemoteRefs", "TestNamesCannotBecomeOptions"},
    "ssh-latency": set(),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``backend`` runs over :data:`BACKENDS` and the hosted backends."""
    if "backend" not in metafunc.fixturenames:
        return
    names = {metafunc.function.__name__, metafunc.cls.__name__ if metafunc.cls else ""}
    hosted = [
        pytest.param(
            name,
            marks=[pytest.mark.hosted]
            + ([] if names & HOSTED_DEFAULT_TIER[name] else [pytest.mark.slow]),
        )
        for name in HOSTED
    ]
    metafunc.parametrize("backend", [*BACKENDS, *hosted], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """``bare``: the remote's path (written directly); ``bare-push``: the same kind of
    remote through its ``file://`` URL (git push and fetch); ``daemon``: git://;
    ``ssh``: sshd; ``http``: smart HTTP with basic auth; ``ssh-latency``: sshd behind a
    proxy adding latency."""
    chosen: Backend
    readme: bytes = request.getfixturevalue("remote_readme")
    if request.param == "memory":
        chosen = MemoryBackend(request.getfixturevalue("memory_remote"), readme)
    else:
        run_git: RunGit = request.getfixturevalue("run_git")
        if request.param in ("bare", "bare-push"):
            path = request.getfixturevalue("bare_remote")
            url = str(path) if request.param == "bare" else path.as_uri()
        elif request.param in HOSTED:
            url, path = request.getfixturevalue(HOSTED[request.param])
        else:
            url = request.getfixturevalue("daemon_remote")
            path = request.getfixturevalue("daemon_remote_path")
        direct = request.param == "bare"
        chosen = GitBackend(request.param, url, path, tmp_path, readme, run_git, direct=direct)
    yield chosen
    chosen.close()


def main_of(transport: Transport) -> Oid:
    return transport.fetch([MAIN])[MAIN]


def child(transport: Transport, parent: Oid, message: str, **files: bytes | None) -> Oid:
    """A commit on ``parent`` changing ``files`` (``None`` deletes)."""
    return transport.write_commit(parents=[parent], message=message, base=parent, changes=files)


class TestRemoteRefs:
    def test_fetch_returns_values_and_makes_files_readable(self, backend: Backend) -> None:
        t = backend.transport()
        values = t.fetch([MAIN])
        assert values == {MAIN: backend.remote_value(MAIN)}
        assert t.read_file(values[MAIN], "README.md") == backend.readme
        assert t.read_file(values[MAIN], "missing.txt") is None
        assert t.commit_message(values[MAIN]).startswith("initial commit")

    def test_fetch_sees_what_another_worker_pushed(self, backend: Backend) -> None:
        writer, reader = backend.transport(), backend.transport()
        main = main_of(writer)
        new = child(writer, main, "add a file", **{"updates/a.txt": b"A"})
        assert writer.push([RefUpdate(MAIN, main, new)])
        assert reader.fetch([MAIN]) == {MAIN: new}
        assert reader.read_file(new, "updates/a.txt") == b"A"
        assert reader.read_file(new, "README.md") == backend.readme

    def test_missing_refs_are_absent_not_errors(self, backend: Backend) -> None:
        t = backend.transport()
        values = t.fetch([MAIN, "refs/heads/nope", LOCK, WORKERS + "*"])
        assert values == {MAIN: backend.remote_value(MAIN)}
        assert t.fetch(["refs/heads/nope"]) == {}
        assert t.fetch([]) == {}

    def test_fetch_glob_follows_creations_and_deletions(self, backend: Backend) -> None:
        writer, reader = backend.transport(), backend.transport()
        main = main_of(writer)
        beat1, beat2 = child(writer, main, "w1"), child(writer, main, "w2")
        assert writer.push([RefUpdate(WORKERS + "w1", None, beat1)])
        assert writer.push([RefUpdate(WORKERS + "w2", None, beat2)])
        assert reader.fetch([WORKERS + "*", MAIN]) == {
            WORKERS + "w1": beat1,
            WORKERS + "w2": beat2,
            MAIN: main,
        }
        assert writer.push([RefUpdate(WORKERS + "w1", beat1, None)])
        assert reader.fetch([WORKERS + "*"]) == {WORKERS + "w2": beat2}

    def test_a_ref_deleted_after_a_fetch_is_absent_from_the_next(self, backend: Backend) -> None:
        writer, reader = backend.transport(), backend.transport()
        main = main_of(writer)
        lock = child(writer, main, "lock")
        assert writer.push([RefUpdate(LOCK, None, lock)])
        assert reader.fetch([LOCK, MAIN]) == {LOCK: lock, MAIN: main}
        assert writer.push([RefUpdate(LOCK, lock, None)])
        assert reader.fetch([LOCK, MAIN]) == {MAIN: main}
        assert backend.remote_value(LOCK) is None

    def test_list_refs_reads_current_values_under_a_prefix(self, backend: Backend) -> None:
        writer, reader = backend.transport(), backend.transport()
        main = main_of(writer)
        beat = child(writer, main, "beat")
        assert writer.push([RefUpdate(WORKERS + "w1", None, beat), RefUpdate(LOCK, None, beat)])
        assert reader.list_refs(WORKERS) == {WORKERS + "w1": beat}
        assert reader.list_refs("refs/heads/") == {MAIN: main}
        assert reader.list_refs("refs/distribute/") == {WORKERS + "w1": beat, LOCK: beat}
        assert reader.list_refs("refs/nothing/") == {}

    def test_exactly_one_writer_wins_a_race(self, backend: Backend) -> None:
        racers = [backend.transport() for _ in range(RACERS)]
        old = main_of(racers[0])
        for t in racers[1:]:
            assert main_of(t) == old
        news = [child(t, old, f"racer {i}", **{"winner.txt": str(i).encode()}) for i, t in
                enumerate(racers)]  # fmt: skip
        barrier = threading.Barrier(RACERS, timeout=30)
        results: dict[int, bool | BaseException] = {}

        def race(i: int) -> None:
            barrier.wait()
            try:
                results[i] = racers[i].push([RefUpdate(MAIN, old, news[i])])
            except BaseException as err:  # reported below, never swallowed
                results[i] = err

        threads = [threading.Thread(target=race, args=(i,)) for i in range(RACERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == list(range(RACERS)), "a racer did not finish"
        assert all(isinstance(r, bool) for r in results.values()), results
        winners = [i for i, won in results.items() if won is True]
        assert len(winners) == 1
        assert backend.remote_value(MAIN) == news[winners[0]]

    def test_atomic_push_is_all_or_nothing(self, backend: Backend) -> None:
        t, other = backend.transport(), backend.transport()
        main = main_of(t)
        lock = child(t, main, "lock 1")
        assert t.push([RefUpdate(LOCK, None, lock)])
        moved = child(other, main, "lock moved by someone else")
        assert other.push([RefUpdate(LOCK, lock, moved)])
        claim = child(t, main, "claim", **{"running.txt": b"job\n"})
        release = child(t, lock, "release")
        branch = "refs/heads/jobs/w1/job"
        stale = [
            RefUpdate(MAIN, main, claim),
            RefUpdate(LOCK, lock, release),  # stale: the lock moved
            RefUpdate(branch, None, claim),
        ]
        assert t.push(stale) is False
        assert backend.remote_value(MAIN) == main
        assert backend.remote_value(LOCK) == moved
        assert backend.remote_value(branch) is None
        fresh = [RefUpdate(MAIN, main, claim), RefUpdate(LOCK, moved, release),
                 RefUpdate(branch, None, claim)]  # fmt: skip
        assert t.push(fresh) is True
        assert [backend.remote_value(r) for r in (MAIN, LOCK, branch)] == [claim, release, claim]

    def test_must_not_exist_creation_lets_only_the_first_win(self, backend: Backend) -> None:
        a, b = backend.transport(), backend.transport()
        main = main_of(a)
        first, second = child(a, main, "first"), child(b, main, "second")
        assert a.push([RefUpdate(LOCK, None, first)]) is True
        assert b.push([RefUpdate(LOCK, None, second)]) is False
        assert backend.remote_value(LOCK) == first

    def test_delete_needs_the_expected_value(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        lock, other = child(t, main, "lock"), child(t, main, "other")
        assert t.push([RefUpdate(LOCK, None, lock)])
        assert t.push([RefUpdate(LOCK, other, None)]) is False
        assert backend.remote_value(LOCK) == lock
        assert t.push([RefUpdate(LOCK, lock, None)]) is True
        assert backend.remote_value(LOCK) is None
        assert t.push([RefUpdate(LOCK, lock, None)]) is False  # already gone: expectation fails
        assert t.push([RefUpdate(LOCK, None, None)]) is True  # "absent" holds: nothing to do

    def test_a_lost_race_is_false_and_changes_nothing(self, backend: Backend) -> None:
        slow, fast = backend.transport(), backend.transport()
        main = main_of(slow)
        assert main_of(fast) == main
        won = child(fast, main, "fast")
        assert fast.push([RefUpdate(MAIN, main, won)])
        late = child(slow, main, "slow")
        assert slow.push([RefUpdate(MAIN, main, late)]) is False
        assert backend.remote_value(MAIN) == won

    def test_pushing_the_value_a_ref_already_holds_is_up_to_date(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        new = child(t, main, "new")
        assert t.push([RefUpdate(MAIN, main, new)])
        assert t.push([RefUpdate(MAIN, main, new)]) is True  # git: "[up to date]"
        assert t.push([RefUpdate(MAIN, new, new)]) is True  # an assertion that holds
        assert t.push([RefUpdate(MAIN, main, main)]) is False  # one that does not
        assert backend.remote_value(MAIN) == new

    def test_an_unreachable_remote_raises_without_credentials(self, backend: Backend) -> None:
        main = main_of(backend.transport())
        broken = backend.unreachable()
        calls: list[Callable[[], object]] = [
            lambda: broken.fetch([MAIN]),
            lambda: broken.list_refs("refs/heads/"),
            lambda: broken.push([RefUpdate(MAIN, main, main)]),
        ]
        for call in calls:
            with pytest.raises(TransportError) as caught:
                call()
            assert not isinstance(caught.value, OutcomeUnknown)  # nothing was sent
            assert "secret" not in str(caught.value)
            assert "secret" not in repr(caught.value.context)
        assert backend.remote_value(MAIN) == main


class TestNamesCannotBecomeOptions:
    BAD_REFS = ["-x", "--upload-pack=touch pwned", "heads/main", "refs/heads/a..b", "refs/x y",
                "refs/heads/", "refs//x", "refs/heads/x.lock", "refs/a*b"]  # fmt: skip

    def test_bad_ref_names_are_refused_before_anything_runs(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        t = backend.transport()
        main = main_of(t)
        for bad in self.BAD_REFS:
            with pytest.raises(UsageError):
                t.fetch([MAIN, bad])
            with pytest.raises(UsageError):
                t.push([RefUpdate(bad, None, main)])
            if bad != "refs/heads/":  # a fine prefix, though no ref name
                with pytest.raises(UsageError):
                    t.list_refs(bad)
        with pytest.raises(UsageError):
            t.push([RefUpdate(LOCK, "--force", main)])
        with pytest.raises(UsageError):
            t.read_file("--help", "README.md")
        with pytest.raises(UsageError):
            t.merge(main, "-n")
        assert not list(tmp_path.rglob("pwned"))
        assert backend.remote_value(MAIN) == main

    def test_dashes_are_fine_inside_names_and_paths(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        ref = "refs/heads/jobs/-w1/--force"
        new = child(t, main, "--amend", **{"-rf": b"dash", "--/--x": b"dashes"})
        assert t.push([RefUpdate(ref, None, new)])
        assert t.fetch([ref]) == {ref: new}
        assert t.read_file(new, "-rf") == b"dash"
        assert t.read_file(new, "--/--x") == b"dashes"
        assert t.commit_message(new) == "--amend"


class TestLocalObjects:
    def test_write_commit_nested_unicode_spaces_and_deletions(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        files = {
            "updates/job x/log.txt": b"line 1\n",
            "updates/jöb ünïcode/π.txt": "π\n".encode(),
            "deep/a/b/c/d.bin": bytes(range(256)),
            "running.txt": b"",
        }
        one = t.write_commit(parents=[main], message="one", base=main, changes=files)
        for path, data in files.items():
            assert t.read_file(one, path) == data
        assert t.read_file(one, "README.md") == backend.readme
        assert t.read_file(one, "updates/job x") is None  # a directory is not a file
        assert t.read_file(one, "updates/job x/log.txt/more") is None
        two = child(t, one, "two", **{"updates/job x/log.txt": None, "README.md": b"new"})
        assert t.read_file(two, "updates/job x/log.txt") is None
        assert t.read_file(two, "README.md") == b"new"
        assert t.read_file(two, "updates/jöb ünïcode/π.txt") == "π\n".encode()
        # the emptied directory is gone, so a file may take its name
        three = child(t, two, "three", **{"updates/job x": b"now a file"})
        assert t.read_file(three, "updates/job x") == b"now a file"
        assert t.is_ancestor(main, three) and t.is_ancestor(one, three)
        assert not t.is_ancestor(three, one)
        assert t.is_ancestor(one, one)

    def test_folder_lists_the_files_of_a_folder_with_ids_of_their_contents(
        self, backend: Backend
    ) -> None:
        t = backend.transport()
        main = main_of(t)
        one = child(t, main, "parts", **{"done/000001.txt": b"a\n", "done/000002.txt": b"b\n",
                                         "done/sub/x.txt": b"a\n", "done.txt": b"c\n",
                                         "upd ates/jöb/π.txt": b"a\n"})
        listing = t.folder(one, "done")
        assert sorted(listing) == ["000001.txt", "000002.txt"]  # no subfolder
        assert listing["000001.txt"] != listing["000002.txt"]
        assert t.folder(one, "upd ates/jöb") == {"π.txt": listing["000001.txt"]}  # same contents
        assert t.folder(one, "missing") == {} and t.folder(one, "done.txt") == {}
        two = child(t, one, "change", **{"done/000002.txt": b"d\n", "done/000003.txt": b"b\n"})
        again = t.folder(two, "done")
        assert again["000001.txt"] == listing["000001.txt"]
        assert again["000002.txt"] != listing["000002.txt"]
        assert again["000003.txt"] == listing["000002.txt"]

    def test_entry_names_a_file_or_a_folder_with_an_id_of_what_it_holds(
        self, backend: Backend
    ) -> None:
        t = backend.transport()
        main = main_of(t)
        one = child(t, main, "results", **{"updates/a/x.txt": b"1\n", "updates/a/deep/y": b"2\n",
                                           "updates/b/x.txt": b"1\n", "top.txt": b"1\n"})
        kind, a = t.entry(one, "updates/a") or ("", "")
        assert kind == "folder" and t.entry(one, "updates/b")[0] == "folder"  # type: ignore[index]
        assert t.entry(one, "updates/b") != (kind, a)  # other contents below
        assert t.entry(one, "top.txt")[0] == "file"  # type: ignore[index]
        assert t.entry(one, "top.txt") == t.entry(one, "updates/a/x.txt")  # same contents
        assert t.entry(one, "missing") is None and t.entry(one, "updates/c") is None
        assert t.entry(one, "top.txt/below") is None
        # another commit: the same folder, the same id; a change deep below, another id
        two = child(t, one, "more", **{"updates/b/x.txt": b"3\n", "other.txt": b"o\n"})
        assert t.entry(two, "updates/a") == ("folder", a)
        three = child(t, two, "deeper", **{"updates/a/deep/y": b"4\n"})
        assert t.entry(three, "updates/a")[0] == "folder"  # type: ignore[index]
        assert t.entry(three, "updates/a") != ("folder", a)

    def test_ancestry_over_long_and_merged_histories(self, backend: Backend) -> None:
        """Near and far ancestors, through either parent of a merge; unrelated and newer
        commits are not ancestors (the git transport walks short histories itself)."""
        t = backend.transport()
        main = main_of(t)
        line = [main]
        for i in range(150):
            line.append(child(t, line[-1], f"step {i}", **{"n.txt": str(i).encode()}))
        side = child(t, line[3], "side", **{"side.txt": b"s"})
        merge = t.write_commit(parents=[line[-1], side], message="merge", base=line[-1],
                               changes={"side.txt": b"s"})
        other = t.write_commit(parents=[], message="unrelated", changes={"x": b"x"})
        assert t.is_ancestor(line[-2], line[-1]) and t.is_ancestor(line[100], line[-1])
        assert t.is_ancestor(main, line[-1]) and t.is_ancestor(main, merge)
        assert t.is_ancestor(side, merge) and t.is_ancestor(line[3], merge)
        assert not t.is_ancestor(line[-1], line[-2]) and not t.is_ancestor(merge, side)
        assert not t.is_ancestor(side, line[-1]) and not t.is_ancestor(line[4], side)
        assert not t.is_ancestor(other, merge) and not t.is_ancestor(main, other)

    def test_write_commit_from_a_tree_keeps_it_and_messages_round_trip(
        self, backend: Backend
    ) -> None:
        t = backend.transport()
        main = main_of(t)
        tree = t.commit_tree(main)
        for message in ["plain", "two\n\nparagraphs\n", "ünï cödé ✓", "lock holder=w1 token=7\n"]:
            commit = t.write_commit(parents=[main], message=message, tree=tree)
            assert t.commit_message(commit) == message
            assert t.commit_tree(commit) == tree
        root = t.write_commit(parents=[], message="root")
        assert t.read_file(root, "README.md") is None
        assert t.commit_tree(root) != tree
        edited = t.write_commit(parents=[main], message="m", tree=tree, changes={"x": b"1"})
        assert (
            t.read_file(edited, "x") == b"1" and t.read_file(edited, "README.md") == backend.readme
        )
        same = t.write_commit(parents=[main], message="m2", base=main, changes={"x": b"1"})
        assert t.commit_tree(same) == t.commit_tree(edited)

    def test_write_commit_refuses_bad_paths_and_file_directory_clashes(
        self, backend: Backend
    ) -> None:
        t = backend.transport()
        main = main_of(t)
        for bad in ["", "/abs", "a//b", "a/", "./a", "a/../b", ".git/config", "x/.GIT/y", "nul\0"]:
            with pytest.raises(UsageError):
                child(t, main, "bad path", **{bad: b"x"})
        with pytest.raises(UsageError):
            child(t, main, "clash", **{"README.md/inner": b"x"})
        with pytest.raises(UsageError):
            child(t, main, "clash", **{"a": b"file", "a/b": b"below"})
        nested = child(t, main, "nested", **{"d/e.txt": b"e"})
        with pytest.raises(UsageError):
            child(t, nested, "clash", d=b"x")
        replaced = child(
            t, nested, "replace file by dir", **{"README.md": None, "README.md/x": b"x"}
        )
        assert t.read_file(replaced, "README.md/x") == b"x"
        with pytest.raises(UsageError):
            t.write_commit(parents=[main], message="both", base=main, tree=t.commit_tree(main))

    def test_reading_an_unknown_commit_is_a_transport_error(self, backend: Backend) -> None:
        t = backend.transport()
        with pytest.raises(TransportError):
            t.read_file("1" * 40, "README.md")
        with pytest.raises(TransportError):
            t.commit_message("2" * 40)

    def test_merge_clean(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        base = child(t, main, "base", **{"running.txt": b"a\n", "jobs.txt": b"x\n"})
        ours = child(t, base, "ours", **{"running.txt": b"a\nb\n", "shared.txt": b"same"})
        theirs = child(t, base, "theirs", **{"updates/job/log": b"log", "jobs.txt": None,
                                              "shared.txt": b"same"})  # fmt: skip
        result = t.merge(ours, theirs)
        assert result.clean and result.conflicts == ()
        assert result.tree is not None
        merged = t.write_commit(parents=[ours, theirs], message="merge", tree=result.tree)
        assert t.read_file(merged, "running.txt") == b"a\nb\n"
        assert t.read_file(merged, "updates/job/log") == b"log"
        assert t.read_file(merged, "jobs.txt") is None
        assert t.read_file(merged, "shared.txt") == b"same"
        assert t.read_file(merged, "README.md") == backend.readme
        assert t.is_ancestor(ours, merged) and t.is_ancestor(theirs, merged)
        assert t.merge(merged, ours).tree == t.commit_tree(merged)  # already merged

    def test_merge_conflicts_name_the_paths(self, backend: Backend) -> None:
        t = backend.transport()
        main = main_of(t)
        base = child(t, main, "base", **{"done.txt": b"one\n", "gone.txt": b"g\n"})
        ours = child(t, base, "ours", **{"done.txt": b"ours\n", "gone.txt": None, "ok": b"1"})
        theirs = child(t, base, "theirs", **{"done.txt": b"theirs\n", "gone.txt": b"edited\n"})
        result = t.merge(ours, theirs)
        assert not result.clean and result.tree is None
        assert result.conflicts == ("done.txt", "gone.txt")


# ---- git only ------------------------------------------------------------------------------


@pytest.fixture
def git_backend(
    bare_remote: Path, tmp_path: Path, remote_readme: bytes, run_git: RunGit
) -> Iterator[GitBackend]:
    chosen = GitBackend("bare", str(bare_remote), bare_remote, tmp_path, remote_readme, run_git)
    yield chosen
    chosen.close()


class TestGitTransport:
    def test_fetch_brings_only_the_refs_asked_for(self, git_backend: GitBackend) -> None:
        writer = git_backend.transport()
        main = main_of(writer)
        other = child(writer, main, "on another branch", **{"other.txt": b"o"})
        assert writer.push([RefUpdate("refs/heads/jobs/w9/other", None, other)])
        # file:// so that git talks the pack protocol instead of copying the object store
        copy = GitLocalCopy.clone(git_backend.path.as_uri(), git_backend.scratch / "reader")
        with copy.transport() as reader:
            assert reader.fetch([MAIN]) == {MAIN: main}
            with pytest.raises(TransportError):
                reader.read_file(other, "other.txt")
            refs = git_backend.git("-C", copy.path, "for-each-ref", "--format=%(refname)").split()
            assert "refs/remotes/origin/jobs/w9/other" not in refs
            assert not any(other in line for line in refs)

    def test_write_commit_and_fetch_leave_the_working_tree_alone(
        self, git_backend: GitBackend
    ) -> None:
        copy = git_backend.clone()
        (copy.path / "README.md").write_text("edited by the user\n")
        (copy.path / "untracked.txt").write_text("mine\n")
        git_backend.git("-C", copy.path, "add", "untracked.txt")
        index_before = (Path(copy.path) / ".git" / "index").read_bytes()
        status_before = git_backend.git("-C", copy.path, "status", "--porcelain")
        head_before = copy.head()
        with copy.transport() as t:
            main = main_of(t)
            new = child(t, main, "coordination", **{"running.txt": b"job\n", "README.md": b"x"})
            assert t.push([RefUpdate(MAIN, main, new)])
            assert t.merge(new, main).clean
        assert (Path(copy.path) / ".git" / "index").read_bytes() == index_before
        assert git_backend.git("-C", copy.path, "status", "--porcelain") == status_before
        assert copy.head() == head_before
        assert (copy.path / "README.md").read_text() == "edited by the user\n"

    def test_commits_carry_the_fixed_identity(self, git_backend: GitBackend) -> None:
        copy = git_backend.clone()
        with copy.transport() as t:
            new = child(t, main_of(t), "who", x=b"1")
        who = git_backend.git("-C", copy.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>", new)
        assert who == "distribute <distribute@localhost>|distribute <distribute@localhost>"
        git_backend.git("-C", copy.path, "fsck", "--strict", "--no-dangling")

    def test_a_remote_without_atomic_push_is_a_clear_error(self, git_backend: GitBackend) -> None:
        git_backend.git("--git-dir", git_backend.path, "config", "receive.advertiseAtomic", "false")
        t = git_backend.transport()
        main = main_of(t)
        with pytest.raises(RemoteStateError, match="atomic"):
            t.push([RefUpdate(MAIN, main, child(t, main, "x"))])
        assert git_backend.remote_value(MAIN) == main

    def test_a_server_refusal_that_is_no_race_is_a_remote_state_error(
        self, git_backend: GitBackend
    ) -> None:
        t = git_backend.transport()
        main = main_of(t)
        branch = "refs/heads/jobs/w1/job"
        assert t.push([RefUpdate(branch, None, main)])
        git_backend.git("--git-dir", git_backend.path, "config", "receive.denyDeletes", "true")
        with pytest.raises(RemoteStateError, match="deletion prohibited"):
            t.push([RefUpdate(branch, main, None)])
        assert git_backend.remote_value(branch) == main

    def test_a_remote_that_fails_to_store_the_pack_is_a_transient_transport_error(
        self, git_backend: GitBackend
    ) -> None:
        """"unpacker error" (a moved folder, a full disk; here a size limit) is no rule of
        the server: a TransportError, which workers retry, not a RemoteStateError."""
        t = git_backend.transport()
        main = main_of(t)
        git_backend.git("--git-dir", git_backend.path, "config", "receive.maxInputSize", "10")
        with pytest.raises(TransportError, match="could not store") as caught:
            t.push([RefUpdate(MAIN, main, child(t, main, "x", big=b"y" * 1000))])
        assert not isinstance(caught.value, RemoteStateError)
        assert git_backend.remote_value(MAIN) == main

    def test_a_remote_name_cannot_become_an_option(self, git_backend: GitBackend) -> None:
        copy = git_backend.clone()
        marker = copy.path.parent / "pwned"
        evil = f"--upload-pack=touch {marker}"
        with GitTransport(copy.path, evil, timeout=20) as t:
            with pytest.raises(TransportError):
                t.fetch([MAIN])
            with pytest.raises(TransportError):
                t.list_refs("refs/heads/")
            with pytest.raises(TransportError):
                main = copy.head()
                assert main is not None
                t.push([RefUpdate(MAIN, main, main)])
        assert not marker.exists()

    def test_pushing_an_object_the_local_repository_lacks_fails_plainly(
        self, git_backend: GitBackend
    ) -> None:
        t = git_backend.transport()
        main = main_of(t)
        with pytest.raises(TransportError) as caught:
            t.push([RefUpdate(MAIN, main, "3" * 40)])
        assert not isinstance(caught.value, OutcomeUnknown)

    def test_unreachable_push_is_a_transport_error_without_credentials(
        self, git_backend: GitBackend
    ) -> None:
        copy = git_backend.clone()
        main = copy.head()
        assert main is not None
        url = f"https://user:secret@127.0.0.1:{closed_port()}/x.git"
        with GitTransport(copy.path, url, timeout=20) as t, pytest.raises(TransportError) as caught:
            t.push([RefUpdate(MAIN, main, main)])
        assert not isinstance(caught.value, OutcomeUnknown)
        assert "secret" not in str(caught.value) and "secret" not in repr(caught.value.context)
        with pytest.raises(TransportError) as cloning:
            GitLocalCopy.clone(url, copy.path.parent / "never")
        assert "secret" not in str(cloning.value)

    @pytest.mark.parametrize(
        ("now", "expected"),
        [("new", True), ("old", False), ("mixed", OutcomeUnknown), ("unreadable", OutcomeUnknown)],
    )
    def test_an_interrupted_push_is_resolved_by_reading_the_refs(
        self,
        git_backend: GitBackend,
        monkeypatch: pytest.MonkeyPatch,
        now: str,
        expected: bool | type[Exception],
    ) -> None:
        t = git_backend.transport()
        assert isinstance(t, GitTransport)
        a, b, c = "a" * 40, "b" * 40, "c" * 40
        updates = [RefUpdate(MAIN, a, b), RefUpdate(LOCK, None, c)]
        values = {"new": {MAIN: b, LOCK: c}, "old": {MAIN: a}, "mixed": {MAIN: b}}

        def ls_remote(patterns: list[str], prefix: str | None = None) -> dict[str, str]:
            if now == "unreadable":
                raise TransportError("still down")
            return values[now]

        monkeypatch.setattr(t, "_ls_remote", ls_remote)
        if isinstance(expected, bool):
            assert t._resolve(updates, "timed out") is expected
        else:
            with pytest.raises(expected):
                t._resolve(updates, "timed out")


@pytest.mark.daemon
class TestGitPushTimeouts:
    """A server that stalls mid-push (its hooks sleep): the push is resolved by reading."""

    def hook(self, remote: Path, name: str, body: str) -> None:
        path = remote / "hooks" / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def test_stalled_and_refused_reads_as_not_applied(
        self, daemon_remote: str, daemon_remote_path: Path, tmp_path: Path, run_git: RunGit
    ) -> None:
        self.hook(daemon_remote_path, "pre-receive", "cat >/dev/null\nsleep 3\nexit 1\n")
        copy = GitLocalCopy.clone(daemon_remote, tmp_path / "w")
        with GitTransport(copy.path, timeout=1) as t:
            main = main_of(t)
            started = time.monotonic()
            assert t.push([RefUpdate(MAIN, main, child(t, main, "stalls"))]) is False
            assert time.monotonic() - started >= 1  # it did time out
        assert run_git("--git-dir", daemon_remote_path, "rev-parse", MAIN) == main

    def test_stalled_after_the_update_reads_as_applied(
        self, daemon_remote: str, daemon_remote_path: Path, tmp_path: Path, run_git: RunGit
    ) -> None:
        body = 'cat >/dev/null\nif [ "$1" = committed ]; then sleep 3; fi\n'
        self.hook(daemon_remote_path, "reference-transaction", body)
        copy = GitLocalCopy.clone(daemon_remote, tmp_path / "w")
        with GitTransport(copy.path, timeout=1) as t:
            main = main_of(t)
            new = child(t, main, "lands, then the server stalls")
            started = time.monotonic()
            assert t.push([RefUpdate(MAIN, main, new)]) is True
            assert time.monotonic() - started >= 1  # it did time out
        assert run_git("--git-dir", daemon_remote_path, "rev-parse", MAIN) == new


class TestGitLocalCopy:
    def test_clone_takes_only_the_default_branch(self, git_backend: GitBackend) -> None:
        writer = git_backend.transport()
        main = main_of(writer)
        assert writer.push([RefUpdate("refs/heads/jobs/w1/x", None, child(writer, main, "x"))])
        copy = git_backend.clone()
        assert copy.head() == main
        assert copy.default_branch() == "main"
        assert copy.remote_url() == git_backend.url
        assert (
            copy.path.is_absolute() and (copy.path / "README.md").read_bytes() == git_backend.readme
        )
        refs = git_backend.git("-C", copy.path, "for-each-ref", "--format=%(refname)").split()
        assert "refs/remotes/origin/jobs/w1/x" not in refs
        assert copy.changed_paths() == []
        again = GitLocalCopy.open(copy.path)
        assert again.head() == main

    def test_clone_of_an_empty_remote(self, tmp_path: Path, run_git: RunGit) -> None:
        remote = init_bare_repo(tmp_path / "empty.git", "trunk")
        assert run_git("--git-dir", remote, "symbolic-ref", "HEAD") == "refs/heads/trunk"
        copy = GitLocalCopy.clone(str(remote), tmp_path / "w")
        assert copy.head() is None
        assert copy.changed_paths() == []
        with copy.transport() as t:
            assert t.fetch(["refs/heads/trunk"]) == {}
            root = t.write_commit(parents=[], message="first", changes={"a.txt": b"a"})
            assert t.push([RefUpdate("refs/heads/trunk", None, root)])
        assert copy.default_branch() == "trunk"

    def test_open_refuses_what_is_not_a_local_copy(self, tmp_path: Path, bare_remote: Path) -> None:
        with pytest.raises(UsageError):
            GitLocalCopy.open(tmp_path)
        with pytest.raises(UsageError):
            GitLocalCopy.open(bare_remote)
        with pytest.raises(UsageError):
            init_bare_repo(tmp_path / "x.git", "-b")

    def test_changed_paths_and_snapshot(self, git_backend: GitBackend) -> None:
        copy = git_backend.clone()
        root = copy.path
        main = copy.head()
        assert main is not None
        (root / ".gitignore").write_text("*.ckpt\n")
        (root / "README.md").unlink()
        (root / "results dir").mkdir()
        (root / "results dir" / "accuracy ü.txt").write_text("0.9\n")
        (root / "model.ckpt").write_text("huge\n")
        assert sorted(copy.changed_paths()) == [".gitignore", "README.md",
                                                "results dir/accuracy ü.txt"]  # fmt: skip
        index_before = (root / ".git" / "index").read_bytes()
        snap = copy.snapshot(main, "job update")
        assert copy.head() == main
        assert (root / ".git" / "index").read_bytes() == index_before
        assert not list((root / ".git").glob("distribute-snapshot-*"))
        with copy.transport() as t:
            assert t.read_file(snap, "results dir/accuracy ü.txt") == b"0.9\n"
            assert t.read_file(snap, "README.md") is None
            assert t.read_file(snap, "model.ckpt") is None
            assert t.read_file(snap, ".gitignore") == b"*.ckpt\n"
            assert t.commit_message(snap) == "job update"
            assert t.is_ancestor(main, snap)

    def test_snapshot_sees_a_same_size_edit_made_right_after_checkout(
        self, git_backend: GitBackend
    ) -> None:
        copy = git_backend.clone()
        main = copy.head()
        assert main is not None
        copy.checkout(main, None)
        readme = copy.path / "README.md"
        readme.write_bytes(bytes(len(readme.read_bytes())))  # same size, same second
        time.sleep(1.1)  # a later index copy must not make the edit look clean
        with copy.transport() as t:
            snap = copy.snapshot(main, "edit")
            assert t.read_file(snap, "README.md") == bytes(len(git_backend.readme))

    def test_checkout_moves_to_a_branch_or_detaches(self, git_backend: GitBackend) -> None:
        copy = git_backend.clone()
        root = copy.path
        main = copy.head()
        assert main is not None
        with copy.transport() as t:
            job = child(t, main, "job", **{"updates/job x/log.txt": b"log\n"})
        branch = "jobs/w1/job%20x"
        copy.checkout(job, branch)
        assert copy.head() == job
        assert git_backend.git("-C", root, "symbolic-ref", "HEAD") == "refs/heads/" + branch
        assert (root / "updates" / "job x" / "log.txt").read_bytes() == b"log\n"
        (root / "README.md").write_text("dirty\n")
        (root / "scratch.txt").write_text("untracked\n")
        copy.checkout(main, None)
        assert copy.head() == main
        assert git_backend.git("-C", root, "rev-parse", "--symbolic-full-name", "HEAD") == "HEAD"
        assert not (root / "updates" / "job x" / "log.txt").exists()  # tracked before, not now
        assert (root / "README.md").read_bytes() == git_backend.readme  # changes discarded
        assert (root / "scratch.txt").exists()  # untracked and not in the way: kept
        assert copy.changed_paths() == ["scratch.txt"]
        copy.checkout(job, branch)  # reset an existing branch
        assert copy.head() == job
        copy.set_upstream(branch, "refs/heads/" + branch)
        assert (
            git_backend.git("-C", root, "config", f"branch.{branch}.merge")
            == "refs/heads/" + branch
        )
        for bad in ["-b", "--force", "a..b", "HEAD", "x y", ""]:
            with pytest.raises(UsageError):
                copy.checkout(main, bad)
        assert copy.head() == job
