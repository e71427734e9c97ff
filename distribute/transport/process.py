"""How the git transport starts git: one function, :func:`_execute`, starts every process.

Theory of operation
-------------------
Every git command of :mod:`distribute.transport.git` and of the modules it is
made of (:mod:`.repository`, :mod:`.direct_remote`, :mod:`.local_copy`) is
started by :func:`_execute` (the one exception: GitPython's persistent
``cat-file --batch``, see :meth:`~.repository._Repository.read_object`, which
gets the same options and environment), with an explicit argument list
(never a shell) and ``-c core.hooksPath=/dev/null -c core.fsmonitor=false``
in front.  Its
environment is this process's with fixed values on top (:data:`_ENV`, which
every caller passes): no terminal or askpass prompts, ``LC_ALL=C`` so
messages can be parsed, and a fixed identity (:data:`IDENTITY`) so commits
work on machines without one.  A command run in a repository gets its
``GIT_DIR`` (and work tree and index) set explicitly by its caller, so a
stray value in this process's environment cannot redirect it.

User-supplied values never sit where git reads options: ref names and object
ids are validated (full ``refs/...`` names, hex ids; see
:mod:`distribute.transport.base`) before they are used, refspecs are built
only from them, remote names, URLs and paths follow ``--end-of-options``,
and file paths and messages travel on standard input.  A password is handed
to git on request (:mod:`distribute.credentials`), never on its command
line.  The message of every error is passed through
:func:`~distribute.core.names.scrub_url` (:func:`_tail`, :func:`_remote_says`).

:func:`_execute` starts the process itself rather than through GitPython's
``Git.execute``; its docstring says why.  A command killed at its timeout
reads as :attr:`_Result.killed`.  What ``git push --porcelain`` answers is
read here too (:func:`_push_rejections`, and the words that tell a lost race,
a refusal worth retrying and an unreachable remote apart).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from distribute.core.errors import TransportError
from distribute.core.names import scrub_url
from distribute.credentials import git_env, git_options
from distribute.transport.ssh_sharing import ssh_env

__all__ = ["IDENTITY"]

#: Author and committer of every commit the git transport writes.
IDENTITY = ("distribute", "distribute@localhost")

#: In front of every git command: no hooks, no file system monitor, and no automatic
#: maintenance after a fetch or a commit (a process each time, which mostly finds nothing
#: to do; a worker packs its copy itself, ``Worker._housekeeping``).
_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
           "-c", "maintenance.auto=false")
#: In front of the commands that ask a remote for refs (``fetch``, ``ls-remote``).
_PROTOCOL_V2 = ("-c", "protocol.version=2")
#: The fixed part of every git command's environment.
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "GCM_INTERACTIVE": "never",
    "LC_ALL": "C",
    "LANGUAGE": "C",
    "GIT_AUTHOR_NAME": IDENTITY[0],
    "GIT_AUTHOR_EMAIL": IDENTITY[1],
    "GIT_COMMITTER_NAME": IDENTITY[0],
    "GIT_COMMITTER_EMAIL": IDENTITY[1],
}

#: how long output is still read after a timed-out git is killed
_AFTER_KILL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Result:
    status: int
    stdout: bytes
    stderr: str

    @property
    def killed(self) -> bool:
        """Ended by a signal: our timeout's SIGKILL, or someone else's."""
        return self.status < 0


def _tail(text: str, lines: int = 12) -> str:
    return scrub_url("\n".join(text.strip().splitlines()[-lines:]))


def _git_executable() -> str:
    return git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"


def _execute(
    runner: git.Git,
    args: Sequence[str],
    *,
    stdin: bytes | None,
    env: Mapping[str, str] | None,
    timeout: float,
) -> _Result:
    """Run one git command (the only place the git transport starts a process).

    GitPython's runner gives the folder and environment; the process is started here
    rather than by ``Git.execute``, whose timeout is a non-daemon ``threading.Timer``
    that is cancelled only when the command returns: an exception raised inside the
    wait (a signal handler's, as ``distribute work`` raises on SIGTERM) left the timer
    alive, and the interpreter then waited for it at exit, for the whole timeout.  Here
    any exception kills git and waits for it, and no thread is involved.
    """
    command = [_git_executable(), *_CONFIG, *args]
    environment = dict(os.environ, LANGUAGE="C", LC_ALL="C")
    environment.update(runner.environment())
    environment.update(env or {})
    # its commands share one ssh connection (see distribute.transport.ssh_sharing)
    environment.update(ssh_env(environment))
    cwd = runner.working_dir
    if cwd is not None and not os.access(cwd, os.X_OK):
        cwd = None
    try:
        proc = subprocess.Popen(
            command, cwd=cwd, env=environment,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except FileNotFoundError as err:
        raise TransportError("git is not installed or not on PATH") from err
    with proc:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                stdout, stderr = proc.communicate(timeout=_AFTER_KILL_SECONDS)
            except subprocess.TimeoutExpired as late:
                # a child of git (ssh, a remote helper) still holds the pipes: keep what
                # was read, and do not wait for the child
                stdout, stderr = late.stdout or b"", late.stderr or b""
                proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return _Result(proc.returncode, stdout, stderr.decode("utf-8", "replace").rstrip("\n"))


def _failure(what: str, result: _Result, timeout: float, **context: object) -> TransportError:
    if result.killed:
        return TransportError(f"{what} timed out after {timeout:g} s", **context)
    return TransportError(
        f"{what} failed (exit {result.status}): {_tail(result.stderr)}",
        status=result.status,
        stderr=_tail(result.stderr),
        **context,
    )


def _run_outside(
    args: Sequence[str], what: str, *, timeout: float, secret: str | None = None,
    url: str | None = None,
) -> _Result:
    """Run a git command that needs no repository (init, clone); ``secret`` is handed to
    git (:mod:`distribute.credentials`; ``url``: the public URL it is for), never on its
    command line."""
    env = dict(_ENV, **git_env(secret, url))
    result = _execute(git.Git(), [*git_options(secret), *args], stdin=None, env=env,
                      timeout=timeout)
    if result.status != 0:
        raise _failure(what, result, timeout)
    return result


def pack_when_piled_up(
    run: Callable[[Sequence[str]], _Result], git_dir: Path, *, loose_limit: int,
    pack_limit: int, timeout: float,
) -> bool:
    """Pack a repository with ``git gc --cruft`` once it holds more than ``loose_limit``
    loose objects or ``pack_limit`` packs (``run`` runs git in it); return whether it did.

    ``git gc --auto`` is not enough: unreachable objects younger than git's prune
    expiry (a lost race's, a discarded snapshot's) stay loose under it; once they pass
    ``gc.auto`` git warns in ``gc.log`` and then refuses to run automatically for a
    day, while the repository grows.  ``--cruft`` puts them in a cruft pack instead
    (pruned when they expire, as usual).  Objects borrowed from an alternate store
    stay there (git repacks only a repository's own objects).
    """
    counts: dict[str, int] = {}
    listing = run(["count-objects", "-v"]).stdout.decode("ascii", "replace")
    for line in listing.splitlines():
        key, _, value = line.partition(": ")
        if value.strip().isdigit():
            counts[key] = int(value)
    if counts.get("count", 0) <= loose_limit and counts.get("packs", 0) <= pack_limit:
        return False
    (git_dir / "gc.log").unlink(missing_ok=True)
    result = run(["gc", "--cruft", "--quiet"])
    if result.status != 0:
        raise _failure(f"git gc in {git_dir}", result, timeout)
    return True


def _remote_says(stderr: str, limit: int = 600) -> str:
    """What a server's hooks explained (the ``remote:`` lines of a push), scrubbed, on
    one line: a refusal's reason is often there and nowhere else."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("remote:"):
            text = line[len("remote:"):].strip()
            if text and not text.lower().startswith(("resolving deltas", "counting objects")):
                lines.append(text)
    return scrub_url(" / ".join(lines))[:limit]


# ---- what git push says -----------------------------------------------------------------
#: Reasons in a rejected push that mean another writer got there first.
_RACE_REASONS = (
    "stale info",
    "fetch first",
    "non-fast-forward",
    "failed to update ref",
    "cannot lock ref",
    "atomic push failed",
    "atomic transaction failed",
)
#: Refusals that say the remote failed to receive or check the pack (its folder moved,
#: a full disk): nothing landed, and trying again later may work; not a rule.
_TRANSIENT_REFUSALS = ("unpacker error", "missing necessary objects")
#: git's words for "never got through to the remote", so nothing was sent.
_UNREACHABLE = (
    "could not read from remote repository",
    "unable to access",
    "unable to connect",
    "could not resolve host",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "does not appear to be a git repository",
    "repository not found",
    "' not found",  # git over http(s): fatal: repository '<url>' not found
    "authentication failed",
    "terminal prompts disabled",
    "could not read username",
)
_ATOMIC_UNSUPPORTED = "does not support --atomic"
_PORCELAIN_REASON = re.compile(r"\((.*)\)\s*$")


def _is_race(reason: str) -> bool:
    return reason.startswith(_RACE_REASONS)


def _push_rejections(porcelain: bytes) -> dict[str, str]:
    """``ref -> reason`` for every ``!`` line of ``push --porcelain`` output."""
    rejected: dict[str, str] = {}
    for line in porcelain.decode("utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0] == "!":
            ref = fields[1].rpartition(":")[2]
            match = _PORCELAIN_REASON.search(fields[2])
            rejected[ref] = match.group(1) if match else fields[2]
    return rejected

