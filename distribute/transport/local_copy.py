"""A worker's local copy of the remote: a clone with the working tree its jobs write into.

Theory of operation
-------------------
:class:`GitLocalCopy` is made by cloning only the remote's default branch
(:meth:`GitLocalCopy.clone`) or by opening an existing clone.  The remote's
password, if any, is kept in memory, never in the clone's config.  Snapshots
of the working tree are written with a temporary index (``git add`` and
``git write-tree``), so the user's ``HEAD``, branches and index stay as they
are; checking out, advancing and cleaning use git's own ``checkout``,
``update-ref``/``reset`` and ``reset --hard``/``clean``.

Views
    A remote that ran many jobs holds a folder per job under ``updates/``.  With
    :meth:`GitLocalCopy.show`, the copy checks out a *view* instead of the commit
    itself: a commit made here and never pushed, whose tree is the real one
    with ``updates/`` cut down to the folders named, and whose one parent is
    the real commit (its message names it too).  Index and working tree then
    hold only what is on disk, so ``checkout``, ``status`` and snapshots cost
    what they cost on a young remote.  A snapshot is grafted back onto the real
    tree: the entries outside ``updates/`` are the working tree's, each folder
    shown is replaced by the working tree's, and a folder written that was not
    shown (another job's) is laid over the real one, file by file, so nothing
    the view left out is lost; the large ``updates`` tree is spliced, not
    parsed (:mod:`.trees`).  :meth:`GitLocalCopy.head` answers the real commit.
    A copy narrowed by an earlier version (git's sparse checkout, non-cone
    mode) is widened at its first checkout and then checks out views too.

Git is run in it as in any repository (:class:`~.repository._Repository`), and its refs and
objects are reached through a transport made by :meth:`GitLocalCopy.transport`
with :func:`~distribute.transport.git.open_transport`, which picks the class
for the way ``origin`` is reached (see :mod:`distribute.transport.git`).  This
module imports :mod:`.git`; :mod:`.git` does not import it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from distribute.core.errors import UsageError
from distribute.core.names import scrub_url
from distribute.credentials import private_folder, split_secret
from distribute.transport.base import Oid, check_oid, check_ref_name
from distribute.transport.git import GitTransport, open_transport
from distribute.transport.lfs import (
    FILTER,
    LfsPointer,
    filter_config,
    git_lfs_installed,
    parse_pointer,
)
from distribute.transport.process import _PROTOCOL_V2, _run_outside, pack_when_piled_up
from distribute.transport.repository import _MODE_TREE, _check_branch, _Entry, _Repository
from distribute.transport.shared_objects import missing_alternates

__all__ = ["COPY_LOOSE_LIMIT", "COPY_PACK_LIMIT", "GitLocalCopy"]

#: Loose objects and packs (git's own ``gc.auto`` and ``gc.autoPackLimit`` defaults) past
#: which a local copy is packed (:meth:`GitLocalCopy.housekeeping`).
COPY_LOOSE_LIMIT, COPY_PACK_LIMIT = 6700, 50

#: The folder whose sub-folders a view leaves out, but for those it shows.
VIEW_FOLDER = "updates"
_VIEW_MESSAGE = re.compile(
    r"distribute: a worker's view of ([0-9a-f]{40,64})\n\nshows: updates/ (\[.*\])\n")


@dataclass(frozen=True, slots=True)
class _View:
    """A view commit checked out here: which real commit it shows, and how."""

    commit: Oid  # the view itself (a local commit, never pushed)
    real: Oid  # the commit it shows
    tree: Oid  # the view's tree: the index's, when it is checked out
    shown: tuple[str, ...]  # the folders of updates/ it keeps


class GitLocalCopy:
    """A worker's clone of the remote, with the working tree the user's code writes into.

    Make one with :meth:`clone` or :meth:`open`.  Branch names are short
    (``jobs/w1/job%20x``) and validated; commits are full hex ids.
    """

    def __init__(self, repo: _Repository, secret: str | None = None) -> None:
        if repo.work_tree is None:
            raise UsageError(f"{repo.git_dir} is a bare repository, not a local copy")
        self._repo = repo
        self._work_tree = repo.work_tree
        self._secret = secret
        self._shown: tuple[str, ...] | None = None  # see show(); None: whole trees
        self._sparse_checked = False  # has a sparse checkout of an older version been left?
        self._leave_sparse = False  # turn sparse checkout off after the next checkout
        self._head: tuple[Oid | None, _View | None] | None = None  # HEAD and its view, once read
        # the last snapshot made under a view: its commit, the working tree's tree, shown
        self._made: tuple[Oid, Oid, tuple[str, ...]] | None = None
        # Git LFS: with git-lfs installed, its filter is in the copy's config (see .lfs)
        self._lfs = git_lfs_installed()
        if self._lfs:
            for key, value in filter_config().items():
                section, option = key.rsplit(".", 1)
                if repo.config_value('filter "lfs"', option) != value:
                    repo.set_config(section, option, value)

    @classmethod
    def clone(
        cls, url: str, path: str | os.PathLike[str], *, timeout: float = 600,
        checkout: bool = True, reference: str | os.PathLike[str] | None = None,
        shown: Sequence[str] | None = None, lazy_blobs_from: int | None = None,
    ) -> GitLocalCopy:
        """Clone only the remote's default branch of ``url`` into ``path`` and check it out
        (unless ``checkout`` is false: a copy that is only read through its transport
        needs no working tree, which for a remote holding many jobs' results is most of
        a clone's time).

        An empty remote gives an empty local copy.  ``path`` must not exist
        or be an empty directory; it is made readable by this user only.  A
        password in ``url`` is kept in memory (:mod:`distribute.credentials`):
        the clone's config holds the URL without it.  ``reference``: a repository on
        this machine whose objects the copy borrows instead of downloading them
        (:mod:`~distribute.transport.shared_objects`); ignored when it is not one.
        ``shown``: check out a view that shows only these folders of ``updates/``
        (:meth:`show`).
        ``lazy_blobs_from``: a partial clone where the remote allows it.  The clone
        brings no file at all (``--filter=blob:none``): a remote holding ten
        thousand jobs' small results is joined as fast as an empty one, and the
        first checkout brings what it shows, in one batch.  Later fetches bring the
        files they reach except those of that many bytes or more
        (``remote.origin.partialclonefilter``), so the ledgers a look reads are here
        when read.  Whatever is left out, git fetches by itself when a checkout or a
        merge needs it (with the password, if any: every git command here carries
        it).  A remote that does not allow filters sends everything, as for a plain
        clone, and a remote on this machine given as a path is copied whole (its
        objects are linked, not copied, so there is nothing to save).

        Raises:
            TransportError: the clone failed (the URL in the message is scrubbed).
        """
        split = split_secret(url)
        target = private_folder(Path(path).absolute())
        # with git-lfs here, a checkout made by the clone itself turns pointers into files
        lfs: list[str] = []
        if git_lfs_installed():
            lfs = [arg for k, v in filter_config().items() for arg in ("-c", f"{k}={v}")]
        args = [*lfs, "clone", "--quiet", "--single-branch", "--no-tags"]
        if not checkout or shown is not None:
            args.append("--no-checkout")
        if reference is not None:
            args.append(f"--reference-if-able={Path(reference).absolute()}")
        if lazy_blobs_from is not None:
            # no file of the history: what the first checkout needs comes then, in one
            # batch; git itself ignores it for a path (a local clone links the objects)
            args.append("--filter=blob:none")
        args.append("--end-of-options")
        _run_outside([*args, split.public, str(target)], f"git clone of {scrub_url(url)}",
                     timeout=timeout, secret=split.secret, url=split.public)
        copy = cls.open(target, secret=split.secret)
        if lazy_blobs_from is not None and copy._repo.config_value(
                'remote "origin"', "partialclonefilter") is not None:
            # from here on, fetches bring the files they reach but the large ones (the
            # ledgers each look reads, other jobs' small results as they land)
            copy._repo.set_config("remote.origin", "partialclonefilter",
                                  f"blob:limit={int(lazy_blobs_from)}")
        if checkout and shown is not None:
            try:
                copy.show(shown)
                head = copy.head()
                if head is not None:  # an empty remote has nothing to check out
                    copy.checkout(head, None)
            except BaseException:
                copy.close()
                raise
        return copy

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, timeout: float = 600, secret: str | None = None
    ) -> GitLocalCopy:
        """The local copy at ``path``; ``UsageError`` when it is not a git working tree.

        ``secret``: the remote's password, kept in memory.  A copy whose config
        still holds a password (made by an earlier version) is cleaned: the
        password leaves the config, and is used when ``secret`` is not given.
        """
        repo = _Repository(path, timeout=timeout)
        gone = missing_alternates(repo.git_dir)
        if gone:
            repo.close()
            raise UsageError(
                f"the local copy {repo.work_tree or path} borrows objects from "
                f"{', '.join(gone)}, which no longer exists; delete the copy's folder "
                "(it is a cache: the next worker clones it again)", path=str(path))
        stored = repo.run(["config", "--get", "remote.origin.url"])
        if stored.status == 0:
            split = split_secret(stored.stdout.decode("utf-8").strip())
            if split.secret is not None:
                repo.check(["config", "remote.origin.url", split.public], "git config")
                secret = secret or split.secret
        if secret is not None:
            repo.close()
            repo = _Repository(path, timeout=timeout, secret=secret)
        return cls(repo, secret)

    @property
    def path(self) -> Path:
        return self._work_tree

    def __enter__(self) -> GitLocalCopy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def transport(self, *, timeout: float = 60) -> GitTransport:
        """A new transport on this copy for ``origin`` (:func:`open_transport`: a
        :class:`~distribute.transport.git.DirectGitTransport` when ``origin`` is a bare
        repository on this machine); the caller closes it."""
        return open_transport(self._work_tree, "origin", timeout=timeout, secret=self._secret)

    def remote_url(self) -> str:
        """The URL of ``origin`` as configured (no password: see :meth:`open`)."""
        result = self._repo.run(["config", "--get", "remote.origin.url"])
        if result.status != 0:
            raise UsageError(f"{self._work_tree} has no remote named origin")
        return result.stdout.decode("utf-8").strip()

    def default_branch(self) -> str | None:
        """The branch the remote's ``HEAD`` names (``main``), ``None`` when it names none."""
        args = [*_PROTOCOL_V2, "ls-remote", "--symref", "--end-of-options", "origin", "HEAD"]
        out = self._repo.check(args, "git ls-remote --symref")
        for line in out.decode("utf-8").splitlines():
            target, _, name = line.partition("\t")
            if name == "HEAD" and target.startswith("ref: refs/heads/"):
                return target[len("ref: refs/heads/") :]
        return None

    def changed_paths(self) -> list[str]:
        """Paths whose working tree state differs from ``HEAD``: changed, deleted, untracked.

        Ignored files are left out; untracked directories are listed file by file.
        """
        args = ["--no-optional-locks", "status", "--porcelain=v1", "-z", "--no-renames"]
        out = self._repo.check([*args, "--untracked-files=all"], "git status")
        return [
            entry[3:].decode("utf-8", errors="surrogateescape")
            for entry in out.split(b"\0")
            if entry
        ]

    def show(self, folders: Sequence[str] | None) -> None:
        """From the next checkout on, check out views that show only ``folders`` among the
        folders of ``updates/`` (each one path component), or, with ``None``, whole
        commits.  A copy an older version narrowed with git's sparse checkout is
        widened back (its next checkout leaves no path out, then sparse checkout is
        turned off)."""
        if folders is not None:
            for folder in folders:
                if (not isinstance(folder, str) or not folder or "/" in folder
                        or folder in (".", "..") or any(ord(c) < 32 for c in folder)):
                    raise UsageError(f"{folder!r} is not the name of a folder in updates/")
        self._shown = tuple(folders) if folders is not None else None
        if not self._sparse_checked:
            self._sparse_checked = True
            found = self._repo.config_value("core", "sparsecheckout")
            if found is not None and found.strip().lower() in ("true", "yes", "on", "1"):
                target = self._repo.git_dir / "info" / "sparse-checkout"
                scratch = target.with_name(f"sparse-checkout.{uuid.uuid4().hex}.new")
                scratch.write_text("/*\n", encoding="utf-8")
                os.replace(scratch, target)
                self._leave_sparse = True

    def snapshot(self, parent: Oid, message: str, *, only: str | None = None) -> Oid:
        """Commit the whole working tree (tracked and untracked, not ignored) onto ``parent``.

        With ``only`` (a folder of the working tree), just the changes under it.
        Uses a temporary index: ``HEAD``, branches and the real index stay as they are.
        When a view is checked out, the commit holds what the view left out as
        ``parent`` has it (see the module's notes).
        """
        tree = self._tree_of_working_tree(parent, only)
        view = self._current_view()
        if view is None:
            self._made = None
            return self._repo.write_commit(tree, [parent], message)
        with self._repo.writing():
            commit = self._repo.write_commit(self._graft(parent, view, tree), [parent], message)
        self._made = (commit, tree, view.shown)
        return commit

    def edits(self, parent: Oid, message: str) -> Oid | None:
        """:meth:`snapshot`, or ``None`` when the working tree equals ``parent``'s tree
        (ignored files aside): one ``git status`` fewer than asking first."""
        tree = self._tree_of_working_tree(parent)
        view = self._current_view()
        self._made = None
        if view is None:
            if tree == self._repo.commit_tree(parent):
                return None
            return self._repo.write_commit(tree, [parent], message)
        if tree == view.tree and view.real == parent:
            return None
        return self._repo.write_commit(self._graft(parent, view, tree), [parent], message)

    def changed_between(self, old: Oid, new: Oid) -> list[str]:
        """The files that differ between the commits ``old`` and ``new`` (added, changed
        or deleted; git compares the trees, so unchanged folders are not walked)."""
        out = self._repo.check(["diff-tree", "-r", "-z", "--no-renames", "--name-only",
                                check_oid(old), check_oid(new), "--"], "git diff-tree")
        return [p.decode("utf-8", errors="surrogateescape") for p in out.split(b"\0") if p]

    # ---- Git LFS (see .lfs) -------------------------------------------------------------
    @property
    def lfs(self) -> bool:
        """Whether files routed through Git LFS are stored as pointers here (git-lfs is
        installed, and its filter is in the copy's config)."""
        return self._lfs

    def lfs_routed(self, paths: Sequence[str]) -> list[str]:
        """Those of ``paths`` (relative to the working tree) that the attributes route
        through Git LFS (``filter=lfs``), whether or not git-lfs is installed."""
        if not paths:
            return []
        names = [p.encode("utf-8", errors="surrogateescape") for p in paths]
        out = self._repo.check(["check-attr", "-z", "--stdin", "filter"], "git check-attr",
                               stdin=b"".join(name + b"\0" for name in names))
        fields = out.split(b"\0")
        routed = {fields[i] for i in range(0, len(fields) - 2, 3)
                  if fields[i + 2] == FILTER.encode()}
        return [path for path, name in zip(paths, names, strict=True) if name in routed]

    def lfs_objects(self, commit: Oid, paths: Sequence[str]) -> list[LfsPointer]:
        """The LFS objects that the files ``paths`` of ``commit`` point to: files routed
        through LFS whose blob is a pointer (gone or plain files name none)."""
        if not self._lfs or not paths or not self._lfs_stored():
            return []
        tree = self._repo.commit_tree(commit)
        found: dict[str, LfsPointer] = {}
        for path in self.lfs_routed(paths):
            if any(c in path for c in "\n\r\0"):
                continue  # no such name can be looked up; git-lfs keeps it as a plain file
            entry = self._repo.lookup(tree, path)
            if entry is None or entry[0] != "blob":
                continue
            pointer = parse_pointer(self._repo.read_object(entry[1])[1])
            if pointer is not None:
                found.setdefault(pointer.oid, pointer)
        return list(found.values())

    def upload_lfs(self, objects: Sequence[LfsPointer]) -> None:
        """Send ``objects`` from this copy's LFS store to ``origin``'s LFS server (those
        it has already are skipped by git-lfs itself).  Given the copy's command timeout
        plus a second per megabyte.

        Raises:
            TransportError: the upload failed (the message says git-lfs's reason).
        """
        if not objects:
            return
        for start in range(0, len(objects), 100):  # bounded command lines
            batch = objects[start:start + 100]
            megabytes = sum(o.size for o in batch) / 1e6
            self._repo.check(["lfs", "push", "--object-id", "origin", *(o.oid for o in batch)],
                             "git lfs push to the remote's LFS server",
                             timeout=self._repo.timeout + megabytes)
            self._drop_lfs_copies(batch)

    def _lfs_stored(self) -> bool:
        """Whether the copy's LFS store may hold content to upload.  git-lfs's filter puts
        the content of each file it turns into a pointer there, and the upload takes it
        out again (:meth:`_drop_lfs_copies`), so an empty store means no new pointer: a
        job that writes no LFS file costs no ``git check-attr``.  A store shared through
        ``lfs.storage`` cannot say, so then the answer is yes."""
        store = self._own_lfs_store
        if store is None:
            return True
        return any(files for _, _, files in os.walk(store))

    @functools.cached_property
    def _own_lfs_store(self) -> Path | None:
        """``.git/lfs/objects``, unless ``lfs.storage`` puts the store elsewhere."""
        if self._repo.run(["config", "--get", "lfs.storage"]).status == 0:
            return None
        return self._repo.git_dir / "lfs" / "objects"

    def _drop_lfs_copies(self, objects: Sequence[LfsPointer]) -> None:
        """Delete this copy's own copies of ``objects``, which the LFS server now has:
        git-lfs downloads one again if a checkout needs it, and a job that saves a
        checkpoint every epoch does not keep each one on this disk twice.  Only from the
        copy's own store (``.git/lfs/objects``): a store that ``lfs.storage`` shares with
        other repositories is left alone."""
        store = self._own_lfs_store
        if store is None:
            return
        for o in objects:
            (store / o.oid[:2] / o.oid[2:4] / o.oid).unlink(missing_ok=True)

    # ---- views ----------------------------------------------------------------------
    def _current(self) -> tuple[Oid | None, _View | None]:
        """``HEAD`` and the view it is (``None``: a whole commit), read once and then
        kept as this object moves it."""
        if self._head is None:
            result = self._repo.run(["rev-parse", "--quiet", "--verify", "HEAD^{commit}"])
            oid = result.stdout.decode("ascii").strip() if result.status == 0 else None
            self._head = (oid, self._read_view(oid) if oid else None)
        return self._head

    def _current_view(self) -> _View | None:
        return self._current()[1]

    def _read_view(self, commit: Oid) -> _View | None:
        kind, data = self._repo.read_object(commit)
        head, _, message = data.partition(b"\n\n")
        found = _VIEW_MESSAGE.fullmatch(message.decode("utf-8", errors="replace"))
        if kind != "commit" or found is None:
            return None
        lines = head.split(b"\n")
        parents = [line[7:].decode("ascii") for line in lines if line.startswith(b"parent ")]
        if parents != [found.group(1)]:
            return None
        shown = json.loads(found.group(2))
        return _View(commit, found.group(1), lines[0][5:].decode("ascii"), tuple(shown))

    def _write_view(self, real: Oid, tree: Oid, shown: tuple[str, ...]) -> _View:
        message = (f"distribute: a worker's view of {real}\n\n"
                   f"shows: {VIEW_FOLDER}/ {json.dumps(list(shown))}\n")
        return _View(self._repo.write_commit(tree, [real], message), real, tree, shown)

    def _view_of(self, real: Oid, shown: tuple[str, ...]) -> _View | None:
        """A view of ``real`` showing ``shown``; ``None`` when it would leave nothing out."""
        entries = self._repo.tree_entries(self._repo.commit_tree(real))
        folder = entries.get(VIEW_FOLDER.encode())
        if folder is None or not folder.is_tree:
            return None
        kept: dict[bytes, _Entry] = {}
        for name in shown:
            found = self._repo.lookup(folder.oid, name)
            if found is None:
                continue
            key = name.encode("utf-8")
            if found[0] == "tree":
                kept[key] = _Entry(_MODE_TREE, found[1])
            else:  # a file (or link) where the folder belongs: rare, so read the mode the slow way
                kept[key] = self._repo.tree_entries(folder.oid)[key]
        if kept:
            entries[VIEW_FOLDER.encode()] = _Entry(_MODE_TREE, self._repo.write_tree(kept))
        else:
            del entries[VIEW_FOLDER.encode()]
        return self._write_view(real, self._repo.write_tree(entries), shown)

    def _graft(self, parent: Oid, view: _View, tree: Oid) -> Oid:
        """The tree of ``parent`` with the working tree's ``tree`` (made under ``view``)
        laid in: see the module's notes."""
        whole = self._repo.commit_tree(parent)
        if tree == view.tree and view.real == parent:
            return whole
        name = VIEW_FOLDER.encode()
        real = self._repo.tree_entries(whole)
        new = self._repo.tree_entries(tree)
        out = {key: entry for key, entry in new.items() if key != name}
        hidden, written = real.get(name), new.get(name)
        if hidden is None or not hidden.is_tree:  # the parent has nothing a view leaves out
            if written is not None:
                out[name] = written
            return self._repo.write_tree(out)
        if written is not None and not written.is_tree:
            raise UsageError(
                f"{VIEW_FOLDER}/ was replaced by a file in the local copy; it holds every "
                "job's results on the remote, so it must stay a folder", path=VIEW_FOLDER)
        before = self._repo.tree_entries(view.tree).get(name)
        old = self._repo.tree_entries(before.oid) if before and before.is_tree else {}
        now = self._repo.tree_entries(written.oid) if written else {}
        shown = {folder.encode("utf-8") for folder in view.shown}
        changes: dict[bytes, _Entry | None] = {}
        for key in old.keys() | now.keys():
            was, entry = old.get(key), now.get(key)
            if was == entry:
                continue
            if key in shown:
                changes[key] = entry
            elif entry is not None:
                # another job's folder (or a file beside the folders), which the view left
                # out: what was written is laid over what the remote has, never replacing it
                changes[key] = self._overlay(hidden.oid, key, entry)
            # a file written there earlier and deleted since: the remote's copy stays
        folder = self._repo.splice_tree(hidden.oid, changes) if changes else hidden.oid
        if folder is not None:
            out[name] = _Entry(_MODE_TREE, folder)
        return self._repo.write_tree(out)

    def _overlay(self, tree: Oid, key: bytes, entry: _Entry) -> _Entry:
        """``entry`` laid over what ``tree`` holds at ``key``: a folder over a folder is
        merged file by file, anything else replaces."""
        if not entry.is_tree:
            return entry
        try:
            found = self._repo.lookup(tree, key.decode("utf-8"))
        except UnicodeDecodeError:
            existing = self._repo.tree_entries(tree).get(key)
            found = (existing.kind, existing.oid) if existing else None
        if found is None or found[0] != "tree":
            return entry
        below = self._repo.tree_entries(found[1])
        for name, sub in self._repo.tree_entries(entry.oid).items():
            below[name] = self._overlay(found[1], name, sub)
        return _Entry(_MODE_TREE, self._repo.write_tree(below))

    def _tree_of_working_tree(self, parent: Oid, only: str | None = None) -> Oid:
        check_oid(parent)
        # a literal pathspec: no glob or magic in a folder name is ever interpreted
        pathspec = ["--", f":(literal){only}"] if only is not None else []
        index = self._repo.git_dir / f"distribute-snapshot-{uuid.uuid4().hex}.index"
        try:
            if self._repo.index_file.exists():
                # copy2 keeps the mtime, on which git's racy-clean check relies: with a
                # newer copy, a same-size edit made in the second of the last checkout
                # would look unchanged and be left out
                shutil.copy2(self._repo.index_file, index)
            env = {"GIT_INDEX_FILE": str(index)}
            # --sparse: in a copy still narrowed by an earlier version (until its next
            # checkout), files written where its patterns leave paths out are taken too;
            # paths left out and not written keep their skip-worktree entries
            self._repo.check(["add", "--all", "--sparse", *pathspec], "git add (snapshot)",
                             env=env)
            tree = self._repo.check(["write-tree"], "git write-tree", env=env).decode().strip()
        finally:
            index.unlink(missing_ok=True)
            index.with_name(index.name + ".lock").unlink(missing_ok=True)
        return tree

    def checkout(self, commit: Oid, branch: str | None) -> None:
        """Make index and working tree equal to ``commit``, on local ``branch`` or detached.

        ``branch`` is created or reset to ``commit``.  Changes to tracked files
        are discarded; files the previous ``HEAD`` tracked and ``commit`` lacks
        are removed; untracked files are kept unless ``commit`` has them.
        """
        check_oid(commit)
        view = self._view_of(commit, self._shown) if self._shown is not None else None
        target = view.commit if view is not None else commit
        args = ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--force"]
        args.append("--no-recurse-submodules")
        if branch is None:
            args += ["--detach", target, "--"]
        else:
            args += ["--no-track", "-B", _check_branch(branch), target, "--"]
        self._head = None
        self._repo.check(args, "git checkout")
        self._head, self._made = (target, view), None
        self._widened()

    def _widened(self) -> None:
        """After a checkout with every path taken: turn off an older version's sparse
        checkout, whose skip-worktree marks that checkout cleared."""
        if self._leave_sparse:
            self._repo.check(["config", "core.sparseCheckout", "false"], "git config")
            self._leave_sparse = False

    def advance(self, commit: Oid, branch: str | None) -> None:
        """Point local ``branch`` (``None``: a detached ``HEAD``), ``HEAD`` and the index at
        ``commit``; leave the files alone.

        For a commit just made from the working tree by :meth:`snapshot`: the
        files already hold what it holds, and a job may still be writing to
        them, so nothing in the working tree is rewritten.
        """
        check_oid(commit)
        ref = "refs/heads/" + _check_branch(branch) if branch is not None else None
        view: _View | None = None
        if self._made is not None and self._made[0] == commit:
            view = self._write_view(commit, self._made[1], self._made[2])
        elif self._shown is not None:
            view = self._view_of(commit, self._shown)
        target = view.commit if view is not None else commit
        self._head = None
        if ref is not None:
            self._repo.check(["update-ref", "-m", "distribute: update", ref, target],
                             "git update-ref")
            self._repo.check(["symbolic-ref", "HEAD", ref], "git symbolic-ref")
        else:
            self._repo.check(["update-ref", "--no-deref", "-m", "distribute: update", "HEAD",
                              target], "git update-ref HEAD")
        self._repo.check(["reset", "--quiet", "--mixed", target, "--"], "git reset")
        self._head, self._made = (target, view), None

    def drop_branches(self, prefix: str) -> int:
        """Delete the local branches below ``refs/heads/<prefix>`` but the one checked
        out; return how many.  (Earlier versions kept one per job run here, and git
        reads every local branch at each fetch.)  The refs are read here, so a copy
        with none to drop, the usual case, starts no git command."""
        below = "refs/heads/" + prefix.strip("/")
        check_ref_name(below)
        found = self._repo.read_refs([below])
        if found is None:  # not stored as files: ask git
            out = self._repo.check(["for-each-ref", "--format=%(refname)", "--end-of-options",
                                    below + "/"], "git for-each-ref")
            found = dict.fromkeys(out.decode("utf-8", "surrogateescape").split("\n"), "")
        names = [name for name in found if name.startswith(below + "/")]
        if names:
            current = self._repo.run(["symbolic-ref", "--quiet", "HEAD"]).stdout.decode().strip()
            names = [name for name in names if name != current]
        if names:
            lines = "".join(f"delete {name}\n" for name in names).encode("utf-8", "surrogateescape")
            self._repo.check(["update-ref", "--stdin"], "git update-ref (delete)", stdin=lines)
        return len(names)

    def discard_changes(self) -> None:
        """Make the working tree and index equal ``HEAD``: tracked files restored, untracked
        (not ignored) files removed."""
        self._repo.check(["reset", "--quiet", "--hard", "HEAD", "--"], "git reset --hard")
        self._repo.check(["clean", "--quiet", "-d", "--force", "--", "."], "git clean")

    def head(self) -> Oid | None:
        """The commit ``HEAD`` points at (the commit a view shows, when a view is checked
        out), ``None`` before the first commit."""
        oid, view = self._current()
        return view.real if view is not None else oid

    def set_upstream(self, branch: str, remote_ref: str) -> None:
        """Let plain ``git pull``/``git push`` on ``branch`` use ``remote_ref`` of origin."""
        _check_branch(branch)
        check_ref_name(remote_ref)
        self._repo.check(["config", f"branch.{branch}.remote", "origin"], "git config")
        self._repo.check(["config", f"branch.{branch}.merge", remote_ref], "git config")

    def housekeeping(self) -> bool:
        """Pack the copy once its loose objects or packs pile up (snapshots and fetches
        from a remote on this machine write loose objects, and nothing else would pack
        them): :func:`~distribute.transport.process.pack_when_piled_up` with git's own
        limits; return whether it did.  For a copy no git command runs in meanwhile."""
        return pack_when_piled_up(
            self._repo.run, self._repo.git_dir, loose_limit=COPY_LOOSE_LIMIT,
            pack_limit=COPY_PACK_LIMIT, timeout=self._repo.timeout,
        )

    def close(self) -> None:
        self._repo.close()
