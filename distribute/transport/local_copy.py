"""A worker's local copy of the remote: a clone with the working tree its jobs write into.

Theory of operation
-------------------
:class:`GitLocalCopy` is made by cloning only the remote's default branch
(:meth:`GitLocalCopy.clone`) or by opening an existing clone.  The remote's
password, if any, is kept in memory, never in the clone's config.  Snapshots
of the working tree are written with a temporary index (``git add`` and
``git write-tree``), so the user's ``HEAD``, branches and index stay as they
are; checking out, advancing and cleaning use git's own ``checkout``,
``update-ref``/``reset`` and ``reset --hard``/``clean``.  A copy may hold less than
the whole tree on disk (:meth:`GitLocalCopy.narrow`, git's sparse checkout in
non-cone mode): the paths left out stay in the index, marked skip-worktree, so
every commit made from the working tree keeps them as they are.  Git is run in it
as in any repository (:class:`~.repository._Repository`), and its refs and
objects are reached through a transport made by :meth:`GitLocalCopy.transport`
with :func:`~distribute.transport.git.open_transport`, which picks the class
for the way ``origin`` is reached (see :mod:`distribute.transport.git`).  This
module imports :mod:`.git`; :mod:`.git` does not import it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from distribute.core.errors import UsageError
from distribute.core.names import scrub_url
from distribute.credentials import private_folder, split_secret
from distribute.transport.base import Oid, check_oid, check_ref_name
from distribute.transport.git import GitTransport, open_transport
from distribute.transport.process import _PROTOCOL_V2, _run_outside, pack_when_piled_up
from distribute.transport.repository import _check_branch, _Repository
from distribute.transport.shared_objects import missing_alternates

__all__ = ["COPY_LOOSE_LIMIT", "COPY_PACK_LIMIT", "GitLocalCopy"]

#: Loose objects and packs (git's own ``gc.auto`` and ``gc.autoPackLimit`` defaults) past
#: which a local copy is packed (:meth:`GitLocalCopy.housekeeping`).
COPY_LOOSE_LIMIT, COPY_PACK_LIMIT = 6700, 50


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
        self._sparse: bool | None = None  # core.sparseCheckout, once read

    @classmethod
    def clone(
        cls, url: str, path: str | os.PathLike[str], *, timeout: float = 600,
        checkout: bool = True, reference: str | os.PathLike[str] | None = None,
        patterns: Sequence[str] | None = None, lazy_blobs_from: int | None = None,
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
        ``patterns``: check out only the paths they take (:meth:`narrow`).
        ``lazy_blobs_from``: a partial clone (``--filter=blob:limit=``) where the
        remote allows it: files of that many bytes or more are left on the remote
        until a checkout or a merge needs them, and git then fetches them itself
        (with the password, if any: every git command here carries it).  A remote
        that does not allow filters sends everything, as for a plain clone, and a
        remote on this machine given as a path is copied whole (its objects are
        linked, not copied, so there is nothing to save).

        Raises:
            TransportError: the clone failed (the URL in the message is scrubbed).
        """
        split = split_secret(url)
        target = private_folder(Path(path).absolute())
        args = ["clone", "--quiet", "--single-branch", "--no-tags"]
        if not checkout or patterns is not None:
            args.append("--no-checkout")
        if reference is not None:
            args.append(f"--reference-if-able={Path(reference).absolute()}")
        if lazy_blobs_from is not None:
            # git itself ignores it for a path (a local clone links the objects)
            args.append(f"--filter=blob:limit={int(lazy_blobs_from)}")
        args.append("--end-of-options")
        _run_outside([*args, split.public, str(target)], f"git clone of {scrub_url(url)}",
                     timeout=timeout, secret=split.secret, url=split.public)
        copy = cls.open(target, secret=split.secret)
        if checkout and patterns is not None:
            try:
                copy.narrow(patterns)
                if copy.head() is not None:  # an empty remote has nothing to check out
                    copy._repo.check(["reset", "--quiet", "--hard", "HEAD", "--"],
                                     "git reset --hard (first checkout)")
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

    def narrow(self, patterns: Sequence[str]) -> None:
        """From the next checkout on, keep on disk only the paths ``patterns`` take:
        git's sparse checkout, in non-cone mode (the syntax of ``.gitignore``; ``["/*"]``
        takes everything).  Paths left out stay in the index, marked skip-worktree, and
        every commit made here keeps them as the checked-out commit has them.  Patterns
        that did not change cost no write.
        """
        text = "".join(f"{p}\n" for p in patterns)
        if any("\n" in p or "\r" in p for p in patterns):
            raise UsageError(f"a sparse-checkout pattern holds a line break: {patterns!r}")
        if self._sparse is None:
            found = self._repo.run(["config", "--type=bool", "--get", "core.sparseCheckout"])
            cone = self._repo.run(["config", "--type=bool", "--get", "core.sparseCheckoutCone"])
            self._sparse = (found.stdout.strip() == b"true"
                            and cone.stdout.strip() == b"false")
        target = self._repo.git_dir / "info" / "sparse-checkout"
        try:
            if target.read_text(encoding="utf-8") == text and self._sparse:
                return
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f"sparse-checkout.{uuid.uuid4().hex}.new")
        scratch.write_text(text, encoding="utf-8")
        os.replace(scratch, target)
        if not self._sparse:
            self._repo.check(["config", "core.sparseCheckoutCone", "false"], "git config")
            self._repo.check(["config", "core.sparseCheckout", "true"], "git config")
            self._sparse = True

    def snapshot(self, parent: Oid, message: str, *, only: str | None = None) -> Oid:
        """Commit the whole working tree (tracked and untracked, not ignored) onto ``parent``.

        With ``only`` (a folder of the working tree), just the changes under it.
        Uses a temporary index: ``HEAD``, branches and the real index stay as they are.
        """
        tree = self._tree_of_working_tree(parent, only)
        return self._repo.write_commit(tree, [parent], message)

    def edits(self, parent: Oid, message: str) -> Oid | None:
        """:meth:`snapshot`, or ``None`` when the working tree equals ``parent``'s tree
        (ignored files aside): one ``git status`` fewer than asking first."""
        tree = self._tree_of_working_tree(parent)
        if tree == self._repo.commit_tree(parent):
            return None
        return self._repo.write_commit(tree, [parent], message)

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
            # --sparse: files written where the copy's patterns leave paths out (say, a
            # job's folder before it was checked out) are taken too; paths left out and
            # not written keep their skip-worktree entries, so the tree keeps them
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
        args = ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--force"]
        args.append("--no-recurse-submodules")
        if branch is None:
            args += ["--detach", commit, "--"]
        else:
            args += ["--no-track", "-B", _check_branch(branch), commit, "--"]
        self._repo.check(args, "git checkout")

    def advance(self, commit: Oid, branch: str) -> None:
        """Point local ``branch``, ``HEAD`` and the index at ``commit``; leave the files alone.

        For a commit just made from the working tree by :meth:`snapshot`: the
        files already hold what it holds, and a job may still be writing to
        them, so nothing in the working tree is rewritten.
        """
        check_oid(commit)
        ref = "refs/heads/" + _check_branch(branch)
        self._repo.check(["update-ref", "-m", "distribute: update", ref, commit], "git update-ref")
        self._repo.check(["symbolic-ref", "HEAD", ref], "git symbolic-ref")
        self._repo.check(["reset", "--quiet", "--mixed", commit, "--"], "git reset")

    def discard_changes(self) -> None:
        """Make the working tree and index equal ``HEAD``: tracked files restored, untracked
        (not ignored) files removed."""
        self._repo.check(["reset", "--quiet", "--hard", "HEAD", "--"], "git reset --hard")
        self._repo.check(["clean", "--quiet", "-d", "--force", "--", "."], "git clean")

    def head(self) -> Oid | None:
        """The commit ``HEAD`` points at, ``None`` before the first commit."""
        result = self._repo.run(["rev-parse", "--quiet", "--verify", "HEAD^{commit}"])
        return result.stdout.decode("ascii").strip() if result.status == 0 else None

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
