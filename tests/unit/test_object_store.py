"""Writing loose objects while something else tidies the same objects folder.

``git gc`` (and ``git prune-packed`` on its own) removes a fan-out folder
(``objects/ab``) once it has moved the last loose object there into a pack.
A writer that opened that folder a moment before then creates its file in a
folder that no longer exists.  git itself makes the folder again and tries
once more; so must the stores written here: a worker's copy, and a bare
remote on this machine that other workers pack now and then.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from distribute.transport import direct as direct_module
from distribute.transport.direct import ObjectStore, loose_object


def _emptied(objects: Path, fan: str) -> None:
    """What prune-packed does to a fan-out folder whose objects are all packed."""
    for entry in (objects / fan).iterdir():
        entry.unlink()
    (objects / fan).rmdir()


def _blob_with_prefix(prefix: str, avoid: set[str]) -> tuple[bytes, str]:
    n = 0
    while True:
        data = f"blob {n}".encode()
        oid, _ = loose_object("blob", data)
        if oid.startswith(prefix) and oid not in avoid:
            return data, oid
        n += 1


def _stored(objects: Path, oid: str, data: bytes) -> bool:
    raw = (objects / oid[:2] / oid[2:]).read_bytes()
    return zlib.decompress(raw) == b"blob %d\0" % len(data) + data


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    folder = tmp_path / "objects"
    folder.mkdir()
    return folder


def test_a_fan_out_folder_removed_inside_a_batch_is_made_again(objects: Path) -> None:
    store = ObjectStore(objects)
    first, first_oid = _blob_with_prefix("ab", set())
    second, second_oid = _blob_with_prefix("ab", {first_oid})
    with store.writing():
        assert store.put("blob", first) == first_oid  # the batch keeps objects/ab open
        _emptied(objects, "ab")
        assert store.put("blob", second) == second_oid
    assert _stored(objects, second_oid, second)


def _losing_fans(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """Make the first ``times`` openings of a fan-out folder remove it right after (as
    a concurrent ``git gc`` would); give the list of the folders removed."""
    opened = ObjectStore._open_fan
    removals: list[str] = []

    def open_then_lose(objects_fd: int, oid: str, make: bool) -> int:
        fan = opened(objects_fd, oid, make)
        if len(removals) < times:
            removals.append(oid[:2])
            os.rmdir(oid[:2], dir_fd=objects_fd)
        return fan

    monkeypatch.setattr(ObjectStore, "_open_fan", staticmethod(open_then_lose))
    return removals


@pytest.mark.parametrize("losses", [1, direct_module.FAN_OUT_TRIES - 1, 1000])
def test_a_fan_out_folder_removed_between_opening_and_writing_is_made_again(
    objects: Path, monkeypatch: pytest.MonkeyPatch, losses: int,
) -> None:
    """...a bounded number of times: a folder that vanishes every time is reported, not
    looped on."""
    store = ObjectStore(objects)
    data, oid = _blob_with_prefix("cd", set())
    removals = _losing_fans(monkeypatch, times=losses)
    if losses < direct_module.FAN_OUT_TRIES:
        assert store.put("blob", data) == oid
        assert _stored(objects, oid, data)
        assert removals == ["cd"] * losses
    else:
        with pytest.raises(FileNotFoundError):
            store.put("blob", data)
        assert removals == ["cd"] * direct_module.FAN_OUT_TRIES


def test_a_copy_into_a_removed_fan_out_folder_is_made_again(tmp_path: Path) -> None:
    source_dir, target_dir = tmp_path / "source", tmp_path / "target"
    source_dir.mkdir()
    target_dir.mkdir()
    source, target = ObjectStore(source_dir), ObjectStore(target_dir)
    first, first_oid = _blob_with_prefix("ef", set())
    second, second_oid = _blob_with_prefix("ef", {first_oid})
    source.put("blob", first)
    source.put("blob", second)
    with target.writing():
        target.copy_from(source, first_oid)
        _emptied(target_dir, "ef")
        target.copy_from(source, second_oid)
    assert _stored(target_dir, second_oid, second)
