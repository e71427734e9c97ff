"""A bare repository on this machine, written directly instead of pushed to.

Theory of operation
-------------------
:class:`_DirectRemote` is the remote of a
:class:`~distribute.transport.git.DirectGitTransport` (whose direct way,
:class:`~distribute.transport.direct_transport.DirectWriting`, uses it): a
bare repository on this machine, written directly when a push would do
nothing more (no hooks, no receive or transfer rules: :func:`direct_refusal`
here; see :mod:`distribute.transport.direct` for how objects and ref files
are handled): refs are read from its files, objects linked or copied in this
process, and each compare-and-swap is one ``git update-ref --stdin``
transaction in it (:meth:`_DirectRemote.update_refs`), under the same ref
locks and checks as ``receive-pack``.  A hook or rule that appears later is
noticed (:meth:`_DirectRemote.refusal`, re-read when the remote's config,
hooks or object info change: :func:`stamp`), and the transport pushes
again.  A ``file://`` URL always pushes.

Its folder is pinned when the transport is made: once the path no longer
leads to that folder (moved away, deleted, unmounted, replaced by another),
every fetch, look and push fails with ``TransportError`` before anything is
read or written there, and git runs inside the folder (``-C``,
``GIT_DIR=.``), never by a path that could be made anew (see
:meth:`_DirectRemote.run`).

git never removes another process's ref lock: one left by a git that died
would make every compare-and-swap look like a lost race for ever.  A lock
this process has seen in the way, unchanged, for longer than any git run of
ours may last (:data:`_STALE_LOCK_SECONDS`, or twice the git timeout) is
reported as a :class:`~distribute.core.errors.RemoteStateError` instead.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import git

from distribute.core.errors import OutcomeUnknown, RemoteStateError, TransportError
from distribute.transport.base import Oid, RefUpdate
from distribute.transport.direct import ObjectStore, RepositoryFolder, read_ref_files
from distribute.transport.process import (
    _ENV,
    _execute,
    _failure,
    _Result,
    _tail,
    pack_when_piled_up,
)
from distribute.transport.repository import PARTIAL_CLONE_SETTINGS

_ZERO_OID = "0" * 40
#: Settings that only widen what ``upload-pack`` serves to a fetch (partial clones and
#: the fetches of their missing objects); writing directly does not depend on them.
_SERVING_KEYS = frozenset(key.lower() for key in PARTIAL_CLONE_SETTINGS)
_NOT_PLAIN_KEYS = (
    "receive.",
    "transfer.",
    "uploadpack.",
    "core.sharedrepository",
    "core.hookspath",
    "include",
)
_SAFE_EXTENSIONS = {"extensions.objectformat": "sha1", "extensions.refstorage": "files"}
_PACKED_REFS_BUSY = "packed-refs.lock': File exists"
_LOCK_FILE = re.compile(r"Unable to create '([^']+\.lock)': File exists")
#: A ref lock this old (or twice the git timeout) is taken for one a dead git left.
_STALE_LOCK_SECONDS = 120.0
#: One in this many direct ref updates looks after the remote's objects (see
#: :meth:`_DirectRemote.housekeeping`), as receive-pack runs ``git gc --auto`` after a push.
_GC_EVERY = 100
#: Loose objects (git's own ``gc.auto`` default) past which the remote is packed.
_LOOSE_LIMIT = 6700
#: Packs past which they are packed into one (git's ``gc.autoPackLimit`` default).
_PACK_LIMIT = 50
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

    def housekeeping(self) -> bool:
        """Pack the remote when loose objects or packs pile up (the objects of lost races,
        written before the compare-and-swap, are unreachable and young): see
        :func:`~.process.pack_when_piled_up`; return whether it did.  Objects written a
        moment ago by a writer whose update is still to come are kept, as git always does.
        """
        return pack_when_piled_up(self.run, self.git_dir, loose_limit=_LOOSE_LIMIT,
                                  pack_limit=_PACK_LIMIT, timeout=self.timeout)

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
                    if scope != b"command":  # the -c options every command gets (_CONFIG)
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
                # the update stands even if the folder went away meanwhile
                with contextlib.suppress(TransportError):
                    self.housekeeping()
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


# ---- may this remote be written directly? -------------------------------------------------


def direct_refusal(git_dir: Path, config: Mapping[str, str]) -> str | None:
    """Why the bare repository ``git_dir`` must be reached through git's pack protocol, or
    ``None`` when writing it directly is what a push would do.

    ``config`` is its effective configuration (``git config --list``, keys lower-case).
    """
    for part in ("objects", "refs", "HEAD"):
        if not (git_dir / part).exists():
            return f"{git_dir} is not a bare repository (no {part})"
    if config.get("core.bare", "false").lower() not in ("true", "yes", "on", "1"):
        return "the remote is not bare"
    if config.get("core.repositoryformatversion", "0") not in ("0", "1"):
        return "unknown repository format"
    for key, value in config.items():
        if key.startswith(_NOT_PLAIN_KEYS) and key not in _SERVING_KEYS:
            return f"the remote sets {key}"
        if key.startswith("extensions.") and _SAFE_EXTENSIONS.get(key) != value.lower():
            return f"the remote sets {key}"
    for extra in ("objects/info/alternates", "shallow", "objects/info/http-alternates"):
        if (git_dir / extra).exists():
            return f"the remote has {extra}"
    try:
        if os.stat(git_dir).st_uid != os.geteuid():
            return "the remote belongs to another user"
    except OSError as err:
        return f"cannot read the remote: {err.strerror}"
    hooks = git_dir / "hooks"
    if hooks.is_dir():
        for hook in hooks.iterdir():
            if hook.name.endswith(".sample"):
                continue
            with contextlib.suppress(OSError):
                if hook.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
                    return f"the remote has a {hook.name} hook"
    return None


def _user_config_files() -> list[str]:
    """The global and system configuration files git reads (they may set ``receive.*``)."""
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files = [os.path.join(home, ".gitconfig"), os.path.join(xdg, "git", "config")]
    files += [os.environ.get("GIT_CONFIG_GLOBAL", ""), os.environ.get("GIT_CONFIG_SYSTEM", "")]
    return [*files, "/etc/gitconfig"]


def stamp(git_dir: Path) -> tuple[float, ...]:
    """Changes whenever what :func:`direct_refusal` reads may have changed: the remote's
    config and hook files (a hook made executable changes no folder), its object info,
    and the user's and system's git config files.  A few ``stat`` calls."""
    paths = [str(git_dir / p) for p in ("config", "hooks", "objects/info", "shallow")]
    with contextlib.suppress(OSError), os.scandir(git_dir / "hooks") as hooks:
        paths += sorted(h.path for h in hooks if not h.name.endswith(".sample"))
    values: list[float] = []
    for path in [*paths, *_user_config_files()]:
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        values += [info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode] if info else [-1]
    return tuple(values)
