"""One ssh connection per worker process, shared by its git commands.

Theory of operation
-------------------
Over ssh every git command opens a connection of its own: a TCP handshake, a key
exchange and a login, several round trips and much of the command's CPU time (an
``ls-remote`` took 145 ms to the test suite's sshd on this machine, 16 ms over a
shared connection).  A worker runs a few git commands per job, and its heartbeat
more, so OpenSSH's connection sharing (``ControlMaster``) is asked for in the ssh
command git runs (``GIT_SSH_COMMAND``): the first command opens a connection that
the later ones reuse, and that stays open :data:`PERSIST_SECONDS` after the last
one.

* One connection per process and ssh command (the control socket's name holds the
  process id and a digest of the command), so the workers of one machine do not
  crowd one connection past the server's ``MaxSessions``, a process's connection
  goes away soon after it, and a changed command (another key, other trusted host
  keys) logs in and checks the host anew.
* The sockets live in a folder only this user can enter.
* What the user set is kept: the ssh command comes from ``GIT_SSH_COMMAND`` or
  ``core.sshCommand`` when set, and gets the options only when it runs ``ssh``
  and does not choose its own ``ControlMaster`` or ``ControlPath``.  ``GIT_SSH``
  (a program, which takes no options) is left alone, and so is everything when
  ``DISTRIBUTE_SSH_SHARING=0``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from distribute.credentials import private_folder, user_temp_folder

#: Seconds a shared connection stays open after its last git command.
PERSIST_SECONDS = 60
#: The environment variable that turns sharing off (``0``).
SWITCH = "DISTRIBUTE_SSH_SHARING"
#: Unix socket paths are limited (about 100 bytes); a longer folder shares nothing.
_MAX_SOCKET_PATH = 100


def ssh_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``GIT_SSH_COMMAND`` entry that makes this process's git commands share one
    ssh connection (see the module docstring), or nothing when that is not ours to do."""
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH, "1").strip() == "0" or environ.get("GIT_SSH"):
        return {}
    command = environ.get("GIT_SSH_COMMAND") or _configured_command() or "ssh"
    return dict(_sharing(command, os.getpid()))


@functools.lru_cache(maxsize=16)
def _sharing(command: str, pid: int) -> tuple[tuple[str, str], ...]:
    """:func:`ssh_env` for one ssh command in process ``pid``: worked out once (every git
    command a worker runs asks, and splitting the command line is not free)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return ()
    if not words or os.path.basename(words[0]) != "ssh":
        return ()
    if "-S" in words or any("controlmaster" in w.lower() or "controlpath" in w.lower()
                            for w in words):
        return ()  # the user's own choice of sharing (-S is ControlPath)
    folder = _socket_folder()
    if folder is None:
        return ()
    # another ssh command (another key, other trusted host keys) gets a connection of its
    # own: a shared connection is not logged in or checked again
    kind = hashlib.sha256(command.encode()).hexdigest()[:8]
    socket = f"{folder}/{pid}-{kind}-%C"
    if len(socket) - 2 + 40 > _MAX_SOCKET_PATH:  # %C becomes 40 hex digits
        return ()
    options = (f"-o ControlMaster=auto -o ControlPersist={PERSIST_SECONDS} "
               f"-o ControlPath={shlex.quote(socket)}")
    return (("GIT_SSH_COMMAND", f"{command} {options}"),)


@functools.lru_cache(maxsize=1)
def _configured_command() -> str:
    """``core.sshCommand`` from the user's or the system's git config ('' if unset)."""
    try:
        out = subprocess.run(
            ["git", "config", "--get", "core.sshCommand"], capture_output=True, text=True,
            timeout=30, check=False, cwd=tempfile.gettempdir(),
            env={**os.environ, "GIT_DIR": os.devnull},
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def _socket_folder() -> Path | None:
    """``<temp>/distribute-<uid>/ssh``, private to this user; ``None`` if it cannot be."""
    try:
        return private_folder(user_temp_folder("ssh"))
    except OSError:
        return None


__all__ = ["PERSIST_SECONDS", "SWITCH", "ssh_env"]
