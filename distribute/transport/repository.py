"""One git repository on this machine: running git in it, and its objects.

Theory of operation
-------------------
:class:`_Repository` is a GitPython ``Repo`` (bare, or with a working tree)
and the one way git is run in it, :meth:`_Repository.run`: through
:func:`~distribute.transport.process._execute` (see :mod:`.process` for how),
with ``GIT_DIR``, ``GIT_WORK_TREE`` and ``GIT_INDEX_FILE`` set explicitly so
that a stray value in this process's environment cannot redirect a command,
and with the remote's password, if any, given to git through a credential
helper (:mod:`distribute.credentials`).  Its refs are read from the ref files
in this process when they are stored as files.

Local objects
    A loose object is read here; any other through GitPython's persistent
    ``cat-file --batch`` (one process per repository, guarded by a lock);
    trees are walked and edited here.  Commits are written as loose objects
    here (SHA-1) or with ``hash-object``/``mktree``/``commit-tree`` -- so no
    index or working tree is touched.  ``merge`` is ``git merge-tree
    --write-tree`` (git >= 2.38).  Whether one commit descends from another
    is walked here for a few steps, then asked of
    ``git merge-base --is-ancestor``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from distribute.core.errors import TransportError, UsageError
from distribute.core.names import is_valid_ref_component
from distribute.credentials import git_config, git_env, git_options
from distribute.transport import trees
from distribute.transport.base import (
    MergeResult,
    Oid,
    check_message,
    check_oid,
    check_ref_name,
)
from distribute.transport.direct import ObjectStore, read_ref_files, tree_entries
from distribute.transport.process import (
    _CONFIG,
    _ENV,
    IDENTITY,
    _execute,
    _failure,
    _Result,
    _run_outside,
)

__all__ = ["init_bare_repo"]

_T = TypeVar("_T")

_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

_MODE_TREE = 0o040000
_MODE_FILE = 0o100644
_MODE_EXECUTABLE = 0o100755
_MODE_SYMLINK = 0o120000
_MODE_GITLINK = 0o160000

#: commits :meth:`_Repository.is_ancestor` walks in this process before it asks git
_ANCESTRY_WALK = 64
_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class _Entry:
    mode: int
    oid: Oid

    @property
    def is_tree(self) -> bool:
        return self.mode == _MODE_TREE

    @property
    def kind(self) -> str:
        if self.mode == _MODE_TREE:
            return "tree"
        return "commit" if self.mode == _MODE_GITLINK else "blob"


def _check_branch(branch: str) -> str:
    """A short branch name (``jobs/w1/job%20x``) that git accepts and cannot read as an option."""
    if not isinstance(branch, str) or branch.startswith("-") or branch == "HEAD":
        raise UsageError(f"{branch!r} is not a valid branch name", branch=branch)
    check_ref_name("refs/heads/" + branch)
    return branch


def is_remote_name(remote: str) -> bool:
    """Is ``remote`` the name of a remote configured in a repository (``origin``), rather
    than a URL or a path?"""
    return bool(_REMOTE_NAME.fullmatch(remote) and is_valid_ref_component(remote))


#: The settings with which a repository serves partial clones: filters, and the fetch of
#: a missing object by its id (GitHub and GitLab allow both).
PARTIAL_CLONE_SETTINGS = ("uploadpack.allowFilter", "uploadpack.allowAnySHA1InWant")


def init_bare_repo(
    path: str | os.PathLike[str], branch: str = "main", *, timeout: float = 60,
    serve_partial_clones: bool = False,
) -> Path:
    """Create an empty bare repository whose ``HEAD`` names ``branch``; return its path.

    ``serve_partial_clones``: for a remote that workers clone; it lets a clone over a
    URL (``file://``, ssh, HTTP) leave large files behind and fetch them by id when
    needed (:data:`PARTIAL_CLONE_SETTINGS`), as GitHub and GitLab do.

    Raises:
        UsageError: ``branch`` is not a valid branch name.
        TransportError: git failed (for example, ``path`` is not writable).
    """
    _check_branch(branch)
    target = Path(path).absolute()
    _run_outside(
        [
            "init",
            "--quiet",
            "--bare",
            f"--initial-branch={branch}",
            "--end-of-options",
            str(target),
        ],
        f"git init of {target}",
        timeout=timeout,
    )
    if serve_partial_clones:
        for key in PARTIAL_CLONE_SETTINGS:
            _run_outside(["--git-dir", str(target), "config", key, "true"],
                         f"git config of {target}", timeout=timeout)
    return target


#: trees of up to this many bytes are kept parsed, up to :data:`_TREES_KEPT` of them
_SMALL_TREE = 16 * 1024
_TREES_KEPT = 512
#: Large trees git was asked about lately (see :meth:`_Repository.lookup`).
_ASKED_KEPT = 16


class _Repository:
    """A GitPython ``Repo`` and the one way git is run in it."""

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float, secret: str | None = None,
        url: str | None = None,
    ) -> None:
        try:
            self._repo = git.Repo(os.fspath(path))
        except (InvalidGitRepositoryError, NoSuchPathError) as err:
            raise UsageError(f"{os.fspath(path)} is not a git repository", path=str(path)) from err
        # the remote's password, if its URL had one: given to the git commands run here
        # through a credential helper and their environment, never stored or in argv;
        # ``url`` (by default the origin's, which holds no password) scopes its header
        if secret is not None and url is None:
            with self._repo.config_reader() as config:
                url = str(config.get_value('remote "origin"', "url", ""))
        self._auth = git_options(secret)
        self._auth_env = git_env(secret, url)
        self.timeout = timeout
        self.git_dir = Path(self._repo.git_dir).resolve()
        tree = self._repo.working_tree_dir
        self.work_tree = Path(tree).resolve() if tree is not None and not self._repo.bare else None
        env = dict(_ENV, GIT_DIR=str(self.git_dir))
        if self.work_tree is not None:
            env.update(GIT_WORK_TREE=str(self.work_tree), GIT_INDEX_FILE=str(self.index_file))
        # the persistent ``cat-file --batch`` gets the password too: in a partial clone
        # (see GitLocalCopy.clone) it fetches a missing object from the remote itself
        env.update(self._auth_env)
        self._repo.git.update_environment(**env)
        self._repo.git.set_persistent_git_options(
            c=[*_CONFIG[1::2], *git_config(secret)])
        self._objects_lock = threading.Lock()
        with self._repo.config_reader("repository") as config:
            formats = config.get_value("extensions", "objectformat", "sha1")
            storage = config.get_value("extensions", "refstorage", "files")
        self.sha1 = str(formats).lower() == "sha1"
        self.ref_storage = str(storage).lower()
        # GitPython's own object database starts `git hash-object` for every write
        self._store_view: ObjectStore | None = None
        # small trees parsed, by id (a tree never changes): the folder of done.txt's
        # sealed parts, say, is read at every look and changes once in a thousand jobs
        self._trees: dict[Oid, dict[bytes, _Entry]] = {}
        self._asked: dict[Oid, bool] = {}
        self._trees_lock = threading.Lock()

    @property
    def index_file(self) -> Path:
        return self.git_dir / "index"

    def run(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> _Result:
        if self._auth:
            args = [*self._auth, *args]
            env = {**self._auth_env, **(env or {})}
        return _execute(self._repo.git, args, stdin=stdin, env=env, timeout=timeout or self.timeout)

    def check(
        self,
        args: Sequence[str],
        what: str,
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run ``args``; return standard output, raise ``TransportError`` on failure."""
        result = self.run(args, stdin=stdin, env=env, timeout=timeout)
        if result.status != 0:
            raise _failure(what, result, timeout or self.timeout)
        return result.stdout

    def close(self) -> None:
        self._repo.git.clear_cache()

    # ---- refs ---------------------------------------------------------------------
    def read_refs(self, names: Sequence[str]) -> dict[str, Oid] | None:
        """Values of the refs ``names`` and of those below them, read from the ref files
        in this process (no ``git for-each-ref``); ``None`` when the refs are not stored
        as files (a reftable repository): ask git then."""
        if self.ref_storage != "files":
            return None
        return read_ref_files(Path(self._repo.common_dir), names)

    def set_config(self, section: str, option: str, value: str) -> None:
        """Write one value into the repository's own configuration file.

        Through ``git config``, which writes a new file and renames it into place: a
        process killed meanwhile leaves the old file whole (GitPython's writer rewrites
        the file in place, and a kill there left a copy with no remote at all)."""
        self.check(["config", "--file", str(self.git_dir / "config"), "--end-of-options",
                    f"{section}.{option}", value], "git config")

    def objects(self) -> ObjectStore:
        """This repository's object store, for copying objects in this process."""
        if self._store_view is None:
            self._store_view = ObjectStore(Path(self._repo.common_dir) / "objects")
        return self._store_view

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """A block in which this thread's object writes open the objects folder once
        (:meth:`ObjectStore.writing`)."""
        return self.objects().writing() if self.sha1 else contextlib.nullcontext()

    def config_value(self, section: str, option: str) -> str | None:
        """One value of the repository's own configuration file (read here, no git);
        ``section`` as GitPython names it (``remote "origin"``)."""
        with self._repo.config_reader("repository") as config:
            if not config.has_option(section, option):
                return None
            return str(config.get_value(section, option))

    # ---- objects -----------------------------------------------------------------
    def read_object(self, oid: Oid) -> tuple[str, bytes]:
        """Type and contents of ``oid``: a loose object is read here (most objects a worker
        reads were just written or fetched, so they are loose), any other from the
        persistent ``cat-file --batch``, which costs a round trip to another process."""
        check_oid(oid)
        if self.sha1:
            loose = self.objects().read_loose(oid)
            if loose is not None:
                return loose
        try:
            _, kind, _, data = self._ask_cat_file(self._repo.git.get_object_data, oid, oid)
        except ValueError as err:  # cat-file answered "<oid> missing"
            raise TransportError(
                f"object {oid} is not in the local repository (fetch it first)", oid=oid
            ) from err
        return _text(kind), data

    def _ask_cat_file(self, ask: Callable[[str], _T], name: str, oid: Oid) -> _T:
        """``ask(name)`` of one of GitPython's persistent ``cat-file`` processes, under the
        objects lock; one that died is started again once.  ``ValueError`` (cat-file
        answered "missing") goes to the caller; a second failure is a ``TransportError``
        about ``oid``."""
        with self._objects_lock:
            try:
                return ask(name)
            except (OSError, git.GitCommandError):
                self._repo.git.clear_cache()
            try:
                return ask(name)
            except (OSError, git.GitCommandError) as err:
                self._repo.git.clear_cache()
                raise TransportError(f"git cat-file failed: {err}", oid=oid) from err

    def commit_tree(self, commit: Oid) -> Oid:
        kind, data = self.read_object(check_oid(commit))
        if kind != "commit" or not data.startswith(b"tree "):
            raise TransportError(f"{commit} is a {kind}, not a commit", oid=commit)
        return data[5 : data.index(b"\n")].decode("ascii")

    def tree_entries(self, tree: Oid) -> dict[bytes, _Entry]:
        """The entries of ``tree`` (a dict of the caller's own, free to change)."""
        with self._trees_lock:
            known = self._trees.get(tree)
        if known is not None:
            return dict(known)
        kind, data = self.read_object(tree)
        if kind != "tree":
            raise TransportError(f"{tree} is a {kind}, not a tree", oid=tree)
        parsed = tree_entries(data, len(tree) // 2)
        entries = {name: _Entry(mode, oid) for name, (mode, oid) in parsed.items()}
        if len(data) <= _SMALL_TREE:
            with self._trees_lock:
                while len(self._trees) >= _TREES_KEPT:
                    del self._trees[next(iter(self._trees))]
                self._trees[tree] = dict(entries)
        return entries

    def lookup(self, tree: Oid, path: str) -> tuple[str, Oid] | None:
        """Kind and id of what ``path`` names below ``tree``, ``None`` when nothing.

        One name in a large tree (a job's folder among every job's results) is answered
        here when what is kept tells (:func:`~distribute.transport.trees.find`): the
        tree's cut, or the splices made here since one.  A large tree asked about a
        second time is read and cut then: a worker whose jobs write nothing meets the
        same tree at every claim.  Any other lookup is git's own, through the persistent
        ``cat-file --batch-check``, which scans a tree without parsing it here."""
        check_oid(tree)
        if not path or any(c in path for c in "\n\r\0"):
            raise UsageError(f"{path!r} cannot be looked up in a tree", path=path)
        if "/" not in path:
            name, size = path.encode("utf-8"), len(tree) // 2
            known, entry = trees.find(tree, name, size)
            if not known and self._asked_before(tree):
                kind, data = self.read_object(tree)
                if kind == "tree":
                    trees.keep(tree, data, size)
                    known, entry = trees.find(tree, name, size)
                if not known:  # too small to keep: git scans it fast
                    with self._trees_lock:
                        self._asked[tree] = False
            if known:
                if entry is None:
                    return None
                found = _Entry(entry[0], entry[1].hex())
                return found.kind, found.oid
        try:
            oid, kind, _ = self._ask_cat_file(self._repo.git.get_object_header,
                                              f"{tree}:{path}", tree)
        except ValueError:  # "<name> missing"
            return None
        return _text(kind), _text(oid)

    def _asked_before(self, tree: Oid) -> bool:
        """Whether git was asked about ``tree`` lately, and the tree may be worth keeping
        cut (and remember it was asked now)."""
        with self._trees_lock:
            if tree in self._asked:
                return self._asked[tree]
            self._asked[tree] = True
            while len(self._asked) > _ASKED_KEPT:
                del self._asked[next(iter(self._asked))]
            return False

    def _store(self, kind: str, data: bytes) -> Oid:
        """Write one loose object in this process (gitdb), without starting git: what git
        itself would write.  Only for SHA-1 repositories."""
        return self.objects().put(kind, data)

    def write_blobs(self, contents: Sequence[bytes]) -> list[Oid]:
        """Write blobs (no filters); return their ids in order."""
        if not contents:
            return []
        if self.sha1:
            return [self._store("blob", data) for data in contents]
        with tempfile.TemporaryDirectory(prefix="distribute-blobs-") as scratch:
            paths = []
            for number, data in enumerate(contents):
                path = Path(scratch) / str(number)
                path.write_bytes(data)
                paths.append(str(path))
            out = self.check(["hash-object", "-w", "--no-filters", "--", *paths], "git hash-object")
        oids = out.decode("ascii").split()
        if len(oids) != len(contents):
            raise TransportError("git hash-object returned the wrong number of ids")
        return oids

    def write_tree(self, entries: Mapping[bytes, _Entry]) -> Oid:
        if self.sha1:
            # git orders entries by name, a tree's name as if it ended in "/"
            def order(item: tuple[bytes, _Entry]) -> bytes:
                return item[0] + b"/" if item[1].is_tree else item[0]

            body = b"".join(
                b"%o %s\0" % (entry.mode, name) + bytes.fromhex(entry.oid)
                for name, entry in sorted(entries.items(), key=order)
            )
            return self._store("tree", body)
        lines = b"".join(
            b"%06o %s %s\t%s\0" % (entry.mode, entry.kind.encode(), entry.oid.encode(), name)
            for name, entry in entries.items()
        )
        return self.check(["mktree", "-z", "--missing"], "git mktree", stdin=lines).decode().strip()

    def write_commit(self, tree: Oid, parents: Sequence[Oid], message: str) -> Oid:
        text = check_message(message)
        if self.sha1:
            stamp = f"{IDENTITY[0]} <{IDENTITY[1]}> {int(time.time())} +0000"
            head = [f"tree {check_oid(tree)}"]
            head += [f"parent {check_oid(parent)}" for parent in parents]
            head += [f"author {stamp}", f"committer {stamp}"]
            return self._store("commit", ("\n".join(head) + "\n\n" + text).encode("utf-8"))
        args = ["commit-tree", "--no-gpg-sign"]
        for parent in parents:
            args += ["-p", check_oid(parent)]
        args.append(check_oid(tree))
        out = self.check(args, "git commit-tree", stdin=check_message(message).encode("utf-8"))
        return out.decode("ascii").strip()

    def splice_tree(self, tree: Oid, changes: Mapping[bytes, _Entry | None]) -> Oid | None:
        """``tree`` with the entries ``changes`` names replaced (``None`` removes one);
        ``None`` when it ends up empty.  Only the changed entries are looked at
        (:func:`~distribute.transport.trees.splice_tree`), so a tree of 100,000 job
        folders costs a scan of its bytes, not a parse of every entry."""
        if not self.sha1:
            entries = self.tree_entries(tree)
            for name, entry in changes.items():
                if entry is None:
                    entries.pop(name, None)
                else:
                    entries[name] = entry
            return self.write_tree(entries) if entries else None
        kind, data = self.read_object(tree)
        if kind != "tree":
            raise TransportError(f"{tree} is a {kind}, not a tree", oid=tree)
        raw = {name: None if entry is None else (entry.mode, bytes.fromhex(entry.oid))
               for name, entry in changes.items()}
        body = trees.splice_tree(data, len(tree) // 2, raw, tree)
        if not body:
            return None
        made = self._store("tree", body)
        trees.remember_splice(made, tree, raw)
        return made

    def edit_tree(
        self, tree: Oid | None, changes: Mapping[tuple[bytes, ...], Oid | None], where: bytes
    ) -> Oid | None:
        """Apply ``changes`` (path parts -> blob id, ``None`` deletes) below ``tree``.

        Returns the new tree's id, or ``None`` when it ends up empty.
        """
        entries = self.tree_entries(tree) if tree is not None else {}
        files: dict[bytes, Oid | None] = {}
        below: dict[bytes, dict[tuple[bytes, ...], Oid | None]] = {}
        for parts, blob in changes.items():
            if len(parts) == 1:
                files[parts[0]] = blob
            else:
                below.setdefault(parts[0], {})[parts[1:]] = blob
        for name, blob in files.items():
            current = entries.get(name)
            if blob is None:
                if current is not None and not current.is_tree:
                    del entries[name]
                continue
            if name in below or (current is not None and current.is_tree):
                raise _clash(where + name)
            keep = current is not None and current.mode in (_MODE_FILE, _MODE_EXECUTABLE)
            entries[name] = _Entry(current.mode if keep and current else _MODE_FILE, blob)
        for name, sub in below.items():
            current = entries.get(name)
            if current is not None and not current.is_tree:
                raise _clash(where + name)
            subtree = self.edit_tree(current.oid if current else None, sub, where + name + b"/")
            if subtree is None:
                entries.pop(name, None)
            else:
                entries[name] = _Entry(_MODE_TREE, subtree)
        if not entries:
            return None
        return self.write_tree(entries)

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        """``git merge-tree --write-tree``: a clean merged tree, or the conflicting paths.

        Unrelated histories merge against an empty tree.
        """
        args = ["merge-tree", "--write-tree", "--name-only", "-z", "--no-messages"]
        args += ["--allow-unrelated-histories", check_oid(ours), check_oid(theirs)]
        result = self.run(args)
        fields = result.stdout.split(b"\0")
        if result.status == 0:
            return MergeResult(fields[0].decode("ascii"))
        if result.status == 1:
            conflicts: set[str] = set()
            for field in fields[1:]:
                if not field:
                    break
                conflicts.add(field.decode("utf-8", errors="surrogateescape"))
            return MergeResult(None, tuple(sorted(conflicts)))
        raise _failure("git merge-tree", result, self.timeout)

    def is_ancestor(self, ancestor: Oid, descendant: Oid) -> bool:
        """Is ``ancestor`` reachable from ``descendant``?  Usually a few steps back, so the
        history is walked here first (through the open ``cat-file``); a longer walk, or a
        commit not in the local store, is left to ``git merge-base --is-ancestor``."""
        check_oid(ancestor)
        check_oid(descendant)
        if ancestor == descendant:
            return True
        seen, frontier = {descendant}, [descendant]
        with contextlib.suppress(TransportError):
            while frontier and len(seen) <= _ANCESTRY_WALK:
                kind, data = self.read_object(frontier.pop(0))
                if kind != "commit":
                    break
                for line in data.split(b"\n\n", 1)[0].split(b"\n"):
                    if not line.startswith(b"parent "):
                        continue
                    parent = line[7:].decode("ascii")
                    if parent == ancestor:
                        return True
                    if parent not in seen:
                        seen.add(parent)
                        frontier.append(parent)
            else:
                if not frontier:
                    return False  # the whole history was walked
        args = ["merge-base", "--is-ancestor", ancestor, descendant]
        result = self.run(args)
        if result.status in (0, 1):
            return result.status == 0
        raise _failure("git merge-base --is-ancestor", result, self.timeout)


def _text(value: str | bytes) -> str:
    """A field of a ``cat-file`` answer (GitPython gives bytes or text by version)."""
    return value.decode("ascii") if isinstance(value, bytes) else value


def _clash(path: bytes) -> UsageError:
    text = path.decode("utf-8", errors="replace")
    return UsageError(f"{text!r} would be both a file and a directory", path=text)
