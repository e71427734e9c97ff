"""Job and worker names: what a ledger line can hold, and how names become refs and paths.

Theory of operation
-------------------
A name is any text a ledger line can hold: non-empty, no control characters
(tab and newline separate fields and lines), no line or paragraph separators,
no leading or trailing white space.  Everything else -- spaces, slashes,
``..``, unicode, a leading ``-``, ``@{``, a ``.lock`` suffix -- is a valid
name and must work end to end.

Names become one ref component and one path component through
:func:`encode_component`, a percent-encoding that is injective (it has an
exact inverse, :func:`decode_component`) and whose output always passes
``git check-ref-format``'s rules for one component and is a safe single path
component (no ``/``, never ``.`` or ``..``, never a leading ``.`` or ``-``).
Very long encodings are shortened to a prefix plus ``%%`` plus a SHA-256
digest; ``%%`` never occurs in a short encoding, so the two forms cannot
collide, and file systems' 255-byte name limit is respected.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from distribute.core.errors import InvalidName

#: Longest encoded component kept as is (bytes); longer ones are hashed.
MAX_COMPONENT = 160
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

LOCK_REF = "refs/distribute/lock"
WORKERS_PREFIX = "refs/distribute/workers/"
#: Where a claim that hands a worker a job says so (:func:`handed_ref`).
HANDED_PREFIX = "refs/distribute/handed/"
JOB_BRANCH_PREFIX = "jobs/"


def check_name(name: str, what: str = "job") -> str:
    """Return ``name`` if a ledger line can hold it.

    Raises:
        InvalidName: with the reason and the offending character.
    """
    if not isinstance(name, str):
        raise InvalidName(f"{what} name must be a string, got {type(name).__name__}", name=name)
    if name == "":
        raise InvalidName(f"{what} name is empty", name=name)
    bad = forbidden_character(name)
    if bad is not None:
        raise InvalidName(
            f"{what} name {name!r} contains {bad}; ledgers keep one {what} per "
            "line with tab-separated fields, so names may not contain tabs, newlines or "
            "other control characters",
            name=name,
        )
    if name != name.strip():
        raise InvalidName(
            f"{what} name {name!r} begins or ends with white space; strip it first", name=name
        )
    return name


#: The characters of :data:`_FORBIDDEN_CATEGORIES` that ASCII holds: its control characters.
_ASCII_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def forbidden_character(name: str) -> str | None:
    """The first character of ``name`` that no name may hold (a control character, a
    line or paragraph separator), described in words; ``None`` when there is none."""
    if name.isascii():  # most names: one search in C instead of a lookup per character
        found = _ASCII_FORBIDDEN.search(name)
        return _describe(found.group()) if found else None
    return _forbidden_slowly(name)


def _forbidden_slowly(name: str) -> str | None:
    """:func:`forbidden_character` character by character (any name)."""
    for ch in name:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return _describe(ch)
    return None


def _describe(ch: str) -> str:
    named = {"\n": "a newline", "\t": "a tab", "\r": "a carriage return", "\x00": "a NUL byte"}
    return named.get(ch, f"the character U+{ord(ch):04X}")


#: Names that encode to themselves: safe characters only, no leading ``.`` or ``-``,
#: no ``..``, no trailing ``.`` or ``.lock``, and short.  Most job names are such.
_PLAIN = re.compile(r"(?!.*\.\.)(?!.*\.lock$)[A-Za-z0-9_][A-Za-z0-9_.-]*(?<!\.)")


def encode_component(name: str) -> str:
    """Encode ``name`` as one ref component and one path component.

    Letters, digits, ``_``, ``-`` and ``.`` stay; every other byte of the
    UTF-8 form becomes ``%XX``.  A ``.`` that would start the component,
    follow another ``.``, end it, or begin a trailing ``.lock`` is escaped,
    as is a leading ``-``.
    """
    if len(name) <= MAX_COMPONENT and _PLAIN.fullmatch(name):
        return name
    return _escaped(name)


def _escaped(name: str) -> str:
    """:func:`encode_component` byte by byte (any name)."""
    out: list[str] = []
    raw = name.encode("utf-8")
    for i, byte in enumerate(raw):
        ch = chr(byte)
        escape = ch not in _SAFE
        if ch == "." and (i == 0 or raw[i - 1 : i] == b"." or i == len(raw) - 1):
            escape = True
        if ch == "-" and i == 0:
            escape = True
        out.append(f"%{byte:02X}" if escape else ch)
    encoded = "".join(out)
    if encoded.endswith(".lock"):
        encoded = encoded[: -len(".lock")] + "%2Elock"
    if len(encoded) > MAX_COMPONENT:
        digest = hashlib.sha256(raw).hexdigest()
        prefix = encoded[: MAX_COMPONENT - len(digest) - 2]
        # never cut an escape in half
        cut = prefix.rfind("%", len(prefix) - 2)
        if cut != -1:
            prefix = prefix[:cut]
        if prefix.endswith("."):
            prefix = prefix[:-1] + "_"
        encoded = f"{prefix}%%{digest}"
    return encoded


_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def decode_component(component: str) -> str:
    """Inverse of :func:`encode_component` for short (unhashed) components.

    Raises:
        ValueError: for a hashed component (the name is not recoverable) or
            text that no name encodes to.
    """
    if "%%" in component:
        raise ValueError(f"{component!r} is a hashed long name; read the name from the ledger")
    data = bytearray()
    i = 0
    while i < len(component):
        ch = component[i]
        if ch == "%":
            m = _ESCAPE.match(component, i)
            if not m:
                raise ValueError(f"bad escape in {component!r}")
            data.append(int(m.group(1), 16))
            i += 3
        else:
            data.extend(ch.encode("ascii"))
            i += 1
    return data.decode("utf-8")


def is_valid_ref_component(component: str) -> bool:
    """The rules of ``git check-ref-format`` for one ``/``-free component."""
    if not component or component.startswith(".") or component.endswith("."):
        return False
    if component.endswith(".lock") or ".." in component or "@{" in component:
        return False
    if component == "@":
        return False
    return not any(ord(c) < 0x20 or c in " ~^:?*[\\\x7f/" for c in component)


def job_branch(worker: str, job: str, token: int) -> str:
    """Short name of a job's branch: ``jobs/<worker>/<job>/<token>``.

    The fencing token of the claim makes every holding's branch new, so a
    retried or requeued job never collides with the branch of an earlier
    attempt, and the branch names the ledger line it belongs to.
    """
    return f"{JOB_BRANCH_PREFIX}{encode_component(worker)}/{encode_component(job)}/{int(token)}"


def job_branch_ref(worker: str, job: str, token: int) -> str:
    return "refs/heads/" + job_branch(worker, job, token)


def worker_ref(worker: str) -> str:
    """The worker's liveness ref, which only that worker writes."""
    return WORKERS_PREFIX + encode_component(worker)


def handed_ref(worker: str) -> str:
    """The ref a claim that hands ``worker`` a job moves (to the claim's commit), in the
    same push: a peek, which lists ``refs/distribute/``, tells that worker it has a job
    to take up, and everyone else that it has not."""
    return HANDED_PREFIX + encode_component(worker)


#: The folder holding one folder per job (:func:`job_dir`).
JOBS_FOLDER = "updates"


def job_dir(job: str) -> str:
    """Relative folder where a job's updates belong: ``updates/<encoded job>``."""
    return f"{JOBS_FOLDER}/{encode_component(job)}"


def view_folders(job: str | None) -> list[str]:
    """The folders of ``updates/`` a worker's working tree holds while it runs ``job``
    (none between jobs): the job's own, ``encode_component(job)``, and, for a name that
    encodes to something else and is one path component, the raw name too, which code
    in the original project's style builds its folder from (``updates/<job>``).
    """
    if job is None:
        return []
    folders = [encode_component(job)]
    if folders[0] != job and "/" not in job and job not in (".", ".."):
        folders.append(job)
    return folders


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_HEADER = re.compile(r"(?i)(authorization:\s*)(\S+(\s+\S+)?)")


def _scrub_userinfo(m: re.Match[str]) -> str:
    scheme, info = m.group("scheme"), m.group("userinfo")
    user, colon, _ = info.partition(":")
    if colon:  # user:secret -- the user name helps, the secret never shows
        return f"{scheme}{user}:***@"
    if scheme.lower().rstrip(":/") in ("ssh", "git+ssh", "ssh+git"):
        return m.group(0)  # an ssh user name is no secret, and often what is wrong
    return f"{scheme}***@"  # https://TOKEN@host: the user part may be the token itself


def scrub_url(text: str) -> str:
    """Remove credentials from ``text``: the password of ``user:password@`` in URLs, a
    lone user part of an http(s) URL (hosts take tokens there), auth headers.  The user
    name of an ssh URL stays."""
    text = _USERINFO.sub(_scrub_userinfo, text)
    return _HEADER.sub(lambda m: m.group(1) + "***", text)
