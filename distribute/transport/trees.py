"""Editing a large git tree object in place, without parsing every entry into objects.

A remote that ran thousands of jobs has as many folders in ``updates/``, and each
job's snapshot replaces one of them.  :func:`splice_tree` makes the new tree object's
body from the old one: C-speed scans (a regular expression and a running sum) find
where each entry starts, and only the entries that change are touched.  The result
is byte for byte what git writes for the same entries (sorted as git sorts them: a
folder's name as if it ended in ``/``).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Mapping
from functools import cache

__all__ = ["TREE_MODE", "splice_tree"]

TREE_MODE = 0o040000


@cache
def _entry_pattern(size: int) -> re.Pattern[bytes]:
    # "<octal mode> <name>\0<raw id>"; a name holds no NUL byte
    return re.compile(rb"([0-7]+) ([^\0]*)\0.{%d}" % size, re.S)


def _key(name: bytes, mode: int) -> bytes:
    return name + b"/" if mode == TREE_MODE else name


def splice_tree(data: bytes, size: int, changes: Mapping[bytes, tuple[int, bytes] | None]) -> bytes:
    """The body of the tree ``data`` (ids ``size`` bytes long) with ``changes`` applied.

    ``changes``: entry name -> ``(mode, raw id)`` to add or replace it, or ``None`` to
    remove it (a name that is not there is left so).

    Raises:
        ValueError: ``data`` is not a well-formed tree body, or a name is not one
            path component.
    """
    for name in changes:
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise ValueError(f"{name!r} is not a tree entry name")
    found = _entry_pattern(size).findall(data)
    ends = list(itertools.accumulate(len(mode) + len(name) + 2 + size for mode, name in found))
    if (ends[-1] if ends else 0) != len(data):
        raise ValueError("not a well-formed tree")
    keys = [name + b"/" if mode == b"40000" else name for mode, name in found]
    # (offset, 0 = drop up to end / 1 = insert, sort key, payload)
    edits: list[tuple[int, int, bytes, bytes | int]] = []
    for name, new in changes.items():
        for key in (name, name + b"/"):
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                edits.append((ends[at - 1] if at else 0, 0, key, ends[at]))
        if new is not None:
            mode, oid = new
            if len(oid) != size:
                raise ValueError(f"an id of {len(oid)} bytes in a tree of {size}-byte ids")
            key = _key(name, mode)
            at = bisect.bisect_left(keys, key)
            edits.append((ends[at - 1] if at else 0, 1, key, b"%o %s\0" % (mode, name) + oid))
    edits.sort(key=lambda edit: edit[:3])
    out: list[bytes] = []
    cursor = 0
    for offset, kind, _, payload in edits:
        if offset > cursor:
            out.append(data[cursor:offset])
            cursor = offset
        if kind == 0:
            assert isinstance(payload, int)
            cursor = max(cursor, payload)
        else:
            assert isinstance(payload, bytes)
            out.append(payload)
    out.append(data[cursor:])
    return b"".join(out)
