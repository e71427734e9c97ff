"""The transport contract: everything Distribute asks of a git remote.

Theory of operation
-------------------
A transport is one worker's view of one remote. It has two halves:

* remote refs: ``fetch`` brings named refs (and the objects they reach) into
  the worker's object store and reports their values; ``list_refs`` reads ref
  values only; ``push`` is an atomic compare-and-swap of one or several refs.
  A push whose expectations do not hold is a lost race and returns ``False``;
  it never raises for that.  A push whose outcome is unknown (the connection
  died after sending) raises :class:`~distribute.core.errors.OutcomeUnknown`;
  the caller resolves it by reading the refs again.
* a local object store: read files at a commit, write commits from a parent
  tree plus edits, three-way merge two commits without touching any working
  tree.

Object ids are hex strings.  ``None`` for a ref value means "does not exist".
Two implementations keep this contract: :mod:`distribute.transport.git`
(real git through GitPython, one class per way of reaching a remote, picked
by :func:`~distribute.transport.git.open_transport`) and
:mod:`distribute.transport.memory` (an in-memory remote with latency and
fault hooks).  One contract test suite runs
against both.

Both check what they are given by the same rules, kept here: full ref names
(:func:`check_ref_name`, :func:`check_ref_pattern`, :func:`check_ref_prefix`),
full hex object ids (:func:`check_oid`), file paths a tree can hold
(:func:`check_tree_path`), commit messages (:func:`check_message`) and pushes
(:func:`check_updates`).  Each returns what it was given or raises
:class:`~distribute.core.errors.UsageError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from distribute.core.errors import UsageError
from distribute.core.names import is_valid_ref_component

__all__ = [
    "MergeResult",
    "Oid",
    "RefUpdate",
    "Transport",
    "check_message",
    "check_oid",
    "check_ref_name",
    "check_ref_pattern",
    "check_ref_prefix",
    "check_tree_path",
    "check_updates",
    "holds",
    "ref_matches",
]

Oid = str

_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


@dataclass(frozen=True, slots=True)
class RefUpdate:
    """One ref of an atomic compare-and-swap push.

    Attributes:
        ref: full ref name (``refs/heads/main``, ``refs/distribute/lock``).
        old: the value the remote must hold now; ``None`` means the ref must
            not exist.
        new: the value to set; ``None`` deletes the ref.
    """

    ref: str
    old: Oid | None
    new: Oid | None


@dataclass(frozen=True, slots=True)
class MergeResult:
    """Outcome of a three-way merge of two commits.

    ``tree`` is the merged tree's id when the merge is clean, else ``None``
    and ``conflicts`` names the conflicting paths.
    """

    tree: Oid | None
    conflicts: tuple[str, ...] = field(default_factory=tuple)

    @property
    def clean(self) -> bool:
        return self.tree is not None


@runtime_checkable
class Transport(Protocol):
    """One worker's connection to one remote plus its local object store."""

    # ---- remote refs -------------------------------------------------------
    def fetch(self, refs: Sequence[str]) -> dict[str, Oid]:
        """Fetch exactly these refs; return the values of those that exist.

        Refs may end in ``/*`` to fetch every ref under a prefix.  Objects
        reachable from the returned values are readable afterwards.
        """
        ...

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        """Values of the remote refs under ``prefix``, without objects."""
        ...

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        """Apply all updates atomically if every ``old`` holds.

        Returns ``True`` when applied, ``False`` when any expectation failed
        (nothing changed).  Raises ``OutcomeUnknown`` when the result could
        not be learned and ``TransportError`` when the remote is unreachable.
        """
        ...

    # ---- local object store ------------------------------------------------
    def read_file(self, commit: Oid, path: str) -> bytes | None:
        """Contents of ``path`` in ``commit``, ``None`` when absent."""
        ...

    def folder(self, commit: Oid, path: str) -> dict[str, str]:
        """The files directly in folder ``path`` of ``commit``: name -> an id of the
        file's contents (the same id, the same contents: git's blob id).  Empty when
        there is no such folder; subfolders are left out."""
        ...

    def entry(self, commit: Oid, path: str) -> tuple[str, str] | None:
        """What ``path`` names in ``commit``: ``("file", id)``, ``("folder", id)`` (the
        folder with everything below it), or another kind (a link to a submodule); the
        same id, the same contents.  ``None`` when nothing."""
        ...

    def commit_message(self, commit: Oid) -> str:
        ...

    def commit_tree(self, commit: Oid) -> Oid:
        """The tree id of ``commit``."""
        ...

    def write_commit(
        self,
        *,
        parents: Sequence[Oid],
        message: str,
        base: Oid | None = None,
        tree: Oid | None = None,
        changes: Mapping[str, bytes | None] | None = None,
    ) -> Oid:
        """Write a commit and return its id.

        The tree is ``tree`` if given, else the tree of commit ``base`` (or
        the empty tree when ``base`` is ``None``), with ``changes`` applied:
        path -> new contents, or ``None`` to delete.  No working tree or
        index of the user's is touched.
        """
        ...

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        """Three-way merge of two commits (git merge-tree semantics)."""
        ...

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        ...

    def close(self) -> None:
        ...


def holds(transport: Transport, current: Oid | None, commit: Oid | None) -> bool:
    """Does a ref whose value is ``current`` hold ``commit``: is it ``commit`` or a descendant?

    This is how a push whose answer was lost is judged: it landed when the
    ref now holds what was pushed, even if others have built on it since.
    Nobody can build on a commit that never reached the remote.  Both
    commits must be in the local object store (``current`` was fetched).
    """
    if current == commit:
        return True
    if current is None or commit is None:
        return False
    return transport.is_ancestor(commit, current)


# ---- the contract's rules for names, ids and paths --------------------------


def check_ref_name(ref: str) -> str:
    """Return ``ref`` if it is a full ref name git accepts (``refs/...``).

    Raises:
        UsageError: naming the rule broken.  A name that could be read as an
            option (``-x``) never starts with ``refs/`` and is refused here.
    """
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise UsageError(f"{ref!r} is not a full ref name (it must start with 'refs/')", ref=ref)
    if not all(is_valid_ref_component(part) for part in ref.split("/")[1:]):
        raise UsageError(f"{ref!r} is not a valid ref name (see git check-ref-format)", ref=ref)
    return ref


def check_ref_pattern(pattern: str) -> str:
    """Return ``pattern``: a full ref name, or one followed by ``/*`` (every ref below it)."""
    if isinstance(pattern, str) and pattern.endswith("/*"):
        check_ref_name(pattern[:-2])
        return pattern
    return check_ref_name(pattern)


def ref_matches(ref: str, patterns: Sequence[str]) -> bool:
    """Is ``ref`` one of ``patterns`` (checked by :func:`check_ref_pattern`), or below one
    that ends in ``/*``?"""
    return any(ref == p or (p.endswith("/*") and ref.startswith(p[:-1])) for p in patterns)


def check_ref_prefix(prefix: str) -> str:
    """Return ``prefix``: ``refs/`` or a ref name, optionally ending in ``/``."""
    if prefix != "refs/":
        check_ref_name(prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix)
    return prefix


def check_oid(oid: str) -> Oid:
    """Return ``oid`` if it is a full lower-case hex object id (SHA-1 or SHA-256)."""
    if not isinstance(oid, str) or not _OID.fullmatch(oid):
        raise UsageError(f"{oid!r} is not a full hex object id", oid=oid)
    return oid


def check_tree_path(path: str) -> str:
    """Return ``path`` if a git tree can hold it as a file path.

    ``/``-separated, non-empty components, none of them ``.``, ``..`` or
    ``.git`` (in any case), no NUL.  Spaces, unicode, newlines and leading
    dashes are fine.
    """
    if not isinstance(path, str) or path == "" or "\0" in path:
        raise UsageError(f"{path!r} is not a file path a commit can hold", path=path)
    for part in path.split("/"):
        if part in ("", ".", "..") or part.lower() == ".git":
            raise UsageError(
                f"{path!r} is not a file path a commit can hold (component {part!r})", path=path
            )
    return path


def check_message(message: str) -> str:
    if not isinstance(message, str) or "\0" in message:
        raise UsageError("a commit message must be text without NUL characters")
    return message


def check_updates(updates: Sequence[RefUpdate]) -> list[RefUpdate]:
    """Validate a push: full ref names, hex ids, each ref at most once."""
    seen: set[str] = set()
    for update in updates:
        check_ref_name(update.ref)
        for oid in (update.old, update.new):
            if oid is not None:
                check_oid(oid)
        if update.ref in seen:
            raise UsageError(f"{update.ref!r} appears twice in one push", ref=update.ref)
        seen.add(update.ref)
    return list(updates)
