"""The direct way of reaching a remote: a bare repository on this machine, read and written
in place of ``git fetch`` and ``git push``.

Theory of operation
-------------------
:class:`DirectWriting` is the half of
:class:`~distribute.transport.git.DirectGitTransport` that reaches the remote:
the class :func:`~distribute.transport.git.open_transport` picks when the
remote is given as an absolute path to a folder (or is a named remote
configured with one, and no ``pushurl``; see :func:`remote_folder`).  It is
layered over the pack-protocol client
:class:`~distribute.transport.git.GitTransport` (which comes after it in
``DirectGitTransport``'s method resolution order) and replaces only the
steps that reach the remote:

* ``fetch`` reads the requested refs from the remote's files and copies the
  objects they need into the local repository in this process; no mirror
  refs are written (:meth:`DirectWriting._fetch_refs`);
* ``list_refs`` reads ref files below the prefix;
* ``push`` copies the new objects into the remote and makes the
  compare-and-swap one ``git update-ref --stdin`` transaction there
  (:meth:`~.direct_remote._DirectRemote.update_refs`).

Whether the remote may be written directly is asked again before each of
them (:meth:`DirectWriting._direct_now`): when a hook or a ``receive.*``
rule has appeared since, the step is handed to the pack-protocol client
with ``super()``, and comes back here once the hook is gone.  A remote whose
folder is gone or was replaced fails with
:class:`~distribute.core.errors.TransportError` instead (see
:mod:`.direct_remote`), before git could push into whatever is there now.

Only :mod:`.git` imports this module (to make ``DirectGitTransport``); it
names ``GitTransport`` for the type checker only, so imports run one way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distribute.core.errors import TransportError
from distribute.transport.base import Oid, RefUpdate, check_ref_prefix, ref_matches
from distribute.transport.direct import RepositoryFolder, copy_objects
from distribute.transport.direct_remote import _DirectRemote
from distribute.transport.repository import _Repository, is_remote_name
from distribute.transport.shared_objects import alternates

if TYPE_CHECKING:
    # the pack-protocol client this class is layered over (see the module docstring)
    from distribute.transport.git import GitTransport as _PackClient
else:
    _PackClient = object

__all__ = ["DirectWriting", "remote_folder"]


def remote_folder(repo: _Repository, remote: str) -> RepositoryFolder | None:
    """The folder of ``remote`` (a remote name configured in ``repo``, or a URL or path),
    pinned as found now, when it is given as an absolute path to a folder that is not a
    working tree and ``repo`` keeps all its objects itself; ``None`` otherwise.  A
    ``file://`` URL asks for git's pack protocol, as with ``git clone``, and so does a
    named remote with a ``pushurl``."""
    if _borrows_objects(repo):
        # the in-process object reader does not follow objects/info/alternates
        return None
    url: str | None = remote
    if is_remote_name(remote):
        section = f'remote "{remote}"'
        url = repo.config_value(section, "url")
        if url is None or repo.config_value(section, "pushurl") is not None:
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


def _borrows_objects(repo: _Repository) -> bool:
    """Does ``repo`` borrow objects from another store (``objects/info/alternates``)?"""
    try:
        return bool(alternates(repo.git_dir))
    except OSError:
        return False


class DirectWriting(_PackClient):
    """Fetch, list and push by reading and writing the remote's repository in this
    process while that is all a push would do; through the pack protocol otherwise.

    Made by :func:`~distribute.transport.git.open_transport` only.
    """

    _direct: _DirectRemote
    _kept: bool  # gc.pruneExpire checked

    def _write_to(self, remote: _DirectRemote) -> None:
        """Reach ``remote`` this way (once, as the transport is made)."""
        self._direct = remote
        self._kept = False

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

    def _direct_now(self) -> _DirectRemote | None:
        """The remote when it may be written directly now; ``None`` when it is to be
        pushed to.  A remote whose folder is gone or was replaced is neither:
        ``TransportError``, before git could push into whatever is there now.
        """
        self._direct.check()
        if self._direct.refusal() is not None:
            return None
        if not self._kept:
            self._keep_fetched_objects()
            self._kept = True
        return self._direct

    def _keep_fetched_objects(self) -> None:
        """Set ``gc.pruneExpire=never`` in the local repository unless it says otherwise:
        directly fetched objects are referenced by no local ref, and a ``git gc`` that
        pruned part of what a copied commit names would break the next copy's walk."""
        if self._repo.config_value("gc", "pruneExpire") is None:
            self._repo.set_config("gc", "pruneExpire", "never")

    # ---- the steps that reach the remote -------------------------------------------------
    def _fetch_refs(self, patterns: Sequence[str]) -> dict[str, Oid]:
        """Read the refs from the remote's files and copy the objects they need.

        No mirror refs are written (each would cost a file): the local repository is
        set never to prune unreachable objects (:meth:`_keep_fetched_objects`), so a
        commit or tree copied here keeps everything below it, which the next copy's
        walk relies on."""
        direct = self._direct_now()
        if direct is None:
            return super()._fetch_refs(patterns)
        found = direct.read_refs([p[:-2] if p.endswith("/*") else p for p in patterns])
        values = {ref: oid for ref, oid in found.items() if ref_matches(ref, patterns)}
        try:
            copy_objects(direct.store, self._repo.objects(), values.values())
        except KeyError as err:
            direct.check()  # gone meanwhile, rather than missing an object
            raise TransportError(f"the remote {direct.git_dir} lacks object {err}") from err
        except OSError as err:
            direct.check()
            raise TransportError(f"reading the remote {direct.git_dir} failed: {err}") from err
        return values

    def list_refs(self, prefix: str) -> dict[str, Oid]:
        """Values of the remote refs whose names start with ``prefix``, from its ref files."""
        direct = self._direct_now()
        if direct is None:
            return super().list_refs(prefix)
        check_ref_prefix(prefix)
        # the folder that holds every ref starting with the prefix
        folder = prefix[:-1] if prefix.endswith("/") else prefix.rpartition("/")[0]
        found = direct.read_refs([folder])
        return {ref: oid for ref, oid in found.items() if ref.startswith(prefix)}

    def _push_checked(self, updates: Sequence[RefUpdate]) -> bool:
        """Copy the new objects into the remote, then compare-and-swap the refs in one
        ``git update-ref --stdin`` transaction there."""
        direct = self._direct_now()
        if direct is None:
            return super()._push_checked(updates)
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
