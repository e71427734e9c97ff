"""Real git through GitPython: the transport workers use, and the local copy they own.

Theory of operation
-------------------
Every git process this module starts goes through :meth:`_Repository.run`:
an explicit argument list (never a shell), ``-c core.hooksPath=/dev/null
-c core.fsmonitor=false`` in front, no terminal or askpass prompts,
``LC_ALL=C`` so messages can be parsed, and a fixed identity
(``distribute <distribute@localhost>``) so commits work on machines without
one.  ``GIT_DIR``, ``GIT_WORK_TREE`` and ``GIT_INDEX_FILE`` are set
explicitly, so a stray value in the caller's environment cannot redirect a
command.  User-supplied values never sit where git reads options: ref names
and object ids are validated (full ``refs/...`` names, hex ids) before they
are used, refspecs are built only from them, remote names and URLs follow
``--end-of-options``, and paths and messages travel on standard input.
Messages of every error are passed through :func:`scrub_url`.

Remote refs
    ``fetch`` is one ``git fetch`` of exactly the requested refs into a
    private namespace (``refs/distribute-mirror/<remote>/...``) with
    ``--prune``, then the mirror's ref files are read here.  A requested
    ref missing on the remote makes git fail the whole fetch; then an
    ``ls-remote`` tells which exist and those are fetched.  ``list_refs`` is
    one ``ls-remote``.  ``push`` is one ``git push --atomic --porcelain
    --no-verify`` with a ``--force-with-lease`` per ref: a compare-and-swap
    the server checks under its ref locks.

A bare repository on this machine
    is written directly when a push would do nothing more (no hooks, no
    receive or transfer rules; see :mod:`distribute.transport.direct`): refs
    read from its files, objects linked or copied in this process, and each
    compare-and-swap one ``git update-ref --stdin`` transaction in it.  A
    ``file://`` URL always pushes.  Its folder is pinned when the transport
    is made: once the path no longer leads to that folder (moved away,
    deleted, unmounted, replaced by another), every fetch, look and push
    fails with ``TransportError`` before anything is read or written there,
    and git runs inside the folder (``-C``, ``GIT_DIR=.``), never by a path
    that could be made anew.

Local objects
    A loose object is read here; any other through GitPython's persistent
    ``cat-file --batch`` (one process per transport, guarded by a lock);
    trees are walked here.  Commits are written as loose objects here (SHA-1)
    or with ``hash-object``/``mktree``/``commit-tree`` -- so no index or
    working tree is touched.  ``merge`` is ``git merge-tree --write-tree``
    (git >= 2.38).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from distribute.core.errors import OutcomeUnknown, RemoteStateError, TransportError, UsageError
from distribute.core.names import is_valid_ref_component, scrub_url
from distribute.credentials import git_env, git_options, private_folder, split_secret
from distribute.transport.base import MergeResult, Oid, RefUpdate
from distribute.transport.direct import (
    ObjectStore,
    RepositoryFolder,
    copy_objects,
    direct_refusal,
    read_ref_files,
    stamp,
    tree_entries,
)
from distribute.transport.memory import (
    check_message,
    check_oid,
    check_ref_name,
    check_ref_pattern,
    check_ref_prefix,
    check_tree_path,
    check_updates,
)

__all__ = ["IDENTITY", "MIRROR_PREFIX", "GitLocalCopy", "GitTransport", "init_bare_repo"]

#: Author and committer of every commit this module writes.
IDENTITY = ("distribute", "distribute@localhost")
#: Where fetched remote refs are kept in the local repository.
MIRROR_PREFIX = "refs/distribute-mirror/"

_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
_PROTOCOL_V2 = ("-c", "protocol.version=2")
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "GCM_INTERACTIVE": "never",
    "LC_ALL": "C",
    "LANGUAGE": "C",
    "GIT_AUTHOR_NAME": IDENTITY[0],
    "GIT_AUTHOR_EMAIL": IDENTITY[1],
    "GIT_COMMITTER_NAME": IDENTITY[0],
    "GIT_COMMITTER_EMAIL": IDENTITY[1],
}
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

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

_MODE_TREE = 0o040000
_MODE_FILE = 0o100644
_MODE_EXECUTABLE = 0o100755
_MODE_SYMLINK = 0o120000
_MODE_GITLINK = 0o160000


@dataclass(frozen=True, slots=True)
class _Result:
    status: int
    stdout: bytes
    stderr: str

    @property
    def killed(self) -> bool:
        """Ended by a signal: our timeout's SIGKILL, or someone else's."""
        return self.status < 0


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


def _tail(text: str, lines: int = 12) -> str:
    return scrub_url("\n".join(text.strip().splitlines()[-lines:]))


def _is_race(reason: str) -> bool:
    return reason.startswith(_RACE_REASONS)


def _path_parts(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode("utf-8") for part in path.split("/"))


#: commits :meth:`GitTransport.is_ancestor` walks in this process before it asks git
_ANCESTRY_WALK = 64


def _git_executable() -> str:
    return git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"


#: how long output is still read after a timed-out git is killed
_AFTER_KILL_SECONDS = 1.0


def _execute(
    runner: git.Git,
    args: Sequence[str],
    *,
    stdin: bytes | None,
    env: Mapping[str, str] | None,
    timeout: float,
) -> _Result:
    """Run one git command (the only place this module starts a process).

    GitPython's runner gives the folder and environment; the process is started here
    rather than by ``Git.execute``, whose timeout is a non-daemon ``threading.Timer``
    that is cancelled only when the command returns: an exception raised inside the
    wait (a signal handler's, as ``distribute work`` raises on SIGTERM) left the timer
    alive, and the interpreter then waited for it at exit, for the whole timeout.  Here
    any exception kills git and waits for it, and no thread is involved.
    """
    command = [_git_executable(), *_CONFIG, *args]
    environment = dict(os.environ, LANGUAGE="C", LC_ALL="C")
    environment.update(runner.environment())
    environment.update(env or {})
    cwd = runner.working_dir
    if cwd is not None and not os.access(cwd, os.X_OK):
        cwd = None
    try:
        proc = subprocess.Popen(
            command, cwd=cwd, env=environment,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except FileNotFoundError as err:
        raise TransportError("git is not installed or not on PATH") from err
    with proc:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                stdout, stderr = proc.communicate(timeout=_AFTER_KILL_SECONDS)
            except subprocess.TimeoutExpired as late:
                # a child of git (ssh, a remote helper) still holds the pipes: keep what
                # was read, and do not wait for the child
                stdout, stderr = late.stdout or b"", late.stderr or b""
                proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return _Result(proc.returncode, stdout, stderr.decode("utf-8", "replace").rstrip("\n"))


def _failure(what: str, result: _Result, timeout: float, **context: object) -> TransportError:
    if result.killed:
        return TransportError(f"{what} timed out after {timeout:g} s", **context)
    return TransportError(
        f"{what} failed (exit {result.status}): {_tail(result.stderr)}",
        status=result.status,
        stderr=_tail(result.stderr),
        **context,
    )


def _run_outside(
    args: Sequence[str], what: str, *, timeout: float, secret: str | None = None
) -> _Result:
    """Run a git command that needs no repository (init, clone); ``secret`` is handed to
    git on request (:mod:`distribute.credentials`), never on its command line."""
    env = dict(_ENV, **git_env(secret))
    result = _execute(git.Git(), [*git_options(secret), *args], stdin=None, env=env,
                      timeout=timeout)
    if result.status != 0:
        raise _failure(what, result, timeout)
    return result


def _remote_says(stderr: str, limit: int = 600) -> str:
    """What a server's hooks explained (the ``remote:`` lines of a push), scrubbed, on
    one line: a refusal's reason is often there and nowhere else."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("remote:"):
            text = line[len("remote:"):].strip()
            if text and not text.lower().startswith(("resolving deltas", "counting objects")):
                lines.append(text)
    return scrub_url(" / ".join(lines))[:limit]


def _check_branch(branch: str) -> str:
    """A short branch name (``jobs/w1/job%20x``) that git accepts and cannot read as an option."""
    if not isinstance(branch, str) or branch.startswith("-") or branch == "HEAD":
        raise UsageError(f"{branch!r} is not a valid branch name", branch=branch)
    check_ref_name("refs/heads/" + branch)
    return branch


def init_bare_repo(
    path: str | os.PathLike[str], branch: str = "main", *, timeout: float = 60
) -> Path:
    """Create an empty bare repository whose ``HEAD`` names ``branch``; return its path.

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
    return target


class _Repository:
    """A GitPython ``Repo`` and the one way this module runs git on it."""

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float, secret: str | None = None
    ) -> None:
        # the remote's password, if its URL had one: given to the git commands run here
        # through a credential helper and their environment, never stored or in argv
        self._auth = git_options(secret)
        self._auth_env = git_env(secret)
        try:
            self._repo = git.Repo(os.fspath(path))
        except (InvalidGitRepositoryError, NoSuchPathError) as err:
            raise UsageError(f"{os.fspath(path)} is not a git repository", path=str(path)) from err
        self.timeout = timeout
        self.git_dir = Path(self._repo.git_dir).resolve()
        tree = self._repo.working_tree_dir
        self.work_tree = Path(tree).resolve() if tree is not None and not self._repo.bare else None
        env = dict(_ENV, GIT_DIR=str(self.git_dir))
        if self.work_tree is not None:
            env.update(GIT_WORK_TREE=str(self.work_tree), GIT_INDEX_FILE=str(self.index_file))
        self._repo.git.update_environment(**env)
        self._repo.git.set_persistent_git_options(c=[_CONFIG[1], _CONFIG[3]])
        self._objects_lock = threading.Lock()
        with self._repo.config_reader("repository") as config:
            formats = config.get_value("extensions", "objectformat", "sha1")
            storage = config.get_value("extensions", "refstorage", "files")
        self.sha1 = str(formats).lower() == "sha1"
        self.ref_storage = str(storage).lower()
        # GitPython's own object database starts `git hash-object` for every write
        self._store_view: ObjectStore | None = None

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
    ) -> bytes:
        """Run ``args``; return standard output, raise ``TransportError`` on failure."""
        result = self.run(args, stdin=stdin, env=env)
        if result.status != 0:
            raise _failure(what, result, self.timeout)
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
        with self._objects_lock:
            for attempt in (1, 2):
                try:
                    _, kind, _, data = self._repo.git.get_object_data(oid)
                    return kind.decode("ascii") if isinstance(kind, bytes) else kind, data
                except ValueError as err:  # cat-file answered "<oid> missing"
                    raise TransportError(
                        f"object {oid} is not in the local repository (fetch it first)", oid=oid
                    ) from err
                except (OSError, git.GitCommandError) as err:
                    self._repo.git.clear_cache()
                    if attempt == 2:
                        raise TransportError(f"git cat-file failed: {err}", oid=oid) from err
        raise AssertionError("unreachable")

    def commit_tree(self, commit: Oid) -> Oid:
        kind, data = self.read_object(check_oid(commit))
        if kind != "commit" or not data.startswith(b"tree "):
            raise TransportError(f"{commit} is a {kind}, not a commit", oid=commit)
        return data[5 : data.index(b"\n")].decode("ascii")

    def tree_entries(self, tree: Oid) -> dict[bytes, _Entry]:
        kind, data = self.read_object(tree)
        if kind != "tree":
            raise TransportError(f"{tree} is a {kind}, not a tree", oid=tree)
        parsed = tree_entries(data, len(tree) // 2)
        return {name: _Entry(mode, oid) for name, (mode, oid) in parsed.items()}

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


_ZERO_OID = "0" * 40
_PACKED_REFS_BUSY = "packed-refs.lock': File exists"
_LOCK_FILE = re.compile(r"Unable to create '([^']+\.lock)': File exists")
#: A ref lock this old (or twice the git timeout) is taken for one a dead git left.
_STALE_LOCK_SECONDS = 120.0
#: One in this many direct ref updates runs ``git gc --auto`` in the remote (as receive-pack
#: does after every push; it packs loose objects once there are enough of them).
_GC_EVERY = 100
#: A process's own working directory, wherever it has moved (Linux).  git makes the path
#: of every lock file absolute when it takes the lock, and prefers ``$PWD`` to
#: ``getcwd()`` for that when both are the same folder; given this, a ref's lock, and its
#: rename into place, still find the remote if it is moved while git holds the lock.
_OWN_CWD = "/proc/self/cwd"
_HAS_OWN_CWD = os.path.isdir(_OWN_CWD)


class _DirectRemote:
    """A bare repository on this machine written directly (see :mod:`.direct`), pinned to
    the folder first found at its path."""

    def __init__(self, folder: RepositoryFolder, *, timeout: float) -> None:
        self.folder = folder
        self.git_dir = folder.path
        self.timeout = timeout
        self.store = ObjectStore(self.git_dir / "objects", folder=folder)
        self._stamp: tuple[float, ...] | None = None
        self._refusal: str | None = None
        self._checking = threading.Lock()
        self._locks_seen: dict[str, tuple[tuple[int, int], float]] = {}

    def check(self) -> None:
        """``TransportError`` unless the path still leads to the repository first found there."""
        self.folder.check()

    def run(self, args: Sequence[str], *, stdin: bytes | None = None) -> _Result:
        """Run git in the remote, once it is checked to be still there.

        git starts inside the folder (``-C``) and names it ``.``.  With the path in
        ``GIT_DIR``, a folder moved away after git had found it came back as a new
        folder at the old path, made by git for a ref's lock file; and a folder moved
        while git held its ref locks kept them for ever (git removes or renames a lock
        by the path it had when taken) with part of the transaction applied.  This
        way git's reads and writes follow the folder it found (see ``_OWN_CWD``)."""
        self.check()
        env = dict(_ENV, GIT_DIR=".")
        if _HAS_OWN_CWD:
            env["PWD"] = _OWN_CWD
        args = ["-C", str(self.git_dir), *args]
        result = _execute(git.Git(), args, stdin=stdin, env=env, timeout=self.timeout)
        if _OWN_CWD not in result.stderr:
            return result
        # messages name the remote's folder, not what git knew it as
        stderr = result.stderr.replace(f"{_OWN_CWD}/./", f"{self.git_dir}/")
        stderr = stderr.replace(_OWN_CWD, str(self.git_dir))
        return _Result(result.status, result.stdout, stderr)

    def refusal(self) -> str | None:
        """Why this remote must be pushed to after all (a hook or a rule appeared), or
        ``None``; re-read only when its config, hooks or object info change."""
        with self._checking:  # the heartbeat thread asks too
            return self._refusal_now()

    def _refusal_now(self) -> str | None:
        now = stamp(self.git_dir)
        if now != self._stamp:
            try:
                result = self.run(["config", "--list", "--show-scope", "-z"])
            except TransportError as err:
                self._refusal, self._stamp = err.message, now
                return self._refusal
            if result.status != 0:
                self._refusal = f"git config failed: {_tail(result.stderr)}"
            else:
                config: dict[str, str] = {}
                fields = result.stdout.split(b"\0")
                for scope, entry in zip(fields[0::2], fields[1::2], strict=False):
                    if scope != b"command":  # this module's own -c options
                        key, _, value = entry.decode("utf-8", "replace").partition("\n")
                        config[key.lower()] = value
                self._refusal = direct_refusal(self.git_dir, config)
            self._stamp = now
        return self._refusal

    def read_refs(self, names: Sequence[str]) -> dict[str, Oid]:
        """The refs' values from the remote's files.  A folder that is gone (moved or
        deleted since it was checked) finds no ref file at all, which must not read as
        "no such refs", and one put in its place holds other refs: either is a transport
        error, as a failed ``ls-remote`` would be.  Checked before and after reading."""
        self.check()
        found = read_ref_files(self.git_dir, names)
        self.check()
        return found

    def _check_stale_lock(self, stderr: str) -> None:
        """A ref's ``.lock`` file that this process has seen in the way, unchanged, for
        longer than any git run of ours may last was left by a git that died (git never
        removes another process's lock): say so, instead of reporting a lost race again
        and again for ever.  Only this process's own clock is used: a file server's
        time stamps may come from another clock."""
        match = _LOCK_FILE.search(stderr)
        if match is None:
            return
        path = Path(match.group(1))
        try:
            info = path.stat()
        except OSError:
            return  # gone meanwhile: it was a writer at work
        now = time.monotonic()
        identity = (info.st_ino, info.st_mtime_ns)
        first = self._locks_seen.get(str(path))
        if first is None or first[0] != identity:
            self._locks_seen[str(path)] = (identity, now)
            return
        waited = now - first[1]
        if waited > max(_STALE_LOCK_SECONDS, 2 * self.timeout):
            raise RemoteStateError(
                f"{path} has been in the way for {waited:.0f} s: a git process that changed "
                "the remote died while it held this ref; if no git process is using the "
                "remote now, delete that file",
                path=str(path),
            )

    def update_refs(self, updates: Sequence[RefUpdate]) -> bool:
        """Compare-and-swap ``updates`` in one ``git update-ref --stdin`` transaction."""
        current = self.read_refs([u.ref for u in updates])
        pending = [u for u in updates if u.new is None or current.get(u.ref) != u.new]
        if not pending:
            return True
        commands = b""
        for u in pending:
            old = (u.old or _ZERO_OID).encode("ascii")
            if u.new is None and u.old is None:  # "absent", and stays so
                commands += b"verify %s\0%s\0" % (u.ref.encode("utf-8"), old)
            elif u.new is None:
                commands += b"delete %s\0%s\0" % (u.ref.encode("utf-8"), old)
            else:
                commands += b"update %s\0%s\0%s\0" % (u.ref.encode("utf-8"), u.new.encode(), old)
        result = self.run(["update-ref", "--stdin", "-z"], stdin=commands)
        if result.status == 0:
            if random.random() < 1 / _GC_EVERY:  # however short-lived the transports
                # what receive-pack does after a push; the update stands even if the
                # folder went away meanwhile
                with contextlib.suppress(TransportError):
                    self.run(["gc", "--auto", "--quiet"])
            return True
        if result.killed:
            try:
                now = self.read_refs([u.ref for u in pending])
            except TransportError as err:
                raise OutcomeUnknown(
                    f"git update-ref timed out and reading the refs back failed too: {err}",
                    refs=[u.ref for u in pending],
                ) from err
            return _settle(pending, now, "git update-ref timed out")
        self.check()  # the folder went away meanwhile: say so, not git's words for it
        if "cannot lock ref" in result.stderr or _PACKED_REFS_BUSY in result.stderr:
            self._check_stale_lock(result.stderr)
            return False  # moved since it was read, or another writer holds its lock
        raise _failure(f"git update-ref in {self.git_dir}", result, self.timeout)


def _settle(updates: Sequence[RefUpdate], now: Mapping[str, Oid], what: str) -> bool:
    """The outcome of a compare-and-swap whose answer was lost, from the refs read back:
    all new values, it landed; all old ones, it did not (yet); anything else is unknown."""
    if all(now.get(u.ref) == u.new for u in updates):
        return True
    if all(now.get(u.ref) == u.old for u in updates):
        return False
    raise OutcomeUnknown(
        f"{what}; the refs now hold neither the old nor the new values",
        refs=[u.ref for u in updates],
    )


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
            root = self._edit_tree(root, nested, b"") or self._repo.write_tree({})
        elif root is None:
            root = self._repo.write_tree({})
        return self._repo.write_commit(root, parents, message)

    def merge(self, ours: Oid, theirs: Oid) -> MergeResult:
        """``git merge-tree --write-tree``: a clean merged tree, or the conflicting paths.

        Unrelated histories merge against an empty tree.
        """
        args = ["merge-tree", "--write-tree", "--name-only", "-z", "--no-messages"]
        args += ["--allow-unrelated-histories", check_oid(ours), check_oid(theirs)]
        result = self._repo.run(args)
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
                kind, data = self._repo.read_object(frontier.pop(0))
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
        result = self._repo.run(args)
        if result.status in (0, 1):
            return result.status == 0
        raise _failure("git merge-base --is-ancestor", result, self.timeout)

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

    def _edit_tree(
        self, tree: Oid | None, changes: Mapping[tuple[bytes, ...], Oid | None], where: bytes
    ) -> Oid | None:
        """Apply ``changes`` (path parts -> blob id, ``None`` deletes) below ``tree``.

        Returns the new tree's id, or ``None`` when it ends up empty.
        """
        entries = self._repo.tree_entries(tree) if tree is not None else {}
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
                raise self._clash(where + name)
            keep = current is not None and current.mode in (_MODE_FILE, _MODE_EXECUTABLE)
            entries[name] = _Entry(current.mode if keep and current else _MODE_FILE, blob)
        for name, sub in below.items():
            current = entries.get(name)
            if current is not None and not current.is_tree:
                raise self._clash(where + name)
            subtree = self._edit_tree(current.oid if current else None, sub, where + name + b"/")
            if subtree is None:
                entries.pop(name, None)
            else:
                entries[name] = _Entry(_MODE_TREE, subtree)
        if not entries:
            return None
        return self._repo.write_tree(entries)

    @staticmethod
    def _clash(path: bytes) -> UsageError:
        text = path.decode("utf-8", errors="replace")
        return UsageError(f"{text!r} would be both a file and a directory", path=text)


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

    @classmethod
    def clone(
        cls, url: str, path: str | os.PathLike[str], *, timeout: float = 600,
        checkout: bool = True,
    ) -> GitLocalCopy:
        """Clone only the remote's default branch of ``url`` into ``path`` and check it out
        (unless ``checkout`` is false: a copy that is only read through its transport
        needs no working tree, which for a remote holding many jobs' results is most of
        a clone's time).

        An empty remote gives an empty local copy.  ``path`` must not exist
        or be an empty directory; it is made readable by this user only.  A
        password in ``url`` is kept in memory (:mod:`distribute.credentials`):
        the clone's config holds the URL without it.

        Raises:
            TransportError: the clone failed (the URL in the message is scrubbed).
        """
        split = split_secret(url)
        target = private_folder(Path(path).absolute())
        args = ["clone", "--quiet", "--single-branch", "--no-tags"]
        if not checkout:
            args.append("--no-checkout")
        args.append("--end-of-options")
        _run_outside([*args, split.public, str(target)], f"git clone of {scrub_url(url)}",
                     timeout=timeout, secret=split.secret)
        return cls.open(target, secret=split.secret)

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
        """A new :class:`GitTransport` on this copy for ``origin``; the caller closes it."""
        return GitTransport(self._work_tree, "origin", timeout=timeout, secret=self._secret)

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
            self._repo.check(["add", "--all", *pathspec], "git add (snapshot)", env=env)
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

    def close(self) -> None:
        self._repo.close()
