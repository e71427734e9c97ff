"""``done.txt`` in sealed parts: a finish writes a small ``done.txt`` however many jobs
are done, a part once written stays as it is, and a reader of the parts and ``done.txt``
gets every line, in order."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distribute.core import ledger as ledger_module
from distribute.core.ledger import (
    DONE,
    DONE_PARTS,
    RUNNING,
    Ledger,
    parse_ledger_text,
    part_number,
    part_path,
    parts_in_order,
)

SMALL = 3  # lines per part in these tests


def read(files: dict[str, bytes]) -> Ledger:
    """The ledger a reader of ``files`` (path: contents) sees, parts included."""
    names = [p[len(DONE_PARTS) + 1:] for p in files if p.startswith(DONE_PARTS + "/")]
    parts = tuple((f"{DONE_PARTS}/{name}", parse_ledger_text(
        files[f"{DONE_PARTS}/{name}"], name, None)) for name in parts_in_order(names))
    return Ledger.from_files(files, "main", parts)


def apply(files: dict[str, bytes], changes: dict[str, bytes | None]) -> dict[str, bytes]:
    out = dict(files)
    for path, data in changes.items():
        if data is None:
            out.pop(path, None)
        else:
            out[path] = data
    return out


def finish(ledger: Ledger, job: str, token: int) -> Ledger:
    return ledger.claim(job, "w", token).finish(job, "w", token)


def lines(data: bytes) -> list[str]:
    return [line for line in data.decode().split("\n") if line]


# a step: ("finish", _) or ("again", k): take the k-th done job's line out (requeue --done)
STEPS = st.lists(st.one_of(st.tuples(st.just("finish"), st.just(0)),
                           st.tuples(st.just("again"), st.integers(0, 50))),
                 max_size=40)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, whole=st.booleans())
def test_parts_and_done_txt_hold_every_done_job_in_order(steps, whole):
    # whole: write to_files() (a finish's merge); else changed_files() (a claim's commit)
    with mock.patch.object(ledger_module, "DONE_PART_LINES", SMALL):
        files = {RUNNING: b"", DONE: b""}
        expected: list[str] = []
        token = 0
        for kind, k in steps:
            before = read(files)
            assert [e.job for e in before.done] == expected
            if kind == "finish":
                token += 1
                after = finish(before, f"job-{token}", token)
                expected.append(f"job-{token}")
            elif expected:
                gone = expected.pop(k % len(expected))
                after = replace(before, done=tuple(e for e in before.done if e.job != gone))
            else:
                continue
            changes = after.to_files() if whole else after.changed_files(before)
            new_files = apply(files, changes)
            if kind == "finish":  # a part, once written, stays as it is
                assert all(new_files[p] == data for p, data in files.items()
                           if p.startswith(DONE_PARTS + "/"))
            files = new_files
            assert len(lines(files[DONE])) < SMALL
            parts = sorted(p for p in files if p.startswith(DONE_PARTS + "/"))
            assert parts == [part_path(n) for n in range(1, len(parts) + 1)]
            assert all(len(lines(files[p])) == SMALL for p in parts)
            assert [e.job for e in read(files).done] == expected
        assert [e.job for e in read(files).done] == expected


def test_a_finish_writes_a_small_done_txt_and_no_part_until_one_is_full():
    with mock.patch.object(ledger_module, "DONE_PART_LINES", SMALL):
        files = {RUNNING: b"", DONE: b""}
        writes = []
        for token in range(1, 8):
            before = read(files)
            changes = finish(before, f"j{token}", token).changed_files(before)
            writes.append(sorted(changes))
            files = apply(files, changes)
    parts = [DONE_PARTS + "/000001.txt", DONE_PARTS + "/000002.txt"]
    assert writes[0] == [DONE]
    assert writes[2] == [DONE, parts[0]]  # the third line seals the first part
    assert writes[5] == [DONE, parts[1]]
    assert writes[6] == [DONE]
    assert lines(files[DONE]) == ["j7\tworker=w\ttoken=7\tattempt=1"]


def test_a_done_txt_written_by_an_older_version_is_sealed_at_its_next_write():
    old = "".join(f"j{i}\tworker=w\ttoken={i}\n" for i in range(1, 8)).encode()
    with mock.patch.object(ledger_module, "DONE_PART_LINES", SMALL):
        before = read({RUNNING: b"", DONE: old})
        changes = finish(before, "j8", 8).changed_files(before)
        files = apply({RUNNING: b"", DONE: old}, changes)
        assert sorted(p for p in files if p.startswith(DONE_PARTS + "/")) == [
            part_path(1), part_path(2)]
        assert [e.job for e in read(files).done] == [f"j{i}" for i in range(1, 9)]


def test_a_reader_leaves_other_files_in_the_parts_folder_alone():
    files = {RUNNING: b"", DONE: b"b\n", part_path(1): b"a\n", DONE_PARTS + "/README.md": b"x"}
    assert [e.job for e in read(files).done] == ["a", "b"]
    assert part_number("README.md") is None and part_number("000012.txt") == 12
    assert part_number("12.txt") is None and part_number("1234567.txt") == 1234567


def test_is_done_answers_for_jobs_in_sealed_parts():
    with mock.patch.object(ledger_module, "DONE_PART_LINES", SMALL):
        files = {RUNNING: b"", DONE: b""}
        for token in range(1, 11):
            before = read(files)
            files = apply(files, finish(before, f"j{token}", token).changed_files(before))
        ledger = read(files)
        assert all(ledger.is_done(f"j{i}") for i in range(1, 11))
        assert not ledger.is_done("j11")
        assert ledger.served() == {"w": 10}
        with pytest.raises(Exception, match="already done"):
            ledger.claim("j2", "w", 11)


def test_a_claim_on_a_remote_an_older_version_wrote_seals_without_listing_a_job_twice():
    # the claim leaves done.txt's lines alone, yet its commit seals them: done.txt must
    # then be written too, or the sealed lines would be in a part and in done.txt
    old = "".join(f"j{i}\tworker=w\ttoken={i}\n" for i in range(1, 8)).encode()
    with mock.patch.object(ledger_module, "DONE_PART_LINES", SMALL):
        before = read({RUNNING: b"", DONE: old})
        files = apply({RUNNING: b"", DONE: old}, before.claim("j8", "w", 8).changed_files(before))
        assert [e.job for e in read(files).done] == [f"j{i}" for i in range(1, 8)]
        assert lines(files[DONE]) == ["j7\tworker=w\ttoken=7\tattempt=1"]


def test_reading_again_with_the_same_parts_and_a_longer_done_txt_sees_every_line():
    # a worker's reader keeps parsed parts by their ids: its next look passes the very
    # same part objects with a done.txt one line longer, and the whole list is extended
    parts = ((part_path(1), parse_ledger_text(b"a\nb\n", "p", None)),)
    first = Ledger.from_files({RUNNING: b"", DONE: b"c\n"}, "main", parts)
    second = Ledger.from_files({RUNNING: b"", DONE: b"c\nd\n"}, "main", parts)
    third = Ledger.from_files({RUNNING: b"", DONE: b"e\n"}, "main", parts)
    assert [e.job for e in first.done] == ["a", "b", "c"]
    assert [e.job for e in second.done] == ["a", "b", "c", "d"]
    assert [e.job for e in third.done] == ["a", "b", "e"]
    assert second.is_done("d") and not third.is_done("d") and third.is_done("a")
    # and is indexed, so that questions about 100,000 done jobs are not a scan each
    fourth = Ledger.from_files({RUNNING: b"", DONE: b"e\nf\n"}, "main", parts)
    assert ledger_module._indexed(fourth.done, ledger_module._DONE_JOINED) is not None
    # a done.txt without parts, read meanwhile by the same process, keeps its own index
    Ledger.from_files({RUNNING: b"", DONE: b"x\n"}, "main")
    fifth = Ledger.from_files({RUNNING: b"", DONE: b"e\nf\ng\n"}, "main", parts)
    assert ledger_module._indexed(fifth.done, ledger_module._DONE_JOINED) is not None


def test_a_commands_placeholders_know_the_parameters_of_jobs_in_sealed_parts(tmp_path):
    from types import SimpleNamespace

    from distribute.runner import JobRunner

    (tmp_path / "jobs.txt").write_text("seed=3\n")
    (tmp_path / DONE).write_text("seed=2\tworker=w\ttoken=2\n")
    (tmp_path / DONE_PARTS).mkdir()
    (tmp_path / part_path(1)).write_text("lr=0.1,seed=1\tworker=w\ttoken=1\n")
    (tmp_path / DONE_PARTS / "notes.md").write_text("depth=9\n")  # not a part
    runner = JobRunner(SimpleNamespace(path=str(tmp_path)), ["train", "{lr}"],  # type: ignore
                       lambda: None)
    assert runner._sweep_keys() == {"seed", "lr"}
    (tmp_path / part_path(2)).write_text("depth=4\tworker=w\ttoken=4\n")
    assert runner._sweep_keys() == {"seed", "lr", "depth"}
