"""Real git through GitPython: the transports workers use, one class per way of reaching
a remote, and the factory that picks one.

Theory of operation
-------------------
A transport keeps the :class:`~distribute.transport.base.Transport` contract
over a local repository and a remote.  :func:`open_transport` (which
``GitTransport(...)`` calls) opens the local repository and picks the class
by how the remote can be reached:

* :class:`GitTransport`, the pack-protocol client: ``git fetch``,
  ``git push`` and ``git ls-remote`` run in the local repository, for any
  remote git can reach (a server, a ``file://`` URL, ``direct=False``);
* :class:`DirectGitTransport`, for a path to a bare repository on this
  machine: :class:`~.direct_transport.DirectWriting` reads and writes it in
  place of git while a push would do nothing more, and hands each step back
  to :class:`GitTransport` (``super()``) while a hook or rule says otherwise.

The other modules:

* :mod:`.process` starts every git command (explicit argument lists, no
  shell, a fixed environment, ``--end-of-options``, scrubbed messages);
* :mod:`.repository` is the local repository: git run in it, its refs and
  objects read, trees and commits written there, merges and ancestry;
* :mod:`.direct_remote` and :mod:`.direct` are the bare repository written
  directly: its folder pinned, its refs and objects, its ref transactions;
* :mod:`.local_copy` is a worker's clone (:class:`~.local_copy.GitLocalCopy`);
  it imports this module, which imports :mod:`.direct_transport`: one way.

Remote refs through the pack protocol
    ``fetch`` is one ``git fetch`` of exactly the requested refs into a
    private namespace (``refs/distribute-mirror/<remote>/...``) with
    ``--prune``, then the mirror's ref files are read here.  A requested
    ref missing on the remote makes git fail the whole fetch; then an
    ``ls-remote`` tells which exist and those are fetched.  ``list_refs`` is
    one ``ls-remote``.  ``push`` is one ``git push --atomic --porcelain
    --no-verify`` with a ``--force-with-lease`` per ref: a compare-and-swap
    the server checks under its ref locks.  A push whose answer was lost is
    settled by reading the refs back.  ``fetch`` and ``push`` check what they
    are given, then reach the remote in :meth:`GitTransport._fetch_refs` and
    :meth:`GitTransport._push_checked`: the steps ``DirectWriting`` replaces.

Local objects
    are read and written in the local repository without touching an index
    or working tree (see :mod:`.repository`).  ``merge`` is
    ``git merge-tree --write-tree`` (git >= 2.38).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import NoReturn, TypeVar

from distribute.core.errors import OutcomeUnknown, RemoteStateError, TransportError, UsageError
from distribute.core.names import scrub_url
from distribute.credentials import split_secret
from distribute.transport.base import (
    MergeResult,
    Oid,
    RefUpdate,
    check_message,
    check_oid,
    check_ref_pattern,
    check_ref_prefix,
    check_tree_path,
    check_updates,
    ref_matches,
)
from distribute.transport.direct_remote import _DirectRemote, _settle
from distribute.transport.direct_transport import DirectWriting, remote_folder
from distribute.transport.process import (
    _ATOMIC_UNSUPPORTED,
    _PROTOCOL_V2,
    _TRANSIENT_REFUSALS,
    _UNREACHABLE,
    IDENTITY,
    _failure,
    _is_race,
    _push_rejections,
    _remote_says,
)
from distribute.transport.repository import _Repository, init_bare_repo, is_remote_name

__all__ = [
    "IDENTITY",
    "MIRROR_PREFIX",
    "DirectGitTransport",
    "GitTransport",
    "init_bare_repo",
    "open_transport",
]

#: Where fetched remote refs are kept in the local repository.
MIRROR_PREFIX = "refs/distribute-mirror/"

_Transport = TypeVar("_Transport", bound="GitTransport")


def _path_parts(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode("utf-8") for part in path.split("/"))


#: refs fetched by one command (:meth:`GitTransport.fetch` splits longer lists)
_FETCH_BATCH = 500
#: A packet git received, as ``GIT_TRACE_PACKET`` shows it (``packet:  ls-remote< ...``).
_RECEIVED_PACKET = re.compile(r"packet:\s+\S+< (.*)$")


class GitTransport:
    """One worker's connection to a git remote through git's pack protocol, and its local
    repository.

    ``GitTransport(...)`` is :func:`open_transport` (same arguments): a remote that
    is a bare repository on this machine gives a :class:`DirectGitTransport`, which
    is a ``GitTransport`` too.

    Keeps the :class:`~distribute.transport.base.Transport` contract; see the
    module docstring for how.
    """

    remote: str
    timeout: float
    mirror_prefix: str
    _repo: _Repository
    _fetch_lock: threading.Lock

    def __new__(
        cls,
        repo_path: str | os.PathLike[str],
        remote: str = "origin",
        *,
        timeout: float = 60,
        direct: bool | None = None,
        secret: str | None = None,
    ) -> GitTransport:
        # no __init__: open_transport returns a transport ready for use
        return open_transport(repo_path, remote, timeout=timeout, direct=direct, secret=secret)

    @classmethod
    def _on(cls: type[_Transport], repo: _Repository, remote: str, timeout: float) -> _Transport:
        """A transport of this very class over ``repo`` (for :func:`open_transport`, which
        opened it and chose the class; calling the class would choose again)."""
        transport = object.__new__(cls)
        transport._repo = repo
        transport.remote = remote
        transport.timeout = timeout
        key = remote
        if not is_remote_name(remote):
            key = "url-" + hashlib.sha256(remote.encode("utf-8")).hexdigest()[:16]
        transport.mirror_prefix = f"{MIRROR_PREFIX}{key}/"
        transport._fetch_lock = threading.Lock()
        return transport

    def remote_url(self) -> str:
        """The remote's URL (or path) as git sees it: a named remote's configured URL;
        never a password (see :mod:`distribute.credentials`)."""
        if is_remote_name(self.remote):
            out = self._repo.check(["config", "--get", f"remote.{self.remote}.url"], "git config")
            return split_secret(out.decode("utf-8").strip()).public
        return self.remote

    @property
    def direct(self) -> bool:
        """Does this transport write the remote directly rather than through ``git push``
        and ``git fetch``?  Never for this class (see :class:`DirectGitTransport`)."""
        return False

    def __enter__(self) -> GitTransport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GitTransport({str(self._repo.git_dir)!r}, {scrub_url(self.remote)!r})"

    # ---- remote refs -----------------------------------------------------------
    def fetch(self, refs: Sequence[str]) -> dict[str, Oid]:
        """Fetch exactly ``refs`` (``/*``: all below) and return the values of those that exist.

        Costs one ``git fetch`` and one ``for-each-ref`` when every exact ref
        exists; a missing one costs an ``ls-remote`` and a second fetch.
        Never fetches refs that were not asked for.

        Raises:
            UsageError: a ref is not a full ref name (or ``refs/.../*``).
            TransportError: the remote could not be reached or git failed.
        """
        patterns = list(dict.fromkeys(check_ref_pattern(ref) for ref in refs))
        found: dict[str, Oid] = {}
        # a few hundred refs to a command: thousands would pass the system's limit on the
        # length of a command line (each ref is named twice there)
        for start in range(0, len(patterns), _FETCH_BATCH):
            with self._fetch_lock:
                found.update(self._fetch_refs(patterns[start:start + _FETCH_BATCH]))
        return found

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        """Values of the remote refs whose names start with ``prefix`` (one ``ls-remote``)."""
        return self._ls_remote([check_ref_prefix(prefix) + "*"], prefix=prefix)

    def push(self, updates: Sequence[RefUpdate]) -> bool:
        """Compare-and-swap ``updates`` atomically with one ``git push --atomic``.

        Each ref gets ``--force-with-lease=<ref>:<old>`` (empty ``old``: must
        not exist) and the refspec ``<new>:<ref>`` (``:<ref>`` deletes).  As in
        git, an update (not a deletion) whose ref already holds ``new`` counts
        as done ("up to date") whatever ``old`` says.

        Outcomes:

        * every ref updated or already up to date: ``True``;
        * rejected as a lost race (stale info, fetch first, non-fast-forward,
          failed to update ref, cannot lock ref, atomic push/transaction
          failed): ``False``, nothing changed;
        * rejected for any other reason (a hook, branch protection, the
          branch is checked out there): ``RemoteStateError``;
        * the remote refuses ``--atomic``: ``RemoteStateError``;
        * the remote could not be reached before anything was sent:
          ``TransportError``;
        * the push timed out, was killed or lost its connection mid-way: the
          refs are read again with ``ls-remote``.  All holding the new values:
          ``True``; all still holding the old ones: ``False`` -- the push did
          not land *by the time of that read*; a server that already received
          everything may still apply it later, exactly as if this worker had
          pushed once more, which is why a caller that sees an unexpected value
          of its own must accept it as its own write; anything else, or a read
          that fails too: ``OutcomeUnknown``.

        Raises:
            UsageError: a ref name or object id is invalid, or a ref repeats.
            TransportError: a new value is not in the local repository.
        """
        updates = check_updates(updates)
        if not updates:
            return True
        for update in updates:
            if update.new is not None:
                self._repo.read_object(update.new)
        return self._push_checked(updates)

    # ---- the steps that reach the remote (DirectWriting replaces them) -------------------
    def _fetch_refs(self, patterns: Sequence[str]) -> dict[str, Oid]:
        """:meth:`fetch` of the checked ``patterns``, under the fetch lock."""
        wanted = patterns
        for _ in range(3):
            if self._fetch_into_mirror(wanted):
                return self._read_mirror(wanted)
            exact = [ref for ref in patterns if not ref.endswith("/*")]
            present = self._ls_remote(exact)
            self._drop_mirror([ref for ref in exact if ref not in present])
            wanted = [ref for ref in patterns if ref.endswith("/*") or ref in present]
        raise TransportError("git fetch kept failing: requested refs keep vanishing")

    def _push_checked(self, updates: Sequence[RefUpdate]) -> bool:
        """:meth:`push` of the checked, non-empty ``updates`` whose new objects are here."""
        args = ["push", "--atomic", "--porcelain", "--no-verify", "--no-follow-tags"]
        args.append("--recurse-submodules=no")
        args += [f"--force-with-lease={u.ref}:{u.old or ''}" for u in updates]
        args += ["--end-of-options", self.remote]
        args += [f"{u.new or ''}:{u.ref}" for u in updates]
        result = self._repo.run(args)
        rejected = _push_rejections(result.stdout)
        if rejected:
            refused = {ref: why for ref, why in rejected.items() if not _is_race(why)}
            if any(word in why for why in refused.values() for word in _TRANSIENT_REFUSALS):
                # the remote could not store the objects (its folder moved, a full disk):
                # nothing landed; worth retrying, unlike a hook or a protection rule
                raise TransportError(
                    f"the remote {scrub_url(self.remote)} could not store the pushed objects: "
                    + "; ".join(f"{ref}: {why}" for ref, why in sorted(refused.items())),
                    refused=refused,
                )
            if refused:
                said = _remote_says(result.stderr)
                raise RemoteStateError(
                    "the remote refused the push: "
                    + "; ".join(f"{ref}: {why}" for ref, why in sorted(refused.items()))
                    + (f"; the server said: {said}" if said else ""),
                    refused=refused,
                    remote_said=said,
                )
            return False
        if result.status == 0:
            return True
        stderr = result.stderr.lower()
        if _ATOMIC_UNSUPPORTED in stderr:
            raise RemoteStateError(
                f"the remote {scrub_url(self.remote)} does not support atomic pushes "
                "(git push --atomic); Distribute needs them to change several refs at once. "
                "Use a server that does (git >= 2.4, GitHub, GitLab, a bare repository).",
            )
        if not result.killed and any(marker in stderr for marker in _UNREACHABLE):
            raise _failure(f"git push to {scrub_url(self.remote)}", result, self.timeout)
        return self._resolve(updates, "timed out" if result.killed else "was interrupted")

    # ---- local object store ------------------------------------------------------------
    def read_file(self, commit: Oid, path: str) -> bytes | None:
        parts = check_tree_path(path).split("/")
        tree = self._repo.commit_tree(commit)
        for depth, part in enumerate(parts):
            entry = self._repo.tree_entries(tree).get(part.encode("utf-8"))
            if entry is None:
                return None
            if depth == len(parts) - 1:
                if entry.kind != "blob":
                    return None
                return self._repo.read_object(entry.oid)[1]
            if not entry.is_tree:
                return None
            tree = entry.oid
        return None

    def folder(self, commit: Oid, path: str) -> dict[str, str]:
        tree = self._repo.commit_tree(commit)
        for part in check_tree_path(path).split("/"):
            entry = self._repo.tree_entries(tree).get(part.encode("utf-8"))
            if entry is None or not entry.is_tree:
                return {}
            tree = entry.oid
        return {name.decode("utf-8", errors="surrogateescape"): entry.oid
                for name, entry in self._repo.tree_entries(tree).items()
                if entry.kind == "blob"}

    def entry(self, commit: Oid, path: str) -> tuple[str, str] | None:
        found = self._repo.lookup(self._repo.commit_tree(check_oid(commit)),
                                  check_tree_path(path))
        if found is None:
            return None
        kind, oid = found
        return {"blob": "file", "tree": "folder"}.get(kind, kind), oid

    def commit_message(self, commit: Oid) -> str:
        kind, data = self._repo.read_object(check_oid(commit))
        if kind != "commit":
            # what the remote holds is wrong, not the way to it: retrying will not help
            raise RemoteStateError(f"{commit} is a {kind}, not a commit", oid=commit)
        _, _, message = data.partition(b"\n\n")
        return message.decode("utf-8", errors="replace")

    def commit_tree(self, commit: Oid) -> Oid:
        return self._repo.commit_tree(commit)

    def write_commit(
        self,
        *,
        parents: Sequence[Oid],
        message: str,
        base: Oid | None = None,
        tree: Oid | None = None,
        changes: Mapping[str, bytes | None] | None = None,
    ) -> Oid:
        """Write a commit from a tree plus ``changes`` with plumbing only (see the contract).

        New files get mode 100644; a changed file keeps its mode.  A change
        that would make one path both a file and a directory raises
        ``UsageError``; a directory left empty by deletions disappears.
        """
        check_message(message)
        for parent in parents:
            check_oid(parent)
        if base is not None and tree is not None:
            raise UsageError("write_commit takes a base commit or a tree, not both")
        root = check_oid(tree) if tree is not None else None
        if base is not None:
            root = self._repo.commit_tree(base)
        edits = {check_tree_path(path): data for path, data in (changes or {}).items()}
        for path, data in edits.items():
            if data is not None and not isinstance(data, bytes):
                raise UsageError(f"contents of {path!r} must be bytes", path=path)
        with self._repo.writing():
            return self._write_commit(root, edits, parents, message)

    def _write_commit(
        self, root: Oid | None, edits: Mapping[str, bytes | None], parents: Sequence[Oid],
        message: str,
    ) -> Oid:
        if edits:
            contents = list(dict.fromkeys(data for data in edits.values() if data is not None))
            blob_of = dict(zip(contents, self._repo.write_blobs(contents), strict=True))
            nested = {
                _path_parts(path): None if data is None else blob_of[data]
                for path, data in edits.items()
            }
            root = self._repo.edit_tree(root, nested, b"") or self._repo.write_tree({})
        elif root is None:
            root = self._repo.write_tree({})
        return self._repo.write_commit(root, parents, message)

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        """``git merge-tree --write-tree``: a clean merged tree, or the conflicting paths
        (:meth:`_Repository.merge`).  Unrelated histories merge against an empty tree."""
        return self._repo.merge(ours, theirs)

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        """Is ``ancestor`` reachable from ``descendant``?  A few steps are walked in this
        process, a longer history is left to git (:meth:`_Repository.is_ancestor`)."""
        return self._repo.is_ancestor(ancestor, descendant)

    def close(self) -> None:
        self._repo.close()

    # ---- helpers -------------------------------------------------------------------------
    def _mirror(self, ref: str) -> str:
        return self.mirror_prefix + ref[len("refs/") :]

    def _fetch_into_mirror(self, patterns: Sequence[str]) -> bool:
        """Fetch ``patterns`` into the mirror; ``False`` when an exact ref is missing."""
        if not patterns:
            return True
        refspecs = [f"+{ref}:{self._mirror(ref)}" for ref in patterns]
        args = [*_PROTOCOL_V2, "fetch", "--quiet", "--no-tags", "--prune", "--no-write-fetch-head"]
        args += ["--no-recurse-submodules", "--no-show-forced-updates", "--end-of-options"]
        result = self._repo.run([*args, self.remote, *refspecs])
        if result.status == 0:
            return True
        if not result.killed and "couldn't find remote ref" in result.stderr:
            return False
        raise _failure(f"git fetch from {scrub_url(self.remote)}", result, self.timeout)

    def _read_mirror(self, patterns: Sequence[str]) -> dict[str, Oid]:
        if not patterns:
            return {}
        mirrored = [self._mirror(p[:-2] if p.endswith("/*") else p) for p in patterns]
        found = self._repo.read_refs(mirrored)
        if found is None:
            out = self._repo.check(
                ["for-each-ref", "--format=%(objectname) %(refname)", *mirrored],
                "git for-each-ref",
            )
            found = {}
            for line in out.decode("utf-8").splitlines():
                oid, _, name = line.partition(" ")
                found[name] = oid
        values: dict[str, Oid] = {}
        for mirror, oid in found.items():
            ref = "refs/" + mirror[len(self.mirror_prefix) :]
            if ref_matches(ref, patterns):
                values[ref] = oid
        return values

    def _drop_mirror(self, refs: Sequence[str]) -> None:
        if refs:
            commands = b"".join(b"delete %s\0\0" % self._mirror(ref).encode() for ref in refs)
            self._repo.check(["update-ref", "--stdin", "-z"], "git update-ref", stdin=commands)

    def serves_filters(self) -> bool:
        """Does the remote serve partial clones (``git clone --filter``)?  Read from what it
        advertises to one ``ls-remote``: ``filter`` among the ``fetch=`` features of
        protocol v2, or among the capabilities after the first ref of protocol v0."""
        args = [*_PROTOCOL_V2, "ls-remote", "--refs", "--end-of-options", self.remote,
                "refs/heads/*"]
        result = self._repo.run(args, env={"GIT_TRACE_PACKET": "1"})
        if result.status != 0:
            raise _failure(f"git ls-remote of {scrub_url(self.remote)}", result, self.timeout)
        for line in result.stderr.splitlines():
            found = _RECEIVED_PACKET.search(line)
            if found is None:
                continue
            packet = found.group(1)
            if packet.startswith("fetch="):
                features = packet[len("fetch="):].split()
            else:
                features = packet.partition("\\0")[2].split()
            if "filter" in features:
                return True
        return False

    def _ls_remote(self, patterns: Sequence[str], prefix: str | None = None) -> dict[str, Oid]:
        """Remote values of the exact refs ``patterns`` (or, given ``prefix``, of refs under it)."""
        if not patterns:
            return {}
        args = [*_PROTOCOL_V2, "ls-remote", "--refs", "--end-of-options", self.remote, *patterns]
        result = self._repo.run(args)
        if result.status != 0:
            raise _failure(f"git ls-remote of {scrub_url(self.remote)}", result, self.timeout)
        values: dict[str, Oid] = {}
        for line in result.stdout.decode("utf-8").splitlines():
            oid, _, ref = line.partition("\t")
            if ref.startswith(prefix) if prefix is not None else ref in patterns:
                values[ref] = oid
        return values

    def _resolve(self, updates: Sequence[RefUpdate], what: str) -> bool:
        refs = [update.ref for update in updates]
        try:
            now = self._ls_remote(refs)
        except TransportError as err:
            raise OutcomeUnknown(
                f"git push {what} and reading the refs back failed too: {err}", refs=refs
            ) from err
        return _settle(updates, now, f"git push {what}")


class DirectGitTransport(DirectWriting, GitTransport):
    """A :class:`GitTransport` whose remote is a bare repository on this machine, written
    directly while a push would do nothing more (see :mod:`.direct_transport`)."""


def open_transport(
    repo_path: str | os.PathLike[str],
    remote: str = "origin",
    *,
    timeout: float = 60,
    direct: bool | None = None,
    secret: str | None = None,
) -> GitTransport:
    """A transport on the local repository ``repo_path`` for ``remote``, of the class that
    fits the way the remote is reached (see the module docstring).

    Args:
        repo_path: the local repository (bare or with a working tree) whose
            object store holds what is fetched and written.
        remote: a remote name configured there, or a URL or path.  A password in
            a URL is taken out here: git sees the URL without it.
        timeout: seconds after which any one git command is killed.
        direct: ``None``: a :class:`DirectGitTransport` when the remote is a path to
            a bare repository on this machine (written directly whenever a push
            would do nothing more), else a :class:`GitTransport`; ``False``: a
            :class:`GitTransport`, always; ``True``: a :class:`DirectGitTransport`,
            or ``UsageError`` (with the ``reason``) when the remote may not be
            written directly now.
        secret: the remote's password, if not in the URL.
    """
    split = split_secret(remote)
    remote, secret = split.public, secret or split.secret
    repo = _Repository(repo_path, timeout=timeout, secret=secret,
                       url=None if is_remote_name(remote) else remote)
    folder = None if direct is False else remote_folder(repo, remote)
    if folder is None:
        if direct:
            _cannot_write_directly(repo, remote, "it is not a path on this machine")
        return GitTransport._on(repo, remote, timeout)
    target = _DirectRemote(folder, timeout=timeout)
    refusal = target.refusal()
    if direct and refusal:
        _cannot_write_directly(repo, remote, refusal)
    transport = DirectGitTransport._on(repo, remote, timeout)
    transport._write_to(target)
    return transport


def _cannot_write_directly(repo: _Repository, remote: str, refusal: str) -> NoReturn:
    repo.close()
    raise UsageError(
        f"cannot write the remote {scrub_url(remote)} directly: {refusal}; "
        "leave direct unset to push to it instead",
        reason=refusal,
    )
