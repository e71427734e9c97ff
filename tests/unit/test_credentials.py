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


def test_private_folders_are_for_this_user_only(tmp_path):
    made = private_folder(tmp_path / "a" / "b")
    for folder in (tmp_path / "a", made):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    private_folder(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
