"""The ledger's parse and render memos give what a full parse or render gives.

A claim or finish must not re-read all of ``done.txt`` (a sweep's history), so the
last text parsed per file and the last texts rendered are remembered.  These tests
compare the memoised functions with the plain ones on growing, shrinking and edited
ledgers; a memo that returned a stale or partial result fails them.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distribute.core import ledger as ledger_module
from distribute.core.errors import RemoteStateError
from distribute.core.ledger import (
    Entry,
    Ledger,
    format_ledger_text,
    format_line,
    parse_ledger_text,
)


def plain_parse(data: bytes, source: str) -> tuple[Entry, ...]:
    return ledger_module._parse_lines(data, source, first=1)


def plain_render(entries: tuple[Entry, ...]) -> bytes:
    return "".join(format_line(e) + "\n" for e in entries).encode()


jobs = st.integers(0, 10**6).map(lambda n: f"job-{n}")
entry_lists = st.lists(st.builds(Entry, job=jobs, worker=st.sampled_from(["", "w1", "w2"]),
                                 token=st.integers(0, 99)), max_size=12)


@given(st.lists(st.tuples(st.sampled_from(["grow", "replace", "edit", "same"]), entry_lists),
                min_size=1, max_size=8))
def test_parsing_a_ledger_that_grows_or_changes_matches_a_full_parse(steps):
    text = b""
    for kind, more in steps:
        added = plain_render(tuple(more))
        if kind == "grow":
            text += added
        elif kind == "replace":
            text = added
        elif kind == "edit" and text:
            text = b"x" + text[1:]  # a change inside the part already parsed
        assert parse_ledger_text(text, "memo.txt") == plain_parse(text, "memo.txt")


def test_a_text_that_only_grew_is_parsed_from_where_the_last_one_ended(monkeypatch):
    base = plain_render(tuple(Entry(job=f"j{i}", worker="w", token=i) for i in range(50)))
    parse_ledger_text(base, "grow.txt")
    seen: list[bytes] = []
    real = ledger_module._parse_lines

    def spy(data: bytes, source: str, first: int) -> tuple[Entry, ...]:
        seen.append(data)
        return real(data, source, first)

    monkeypatch.setattr(ledger_module, "_parse_lines", spy)
    tail = b"j50\tworker=w\ttoken=50\n"
    assert parse_ledger_text(base + tail, "grow.txt")[-1].job == "j50"
    assert seen == [tail]
    assert parse_ledger_text(base + tail, "grow.txt")[-1].job == "j50"
    assert seen == [tail], "an unchanged text was parsed again"


def test_damage_in_the_new_part_names_its_true_line_number():
    base = b"a\nb\nc\n"
    parse_ledger_text(base, "lines.txt")
    with pytest.raises(RemoteStateError, match=r"lines\.txt line 5"):
        parse_ledger_text(base + b"d\ne\tattempt=zero\n", "lines.txt")


def test_a_text_without_a_final_newline_is_not_extended_by_guess():
    parse_ledger_text(b"a\nb", "partial.txt")
    # "b" became "bc": a prefix in bytes, but not a line-wise extension
    assert [e.job for e in parse_ledger_text(b"a\nbc\n", "partial.txt")] == ["a", "bc"]


@given(st.lists(st.tuples(st.sampled_from(["append", "drop", "new"]), entry_lists),
                min_size=1, max_size=8))
def test_rendering_matches_a_plain_render(steps):
    entries: tuple[Entry, ...] = ()
    for kind, more in steps:
        if kind == "append":
            entries = (*entries, *more)
        elif kind == "drop":
            entries = entries[: len(entries) // 2]
        else:
            entries = tuple(more)
        assert format_ledger_text(entries) == plain_render(entries)


def test_equal_but_different_entries_are_rendered_from_their_own_fields():
    first = (Entry(job="a", worker="w", token=1),)
    format_ledger_text(first)
    other = (Entry(job="a", worker="w", token=2),)
    assert format_ledger_text(other) == plain_render(other)


def scan_served(entries) -> dict[str, int]:
    served: dict[str, int] = {}
    for e in entries:
        served[e.worker] = max(served.get(e.worker, -1), e.token)
    return served


few_jobs = st.sampled_from(["j1", "j2", "j3", "j4"])  # so a job recurs, as a re-run does
few_entries = st.lists(st.builds(Entry, job=few_jobs, worker=st.sampled_from(["w1", "w2"]),
                                 token=st.integers(0, 99)), max_size=6)


@given(st.lists(st.tuples(st.sampled_from(["grow", "grow", "replace", "edit"]), few_entries),
                min_size=1, max_size=8),
       st.lists(few_jobs, max_size=4))
def test_the_index_kept_with_the_parse_answers_as_a_scan_does(steps, asked):
    """Every ledger parsed so far (the index grew since, in place) and the latest one get
    the answers a scan of their own entries gives."""
    text, seen = b"", []
    for kind, more in steps:
        added = plain_render(tuple(more))
        text = text + added if kind == "grow" else added if kind == "replace" else (
            b"x" + text[1:] if text else text)
        try:
            seen.append(parse_ledger_text(text, "index.txt"))
        except RemoteStateError:
            continue  # the edit damaged a line: nothing parsed, nothing indexed
        for entries in seen:
            for job in [*asked, *(e.job for e in entries[:3])]:
                assert ledger_module._holds(entries, "index.txt", job) == any(
                    e.job == job for e in entries)
        latest = seen[-1]
        found = ledger_module._indexed(latest, "index.txt")
        assert found is not None and found[1] == len(latest)
        assert found[0].served == scan_served(latest)


def test_a_ledger_not_from_the_last_parse_is_scanned():
    parse_ledger_text(plain_render((Entry(job="a", worker="w", token=1),)), "other.txt")
    made = (Entry(job="b", worker="w", token=2),)  # built, never parsed
    assert ledger_module._indexed(made, "other.txt") is None
    assert ledger_module._holds(made, "other.txt", "b")
    assert not ledger_module._holds(made, "other.txt", "a")


@given(st.lists(few_entries, min_size=1, max_size=5), few_entries, few_entries,
       st.lists(few_jobs, max_size=4))
def test_a_ledger_that_extends_the_parsed_one_is_answered_from_its_index(
        grown, extra, running, asked):
    """A view with parked finishes folded in is the ledger parsed from the main branch
    plus a few done lines of its own: the index answers for the part it shares with
    the parse, and only the lines past it are scanned.  At 100,000 done jobs a scan of
    the whole costs a worker tens of milliseconds per question."""
    text = b""
    for more in grown:  # the parse the index grew with, as other workers' finishes land
        text += plain_render(tuple(more))
        parsed = parse_ledger_text(text, "extended.txt")
    view = (*parsed, *extra)
    found = ledger_module._indexed(view, "extended.txt")
    assert found is not None and found[1] == len(parsed)
    for job in [*asked, *(e.job for e in extra)]:
        assert ledger_module._holds(view, "extended.txt", job) == any(e.job == job for e in view)
    ledger = Ledger(done=view, running=tuple(running))
    # the index is kept under done.txt's own name for a ledger read without parts
    parse_ledger_text(text, ledger_module.DONE)
    assert ledger.served() == scan_served((*view, *running))
    for job in [*asked, *(e.job for e in extra)]:
        assert ledger.is_done(job) == any(e.job == job for e in view)


def test_a_ledger_that_differs_inside_the_parsed_part_is_scanned():
    parsed = parse_ledger_text(plain_render(tuple(
        Entry(job=f"j{i}", worker="w", token=i) for i in range(5))), "inside.txt")
    edited = (*parsed[:2], Entry(job="x", worker="v", token=9), *parsed[3:])
    assert ledger_module._indexed(edited, "inside.txt") is None
    assert ledger_module._holds(edited, "inside.txt", "x")
    assert not ledger_module._holds(edited, "inside.txt", "j2")
