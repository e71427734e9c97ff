import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distribute.core import names
from distribute.core.errors import InvalidName
from distribute.core.names import (
    MAX_COMPONENT,
    check_name,
    decode_component,
    encode_component,
    is_valid_ref_component,
    job_branch,
    job_dir,
    scrub_url,
)

NASTY = [
    "lr 0.1",
    "a/b/c",
    "..",
    "../../etc/passwd",
    "ünïcødé-ジョブ",
    "-rf",
    "--upload-pack=touch x",
    "x@{1}",
    "name.lock",
    "a" * 300,
    ".hidden",
    "trailing.",
    "a..b",
    "~^:?*[\\",
    "%41",
    "@",
]


@given(st.text(min_size=1))
def test_encoding_round_trips_or_is_hashed(name):
    enc = encode_component(name)
    if "%%" in enc:
        assert len(enc.encode()) <= MAX_COMPONENT
    else:
        assert decode_component(enc) == name


@given(st.one_of(st.text(min_size=1),
                 st.text(alphabet="aZ09_-.lock", min_size=1, max_size=MAX_COMPONENT + 2)))
def test_the_fast_path_for_plain_names_encodes_as_the_escaping_path_does(name):
    assert encode_component(name) == names._escaped(name)


@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F))))
def test_the_fast_check_of_ascii_names_finds_what_the_slow_one_finds(name):
    assert names.forbidden_character(name) == names._forbidden_slowly(name)


@pytest.mark.parametrize("name", ["a", "lr0.1", "run_3-b", "x" * MAX_COMPONENT, "a.lockx"])
def test_plain_names_encode_to_themselves(name):
    assert encode_component(name) == name


@given(st.text(min_size=1), st.text(min_size=1))
def test_encoding_is_injective(a, b):
    if a != b:
        assert encode_component(a) != encode_component(b)


@given(st.text(min_size=1))
def test_encoding_is_a_valid_ref_and_path_component(name):
    enc = encode_component(name)
    assert is_valid_ref_component(enc)
    assert "/" not in enc and enc not in (".", "..")
    assert not enc.startswith(("-", "."))
    assert len(enc.encode()) <= MAX_COMPONENT


@pytest.mark.parametrize("name", NASTY)
def test_git_itself_accepts_the_encoded_refs(name):
    ref = "refs/heads/" + job_branch("worker/one", name, 7)
    out = subprocess.run(["git", "check-ref-format", ref], capture_output=True)
    assert out.returncode == 0, ref


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_git_check_ref_format_agrees_on_random_names(name):
    ref = "refs/heads/" + job_branch("w", name, 1)
    assert subprocess.run(["git", "check-ref-format", ref]).returncode == 0


def test_long_names_are_hashed_and_distinct():
    a, b = "x" * 300, "x" * 299 + "y"
    assert encode_component(a) != encode_component(b)
    assert "%%" in encode_component(a)
    with pytest.raises(ValueError):
        decode_component(encode_component(a))


BAD_NAMES = ["", "a\nb", "a\tb", "a\rb", "a\x00b", "a\u2028b", " lead", "trail "]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_a_ledger_cannot_hold_are_refused(bad):
    with pytest.raises(InvalidName):
        check_name(bad)


def test_refusal_names_the_character():
    with pytest.raises(InvalidName, match="newline"):
        check_name("a\nb")
    with pytest.raises(InvalidName, match="tab"):
        check_name("a\tb")


@pytest.mark.parametrize("name", NASTY)
def test_good_nasty_names_are_accepted(name):
    assert check_name(name) == name


def test_job_dir_stays_inside():
    for name in NASTY:
        d = job_dir(name)
        parts = d.split("/")
        assert parts[0] == "updates" and len(parts) == 2
        assert parts[1] not in ("", ".", "..")


def test_branch_has_token_and_prefix():
    assert job_branch("w1", "lr=0.1", 12) == "jobs/w1/lr%3D0.1/12"


@pytest.mark.parametrize(
    "text",
    [
        "https://user:s3cret@example.com/r.git",
        "fatal: unable to access 'https://tok3n@host/x.git/': failed",
        "ssh://git:pa55@host:22/x",
        "Authorization: Bearer abcdef",
    ],
)
def test_scrub_url_removes_credentials(text):
    out = scrub_url(text)
    assert not re.search(r"s3cret|tok3n|pa55|abcdef", out)
    assert "***" in out


def test_scrub_keeps_user_names_that_are_not_secrets():
    assert scrub_url("ssh://alice@host:22/x.git") == "ssh://alice@host:22/x.git"
    assert scrub_url("https://alice:s3cret@host/x.git") == "https://alice:***@host/x.git"
    assert scrub_url("https://tok3n@host/x.git") == "https://***@host/x.git"


def test_scrub_keeps_plain_urls():
    assert scrub_url("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert scrub_url("https://example.com/a.git") == "https://example.com/a.git"


def test_a_view_keeps_the_raw_folder_of_a_name_that_encodes_differently():
    from distribute.core.names import view_folders

    assert view_folders(None) == []
    assert view_folders("plain-1") == ["plain-1"]
    assert view_folders("lr=0.1 [a]*?!#\\") == [
        "lr%3D0.1%20%5Ba%5D%2A%3F%21%23%5C", "lr=0.1 [a]*?!#\\"]
    # a name with a slash is nested folders, not one: only its encoded folder is kept
    assert view_folders("a/b") == ["a%2Fb"]
    assert view_folders("..") == ["%2E%2E"]
