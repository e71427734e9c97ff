"""Secrets taken out of remote URLs before git sees them (distribute.credentials)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from distribute.credentials import (
    SECRET_ENV,
    git_env,
    git_options,
    private_folder,
    public_url,
    split_secret,
)


@pytest.mark.parametrize(
    ("url", "public", "secret"),
    [
        ("https://alice:s3cret@example.com/r.git", "https://alice@example.com/r.git", "s3cret"),
        ("http://bob:p%40ss%3Aw0rd@127.0.0.1:8080/r.git", "http://bob@127.0.0.1:8080/r.git",
         "p@ss:w0rd"),
        ("https://x-access-token:ghs_abc@github.com/o/r.git",
         "https://x-access-token@github.com/o/r.git", "ghs_abc"),
        ("https://:onlytoken@host/r.git", "https://host/r.git", "onlytoken"),
    ],
)
def test_the_password_leaves_the_url(url, public, secret):
    split = split_secret(url)
    assert (split.public, split.secret) == (public, secret)
    assert secret not in split.public
    assert public_url(url) == public


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/r.git",
        "https://alice@example.com/r.git",
        "ssh://git@host:22/r.git",
        "git@github.com:o/r.git",
        "/srv/remote.git",
        "file:///srv/remote.git",
        "git://127.0.0.1:9418/r.git",
    ],
)
def test_urls_without_a_password_are_kept_as_they_are(url):
    assert split_secret(url).public == url and split_secret(url).secret is None


def test_the_helper_answers_get_with_the_secret_and_ignores_the_rest():
    """Run the helper the way git does: through the shell, with the operation as its
    argument; its text holds no secret, the environment does."""
    options = git_options("pa ss%word")
    assert "pa ss%word" not in " ".join(options)
    helper = options[-1].split("=", 1)[1]
    assert options[1] == "credential.helper="  # the user's helpers are reset first
    assert helper.startswith("!")
    env = {**os.environ, **git_env("pa ss%word")}
    run = lambda op: subprocess.run(  # noqa: E731
        ["/bin/sh", "-c", helper[1:] + ' "$@"', "helper", op], input="protocol=https\n\n",
        capture_output=True, text=True, env=env, check=False,
    ).stdout
    assert run("get") == "password=pa ss%word\n"
    assert run("store") == "" and run("erase") == ""
    assert git_options(None) == [] and git_env(None) == {}
    assert SECRET_ENV in git_env("x")


def test_the_password_goes_with_the_first_request_as_a_header_for_the_remotes_host(
    monkeypatch,
):
    """Read back through git's own config reader: the header is configured for the
    remote's host only, from the environment alone."""
    import base64

    monkeypatch.delenv("GIT_CONFIG_COUNT", raising=False)
    env = git_env("pa:ss", "https://alice@example.com:8443/team/r.git")
    assert env[SECRET_ENV] == "pa:ss" and env["GIT_CONFIG_COUNT"] == "1"

    def header_for(url: str) -> str:
        out = subprocess.run(
            ["git", "config", "--get-urlmatch", "http.extraHeader", url],
            env={**os.environ, **env}, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    expected = "Authorization: Basic " + base64.b64encode(b"alice:pa:ss").decode()
    assert header_for("https://alice@example.com:8443/team/r.git") == expected
    assert header_for("https://example.com:8443/other.git") == expected  # same host
    assert header_for("https://example.org/team/r.git") == ""  # another host: nothing
    assert header_for("https://example.com/team/r.git") == ""  # another port: nothing


def test_the_header_is_added_after_the_callers_own_environment_config(monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    env = git_env("pw", "http://bob@127.0.0.1:8080/r.git")
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_2"] == "http.http://127.0.0.1:8080/.extraHeader"
    assert "GIT_CONFIG_KEY_0" not in env and "GIT_CONFIG_KEY_1" not in env


@pytest.mark.parametrize(
    "url",
    [None, "https://example.com/r.git", "ssh://git@host/r.git", "git@github.com:o/r.git",
     "/srv/remote.git"],
)
def test_no_header_without_a_user_name_or_for_other_schemes(url):
    """Without a user name the helper answers as before (git asks it after a 401)."""
    assert git_env("pw", url) == {SECRET_ENV: "pw"}


def test_private_folders_are_for_this_user_only(tmp_path):
    made = private_folder(tmp_path / "a" / "b")
    for folder in (tmp_path / "a", made):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    private_folder(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
