"""An in-memory remote that keeps the transport contract, for fast and fault-injecting tests.

Theory of operation
-------------------
:class:`MemoryRemote` plays the shared git remote: a dict of refs and a
content-addressed object store, guarded by one lock so that many threads (one
per simulated worker) may use it.  :meth:`MemoryRemote.transport` hands out a
:class:`MemoryTransport`, one worker's view of it.

Objects are simpler than git's: a commit holds a *flattened* tree (path ->
bytes), its parents and its message.  Ids are SHA-1 hex digests of a canonical
serialization, so equal content always has an equal id -- there is no
timestamp, which makes this store stricter than git about ABA: two writers who
build the same commit from the same parent get the same id.  Objects are
visible to every transport as soon as they are written (git would need a fetch
or a push first); ref *values* become visible to a transport only through
``fetch`` (see :attr:`MemoryTransport.mirror`), while ``list_refs`` reads the
remote's current values.

Push follows git's ``push --atomic --force-with-lease`` semantics exactly,
including its one quirk: an update (not a deletion) whose ref already holds
``new`` counts as satisfied ("up to date") whatever ``old`` says.

Merges are three-way per path against one merge base (the best common
ancestor, the smallest id on a tie; an empty tree for unrelated histories).
There is no line-level merge and no rename detection: a path changed
differently on both sides is a conflict, where git might merge the lines.

Faults and latency are deterministic hooks:

* ``fault_hook(transport_name, updates)`` runs at each push and returns
  ``None`` (normal), ``"drop"`` (raise ``TransportError``, nothing applied),
  ``"unknown-applied"`` (apply, then raise ``OutcomeUnknown``) or
  ``"unknown-lost"`` (apply nothing, raise ``OutcomeUnknown``).
* ``fetch_fault_hook(transport_name, refs)`` runs at each ``fetch`` (with the
  requested refs) and ``list_refs`` (with ``(prefix,)``) and returns ``None``,
  ``"drop"`` (raise ``TransportError``) or ``"torn"``: the read sees the most
  recent push half done -- of the refs it changed and this read asks for, the
  first in name order shows its new value and the others their old ones.  Git's files backend
  does this for real: an atomic push renames its ref locks one at a time in
  name order and a reader reads refs one at a time, so a fetch of
  ``{main, lock}`` racing a push of both can see the new lock with the old
  main (measured: about 0.7 % of fetches under a steady stream of pushes).
* ``latency`` seconds are passed to ``sleep`` once per remote operation
  (fetch, list_refs, push), outside the lock; local object operations cost
  nothing.

The name and path rules (:func:`check_ref_name`, :func:`check_tree_path` and
friends) are the contract's, in :mod:`distribute.transport.base`; they are
imported from there, and this module still offers them under their names.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from distribute.core.errors import OutcomeUnknown, TransportError, UsageError
from distribute.transport.base import (
    MergeResult,
    Oid,
    RefUpdate,
    check_message,
    check_oid,
    check_ref_name,
    check_ref_pattern,
    check_ref_prefix,
    check_tree_path,
    check_updates,
)

__all__ = [
    "FetchFaultHook",
    "MemoryRemote",
    "MemoryTransport",
    "PushFaultHook",
    "RemoteStats",
    "check_message",
    "check_oid",
    "check_ref_name",
    "check_ref_pattern",
    "check_ref_prefix",
    "check_tree_path",
    "check_updates",
    "directory_file_clashes",
]

PushFaultHook = Callable[[str, Sequence[RefUpdate]], "str | None"]
FetchFaultHook = Callable[[str, Sequence[str]], "str | None"]

_PUSH_FAULTS = frozenset({"drop", "unknown-applied", "unknown-lost"})
_FETCH_FAULTS = frozenset({"drop", "torn"})


# ---- paths -----------------------------------------------------------------


def directory_file_clashes(paths: Iterable[str]) -> list[str]:
    """Paths that are also a directory of another path (``a`` beside ``a/b``)."""
    files = set(paths)
    clashes: set[str] = set()
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            directory = "/".join(parts[:i])
            if directory in files:
                clashes.update((directory, path))
    return sorted(clashes)


# ---- the remote ---------------------------------------------------------------


@dataclass
class RemoteStats:
    """Counters of remote operations, for tests and the simulator.

    ``pushes`` counts every push that reached the remote (faulted or not),
    ``rejected_pushes`` those whose expectations failed, ``faults`` the
    injected faults of either hook.
    """

    pushes: int = 0
    rejected_pushes: int = 0
    fetches: int = 0
    ref_listings: int = 0
    faults: int = 0


@dataclass(frozen=True, slots=True)
class _Commit:
    tree: Oid
    parents: tuple[Oid, ...]
    message: str


def _field(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


def _blob_id(data: bytes) -> str:
    """git's id of a blob holding ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _tree_id(files: Mapping[str, bytes]) -> Oid:
    digest = hashlib.sha1(b"tree\0", usedforsecurity=False)
    for path in sorted(files):
        digest.update(_field(path.encode("utf-8")) + _field(files[path]))
    return digest.hexdigest()


def _commit_id(commit: _Commit) -> Oid:
    body = b"commit\0" + _field(commit.tree.encode("ascii"))
    body += _field(",".join(commit.parents).encode("ascii"))
    body += _field(commit.message.encode("utf-8"))
    return hashlib.sha1(body, usedforsecurity=False).hexdigest()


def _matches(ref: str, pattern: str) -> bool:
    if pattern.endswith("/*"):
        return ref.startswith(pattern[:-1])
    return ref == pattern


class MemoryRemote:
    """A shared in-memory remote: refs plus a content-addressed object store.

    Args:
        latency: seconds slept once per remote operation of any transport.
        sleep: the function that sleeps; tests pass a fake that records.
        fault_hook: see the module docstring; may be set later as an attribute.
        fetch_fault_hook: likewise for ``fetch`` and ``list_refs``.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        fault_hook: PushFaultHook | None = None,
        fetch_fault_hook: FetchFaultHook | None = None,
    ) -> None:
        self.latency = latency
        self.sleep = sleep
        self.fault_hook = fault_hook
        self.fetch_fault_hook = fetch_fault_hook
        self.stats = RemoteStats()
        self.lock = threading.Lock()
        self._refs: dict[str, Oid] = {}
        self._before_last_push: dict[str, Oid | None] = {}
        self._trees: dict[Oid, dict[str, bytes]] = {}
        self._commits: dict[Oid, _Commit] = {}
        self._numbers = itertools.count(1)

    def transport(self, name: str | None = None) -> MemoryTransport:
        """A new worker's view of this remote; ``name`` is what the hooks see."""
        with self.lock:
            number = next(self._numbers)
        return MemoryTransport(self, name if name is not None else f"t{number}")

    # ---- direct access for tests and seeding (no hooks, no latency, no stats) --
    @property
    def refs(self) -> dict[str, Oid]:
        """A copy of every ref's current value."""
        with self.lock:
            return dict(self._refs)

    def get_ref(self, ref: str) -> Oid | None:
        with self.lock:
            return self._refs.get(ref)

    def set_ref(self, ref: str, oid: Oid | None) -> None:
        """Set (or with ``None`` delete) a ref unconditionally, as an administrator would."""
        check_ref_name(ref)
        with self.lock:
            if oid is None:
                self._refs.pop(ref, None)
            else:
                self._commit(oid)
                self._refs[ref] = oid

    # ---- used by MemoryTransport ------------------------------------------------
    def _remote_operation(self) -> None:
        if self.latency > 0:
            self.sleep(self.latency)

    def _read_refs(
        self, name: str, hook_refs: Sequence[str], wanted: Callable[[str], bool]
    ) -> dict[str, Oid]:
        """The values of the refs ``wanted`` accepts, after the fetch fault hook had its say."""
        self._remote_operation()
        hook = self.fetch_fault_hook
        action = hook(name, tuple(hook_refs)) if hook is not None else None
        if action is not None and action not in _FETCH_FAULTS:
            expected = sorted(_FETCH_FAULTS)
            raise ValueError(
                f"fetch_fault_hook returned {action!r}; expected None or one of {expected}"
            )
        with self.lock:
            if action is not None:
                self.stats.faults += 1
            if action == "drop":
                raise TransportError(
                    f"injected fault: {name} could not reach the remote", transport=name
                )
            values = {ref: oid for ref, oid in self._refs.items() if wanted(ref)}
            if action == "torn":
                for ref in sorted(r for r in self._before_last_push if wanted(r))[1:]:
                    old = self._before_last_push[ref]
                    if old is None:
                        values.pop(ref, None)
                    else:
                        values[ref] = old
            return values

    def _cas(self, updates: Sequence[RefUpdate]) -> bool:
        """Apply ``updates`` if every expectation holds; the caller holds the lock."""
        for update in updates:
            current = self._refs.get(update.ref)
            up_to_date = update.new is not None and current == update.new
            if current != update.old and not up_to_date:
                return False
        self._before_last_push = {
            u.ref: self._refs.get(u.ref) for u in updates if self._refs.get(u.ref) != u.new
        }
        for update in updates:
            if update.new is None:
                self._refs.pop(update.ref, None)
            else:
                self._refs[update.ref] = update.new
        return True

    def _commit(self, oid: Oid) -> _Commit:
        commit = self._commits.get(oid)
        if commit is None:
            raise TransportError(f"commit {oid} is not in the object store", oid=oid)
        return commit

    def _tree(self, oid: Oid) -> dict[str, bytes]:
        tree = self._trees.get(oid)
        if tree is None:
            raise TransportError(f"tree {oid} is not in the object store", oid=oid)
        return tree

    def _store_tree(self, files: dict[str, bytes]) -> Oid:
        oid = _tree_id(files)
        with self.lock:
            self._trees.setdefault(oid, files)
        return oid

    def _store_commit(self, commit: _Commit) -> Oid:
        oid = _commit_id(commit)
        with self.lock:
            self._commits.setdefault(oid, commit)
        return oid


class MemoryTransport:
    """One worker's view of a :class:`MemoryRemote`; keeps the :class:`Transport` contract."""

    def __init__(self, remote: MemoryRemote, name: str) -> None:
        self.remote = remote
        self.name = name
        self._mirror: dict[str, Oid] = {}

    @property
    def mirror(self) -> dict[str, Oid]:
        """The ref values this transport has fetched (a copy), like git's mirror refs."""
        with self.remote.lock:
            return dict(self._mirror)

    # ---- remote refs -----------------------------------------------------------
    def fetch(self, refs: Sequence[str]) -> dict[str, Oid]:
        patterns = [check_ref_pattern(ref) for ref in refs]
        if not patterns:
            return {}
        remote = self.remote
        found = remote._read_refs(
            self.name, patterns, lambda ref: any(_matches(ref, p) for p in patterns)
        )
        with remote.lock:
            remote.stats.fetches += 1
            # one worker's threads fetch at once (its heartbeat beside its steps), as git
            # does for the mirror refs under the transport's fetch lock
            kept = {ref: oid for ref, oid in self._mirror.items()
                    if not any(_matches(ref, p) for p in patterns)}
            self._mirror = {**kept, **found}
        return found

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        check_ref_prefix(prefix)
        remote = self.remote
        values = remote._read_refs(self.name, (prefix,), lambda ref: ref.startswith(prefix))
        with remote.lock:
            remote.stats.ref_listings += 1
        return values

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        """Compare-and-swap ``updates`` atomically (see the module docstring for faults)."""
        updates = check_updates(updates)
        remote = self.remote
        for update in updates:
            if update.new is not None:
                remote._commit(update.new)
        remote._remote_operation()
        hook = remote.fault_hook
        action = hook(self.name, tuple(updates)) if hook is not None else None
        if action is not None and action not in _PUSH_FAULTS:
            expected = sorted(_PUSH_FAULTS)
            raise ValueError(f"fault_hook returned {action!r}; expected None or one of {expected}")
        with remote.lock:
            remote.stats.pushes += 1
            if action is not None:
                remote.stats.faults += 1
            if action in ("drop", "unknown-lost"):
                applied = False
            else:
                applied = remote._cas(updates)
                if not applied:
                    remote.stats.rejected_pushes += 1
        if action == "drop":
            raise TransportError(f"injected fault: push from {self.name} was dropped")
        if action is not None:
            raise OutcomeUnknown(
                f"injected fault: the outcome of a push from {self.name} is unknown",
                refs=[update.ref for update in updates],
            )
        return applied

    # ---- local object store ---------------------------------------------------------
    def read_file(self, commit: Oid, path: str) -> bytes | None:
        check_tree_path(path)
        remote = self.remote
        return remote._tree(remote._commit(check_oid(commit)).tree).get(path)

    def folder(self, commit: Oid, path: str) -> dict[str, str]:
        prefix = check_tree_path(path) + "/"
        remote = self.remote
        return {
            name[len(prefix):]: _blob_id(data)
            for name, data in remote._tree(remote._commit(check_oid(commit)).tree).items()
            if name.startswith(prefix) and "/" not in name[len(prefix):]
        }

    def entry(self, commit: Oid, path: str) -> tuple[str, str] | None:
        path = check_tree_path(path)
        remote = self.remote
        files = remote._tree(remote._commit(check_oid(commit)).tree)
        if path in files:
            return "file", _blob_id(files[path])
        prefix = path + "/"
        inside = {name[len(prefix):]: data for name, data in files.items()
                  if name.startswith(prefix)}
        return ("folder", _tree_id(inside)) if inside else None

    def commit_message(self, commit: Oid) -> str:
        return self.remote._commit(check_oid(commit)).message

    def commit_tree(self, commit: Oid) -> Oid:
        return self.remote._commit(check_oid(commit)).tree

    def files(self, commit: Oid) -> dict[str, bytes]:
        """Every file of ``commit`` (a copy): path -> contents.  Not part of the contract."""
        remote = self.remote
        return dict(remote._tree(remote._commit(check_oid(commit)).tree))

    def write_commit(
        self,
        *,
        parents: Sequence[Oid],
        message: str,
        base: Oid | None = None,
        tree: Oid | None = None,
        changes: Mapping[str, bytes | None] | None = None,
    ) -> Oid:
        remote = self.remote
        check_message(message)
        for parent in parents:
            remote._commit(check_oid(parent))
        if base is not None and tree is not None:
            raise UsageError("write_commit takes a base commit or a tree, not both")
        if tree is not None:
            files = dict(remote._tree(check_oid(tree)))
        elif base is not None:
            files = dict(remote._tree(remote._commit(check_oid(base)).tree))
        else:
            files = {}
        if changes:
            edits = {check_tree_path(path): data for path, data in changes.items()}
            for path, data in edits.items():
                if data is None:
                    files.pop(path, None)
            for path, data in edits.items():
                if data is not None:
                    if not isinstance(data, bytes):
                        raise UsageError(f"contents of {path!r} must be bytes", path=path)
                    files[path] = data
            clashes = directory_file_clashes(files)
            if clashes:
                raise UsageError(
                    f"these paths would be both a file and a directory: {clashes}", paths=clashes
                )
        tree_oid = remote._store_tree(files)
        return remote._store_commit(_Commit(tree_oid, tuple(parents), message))

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        remote = self.remote
        ours_commit = remote._commit(check_oid(ours))
        theirs_commit = remote._commit(check_oid(theirs))
        base = self._merge_base(ours, theirs)
        base_files = remote._tree(remote._commit(base).tree) if base is not None else {}
        ours_files = remote._tree(ours_commit.tree)
        theirs_files = remote._tree(theirs_commit.tree)
        merged: dict[str, bytes] = {}
        conflicts: set[str] = set()
        for path in set(base_files) | set(ours_files) | set(theirs_files):
            old, mine, other = base_files.get(path), ours_files.get(path), theirs_files.get(path)
            if mine == other or other == old:
                result = mine
            elif mine == old:
                result = other
            else:
                conflicts.add(path)
                continue
            if result is not None:
                merged[path] = result
        conflicts.update(directory_file_clashes(merged))
        if conflicts:
            return MergeResult(None, tuple(sorted(conflicts)))
        return MergeResult(remote._store_tree(merged))

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        remote = self.remote
        remote._commit(check_oid(ancestor))
        remote._commit(check_oid(descendant))
        return ancestor in self._ancestors(descendant, stop=ancestor)

    def close(self) -> None:
        self._mirror.clear()

    # ---- history walks ---------------------------------------------------------------
    def _ancestors(self, start: Oid, stop: Oid | None = None) -> set[Oid]:
        """``start`` and every commit it reaches; stops early once ``stop`` is seen."""
        seen = {start}
        queue = deque([start])
        while queue and stop not in seen:
            for parent in self.remote._commit(queue.popleft()).parents:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return seen

    def _merge_base(self, ours: Oid, theirs: Oid) -> Oid | None:
        """The best common ancestor: one no other common ancestor descends from.

        Criss-cross histories have several; the smallest id wins, so the
        choice is deterministic (git would merge them into a virtual base).
        """
        common = self._ancestors(ours) & self._ancestors(theirs)
        dominated: set[Oid] = set()
        queue = deque(parent for oid in common for parent in self.remote._commit(oid).parents)
        while queue:
            oid = queue.popleft()
            if oid not in dominated:
                dominated.add(oid)
                queue.extend(self.remote._commit(oid).parents)
        best = common - dominated
        return min(best) if best else None
