"""The remembered look `distribute status` compares with (distribute.looks)."""

from __future__ import annotations

import json
import stat

from distribute.looks import FORGET_AFTER, compare, memory_path, recall, remember


def test_changed_and_unchanged_refs_and_how_long_ago():
    previous = {"at": 1000.0, "refs": {"a": "1" * 40, "b": "2" * 40}}
    got = compare(previous, {"a": "1" * 40, "b": "3" * 40, "c": "4" * 40}, now=1042.0)
    assert got is not None and got.seconds == 42.0
    assert got.changed == {"a": False, "b": True, "c": True}  # a ref not seen before: changed


def test_no_usable_look_gives_no_comparison():
    refs = {"a": "1" * 40}
    assert compare(None, refs, now=5.0) is None
    assert compare({"at": "yesterday", "refs": {}}, refs, now=5.0) is None
    assert compare({"at": 10.0, "refs": refs}, refs, now=5.0) is None  # clock set back
    assert compare({"at": 0.0, "refs": refs}, refs, now=FORGET_AFTER + 1) is None


def test_the_memory_is_private_holds_no_secret_and_survives_damage(tmp_path):
    path = memory_path(tmp_path / "cache", "https://me:hunter2@example.com/r.git", "main")
    assert path == memory_path(tmp_path / "cache", "https://me:other@example.com/r.git", "main")
    assert path != memory_path(tmp_path / "cache", "https://me@example.com/r.git", "dev")
    remember(path, {"refs/distribute/lock": "1" * 40}, 7.0)
    assert recall(path) == {"at": 7.0, "refs": {"refs/distribute/lock": "1" * 40}, "since": {}}
    assert "hunter2" not in path.read_text() and "hunter2" not in str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("{not json")
    assert recall(path) is None
    path.write_text(json.dumps([1, 2]))
    assert recall(path) is None


def test_how_long_a_value_has_been_seen_carries_over_looks(tmp_path):
    path = tmp_path / "look.json"
    refs = {"w": "1" * 40, "v": "2" * 40}
    remember(path, refs, 100.0)
    remember(path, refs, 200.0, compare(recall(path), refs, now=200.0))
    moved = {"w": "1" * 40, "v": "3" * 40}
    got = compare(recall(path), moved, now=250.0)
    assert got is not None and got.unchanged_for == {"w": 150.0}  # since the look at 100
    remember(path, moved, 250.0, got)
    later = compare(recall(path), moved, now=300.0)
    assert later is not None and later.unchanged_for == {"w": 200.0, "v": 50.0}
