"""splice_tree gives the same tree body as parsing every entry, editing and re-sorting.

The reference below is the slow, obvious way (a dict of every entry, sorted as git
sorts them); the property is that the fast splice agrees with it on any tree and
any set of changes, including a name that changes from file to folder (whose place
in the order moves) and names that sort next to each other (``a``, ``a.b``, ``a/``).
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distribute.transport import trees
from distribute.transport.direct import tree_entries
from distribute.transport.trees import TREE_MODE, new_entries, splice_tree

MODES = [TREE_MODE, 0o100644, 0o100755, 0o120000]
# few letters, so names collide and sort next to each other
names = st.binary(min_size=1, max_size=4).map(
    lambda b: bytes(b"ab.-c"[x % 5] for x in b)).filter(lambda n: n not in (b".", b".."))
entries = st.tuples(st.sampled_from(MODES), st.binary(min_size=20, max_size=20))


def body(tree: dict[bytes, tuple[int, bytes]]) -> bytes:
    """What git writes for these entries."""
    ordered = sorted(tree.items(), key=lambda kv: kv[0] + b"/" if kv[1][0] == TREE_MODE else kv[0])
    return b"".join(b"%o %s\0" % (mode, name) + oid for name, (mode, oid) in ordered)


def reference(data: bytes, changes: dict[bytes, tuple[int, bytes] | None]) -> bytes:
    parsed = tree_entries(data, 20)
    tree = {name: (mode, bytes.fromhex(oid)) for name, (mode, oid) in parsed.items()}
    for name, new in changes.items():
        if new is None:
            tree.pop(name, None)
        else:
            tree[name] = new
    return body(tree)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, entries, max_size=12),
       st.dictionaries(names, st.none() | entries, max_size=5))
def test_the_splice_agrees_with_rebuilding_the_whole_tree(tree, changes):
    data = body(tree)
    assert splice_tree(data, 20, changes) == reference(data, changes)


def test_a_name_turning_from_file_to_folder_moves_past_its_neighbours():
    oid = bytes(20)
    data = body({b"a": (0o100644, oid), b"a.b": (0o100644, oid), b"b": (0o100644, oid)})
    out = splice_tree(data, 20, {b"a": (TREE_MODE, oid)})
    assert list(tree_entries(out, 20)) == [b"a.b", b"a", b"b"]


def test_the_result_is_the_tree_git_itself_writes(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    blob = subprocess.run(["git", "-C", str(tmp_path), "hash-object", "-w", "--stdin"],
                          input=b"x", capture_output=True, check=True).stdout.strip()
    raw = bytes.fromhex(blob.decode())
    data = body({b"job-%03d" % i: (0o100644, raw) for i in range(0, 50, 2)})
    out = splice_tree(data, 20, {b"job-007": (0o100644, raw), b"job-010": None})
    listing = b"".join(b"100644 blob %s\t%s\n" % (blob, name) for name in tree_entries(out, 20))
    tree = subprocess.run(["git", "-C", str(tmp_path), "mktree"], input=listing,
                          capture_output=True, check=True).stdout.strip()
    written = subprocess.run(["git", "-C", str(tmp_path), "cat-file", "tree", tree.decode()],
                             capture_output=True, check=True).stdout
    assert written == out


@pytest.mark.parametrize("bad", [b"", b"a/b", b".", b"..", b"a\0"])
def test_a_name_that_is_not_one_component_is_refused(bad):
    with pytest.raises(ValueError):
        splice_tree(b"", 20, {bad: None})


def test_a_torn_tree_is_refused():
    data = body({b"a": (0o100644, bytes(20))})
    with pytest.raises(ValueError):
        splice_tree(data[:-3], 20, {b"b": None})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names, entries, max_size=12), st.dictionaries(names, entries, max_size=12))
def test_new_entries_are_those_the_old_tree_lacks(new, old):
    data, before = body(new), body(old)
    expected = {(name, mode, oid, old.get(name)) for name, (mode, oid) in new.items()
                if old.get(name) != (mode, oid)}
    assert set(new_entries(data, before, 20)) == expected
    # a large tree is kept by its id once cut; asking again by id gives the same answer
    # (the padding's names cannot collide with the few letters above)
    padding = {b"pad-%05d" % i: (0o100644, bytes(20)) for i in range(3000)}
    big_new, big_old = body({**padding, **new}), body({**padding, **old})
    ids = ("new-" + data.hex(), "old-" + before.hex())
    for _ in range(2):
        assert set(new_entries(big_new, big_old, 20, ids)) == expected
    # compared by ids, the new tree is then looked up through the old one's cut: every
    # name, the removed ones too, answers what the new tree's bytes hold
    if data != before:
        for name in {*new, *old, b"pad-00007", b"zz"}:
            want = {**padding, **new}.get(name)
            assert trees.find(ids[0], name, 20) == (True, want)
    # large trees are compared by their common start and end: the entries that differ
    # sit between two paddings ("0..." sorts after "-" and ".", before the letters)
    around = {b"0pad-%05d" % i: (0o100644, bytes(20)) for i in range(3000)}
    big_new, big_old = body({**around, **padding, **new}), body({**around, **padding, **old})
    assert set(new_entries(big_new, big_old, 20)) == expected
    assert set(new_entries(big_old, big_new, 20)) == {
        (name, mode, oid, new.get(name)) for name, (mode, oid) in old.items()
        if new.get(name) != (mode, oid)}


@st.composite
def large_tree_pairs(draw: st.DrawFn) -> tuple[dict, dict]:
    """An old large tree (4,000 entries whose ids repeat from a small pool, so that
    neighbours share bytes) and a new one with a few entries dropped, changed or added
    anywhere: the common start and end of the two bodies may fall inside entries."""
    pool = draw(st.lists(entries, min_size=1, max_size=40))
    names = [b"job-%05d" % i for i in range(4000)]
    old = {n: pool[i % len(pool)] for i, n in enumerate(names)}
    new = dict(old)
    for at, choice in draw(st.lists(st.tuples(st.integers(0, len(names) - 1),
                                              st.sampled_from(["drop", "change", "add"])),
                                    max_size=6)):
        name = names[at]
        if choice == "drop":
            new.pop(name, None)
        elif choice == "change":
            mode, oid = new.get(name, pool[0])
            new[name] = (mode, oid[:-1] + bytes([(oid[-1] + 1) % 256]))
        else:
            new[name + b"x"] = pool[at % len(pool)]
    return old, new


@settings(max_examples=100, deadline=None)
@given(large_tree_pairs())
def test_new_entries_of_large_trees_that_differ_anywhere(pair):
    old, new = pair
    expected = {(name, mode, oid, old.get(name)) for name, (mode, oid) in new.items()
                if old.get(name) != (mode, oid)}
    assert set(new_entries(body(new), body(old), 20)) == expected


def test_a_common_end_that_starts_inside_an_old_entry_is_not_taken_for_shared_entries():
    """The last 29 bytes of both bodies are alike, but in the old tree they are the end of
    one entry (a name holding "100644 c"), not an entry of their own."""
    oid, other = bytes(range(20)), bytes(range(1, 21))
    new = {b"P": (0o100644, other), b"c": (0o100644, oid)}
    old = {b"Q100644 c": (0o100644, oid)}
    data, before = body(new), body(old)
    assert data.endswith(b"100644 c\0" + oid) and before.endswith(b"100644 c\0" + oid)
    expected = {(b"P", 0o100644, other, None), (b"c", 0o100644, oid, None)}
    assert set(new_entries(data, before, 20)) == expected
    # and the other way round: the old body's last entry lies in the common end, where
    # the new body has the end of one entry
    assert set(new_entries(before, data, 20)) == {(b"Q100644 c", 0o100644, oid, None)}


@settings(max_examples=100, deadline=None)
@given(large_tree_pairs())
def test_a_large_tree_cut_from_the_cut_of_its_previous_version_is_cut_right(pair):
    """A large tree is cut from the last one kept where the two are alike: the result
    must be what cutting it whole gives, entries and offsets."""
    old, new = pair
    before, after = body(old), body(new)
    trees._cut(before, 20, hashlib.sha1(b"old" + before).hexdigest())
    cut = trees._cut(after, 20, hashlib.sha1(b"new" + after).hexdigest())
    whole = trees._whole_entry(20).findall(after)
    assert list(cut.entries) == whole
    assert cut.starts == list(itertools.accumulate(map(len, whole), initial=0))


@st.composite
def splice_chains(draw: st.DrawFn) -> tuple[dict, list[dict]]:
    """A large tree and a few rounds of changes, each spliced onto the last result."""
    pool = draw(st.lists(entries, min_size=1, max_size=8))
    first = {b"job-%04d" % i: pool[i % len(pool)] for i in range(0, 6000, 2)}  # kept: large
    rounds = draw(st.lists(st.dictionaries(
        st.integers(0, 6010).map(lambda i: b"job-%04d" % i), st.none() | entries, max_size=3),
        min_size=1, max_size=6))
    return first, rounds


def _id(data: bytes) -> str:
    return hashlib.sha1(b"tree %d\0" % len(data) + data).hexdigest()


@settings(max_examples=60, deadline=None)
@given(splice_chains(), st.lists(st.integers(0, 6010), min_size=1, max_size=20))
def test_a_lookup_through_remembered_splices_agrees_with_the_whole_tree(chain, asked):
    """A tree made by splices is looked up without its bytes: each name is answered by
    the last splice that changed it, or by the cut of the tree the chain started from;
    the answer must be the entry the final tree's bytes hold."""
    first, rounds = chain
    data = body(first)
    base = _id(data)
    assert trees.find(_id(data + b"?"), b"job-0000", 20) == (False, None)  # unknown tree
    trees.keep(base, data, 20)
    tip = base
    for changes in rounds:
        out = splice_tree(data, 20, changes)  # no id: only the first tree's cut is kept
        made = _id(out)
        trees.remember_splice(made, tip, changes)
        data, tip = out, made
    final = tree_entries(data, 20)
    changed = {name for changes in rounds for name in changes}
    for name in sorted(changed) + [b"job-%04d" % number for number in asked]:
        known, found = trees.find(tip, name, 20)
        assert known
        expected = final.get(name)
        assert found == (None if expected is None
                         else (expected[0], bytes.fromhex(expected[1])))
