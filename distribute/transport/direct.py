"""A remote that is a bare repository on this machine's file system, reached directly.

Why
---
A push to a path starts about seven git processes (``push``, ``receive-pack``,
``pack-objects``, ``unpack-objects``, ``rev-list``, ...) and a fetch about
four, to move a handful of small objects between two directories of the same
disk.  When the remote is a plain bare repository that git would accept the
push into without running anything of its own (no hooks, no ``receive.*`` or
``transfer.*`` rules, no shared-permission mode), the same effect costs one
process:

* objects are copied between the two object stores in this process (a loose
  object is copied byte for byte; a packed one is read through gitdb and
  written loose), children before parents, so a commit or tree present in a
  store always has everything below it there too;
* refs are read from the remote's ref files in this process (loose files
  first, then ``packed-refs``: git writes a new ``packed-refs`` before it
  deletes the loose files it packed, so this order never misses a ref);
* refs are changed by one ``git update-ref --stdin`` in the remote: every
  update verified against its expected old value and applied in one
  transaction under git's own ref locks -- the same locks and the same check
  ``receive-pack`` uses for ``push --atomic --force-with-lease``, so direct
  writers and pushing writers can share one remote safely.

Anything the checks (:func:`~.direct_remote.direct_refusal`) do not
recognise falls back to the pack protocol; a ``file://`` URL always does, as
it does for ``git clone``.  This module is the plumbing; the transport that
uses it is :mod:`.direct_transport`.

Only ever the repository first found there
------------------------------------------
The remote's folder can go away while workers use it: moved or renamed, deleted,
or its network file system unmounted.  Anything that writes by path would then
make a new folder in its place (``mkdir`` with parents, git making the folders
of a ref's lock file), and that new folder both looks like a remote with no
refs and keeps the real repository from being moved back.  So the remote is
pinned (:class:`RepositoryFolder`): its device and inode are noted when the
transport first finds it, and every read of its refs and every write checks
that its path still leads to that very folder, still a repository (``HEAD``,
``objects``, ``refs``); if not, the step fails with ``TransportError`` and
nothing is written.  Objects are written below the folder opened for that
check, by descriptor (``mkdir``/``link``/``rename`` relative to it), and git
runs inside it (``git -C <folder>`` with ``GIT_DIR=.``): a folder that moves
while a write is under way takes the write along instead of leaving a new
folder at its old path.  Nothing here creates a missing parent folder.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import hashlib
import os
import re
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitdb.db.pack import PackedDB

from distribute.core.errors import TransportError
from distribute.transport.base import Oid
from distribute.transport.trees import new_entries

__all__ = [
    "ObjectStore",
    "RepositoryFolder",
    "copy_objects",
    "read_ref_files",
    "tree_entries",
]

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_KINDS = (b"blob", b"tree", b"commit", b"tag")
_MODE_TREE = 0o040000
_MODE_GITLINK = 0o160000
#: How a folder is opened to work below it: never created, never a file.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: What makes a folder a repository for git (``is_git_directory``).
_REPOSITORY_PARTS = ("HEAD", "objects", "refs")
#: How a scratch file is made: only a new one, in a folder that must exist.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: Tries at writing into a fan-out folder that ``git gc`` keeps removing (see
#: :meth:`ObjectStore._in_fan`); git itself tries twice.
FAN_OUT_TRIES = 3
#: zlib level of a loose object, as git's ``core.looseCompression`` default
_LOOSE_LEVEL = 1
#: Objects at least this large that were read or written lately are kept, uncompressed
#: (an object's id names its contents, so the copy is right in every store): a job's
#: steps read the same large ``updates`` tree and ``done.txt`` several times each.
_RECENT_BYTES, _RECENT_COUNT = 64 * 1024, 8
_recent: collections.OrderedDict[Oid, tuple[str, bytes]] = collections.OrderedDict()
_recent_lock = threading.Lock()


def _remember(oid: Oid, kind: str, data: bytes) -> None:
    if len(data) >= _RECENT_BYTES:
        with _recent_lock:
            _recent[oid] = (kind, data)
            _recent.move_to_end(oid)
            while len(_recent) > _RECENT_COUNT:
                _recent.popitem(last=False)


def _recalled(oid: Oid) -> tuple[str, bytes] | None:
    with _recent_lock:
        found = _recent.get(oid)
        if found is not None:
            _recent.move_to_end(oid)
        return found


class RepositoryFolder:
    """The root folder of a repository on this machine, as first found at ``path``.

    :meth:`open` checks that ``path`` still leads to that folder (same device
    and inode: a new folder made at the same path is another one) and that it
    still is a repository, and returns it open, so that what follows works
    below that folder and not below whatever the path names a moment later.

    Raises:
        OSError: ``path`` cannot be read now (on construction only).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        info = os.stat(path)
        self.identity = (info.st_dev, info.st_ino)

    def __repr__(self) -> str:
        return f"RepositoryFolder({str(self.path)!r})"

    def _error(self, what: str, **context: object) -> TransportError:
        return TransportError(
            f"the remote {self.path} {what}; nothing was written there.  Put the repository "
            "back at that path (the workers carry on by themselves), or restart the workers "
            "with its new place",
            path=str(self.path),
            **context,
        )

    def open(self, *below: str) -> int:
        """A descriptor of the folder, or of its subfolder ``below`` (``"objects"``),
        opened after the checks; the caller closes it.  Creates nothing.

        Raises:
            TransportError: the folder is gone (moved, deleted, unmounted), was replaced
                by another, or is no repository any more.
        """
        try:
            fd = os.open(self.path, _FOLDER)
        except OSError as err:
            what = "is gone (moved, deleted or unmounted)"
            if not isinstance(err, (FileNotFoundError, NotADirectoryError)):
                what = f"is gone or cannot be opened ({err.strerror})"
            raise self._error(what, errno=err.errno) from err
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != self.identity:
                raise self._error(
                    "is no longer the repository this worker started with: the folder there "
                    "was replaced (moved away, or made anew)"
                )
            for part in _REPOSITORY_PARTS:
                try:
                    os.stat(part, dir_fd=fd)
                except FileNotFoundError:
                    raise self._error(f"is no longer a git repository (no {part})") from None
            for name in below:
                inner = os.open(name, _FOLDER, dir_fd=fd)
                os.close(fd)
                fd = inner
        except OSError as err:
            os.close(fd)
            raise self._error(f"cannot be read ({err.strerror})", errno=err.errno) from err
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check(self) -> None:
        """Raise ``TransportError`` unless the path still leads to the repository."""
        os.close(self.open())


def loose_object(kind: str, data: bytes) -> tuple[Oid, bytes]:
    """The SHA-1 id and the loose object file's bytes (compressed) of one object."""
    whole = b"%s %d\0%s" % (kind.encode("ascii"), len(data), data)
    oid = hashlib.sha1(whole, usedforsecurity=False).hexdigest()
    return oid, zlib.compress(whole, _LOOSE_LEVEL)


def _ref_files(folder: str, name: str) -> Iterator[tuple[str, str]]:
    """``(ref name, file path)`` of the loose refs below ``folder`` (named ``name``)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _ref_files(entry.path, f"{name}/{entry.name}")
        elif not entry.name.endswith(".lock"):  # a ref being written keeps its value
            yield f"{name}/{entry.name}", entry.path


def read_ref_files(common: Path, names: Sequence[str]) -> dict[str, Oid]:
    """Values of the refs ``names`` and of those below them, read from a ``files`` ref store.

    Loose ref files are read first and win over their ``packed-refs`` lines,
    as in git.  A ref being written (``.lock``) keeps its current value; a
    file that is no ref is skipped.
    """
    found: dict[str, Oid] = {}
    for name in names:
        path = os.path.join(common, name)
        files = [(name, path)] if os.path.isfile(path) else _ref_files(path, name)
        for ref, file in files:
            try:
                with open(file, "rb") as handle:
                    text = handle.read(100).strip().decode("ascii")
            except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
                continue  # deleted meanwhile, or not a ref
            if _OID.fullmatch(text):
                found[ref] = text
    packed_names, packed_oids = _packed_refs(os.path.join(common, "packed-refs"))
    for name in names:
        if name in packed_oids and name not in found:
            found[name] = packed_oids[name]
        prefix = name + "/"
        at = bisect.bisect_left(packed_names, prefix)
        while at < len(packed_names) and packed_names[at].startswith(prefix):
            ref = packed_names[at]
            found.setdefault(ref, packed_oids[ref])
            at += 1
    return found


#: the last parse of each ``packed-refs`` file, by path: (its text, sorted names, values)
_PACKED: dict[str, tuple[bytes, list[str], dict[str, Oid]]] = {}


def _packed_refs(path: str) -> tuple[list[str], dict[str, Oid]]:
    """The refs of a ``packed-refs`` file, sorted, and their values.

    The file is read every time (one read of a few hundred kilobytes at most) and parsed
    only when its text differs from the last one parsed.  Its identity on disk is no
    guide: file times are coarse (many writes share one time stamp) and a rewritten
    file can get a freed inode back with the same size, so a cache keyed by ``stat``
    returned an old ``main`` for ever once git packed the refs (seen in the simulator:
    every push was refused against a value the remote no longer held).
    """
    try:
        with open(path, "rb") as handle:
            packed = handle.read()
    except FileNotFoundError:
        return [], {}
    cached = _PACKED.get(path)
    if cached is not None and cached[0] == packed:
        return cached[1], cached[2]
    oids: dict[str, Oid] = {}
    for line in packed.decode("utf-8", errors="surrogateescape").splitlines():
        if line and line[0] not in "#^":
            oid, _, ref = line.partition(" ")
            if _OID.fullmatch(oid):
                oids[ref] = oid
    ordered = sorted(oids)
    if len(_PACKED) > 64:
        _PACKED.clear()
    _PACKED[path] = (packed, ordered, oids)
    return ordered, oids


class ObjectStore:
    """The object directory of one repository, read and written in this process.

    Reads go by path.  Writes open the objects folder first -- through
    ``folder`` when given (the checks of :meth:`RepositoryFolder.open`), else by
    its path, which must exist -- and then work below that open folder only: a
    fan-out folder (``objects/ab``) is made there when missing, nothing above.
    """

    def __init__(self, objects: Path, *, folder: RepositoryFolder | None = None) -> None:
        self.root = objects
        self._folder = folder
        self._packs: PackedDB | None = None
        self._packs_lock = threading.Lock()
        self._batch = threading.local()  # see writing()

    def __repr__(self) -> str:
        return f"ObjectStore({str(self.root)!r})"

    def _loose_path(self, oid: Oid) -> Path:
        return self.root / oid[:2] / oid[2:]

    def _packed(self) -> PackedDB | None:
        if self._packs is None and (self.root / "pack").is_dir():
            self._packs = PackedDB(str(self.root / "pack"))
        return self._packs

    def _in_packs(self, oid: Oid) -> bool:
        with self._packs_lock:  # gitdb's pack index is not thread-safe
            packs = self._packed()
            if packs is None:
                return False
            binsha = bytes.fromhex(oid)
            if packs.has_object(binsha):
                return True
            # a pack may have appeared (gc, a large push) since the list was read
            return bool(packs.update_cache()) and packs.has_object(binsha)

    def has(self, oid: Oid) -> bool:
        return self._loose_path(oid).is_file() or self._in_packs(oid)

    def _open_objects(self) -> int:
        if self._folder is not None:
            return self._folder.open(self.root.name)
        return os.open(self.root, _FOLDER)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Within this block, this thread's writes here open the objects folder once, with
        its checks (:meth:`RepositoryFolder.open`), and each fan-out folder once, instead
        of for every object: for the many objects of one push."""
        if getattr(self._batch, "objects", None) is not None:
            yield  # already inside one
            return
        objects = self._open_objects()
        self._batch.objects, self._batch.fans = objects, {}
        try:
            yield
        finally:
            fans = self._batch.fans
            self._batch.objects = self._batch.fans = None
            for fd in (*fans.values(), objects):
                os.close(fd)

    def _forget_fan(self, oid: Oid) -> None:
        """Close the batch's open fan-out folder of ``oid``, if any (it was removed)."""
        fans: dict[str, int] | None = getattr(self._batch, "fans", None)
        fan = None if fans is None else fans.pop(oid[:2], None)
        if fan is not None:
            os.close(fan)

    def _in_fan(self, oid: Oid, write: Callable[[int], None]) -> None:
        """Run ``write`` on the open fan-out folder of ``oid``, made if missing.

        ``git gc`` (its ``prune-packed``) removes a fan-out folder once it has packed
        every loose object there; a write that opened the folder just before then finds
        it gone (FileNotFoundError on a new file).  As git does, the folder is made
        again and the write tried again, up to :data:`FAN_OUT_TRIES` times in all.
        """
        for attempt in range(1, FAN_OUT_TRIES + 1):
            try:
                with self._fan_out(oid, make=True) as fan:
                    write(fan)
                    return
            except FileNotFoundError:
                if attempt == FAN_OUT_TRIES:
                    raise
                self._forget_fan(oid)

    @contextlib.contextmanager
    def _fan_out(self, oid: Oid, *, make: bool) -> Iterator[int]:
        """The open fan-out folder of ``oid`` (made first if missing and ``make``).

        Raises:
            TransportError: ``folder`` is gone or replaced (see RepositoryFolder.open).
            OSError: the objects folder (or, unless ``make``, the fan-out one) is missing.
        """
        batch = getattr(self._batch, "objects", None)
        if batch is not None:
            fans: dict[str, int] = self._batch.fans
            fan = fans.get(oid[:2])
            if fan is None:
                fan = fans[oid[:2]] = self._open_fan(batch, oid, make)
            yield fan
            return
        objects = self._open_objects()
        try:
            fan = self._open_fan(objects, oid, make)
        finally:
            os.close(objects)
        try:
            yield fan
        finally:
            os.close(fan)

    @staticmethod
    def _open_fan(objects: int, oid: Oid, make: bool) -> int:
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(oid[:2], dir_fd=objects)
        return os.open(oid[:2], _FOLDER, dir_fd=objects)

    def freshen(self, oid: Oid) -> None:
        """Touch a loose object that a new ref is about to rely on, as git does, so a
        concurrent ``git gc`` does not prune it as old and unreachable."""
        with contextlib.suppress(OSError), self._fan_out(oid, make=False) as fan:
            os.utime(oid[2:], dir_fd=fan)

    def raw(self, oid: Oid) -> bytes | None:
        """The loose object file's bytes (compressed), or ``None`` if ``oid`` is not loose."""
        try:
            return self._loose_path(oid).read_bytes()
        except FileNotFoundError:
            return None

    def read_loose(self, oid: Oid) -> tuple[str, bytes] | None:
        """Type and contents of ``oid`` if it is a whole loose object here, else ``None``
        (not loose, or a file that does not decompress to what its header says).  A
        large object read or written lately, here or in another store, is answered from
        memory: its contents are the same wherever it is (:meth:`has` says where)."""
        recalled = _recalled(oid)
        if recalled is not None:
            return recalled
        raw = self.raw(oid)
        if raw is None:
            return None
        with contextlib.suppress(zlib.error, ValueError):
            header, _, body = zlib.decompress(raw).partition(b"\0")
            kind, _, size = header.partition(b" ")
            if int(size) == len(body) and kind in _KINDS:
                _remember(oid, kind.decode("ascii"), body)
                return kind.decode("ascii"), body
        return None

    def read(self, oid: Oid) -> tuple[str, bytes]:
        """Type and contents of ``oid``.

        Raises:
            KeyError: the store does not hold ``oid``.
        """
        loose = self.read_loose(oid)
        if loose is not None:
            return loose
        if self._in_packs(oid):
            with self._packs_lock:
                packs = self._packed()
                assert packs is not None
                stream = packs.stream(bytes.fromhex(oid))
                return stream.type.decode("ascii"), stream.read()
        raise KeyError(oid)

    @staticmethod
    def _write_loose(fan: int, name: str, raw: bytes) -> None:
        """Write a loose object file into the open fan-out folder ``fan``: to a scratch
        file first, then renamed into place, so no reader sees half an object."""
        scratch = f"tmp_obj_{uuid.uuid4().hex}"
        fd = os.open(scratch, _NEW_FILE, 0o444, dir_fd=fan)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
                os.fchmod(out.fileno(), 0o444)
            os.replace(scratch, name, src_dir_fd=fan, dst_dir_fd=fan)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(scratch, dir_fd=fan)
            raise

    def put_raw(self, oid: Oid, raw: bytes) -> None:
        """Store a loose object file's bytes under ``oid`` (write, then rename into place)."""
        self._in_fan(oid, lambda fan: self._write_loose(fan, oid[2:], raw))

    def put(self, kind: str, data: bytes) -> Oid:
        """Write one loose object (compressed, named by its SHA-1) unless it is loose here
        already; return its id."""
        oid, raw = loose_object(kind, data)

        def write(fan: int) -> None:
            try:
                os.stat(oid[2:], dir_fd=fan)
            except FileNotFoundError:
                self._write_loose(fan, oid[2:], raw)

        self._in_fan(oid, write)
        _remember(oid, kind, data)
        return oid

    def copy_from(self, source: ObjectStore, oid: Oid) -> None:
        """Copy ``oid``: a loose object is hard-linked when both stores share a file system
        (one file-system operation; object files never change, as ``git clone --local``
        relies on too), else copied byte for byte; a packed one is read and written loose."""
        name = oid[2:]

        def write(fan: int) -> None:
            try:
                os.link(source._loose_path(oid), name, dst_dir_fd=fan)
            except FileExistsError:
                return
            except OSError:
                pass  # not loose there, another file system, links not allowed, no folder
            else:
                # the link keeps the source file's time: an old object would look old and
                # unreachable to a concurrent git gc until the ref naming it lands
                with contextlib.suppress(OSError):
                    os.utime(name, dir_fd=fan)
                return
            raw = source.raw(oid)
            if raw is None:
                kind, data = source.read(oid)
                written, raw = loose_object(kind, data)
                if written != oid:  # pragma: no cover - a corrupt pack
                    raise KeyError(oid)
            self._write_loose(fan, name, raw)

        self._in_fan(oid, write)


@dataclass(frozen=True, slots=True)
class _Visit:
    oid: Oid
    kind: str  # "commit", "tree" or "blob"
    like: Oid | None = None  # a tree the target holds at the same place, to skip equal entries


def tree_entries(data: bytes, size: int) -> dict[bytes, tuple[int, Oid]]:
    """``name -> (mode, id)`` of a tree object's contents (ids ``size`` bytes long)."""
    entries: dict[bytes, tuple[int, Oid]] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        oid = data[nul + 1 : nul + 1 + size].hex()
        entries[data[space + 1 : nul]] = (int(data[pos:space], 8), oid)
        pos = nul + 1 + size
    return entries


def copy_objects(source: ObjectStore, target: ObjectStore, tips: Iterable[Oid]) -> int:
    """Copy into ``target`` every object reachable from ``tips`` that it lacks; return how many.

    The walk stops at commits and blobs ``target`` holds, and within a tree it
    skips entries equal to those of the parent commit's tree at the same place.
    A commit present in ``target`` has everything below it there: every commit
    this is asked to copy descends from ref values, and git completes an
    object's closure before a ref names it.  A tree present there is not
    trusted: git promises nothing for objects no ref reaches (a killed
    ``receive-pack`` moves its objects in hash order, a killed ``prune``
    deletes in any), and a re-run job writes the very same trees, so the walk
    looks below it.  Objects are written children first, so a crash part-way
    never leaves a commit or tree without what it names.

    Raises:
        KeyError: ``source`` lacks an object that ``target`` lacks too.
    """
    order: list[Oid] = []
    seen: set[Oid] = set()
    stack: list[tuple[_Visit, bool]] = [(_Visit(oid, "commit"), False) for oid in tips]
    while stack:
        visit, expanded = stack.pop()
        if expanded:
            order.append(visit.oid)
            continue
        if visit.oid in seen:
            continue
        seen.add(visit.oid)
        if target.has(visit.oid):
            target.freshen(visit.oid)
            if visit.kind != "tree":
                continue  # a blob has no children; a commit present here is whole
            # a tree may be present without what it names (see the docstring): look below
        else:
            stack.append((visit, True))
        if visit.kind == "blob":
            continue
        kind, data = source.read(visit.oid)
        if kind == "tag":
            head = data.split(b"\n\n", 1)[0].split(b"\n")
            named = head[0][7:].decode("ascii")  # "object <oid>", then "type <kind>"
            stack.append((_Visit(named, head[1][5:].decode("ascii")), False))
        elif kind == "commit":
            head = data.split(b"\n\n", 1)[0].split(b"\n")
            tree = head[0][5:].decode("ascii")
            parents = [line[7:].decode("ascii") for line in head if line.startswith(b"parent ")]
            # the tree to compare with: a parent's that ``target`` holds, else the first
            # parent's, which this walk copies too (a claim and the finish on it, fetched
            # together: without it, the finish's tree would be compared with nothing)
            held = [parent for parent in parents if target.has(parent)]
            like = None
            if parents:
                pdata = (target if held else source).read((held or parents)[0])[1]
                like = pdata[5 : pdata.index(b"\n")].decode("ascii")
            # the parents are walked first (the stack's top): what the tree shares with the
            # like tree is then written before the tree, wherever the like tree comes from
            stack.append((_Visit(tree, "tree", like), False))
            stack.extend((_Visit(parent, "commit"), False) for parent in parents)
        elif kind == "tree":
            size = len(visit.oid) // 2
            old, old_id = b"", None
            if visit.like is not None:
                with contextlib.suppress(KeyError):  # from ``target``, or from this walk
                    store = target if target.has(visit.like) else source
                    old, old_id = store.read(visit.like)[1], visit.like
            # the entries the like tree lacks, found by comparing bytes: a folder of
            # 100,000 jobs with one new is not parsed entry by entry
            for _, mode, raw, before in new_entries(data, old, size, (visit.oid, old_id)):
                if mode == _MODE_GITLINK:
                    continue
                if mode == _MODE_TREE:
                    like = before[1].hex() if before and before[0] == _MODE_TREE else None
                    stack.append((_Visit(raw.hex(), "tree", like), False))
                else:
                    stack.append((_Visit(raw.hex(), "blob"), False))
    with target.writing():
        for oid in order:
            target.copy_from(source, oid)
    return len(order)
