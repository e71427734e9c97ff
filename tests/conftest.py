"""Shared fixtures: a remote as a bare repository on disk, behind ``git daemon``, and in memory.

Every remote starts the same way: one commit on ``main`` holding ``README.md``
(:data:`README`), with ``HEAD`` naming ``main``.  Network traffic stays on
127.0.0.1.

Hosted remotes (``ssh_remote``, ``http_remote``, ``ssh_latency_remote``; see
``tests/servers.py``): real sshd and smart HTTP servers that each test starts for
itself; mark tests using them ``pytest.mark.hosted``.  Without the programs they skip,
naming the Debian packages to install, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from servers import HttpServer, LatencyProxy, ServerStartError, SshServer, Unavailable

from distribute.transport.memory import MemoryRemote

README = b"# a remote for tests\n"
MAIN = "refs/heads/main"
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
DAEMON_START_SECONDS = 10.0

# A suite started in the background of a shell without job control inherits SIGINT
# ignored, and every program a test starts would inherit that too: the tests that send
# SIGINT (a terminal's Ctrl-C) would then wait in vain.  A handler, unlike an ignored
# signal, is not inherited across exec, so the children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def git(*args: str | os.PathLike[str], input: bytes | None = None) -> str:
    """Run git for a test's setup or out-of-band check; return stripped stdout."""
    result = subprocess.run(
        ["git", *map(str, args)], input=input, capture_output=True, env=GIT_ENV, check=True
    )
    return result.stdout.decode().strip()


def make_bare_remote(path: Path) -> Path:
    """A bare repository at ``path`` with ``README.md`` committed on ``main``."""
    git("init", "--quiet", "--bare", "--initial-branch=main", path)
    blob = git("--git-dir", path, "hash-object", "-w", "--stdin", input=README)
    tree = git("--git-dir", path, "mktree", input=f"100644 blob {blob}\tREADME.md\n".encode())
    commit = git("--git-dir", path, "commit-tree", tree, "-m", "initial commit")
    git("--git-dir", path, "update-ref", MAIN, commit)
    return path


@pytest.fixture
def run_git() -> Callable[..., str]:
    """:func:`git`, for tests' out-of-band checks (test modules do not import this file)."""
    return git


@pytest.fixture
def remote_readme() -> bytes:
    """What ``README.md`` on ``main`` of every remote fixture holds."""
    return README


@pytest.fixture
def bare_remote(tmp_path: Path) -> Path:
    """Path of a bare repository: ``main`` holds ``README.md``, ``HEAD`` -> ``main``."""
    return make_bare_remote(tmp_path / "remote.git")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(git:// URL, path on disk)`` of a bare remote served by ``git daemon``."""
    base = tmp_path / "daemon"
    base.mkdir()
    path = make_bare_remote(base / "remote.git")
    log = (tmp_path / "daemon.log").open("wb")
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [
                "git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
                f"--base-path={base}", "--export-all", "--enable=receive-pack",
                "--informative-errors", str(base),
            ],
            stdout=subprocess.DEVNULL, stderr=log, env=GIT_ENV,
        )  # fmt: skip
        deadline = time.monotonic() + DAEMON_START_SECONDS
        while proc.poll() is None and time.monotonic() < deadline and not _accepts(port):
            time.sleep(0.05)
        if proc.poll() is None and _accepts(port):
            break
        proc.kill()
        proc.wait()
    else:
        log.close()
        pytest.fail(f"git daemon did not start; see {tmp_path / 'daemon.log'}")
    try:
        yield f"git://127.0.0.1:{port}/remote.git", path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def daemon_remote(daemon: tuple[str, Path]) -> str:
    """A ``git://127.0.0.1:<port>/remote.git`` URL; mark tests using it ``pytest.mark.daemon``."""
    return daemon[0]


@pytest.fixture
def daemon_remote_path(daemon: tuple[str, Path]) -> Path:
    """The bare repository behind :func:`daemon_remote`, for out-of-band checks and hooks."""
    return daemon[1]


@pytest.fixture
def memory_remote() -> MemoryRemote:
    """A :class:`MemoryRemote` whose ``main`` holds ``README.md``."""
    remote = MemoryRemote()
    seed = remote.transport("seed")
    commit = seed.write_commit(parents=[], message="initial commit", changes={"README.md": README})
    remote.set_ref(MAIN, commit)
    return remote


# ---- hosted remotes: sshd, smart HTTP, added latency (tests/servers.py) ---------------------

#: delay the latency proxy adds in each direction
HOSTED_LATENCY_MS = 20


def _hosted(request: pytest.FixtureRequest, check: Callable[[], None]) -> None:
    """Skip (fail under CI) when a server's programs are missing; insist on the marker."""
    if request.node.get_closest_marker("hosted") is None:
        pytest.fail(f"{request.node.nodeid} uses a hosted remote: mark it pytest.mark.hosted")
    try:
        check()
    except Unavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} -- CI is set, and CI must provide it")
        pytest.skip(str(err))


_S = TypeVar("_S", SshServer, HttpServer, LatencyProxy)


@contextlib.contextmanager
def _running(server: _S) -> Iterator[_S]:
    """``server`` started (a start that fails fails the test, with the server's reason)
    and stopped at the end."""
    try:
        server.start()
    except ServerStartError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ssh_server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SshServer]:
    """A running :class:`servers.SshServer`; ``GIT_SSH_COMMAND`` (inherited by worker
    processes) points git at its throw-away keys for the test."""
    _hosted(request, SshServer.check_available)
    with _running(SshServer(tmp_path / "sshd")) as server:
        monkeypatch.setenv("GIT_SSH_COMMAND", server.ssh_command)
        yield server


@pytest.fixture
def ssh_remote(ssh_server: SshServer) -> tuple[str, Path]:
    """``(ssh://USER@127.0.0.1:PORT/.../remote.git, path on disk)`` of a bare remote."""
    return ssh_server.remote("remote.git", init=make_bare_remote)


@pytest.fixture
def ssh_latency_remote(ssh_server: SshServer) -> Iterator[tuple[str, Path]]:
    """:func:`ssh_remote` reached through a proxy adding :data:`HOSTED_LATENCY_MS` each way."""
    _, path = ssh_server.remote("remote.git", init=make_bare_remote)
    with _running(LatencyProxy(ssh_server.port, HOSTED_LATENCY_MS, lifetime=600)) as proxy:
        yield ssh_server.url(path, port=proxy.port), path


@pytest.fixture
def http_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HttpServer]:
    """A running :class:`servers.HttpServer` (lighttpd + ``git http-backend``, basic auth)."""
    _hosted(request, HttpServer.check_available)
    with _running(HttpServer(tmp_path / "http")) as server:
        yield server


@pytest.fixture
def http_lfs_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HttpServer]:
    """:func:`http_server` with a Git LFS server at each repository's ``/info/lfs``."""
    _hosted(request, HttpServer.check_available)
    with _running(HttpServer(tmp_path / "http", lfs=True)) as server:
        yield server


@pytest.fixture
def http_remote(http_server: HttpServer) -> tuple[str, Path]:
    """``(http://USER:PASSWORD@127.0.0.1:PORT/remote.git, path on disk)`` of a bare remote."""
    return http_server.remote("remote.git", init=make_bare_remote)
