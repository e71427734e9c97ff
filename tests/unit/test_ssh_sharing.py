"""When git's ssh command gets OpenSSH connection sharing (distribute.transport.ssh_sharing)."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest

from distribute.transport import ssh_sharing
from distribute.transport.ssh_sharing import SWITCH, ssh_env


@pytest.fixture(autouse=True)
def no_configured_command(monkeypatch):
    monkeypatch.setattr(ssh_sharing, "_configured_command", lambda: "")


def options(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return {w.split("=", 1)[0]: w.split("=", 1)[1] for w in words if "=" in w}


def test_plain_ssh_gets_a_private_per_process_control_socket():
    env = ssh_env({})
    command = env["GIT_SSH_COMMAND"]
    assert command.startswith("ssh ")
    opts = options(command)
    assert opts["ControlMaster"] == "auto" and opts["ControlPersist"].isdigit()
    socket = Path(opts["ControlPath"])
    assert socket.name.startswith(f"{os.getpid()}-") and socket.name.endswith("-%C")
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700


def test_the_users_ssh_command_keeps_its_options_and_another_gets_another_socket():
    mine = "ssh -i /keys/deploy -o BatchMode=yes"
    command = ssh_env({"GIT_SSH_COMMAND": mine})["GIT_SSH_COMMAND"]
    assert command.startswith(mine + " ")
    other = ssh_env({"GIT_SSH_COMMAND": mine + " -o UserKnownHostsFile=/x"})["GIT_SSH_COMMAND"]
    assert options(command)["ControlPath"] != options(other)["ControlPath"]


def test_a_configured_core_ssh_command_is_the_one_extended(monkeypatch):
    monkeypatch.setattr(ssh_sharing, "_configured_command", lambda: "/usr/bin/ssh -4")
    assert ssh_env({})["GIT_SSH_COMMAND"].startswith("/usr/bin/ssh -4 -o ControlMaster=auto")


@pytest.mark.parametrize(
    "environ",
    [
        {SWITCH: "0"},
        {"GIT_SSH": "/usr/local/bin/my-ssh"},
        {"GIT_SSH_COMMAND": "plink -batch"},
        {"GIT_SSH_COMMAND": "ssh -o ControlMaster=no"},
        {"GIT_SSH_COMMAND": "ssh -S none"},  # -S: ControlPath
        {"GIT_SSH_COMMAND": "ssh -o 'unterminated"},
    ],
)
def test_what_is_not_ours_to_change_is_left_alone(environ):
    assert ssh_env(environ) == {}


def test_a_command_that_already_shares_is_not_extended_twice():
    once = ssh_env({})["GIT_SSH_COMMAND"]
    assert ssh_env({"GIT_SSH_COMMAND": once}) == {}


def test_a_command_is_worked_out_once_per_process_and_the_switch_still_counts(monkeypatch):
    command = "ssh -i /keys/once -o BatchMode=yes -o ServerAliveInterval=11"
    splits: list[str] = []
    real = shlex.split
    monkeypatch.setattr(ssh_sharing.shlex, "split", lambda s: splits.append(s) or real(s))
    first = ssh_env({"GIT_SSH_COMMAND": command})
    assert ssh_env({"GIT_SSH_COMMAND": command}) == first and first
    assert splits == [command]  # every git command asks; the line is split once
    assert ssh_env({"GIT_SSH_COMMAND": command, SWITCH: "0"}) == {}
    assert ssh_env({"GIT_SSH_COMMAND": command, "GIT_SSH": "/bin/my-ssh"}) == {}
    # what is handed back is the caller's to change
    first["GIT_SSH_COMMAND"] = "changed"
    assert ssh_env({"GIT_SSH_COMMAND": command})["GIT_SSH_COMMAND"] != "changed"
