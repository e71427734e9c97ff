"""Secrets in remote URLs: kept in memory, handed to git on request, never stored.

Theory of operation
-------------------
A URL such as ``https://user:PASSWORD@host/repo.git`` carries a secret.  Given
to git as it is, the secret ends up in the clone's ``.git/config`` (readable
by every local user) and on the command lines of ``git-remote-https`` and
``send-pack`` (visible in ``ps``).  So Distribute splits such a URL in two
before anything is written or started (:func:`split_secret`):

* the *public* URL keeps the user name and drops the password; it is what git
  stores, sees and prints, and what names a worker's default local copy, so a
  changed password keeps the copy;
* the *secret* stays in this process's memory.  Each git command that may
  talk to the remote gets it through a credential helper named on git's own
  command line (:func:`git_options`), a shell function that prints the secret
  from an environment variable set for that git process alone
  (:func:`git_env`).  Neither the helper's text nor any command line holds the
  secret, and a process's environment is readable only by its owner.  The
  helper list is reset first, so a password the user wrote in the URL wins
  over a stale one in a credential store.  The same environment gives git the
  password as a header for the remote's host, sent with the first request, so
  that git does not wait for two refusals before asking the helper.

Only ``http`` and ``https`` URLs carry passwords this way; an ssh URL's user
name is no secret and stays where it is.  A local copy made by an earlier
version, whose config still holds a password, is cleaned when it is opened
(:func:`public_url` of what it holds).
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

#: The environment variable through which one git process gets the secret.
SECRET_ENV = "DISTRIBUTE_GIT_PASSWORD"  # noqa: S105 - a variable name, not a password
#: The credential helper: answers ``get`` with the password from SECRET_ENV, and
#: ignores ``store`` and ``erase`` (nothing is ever written).
HELPER = '!f() { test "$1" = get && printf "password=%s\\n" "$' + SECRET_ENV + '"; }; f'
_SECRET_SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class SplitURL:
    """A remote URL as git may see it, and the secret it carried (``None``: none)."""

    public: str
    secret: str | None = None


def split_secret(url: str) -> SplitURL:
    """Take the password out of an ``http(s)://user:password@host/...`` URL.

    Anything else (ssh, a path, ``git://``, a URL with a user name only) comes
    back unchanged with no secret.
    """
    login = _http_login(url)
    if login is None or login.password is None:
        return SplitURL(url)
    parts, user, hostport = login.parts, login.user, login.hostport
    netloc = f"{user}@{hostport}" if user else hostport
    public = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return SplitURL(public, unquote(login.password))


@dataclass(frozen=True, slots=True)
class _Login:
    """The user part of an http(s) URL, as written (still %-encoded)."""

    parts: SplitResult
    user: str
    password: str | None  # None: no colon, a user name only
    hostport: str


def _http_login(url: str) -> _Login | None:
    """The user part of an http(s) URL that has one; ``None`` for anything else."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in _SECRET_SCHEMES or "@" not in parts.netloc:
        return None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return _Login(parts, user, password if colon else None, hostport)


def public_url(url: str) -> str:
    """``url`` without its password (see :func:`split_secret`)."""
    return split_secret(url).public


def git_config(secret: str | None) -> list[str]:
    """The ``name=value`` settings that hand git ``secret`` when it asks (none without
    one): the helpers configured elsewhere are cleared, then ours is named."""
    if not secret:
        return []
    return ["credential.helper=", f"credential.helper={HELPER}"]


def git_options(secret: str | None) -> list[str]:
    """git's global options for :func:`git_config`: ``-c`` before each setting."""
    return [arg for setting in git_config(secret) for arg in ("-c", setting)]


def git_env(secret: str | None, url: str | None = None) -> dict[str, str]:
    """The environment entries for one git process that needs ``secret``.

    With the remote's public ``url`` (``http(s)://user@host/...``), they also set
    ``http.<scheme>://<host>/.extraHeader`` to a basic ``Authorization`` header, in
    git's environment-only configuration (``GIT_CONFIG_COUNT``, after any entries the
    caller's environment has): git then sends the password with its first request
    instead of after two refusals (401) per command, which halves the requests a
    hosted remote sees and saves two round trips per git command.  Scoped to the
    remote's host, so no other host gets it; a refused header falls back to the
    credential helper, which says the same.
    """
    if not secret:
        return {}
    env = {SECRET_ENV: secret}
    header = _auth_header(url, secret)
    if header is not None:
        key, value = header
        try:
            count = max(0, int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0))
        except ValueError:
            count = 0  # git refuses such a count itself, and says so
        env.update({
            "GIT_CONFIG_COUNT": str(count + 1),
            f"GIT_CONFIG_KEY_{count}": key,
            f"GIT_CONFIG_VALUE_{count}": value,
        })
    return env


def _auth_header(url: str | None, secret: str) -> tuple[str, str] | None:
    """The config key and value of the ``Authorization`` header for ``url`` (see
    :func:`git_env`); ``None`` for a URL that is not http(s) or names no user."""
    login = _http_login(url) if url is not None else None
    if login is None or not login.user or not login.hostport:
        return None
    token = base64.b64encode(f"{unquote(login.user)}:{secret}".encode()).decode("ascii")
    key = f"http.{login.parts.scheme.lower()}://{login.hostport}/.extraHeader"
    return key, f"Authorization: Basic {token}"


def user_temp_folder(name: str) -> Path:
    """``<temp>/distribute-<uid>/<name>``: where this user's processes on this machine
    share small files (not made here; :func:`private_folder` makes it private)."""
    return Path(tempfile.gettempdir()) / f"distribute-{os.getuid()}" / name


def private_folder(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and missing parents) readable by this user only, and return it.

    A folder that exists already is tightened to 0700 too: local copies hold a
    job's results and the remote's URL, which are nobody else's business.
    """
    folder = Path(path)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for made in [*missing, folder]:
        os.chmod(made, 0o700)
    return folder


__all__ = [
    "HELPER",
    "SECRET_ENV",
    "SplitURL",
    "git_config",
    "git_env",
    "git_options",
    "private_folder",
    "user_temp_folder",
    "public_url",
    "split_secret",
]
