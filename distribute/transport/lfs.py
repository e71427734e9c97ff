"""Large result files through Git LFS: recognising pointers, and the filter a copy needs.

Theory of operation
-------------------
A repository routes files through Git LFS with ``.gitattributes`` lines such as
``*.pt filter=lfs diff=lfs merge=lfs -text`` (what ``git lfs track "*.pt"``
writes).  With git-lfs's filter configured, ``git add`` stores such a file's
content in the copy's ``.git/lfs/objects`` and commits a *pointer*: a text of
about 130 bytes naming the content's SHA-256 and size.  A checkout turns a
pointer back into the file, downloading the content from the LFS server.

git uploads the contents from its ``pre-push`` hook.  Distribute runs no hooks
(``core.hooksPath=/dev/null``) and writes to a remote on this machine without
``git push`` at all, so :class:`~.local_copy.GitLocalCopy` uploads them
itself before a commit that points at them is pushed: ``git lfs push
--object-id origin <oid>...``, which asks the server which of them it lacks
first.  The LFS server is the one git-lfs finds for ``origin``: for
``https://host/repo.git`` it is ``https://host/repo.git/info/lfs`` (GitHub,
GitLab, Gitea and Bitbucket all serve it there), for an ``ssh`` URL the host
says where, for a bare repository on this machine it is that repository's
``lfs/objects`` folder, and a ``.lfsconfig`` file in the repository may name
another.

A copy gets the filter in its own config when git-lfs is installed
(:func:`filter_config`), with ``required``: a file that should go through LFS
and cannot is an error, never a large blob committed by surprise, and a
pointer that cannot be downloaded at checkout is an error too, never a job
that resumes from a 130-byte text instead of its checkpoint.  Only the files
a worker checks out are downloaded: its view shows its own job's folder and
the files outside ``updates/`` (see :mod:`.local_copy`), so other jobs'
large results stay on the server until someone asks for them.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

__all__ = ["FILTER", "LfsPointer", "filter_config", "git_lfs_installed", "parse_pointer"]

#: The value of the ``filter`` attribute that routes a file through Git LFS.
FILTER = "lfs"
#: A pointer is small; anything larger is a file, whatever it starts with.
_POINTER_LIMIT = 1024
#: The pointer format, version 1 (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md):
#: sorted ``key value`` lines, ``version`` first; only ``oid`` and ``size`` matter here.
_VERSION = b"version https://git-lfs.github.com/spec/v1\n"
_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)
_SIZE = re.compile(rb"^size (0|[1-9][0-9]*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LfsPointer:
    """The content an LFS pointer names: its SHA-256 (hex) and its size in bytes."""

    oid: str
    size: int


def parse_pointer(data: bytes) -> LfsPointer | None:
    """The object ``data`` points to, if ``data`` is a Git LFS pointer; else ``None``."""
    if len(data) > _POINTER_LIMIT or not data.startswith(_VERSION) or not data.endswith(b"\n"):
        return None
    oid, size = _OID.search(data), _SIZE.search(data)
    if oid is None or size is None:
        return None
    return LfsPointer(oid.group(1).decode("ascii"), int(size.group(1)))


def git_lfs_installed() -> bool:
    """Whether the ``git-lfs`` program is on ``PATH`` (git runs it as ``git lfs``)."""
    return shutil.which("git-lfs") is not None


def filter_config() -> dict[str, str]:
    """The ``filter.lfs.*`` settings of a copy: what ``git lfs install --local`` writes,
    without its hooks (Distribute runs none; it uploads by itself)."""
    return {
        "filter.lfs.process": "git-lfs filter-process",
        "filter.lfs.clean": "git-lfs clean -- %f",
        "filter.lfs.smudge": "git-lfs smudge -- %f",
        "filter.lfs.required": "true",
    }
