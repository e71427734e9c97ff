"""Recognising Git LFS pointers (distribute.transport.lfs.parse_pointer)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from distribute.transport.lfs import LfsPointer, parse_pointer

OID = hashlib.sha256(b"checkpoint").hexdigest()
POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:" + OID.encode() + b"\nsize 12345\n")


def test_a_pointer_names_its_object():
    assert parse_pointer(POINTER) == LfsPointer(OID, 12345)


def test_extra_keys_are_allowed():
    extended = POINTER.replace(b"oid ", b"ext-0-foo sha256:" + b"0" * 64 + b"\noid ")
    assert parse_pointer(extended) == LfsPointer(OID, 12345)


def test_near_misses_are_files():
    assert parse_pointer(POINTER.rstrip(b"\n")) is None  # no final newline
    assert parse_pointer(b"version 1\n" + POINTER) is None  # version not first
    assert parse_pointer(POINTER.replace(b"sha256:", b"md5:")) is None
    assert parse_pointer(POINTER.replace(OID.encode(), OID.upper().encode())) is None
    assert parse_pointer(POINTER.replace(b"size 12345", b"size -1")) is None
    assert parse_pointer(POINTER.replace(b"size 12345", b"size 012")) is None
    assert parse_pointer(POINTER + b"x" * 2000 + b"\n") is None  # too large to be one


@given(st.binary(max_size=300))
def test_random_bytes_are_not_pointers(data: bytes):
    assert parse_pointer(data) is None


@given(st.binary(min_size=1, max_size=2000))
def test_every_content_round_trips_through_the_pointer_git_lfs_would_write(data: bytes):
    oid = hashlib.sha256(data).hexdigest()
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    assert parse_pointer(text.encode()) == LfsPointer(oid, len(data))
