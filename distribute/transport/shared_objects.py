"""One object store on this machine for every local copy of one remote.

Theory of operation
-------------------
Four workers of one machine (``work --gpus 4``, or four ``work`` started by
hand) each keep a local copy of the remote.  Cloned one by one, each copy
would download and store every result the remote holds: four times the
transfer and the disk.  Instead, the copies that live in the remote's cache
folder borrow their objects from one bare repository beside them, the
*shared store*:

* before a copy is cloned, :func:`refresh_shared_objects` fetches the main
  branch into the store, under the store's file lock (so workers starting
  together fetch it once), and keeps the lock while the copy is cloned
  (``distribute clean`` removes a store no copy borrows from only under that
  lock);
* the copy is cloned with ``--reference-if-able`` on the store: git
  writes the store's ``objects`` folder into the copy's
  ``objects/info/alternates`` and downloads only what the store lacks;
* what a copy fetches later (other workers' results, as main moves on) goes
  into the copy's own objects, as before.

A borrowed object must never vanish from the store, so the store is only ever
fetched into: it runs no automatic ``gc`` or maintenance, its ``gc`` would
keep unreachable objects, and the main branch it follows only moves forward
in this protocol (old tips stay reachable from new ones).  Deleting the store
breaks the copies that borrow from it; :func:`missing_alternates` finds that,
and opening such a copy says to delete it (a copy is a cache, remade on the
next start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import filelock

from distribute.core.errors import TransportError
from distribute.credentials import private_folder, split_secret
from distribute.transport.process import _run_outside
from distribute.transport.repository import _check_branch

#: The store's folder name inside the remote's cache folder.  Worker copies are named by
#: encoded worker names, which never begin with a dot, so no copy can take this name.
STORE_NAME = ".objects.git"
#: Where the store keeps the tip of a main branch as last fetched (the remote's default
#: branch under ``HEAD``, another one under its name).
STORE_REFS = "refs/shared/"
#: Settings that keep the store from ever dropping an object a copy may borrow.
_STORE_CONFIG = (
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("gc.pruneExpire", "never"),
    ("gc.reflogExpireUnreachable", "never"),
    ("core.logAllRefUpdates", "false"),
)


def store_lock(store: str | os.PathLike[str]) -> filelock.FileLock:
    """The file lock beside ``store`` under which it is fetched into, cloned from, or
    removed."""
    path = Path(store).absolute()
    return filelock.FileLock(str(path.parent / f"{path.name}.lock"))


@contextlib.contextmanager
def refresh_shared_objects(
    url: str, store: str | os.PathLike[str], *, branch: str | None = None,
    timeout: float = 600,
) -> Iterator[Path | None]:
    """Fetch ``branch`` of ``url`` (its default branch when ``None``) into the bare
    repository ``store``, made if missing, and hold the store's lock until the block
    ends (the clone that borrows from it goes there).  Gives the store's path, or
    ``None`` when there is nothing to borrow: an empty remote, a first fetch that
    failed (the clone then fetches everything itself and reports any real error), or
    a store that another worker kept locked for ``timeout`` seconds (this clone then
    goes its own way rather than waiting longer).

    A store is made in a folder beside it and renamed into place once configured, so
    that no store without its settings (no ``gc``, no pruning) is ever used; a
    folder at ``store`` without them (a store whose making was cut short) is made
    again.
    """
    target = Path(store).absolute()
    private_folder(target.parent)
    source = "HEAD" if branch is None else "refs/heads/" + _check_branch(branch)
    kept = STORE_REFS + source
    split = split_secret(url)
    lock = store_lock(target)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        yield None
        return
    try:
        if not _configured(target):
            _make_store(target, timeout)
        try:
            _run_outside(
                ["--git-dir", str(target), "fetch", "--quiet", "--no-tags",
                 "--no-write-fetch-head", "--end-of-options", split.public,
                 f"+{source}:{kept}"],
                "git fetch into the shared object store", timeout=timeout, secret=split.secret,
                url=split.public,
            )
        except TransportError:
            if not (target / kept).exists() and not _packed(target, kept):
                yield None
                return
        yield target
    finally:
        lock.release()


def _configured(store: Path) -> bool:
    """Was ``store`` made to the end?  (Its last setting is written last.)"""
    key, value = _STORE_CONFIG[-1]
    try:
        text = (store / "config").read_text(encoding="utf-8")
    except OSError:
        return False
    return f"{key.split('.', 1)[1]} = {value}" in text and (store / "objects").is_dir()


def _make_store(target: Path, timeout: float) -> None:
    """A new bare repository at ``target`` with :data:`_STORE_CONFIG`, renamed into place
    (under the store's lock, so no one else makes or uses it meanwhile)."""
    fresh = target.with_name(f"{target.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    _git(["init", "--quiet", "--bare", "--end-of-options", str(fresh)], fresh,
         "git init of the shared object store", timeout)
    for key, value in _STORE_CONFIG:
        _git(["--git-dir", str(fresh), "config", key, value], fresh,
             "git config of the shared object store", timeout)
    os.chmod(fresh, 0o700)
    shutil.rmtree(target, ignore_errors=True)  # what a cut-short making left
    os.rename(fresh, target)


def alternates(git_dir: str | os.PathLike[str]) -> list[str]:
    """The object folders ``git_dir`` borrows from, as its ``objects/info/alternates``
    names them (relative ones from its ``objects`` folder); empty when it borrows none.

    Raises:
        OSError: the list exists but cannot be read.
    """
    listing = Path(git_dir, "objects", "info", "alternates")
    try:
        lines = listing.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.strip() and not line.startswith("#")]


def missing_alternates(git_dir: str | os.PathLike[str]) -> list[str]:
    """The object folders that ``git_dir`` borrows from (:func:`alternates`) and that do
    not exist (an empty list for a copy that borrows nothing)."""
    base = Path(git_dir, "objects")
    return [f for f in alternates(git_dir) if not (base / f).is_dir()]


def _packed(store: Path, ref: str) -> bool:
    try:
        return f" {ref}\n" in (store / "packed-refs").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False


def _git(args: list[str], store: Path, what: str, timeout: float) -> None:
    _run_outside(args, f"{what} ({store})", timeout=timeout)


__all__ = [
    "STORE_NAME",
    "STORE_REFS",
    "alternates",
    "missing_alternates",
    "refresh_shared_objects",
    "store_lock",
]
