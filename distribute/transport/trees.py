"""Editing a large git tree object in place, without parsing every entry into objects.

A remote that ran thousands of jobs has as many folders in ``updates/``, and each
job's snapshot replaces one of them.  :func:`splice_tree` makes the new tree object's
body from the old one: one regular expression (C speed) cuts the body into entries, a
binary search finds each changed name, reading a few names only, and only the
entries that change are touched.  The result is byte for byte what git writes for
the same entries (sorted as git sorts them: a folder's name as if it ended in ``/``).
:func:`new_entries` compares two trees by their bytes: the two bodies' common start
and common end are found by comparing slices (``memcmp``), and only the entries
between them, where the two differ, are compared one by one.

Looking one name up in such a tree costs git a scan of the whole object, a few
milliseconds at 100,000 entries, and a worker does it at every claim (its job's folder,
for the view it checks out).  :func:`find` answers without the tree's bytes where it
can: from a kept cut (a binary search), or through the splices made here
(:func:`remember_splice`): the tree a splice made holds what the splice put under a
name, and what the tree it was made from holds under every other name.  A job that
writes its results makes the next tree of every job's results by a splice, and that
tree becomes the main branch's when its finish lands, so a lone worker's lookups
follow one splice back to a tree it has cut.  A comparison by :func:`new_entries`
of two trees given by id is remembered the same way, so the trees other workers'
finishes made, as a fetch brings them, are looked up through the tree before.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

__all__ = ["TREE_MODE", "find", "keep", "new_entries", "remember_splice", "splice_tree"]

TREE_MODE = 0o040000


@cache
def _whole_entry(size: int) -> re.Pattern[bytes]:
    # "<octal mode> <name>\0<raw id>"; a name holds no NUL byte
    return re.compile(rb"[0-7]+ [^\0]*\0.{%d}" % size, re.S)


#: Trees at least this large (in bytes) keep their cut into entries for the next use,
#: and are compared by their common start and end (:func:`new_entries`).
_KEEP_BYTES = 64 * 1024
_KEPT = 8
#: Bytes compared at a time while looking for where two tree bodies start to differ.
_STRIDE = 4096


@dataclass(frozen=True, slots=True)
class _Cut:
    """A tree body cut into entries: each entry's bytes, in order, and where each starts
    (one more offset at the end: the body's length)."""

    entries: tuple[bytes, ...]
    starts: list[int] = field(repr=False)
    body: bytes = field(repr=False)


_kept: collections.OrderedDict[str, _Cut] = collections.OrderedDict()
_kept_lock = threading.Lock()

#: Trees made by a splice here: id -> (the id of the tree spliced, the changes).
_made: collections.OrderedDict[str, tuple[str, dict[bytes, tuple[int, bytes] | None]]] = (
    collections.OrderedDict())
_MADE_KEPT = 256
#: Splices followed back by one lookup before it gives up (and git is asked).
_HOPS = 32


def _cut(data: bytes, size: int, oid: str | None) -> _Cut:
    """Each entry of the tree body ``data``, as its bytes, in order, and its offset.

    A large tree whose id ``oid`` is given is cut once and kept: a job's snapshot, its
    push and the finish's push all meet the same folder of every job's results.
    """
    keep = oid if len(data) >= _KEEP_BYTES else None
    if keep is not None:
        with _kept_lock:
            found = _kept.get(keep)
            if found is not None:
                _kept.move_to_end(keep)
                return found
    cut = None
    if keep is not None:
        with _kept_lock:
            last = next(reversed(_kept.values()), None)
        if last is not None:
            cut = _cut_like(data, size, last)
    if cut is None:
        entries = tuple(_whole_entry(size).findall(data))
        starts = list(itertools.accumulate(map(len, entries), initial=0))
        if starts[-1] != len(data):
            raise ValueError("not a well-formed tree")
        cut = _Cut(entries, starts, data)
    if keep is not None:
        with _kept_lock:
            _kept[keep] = cut
            while len(_kept) > _KEPT:
                _kept.popitem(last=False)
    return cut


def _cut_like(data: bytes, size: int, like: _Cut) -> _Cut | None:
    """The cut of ``data`` made from the cut of a tree body ``like`` it mostly equals
    (the next version of the same folder): its entries where the two bodies are alike,
    and only the stretch between cut anew (see :func:`_stretch`).  ``None`` when the two
    are not alike enough for that to pay, or the stretch is not whole entries."""
    found = _stretch(data, size, like, least=len(data) // 2)
    if found is None:
        return None
    first, last, middle = found
    entries = like.entries[:first] + tuple(middle) + like.entries[last:]
    return _Cut(entries, list(itertools.accumulate(map(len, entries), initial=0)), data)


def _parse(entry: bytes, size: int) -> tuple[bytes, int, bytes]:
    space = entry.index(b" ")
    return entry[space + 1 : -size - 1], int(entry[:space], 8), entry[-size:]


def new_entries(
    data: bytes, old: bytes, size: int, ids: tuple[str | None, str | None] = (None, None)
) -> list[tuple[bytes, int, bytes, tuple[int, bytes] | None]]:
    """The entries of the tree body ``data`` that the tree body ``old`` lacks, as
    ``(name, mode, raw id, what old has under that name or None)``, in no set order.

    Only the entries between the bytes both bodies start with and the bytes both end
    with are cut out and compared, so a tree of 100,000 entries with one changed
    costs a comparison of its bytes with the old ones (in C) and the cut of the old
    body, which is kept for the next use when ``ids`` (the two trees' ids) are given;
    what differs is then remembered too (:func:`remember_splice`), for :func:`find`.

    Raises:
        ValueError: either body is not a well-formed tree.
    """
    if data == old:
        return []
    theirs = _cut(old, size, ids[1])
    found = _stretch(data, size, theirs)
    if found is None:  # the ends do not line up with entries: compare every entry
        mine, before = set(_cut(data, size, ids[0]).entries), set(theirs.entries)
    else:  # only the entries between the common start and end can differ
        first, last, middle = found
        mine, before = set(middle), set(theirs.entries[first:last])
    added = [_parse(entry, size) for entry in mine - before]
    gone = {name: (mode, oid) for name, mode, oid in
            (_parse(entry, size) for entry in before - mine)}
    if ids[0] is not None and ids[1] is not None:
        # what tells the two apart is all that differs: a later lookup in the new tree
        # goes through it to the old tree's cut (see :func:`find`)
        changes: dict[bytes, tuple[int, bytes] | None] = dict.fromkeys(gone)
        changes.update((name, (mode, oid)) for name, mode, oid in added)
        remember_splice(ids[0], ids[1], changes)
    return [(name, mode, oid, gone.get(name)) for name, mode, oid in added]


def _stretch(
    data: bytes, size: int, theirs: _Cut, least: int = 0
) -> tuple[int, int, list[bytes]] | None:
    """Where the body ``data`` differs from the body ``theirs`` was cut from:
    ``(first, last, entries)``, where ``theirs.entries[:first]`` are ``data``'s first
    entries, ``theirs.entries[last:]`` its last ones, and ``entries`` those between.
    ``None`` when the bytes both start and end with are fewer than ``least``, or the
    stretch between is not whole entries.

    The entries of ``theirs`` that lie wholly in the common start are ``data``'s first
    entries too (each body is cut from its start), so the stretch begins at an entry of
    both.  It ends where the first entry of ``theirs`` in the common end begins, at the
    same distance from the end in ``data``: if ``data``'s stretch up to there cuts into
    whole entries, the rest of ``data`` is cut the same way as the rest of ``theirs``.
    """
    old = theirs.body
    limit = min(len(data), len(old))
    start = _common_start(data, old, limit)
    end = _common_end(data, old, limit - start)
    if start + end < least:
        return None
    first = bisect.bisect_right(theirs.starts, start) - 1  # the old entry holding ``start``
    last = bisect.bisect_left(theirs.starts, len(old) - end)
    low, high = theirs.starts[first], theirs.starts[last] - len(old) + len(data)
    stretch = data[low:high]
    entries = _whole_entry(size).findall(stretch)
    if sum(map(len, entries)) != len(stretch):
        return None
    return first, last, entries


def _common_start(a: bytes, b: bytes, limit: int) -> int:
    """How many bytes ``a`` and ``b`` start with alike (at most ``limit``)."""
    low = 0
    while low + _STRIDE <= limit and a[low : low + _STRIDE] == b[low : low + _STRIDE]:
        low += _STRIDE
    high = min(low + _STRIDE, limit)  # a[:low] == b[:low]; they differ before high, or end
    while low < high:
        mid = (low + high + 1) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _common_end(a: bytes, b: bytes, limit: int) -> int:
    """How many bytes ``a`` and ``b`` end with alike (at most ``limit``)."""
    la, lb = len(a), len(b)
    low = 0
    while (low + _STRIDE <= limit
           and a[la - low - _STRIDE : la - low] == b[lb - low - _STRIDE : lb - low]):
        low += _STRIDE
    high = min(low + _STRIDE, limit)
    while low < high:
        mid = (low + high + 1) // 2
        if a[la - mid : la - low] == b[lb - mid : lb - low]:
            low = mid
        else:
            high = mid - 1
    return low


def _key(name: bytes, mode: int) -> bytes:
    return name + b"/" if mode == TREE_MODE else name


def _sort_key(size: int) -> Callable[[bytes], bytes]:
    """The order of a tree's entries (given as their bytes): git's, a folder's name as if
    it ended in ``/``."""
    def key(entry: bytes) -> bytes:
        name = entry[entry.index(b" ") + 1 : -size - 1]
        return name + b"/" if entry.startswith(b"40000 ") else name
    return key


def _at(entries: Sequence[bytes], wanted: bytes, key: Callable[[bytes], bytes]) -> int | None:
    """Where in ``entries`` (in ``key``'s order) the entry whose key is ``wanted`` is."""
    at = bisect.bisect_left(entries, wanted, key=key)
    return at if at < len(entries) and key(entries[at]) == wanted else None


def _find_in(cut: _Cut, name: bytes, size: int) -> tuple[int, bytes] | None:
    key = _sort_key(size)
    for wanted in (name, name + b"/"):  # a file, or a folder, of that name
        at = _at(cut.entries, wanted, key)
        if at is not None:
            _, mode, oid = _parse(cut.entries[at], size)
            return mode, oid
    return None


def keep(tree_id: str, data: bytes, size: int) -> None:
    """Cut the body ``data`` of the tree ``tree_id`` into entries and keep the cut (a
    tree too small to be kept is left alone: git scans it fast)."""
    _cut(data, size, tree_id)


def remember_splice(
    made: str, spliced: str, changes: Mapping[bytes, tuple[int, bytes] | None]
) -> None:
    """Remember that the tree ``made`` is the tree ``spliced`` with ``changes`` applied
    (:func:`splice_tree`'s arguments), for :func:`find`."""
    if made == spliced:  # a splice that changed nothing
        return
    with _kept_lock:
        _made[made] = (spliced, dict(changes))
        _made.move_to_end(made)
        while len(_made) > _MADE_KEPT:
            _made.popitem(last=False)


def find(tree_id: str, name: bytes, size: int) -> tuple[bool, tuple[int, bytes] | None]:
    """``(True, (mode, raw id))`` of the entry ``name`` of the tree ``tree_id``, or
    ``(True, None)`` when it has none, answered from what is kept here (see the
    module's notes); ``(False, None)`` when that does not tell."""
    at = tree_id
    for _ in range(_HOPS):
        with _kept_lock:
            cut, made = _kept.get(at), _made.get(at)
        if cut is not None:
            return True, _find_in(cut, name, size)
        if made is None:
            break
        at, changes = made
        if name in changes:
            return True, changes[name]
    return False, None


def splice_tree(
    data: bytes, size: int, changes: Mapping[bytes, tuple[int, bytes] | None],
    tree_id: str | None = None,
) -> bytes:
    """The body of the tree ``data`` (ids ``size`` bytes long) with ``changes`` applied.

    ``changes``: entry name -> ``(mode, raw id)`` to add or replace it, or ``None`` to
    remove it (a name that is not there is left so).  Entries are found by a binary
    search that reads the names of a few entries only.  ``tree_id``: the tree's id, if
    known (see :func:`new_entries`).

    Raises:
        ValueError: ``data`` is not a well-formed tree body, or a name is not one
            path component.
    """
    for name in changes:
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise ValueError(f"{name!r} is not a tree entry name")
    entries = list(_cut(data, size, tree_id).entries)
    key = _sort_key(size)

    for name, new in changes.items():
        for wanted in (name, name + b"/"):  # the entry, as a file or as a folder
            at = _at(entries, wanted, key)
            if at is not None:
                del entries[at]
        if new is not None:
            mode, oid = new
            if len(oid) != size:
                raise ValueError(f"an id of {len(oid)} bytes in a tree of {size}-byte ids")
            at = bisect.bisect_left(entries, _key(name, mode), key=key)
            entries.insert(at, b"%o %s\0" % (mode, name) + oid)
    return b"".join(entries)
