"""Real git through GitPython: the transport workers use, and the local copy they own.

Theory of operation
-------------------
:class:`GitTransport` keeps the :class:`~distribute.transport.base.Transport`
contract over a local repository and a remote.  It is made of these modules:

* :mod:`.process` starts every git command (explicit argument lists, no
  shell, a fixed environment, ``--end-of-options``, scrubbed messages);
* :mod:`.repository` is the local repository: git run in it, its refs and
  objects read, trees and commits written there, merges and ancestry;
* :mod:`.direct_remote` writes a bare repository on this machine directly
  (with :mod:`.direct`) instead of pushing to it;
* :mod:`.local_copy` is a worker's clone with its working tree
  (:class:`GitLocalCopy`, offered here too).

Remote refs
    ``fetch`` is one ``git fetch`` of exactly the requested refs into a
    private namespace (``refs/distribute-mirror/<remote>/...``) with
    ``--prune``, then the mirror's ref files are read here.  A requested
    ref missing on the remote makes git fail the whole fetch; then an
    ``ls-remote`` tells which exist and those are fetched.  ``list_refs`` is
    one ``ls-remote``.  ``push`` is one ``git push --atomic --porcelain
    --no-verify`` with a ``--force-with-lease`` per ref: a compare-and-swap
    the server checks under its ref locks.  A push whose answer was lost is
    settled by reading the refs back.

A bare repository on this machine
    is written directly when a push would do nothing more (see
    :mod:`.direct_remote`): its refs are read from its files, objects are
    copied in this process, and each compare-and-swap is one
    ``git update-ref --stdin`` transaction in it; no mirror refs are written.
    Whether it may be is checked again at every fetch and push.

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
from pathlib import Path
from types import TracebackType

from distribute.core.errors import OutcomeUnknown, RemoteStateError, TransportError, UsageError
from distribute.core.names import is_valid_ref_component, scrub_url
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
)
from distribute.transport.direct import RepositoryFolder, copy_objects
from distribute.transport.direct_remote import _DirectRemote, _settle
from distribute.transport.local_copy import GitLocalCopy
from distribute.transport.process import _PROTOCOL_V2, IDENTITY, _failure, _remote_says
from distribute.transport.repository import _Repository, init_bare_repo

__all__ = ["IDENTITY", "MIRROR_PREFIX", "GitLocalCopy", "GitTransport", "init_bare_repo"]

#: Where fetched remote refs are kept in the local repository.
MIRROR_PREFIX = "refs/distribute-mirror/"

#: Reasons in a rejected push that mean another writer got there first.
_RACE_REASONS = (
    "stale info",
    "fetch first",
    "non-fast-forward",
    "failed to update ref",
    "cannot lock ref",
    "atomic push failed",
    "atomic transaction failed",
)
#: Refusals that say the remote failed to receive or check the pack (its folder moved,
#: a full disk): nothing landed, and trying again later may work; not a rule.
_TRANSIENT_REFUSALS = ("unpacker error", "missing necessary objects")
#: git's words for "never got through to the remote", so nothing was sent.
_UNREACHABLE = (
    "could not read from remote repository",
    "unable to access",
    "unable to connect",
    "could not resolve host",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "does not appear to be a git repository",
    "repository not found",
    "' not found",  # git over http(s): fatal: repository '<url>' not found
    "authentication failed",
    "terminal prompts disabled",
    "could not read username",
)
_ATOMIC_UNSUPPORTED = "does not support --atomic"
_PORCELAIN_REASON = re.compile(r"\((.*)\)\s*$")
_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _is_race(reason: str) -> bool:
    return reason.startswith(_RACE_REASONS)


def _path_parts(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode("utf-8") for part in path.split("/"))


def _matches(ref: str, patterns: Sequence[str]) -> bool:
    return any(ref == p or (p.endswith("/*") and ref.startswith(p[:-1])) for p in patterns)


class GitTransport:
    """One worker's connection to a git remote, through its local repository.

    Args:
        repo_path: the local repository (bare or with a working tree) whose
            object store holds what is fetched and written.
        remote: a remote name configured there, or a URL or path.
        timeout: seconds after which any one git command is killed.

    Keeps the :class:`~distribute.transport.base.Transport` contract; see the
    module docstring for how.
    """

    def __init__(
        self,
        repo_path: str | os.PathLike[str],
        remote: str = "origin",
        *,
        timeout: float = 60,
        direct: bool | None = None,
        secret: str | None = None,
    ) -> None:
        # a password in a URL is taken out here: git sees the URL without it
        split = split_secret(remote)
        remote, secret = split.public, secret or split.secret
        self._repo = _Repository(repo_path, timeout=timeout, secret=secret)
        self.remote = remote
        self.timeout = timeout
        key = remote
        named = bool(_REMOTE_NAME.fullmatch(remote) and is_valid_ref_component(remote))
        if not named:
            key = "url-" + hashlib.sha256(remote.encode("utf-8")).hexdigest()[:16]
        self.mirror_prefix = f"{MIRROR_PREFIX}{key}/"
        self._fetch_lock = threading.Lock()
        self._direct: _DirectRemote | None = None
        self._kept = False  # gc.pruneExpire checked
        if direct is not False:
            folder = self._local_remote(named)
            if folder is not None:
                self._direct = _DirectRemote(folder, timeout=timeout)
            refusal = "it is not a path on this machine" if folder is None else None
            refusal = refusal or (self._direct.refusal() if self._direct else None)
            if direct and refusal:
                raise UsageError(
                    f"cannot write the remote {scrub_url(remote)} directly: {refusal}; "
                    "leave direct unset to push to it instead",
                    reason=refusal,
                )

    def remote_url(self) -> str:
        """The remote's URL (or path) as git sees it: a named remote's configured URL;
        never a password (see :mod:`distribute.credentials`)."""
        named = bool(_REMOTE_NAME.fullmatch(self.remote) and is_valid_ref_component(self.remote))
        if named:
            out = self._repo.check(["config", "--get", f"remote.{self.remote}.url"], "git config")
            return split_secret(out.decode("utf-8").strip()).public
        return self.remote

    @property
    def direct(self) -> bool:
        """Does this transport write the remote directly (a bare repository on this
        machine) rather than through ``git push`` and ``git fetch``?  Checked again at
        every fetch and push: a hook or rule added later makes it push.  ``False``
        while its folder is gone or replaced (then nothing reaches it)."""
        try:
            return self._direct_now() is not None
        except TransportError:
            return False

    def _keep_fetched_objects(self) -> None:
        """Set ``gc.pruneExpire=never`` in the local repository unless it says otherwise:
        directly fetched objects are referenced by no local ref, and a ``git gc`` that
        pruned part of what a copied commit names would break the next copy's walk."""
        if self._repo.config_value("gc", "pruneExpire") is None:
            self._repo.set_config("gc", "pruneExpire", "never")

    def _direct_now(self) -> _DirectRemote | None:
        """The direct remote when it may be written directly now; ``None`` when it is to
        be pushed to.  A remote on this machine whose folder is gone or was replaced is
        neither: ``TransportError``, before git could push into whatever is there now.
        """
        if self._direct is None:
            return None
        self._direct.check()
        if self._direct.refusal() is not None:
            return None
        if not self._kept:
            self._keep_fetched_objects()
            self._kept = True
        return self._direct

    def _local_remote(self, named: bool) -> RepositoryFolder | None:
        """The remote's folder, pinned as found now, when it is given as an absolute path
        (not ``file://``, which asks for git's pack protocol, as with ``git clone``)."""
        url: str | None = self.remote
        if named:
            section = f'remote "{self.remote}"'
            url = self._repo.config_value(section, "url")
            if url is None or self._repo.config_value(section, "pushurl") is not None:
                return None
        if url is None or "://" in url or not os.path.isabs(url):
            return None
        path = Path(url)
        if not path.is_dir() or (path / ".git").exists():
            return None
        try:
            return RepositoryFolder(path.resolve())
        except OSError:
            return None  # gone again already: git push and fetch will say so

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
        if not patterns:
            return {}
        with self._fetch_lock:
            direct = self._direct_now()
            if direct is not None:
                return self._fetch_direct(direct, patterns)
            wanted = patterns
            for _ in range(3):
                if self._fetch_into_mirror(wanted):
                    return self._read_mirror(wanted)
                exact = [ref for ref in patterns if not ref.endswith("/*")]
                present = self._ls_remote(exact)
                self._drop_mirror([ref for ref in exact if ref not in present])
                wanted = [ref for ref in patterns if ref.endswith("/*") or ref in present]
            raise TransportError("git fetch kept failing: requested refs keep vanishing")

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        """Values of the remote refs whose names start with ``prefix`` (one ``ls-remote``)."""
        direct = self._direct_now()
        if direct is not None:
            check_ref_prefix(prefix)
            # the folder that holds every ref starting with the prefix
            folder = prefix[:-1] if prefix.endswith("/") else prefix.rpartition("/")[0]
            found = direct.read_refs([folder])
            return {ref: oid for ref, oid in found.items() if ref.startswith(prefix)}
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
        direct = self._direct_now()
        if direct is not None:
            news = [u.new for u in updates if u.new is not None]
            try:
                copy_objects(self._repo.objects(), direct.store, news)
            except KeyError as err:
                raise TransportError(f"object {err} is not in the local repository") from err
            except OSError as err:
                direct.check()
                raise TransportError(
                    f"the remote {direct.git_dir} could not store the pushed objects: {err}"
                ) from err
            return direct.update_refs(updates)
        args = ["push", "--atomic", "--porcelain", "--no-verify", "--no-follow-tags"]
        args.append("--recurse-submodules=no")
        args += [f"--force-with-lease={u.ref}:{u.old or ''}" for u in updates]
        args += ["--end-of-options", self.remote]
        args += [f"{u.new or ''}:{u.ref}" for u in updates]
        result = self._repo.run(args)
        rejected = self._rejections(result.stdout)
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
    def _fetch_direct(self, direct: _DirectRemote, patterns: Sequence[str]) -> dict[str, Oid]:
        """Read the refs from the remote's files and copy the objects they need.

        No mirror refs are written (each would cost a file): the local repository is
        set never to prune unreachable objects (:meth:`_keep_fetched_objects`), so a
        commit or tree copied here keeps everything below it, which the next copy's
        walk relies on."""
        found = direct.read_refs([p[:-2] if p.endswith("/*") else p for p in patterns])
        values = {ref: oid for ref, oid in found.items() if _matches(ref, patterns)}
        try:
            copy_objects(direct.store, self._repo.objects(), values.values())
        except KeyError as err:
            direct.check()  # gone meanwhile, rather than missing an object
            raise TransportError(f"the remote {direct.git_dir} lacks object {err}") from err
        except OSError as err:
            direct.check()
            raise TransportError(f"reading the remote {direct.git_dir} failed: {err}") from err
        return values

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
            if _matches(ref, patterns):
                values[ref] = oid
        return values

    def _drop_mirror(self, refs: Sequence[str]) -> None:
        if refs:
            commands = b"".join(b"delete %s\0\0" % self._mirror(ref).encode() for ref in refs)
            self._repo.check(["update-ref", "--stdin", "-z"], "git update-ref", stdin=commands)

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

    @staticmethod
    def _rejections(porcelain: bytes) -> dict[str, str]:
        """``ref -> reason`` for every ``!`` line of ``push --porcelain`` output."""
        rejected: dict[str, str] = {}
        for line in porcelain.decode("utf-8", errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[0] == "!":
                ref = fields[1].rpartition(":")[2]
                match = _PORCELAIN_REASON.search(fields[2])
                rejected[ref] = match.group(1) if match else fields[2]
        return rejected

    def _resolve(self, updates: Sequence[RefUpdate], what: str) -> bool:
        refs = [update.ref for update in updates]
        try:
            now = self._ls_remote(refs)
        except TransportError as err:
            raise OutcomeUnknown(
                f"git push {what} and reading the refs back failed too: {err}", refs=refs
            ) from err
        return _settle(updates, now, f"git push {what}")
