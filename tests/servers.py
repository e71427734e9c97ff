"""Real git hosting on 127.0.0.1 for tests and benchmarks: sshd, smart HTTP, added latency.

Nothing here needs pytest, so ``bench/bench.py`` can use it as well as the fixtures in
``tests/conftest.py``.  Each server is a class with ``start()``/``stop()`` that is also a
context manager, listens on a free port of 127.0.0.1 only, keeps every file it needs
(keys, configuration, logs, pid file) in a folder it is given, and waits for itself in a
bounded loop; a server that does not come up raises :class:`ServerStartError` carrying its
log.  A missing program raises :class:`Unavailable`, naming the Debian packages to install.
Everything stops by itself after ``lifetime`` seconds (:data:`LIFETIME`), so a test run
that dies leaves nothing listening for long.

:class:`SshServer`
    ``sshd`` run as a plain process from its own configuration: a throw-away host key, a
    throw-away client key pair, key authentication only, for the user running the tests.
    Git reaches it through :attr:`SshServer.ssh_command` (set it as ``GIT_SSH_COMMAND``),
    which trusts only the pre-written host key.  URLs:
    ``ssh://USER@127.0.0.1:PORT/absolute/path/remote.git``.
:class:`HttpServer`
    ``git http-backend`` as a CGI program of lighttpd, behind basic authentication.
    lighttpd is one process with CGI and basic authentication (a plain user file) built in,
    so no FastCGI bridge and no password hashing tool are needed.  The authenticated user
    reaches git as ``REMOTE_USER``, which is what lets ``git http-backend`` accept pushes.
    URLs: ``http://USER:PASSWORD@127.0.0.1:PORT/remote.git``.
:class:`LatencyProxy`
    A TCP proxy on 127.0.0.1 (asyncio, in a background thread) that delays every chunk by
    a fixed number of milliseconds in each direction; put it in front of either server.

Typical use::

    with SshServer(workdir) as sshd:
        os.environ["GIT_SSH_COMMAND"] = sshd.ssh_command
        url, path = sshd.remote("remote.git")   # an empty bare repository and its URL
        with LatencyProxy(sshd.port, delay_ms=20) as slow:
            slow_url = sshd.url(path, port=slow.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = [
    "HTTP_PACKAGES",
    "SSH_PACKAGES",
    "HttpServer",
    "LatencyProxy",
    "ServerStartError",
    "SshServer",
    "Unavailable",
    "free_port",
]

#: Debian packages that provide what :class:`SshServer` runs.
SSH_PACKAGES = ("openssh-server", "openssh-client")
#: Debian packages that provide what :class:`HttpServer` runs (git ships ``http-backend``).
HTTP_PACKAGES = ("lighttpd", "git")

LOOPBACK = "127.0.0.1"
START_SECONDS = 15.0
STOP_SECONDS = 5.0
#: seconds after which a server or proxy stops by itself, stopped or not
LIFETIME = 1800.0
PORT_ATTEMPTS = 3
#: where sshd lives on systems whose PATH for non-root users leaves out the sbin folders
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class Unavailable(RuntimeError):
    """A program a server needs is not installed."""


class ServerStartError(RuntimeError):
    """A server did not come up in time; the message carries its log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ssh_banner(port: int) -> bool:
    """Whether an SSH server answers on ``port`` (its first line starts ``SSH-``)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _find(program: str, packages: tuple[str, ...], *, sbin: bool = False) -> str:
    extra = os.pathsep.join(_SBIN) if sbin else ""
    search = os.pathsep.join(p for p in (os.environ.get("PATH", os.defpath), extra) if p)
    found = shutil.which(program, path=search)
    if found is None:
        raise Unavailable(
            f"{program} is not installed; install the Debian packages {' '.join(packages)} "
            f"(apt-get install {' '.join(packages)})"
        )
    return os.path.abspath(found)


def _read_log(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    return text[-limit:] if text.strip() else "(empty log)"


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_SECONDS)


def _wait_for(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], deadline: float
) -> bool:
    """Poll ``ready`` until it holds, the process exits or the deadline passes."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return proc.poll() is None
        time.sleep(0.05)
    return False


def _ssh_quote(path: str | os.PathLike[str]) -> str:
    """A file name as the value of an ssh ``-o`` option (which splits at white space)."""
    text = os.fspath(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _bounded(command: list[str], lifetime: float) -> list[str]:
    """``command`` under coreutils ``timeout`` when there is one: a server left behind by a
    test run that died (``kill -9``) still ends, with all its children (``timeout`` puts
    them in a process group of their own and signals the group)."""
    timeout = shutil.which("timeout")
    if timeout is None:
        return command
    return [timeout, "--kill-after=5", f"{lifetime:g}", *command]


def _init_bare(path: Path) -> Path:
    subprocess.run(
        ["git", "init", "--quiet", "--bare", "--initial-branch=main", "--", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


_S = TypeVar("_S", bound="_Server")


class _Server:
    """Start/stop, context manager and the bounded start-up loop shared by the servers."""

    name = "server"
    log_path: Path

    def __init__(
        self, workdir: str | os.PathLike[str], *, start_seconds: float, lifetime: float
    ) -> None:
        if start_seconds <= 0 or lifetime <= 0:
            raise ValueError("start_seconds and lifetime must be > 0")
        self.workdir = Path(workdir).absolute()
        self.start_seconds = start_seconds
        self.lifetime = lifetime
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # subclasses: write the configuration for ``port``, the command, and the readiness check
    def _prepare(self, port: int) -> list[str]:
        raise NotImplementedError

    def _ready(self, port: int) -> bool:
        return _accepts(port)

    # servers of repositories: the folder they serve (``repos``), and a repository's URL
    root: Path

    def _repo_url(self, name: str, path: Path) -> str:
        raise NotImplementedError

    def remote(self, name: str = "remote.git", *, init: Callable[[Path], object] | None = None
               ) -> tuple[str, Path]:  # fmt: skip
        """Create the bare repository ``repos/<name>`` (with ``init(path)`` if given,
        else an empty one on ``main``); return its URL and its path on disk."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (init or _init_bare)(path)
        return self._repo_url(name, path), path

    def start(self) -> _Server:
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_seconds
        failures: list[str] = []
        for _ in range(PORT_ATTEMPTS):  # another process may take the port first
            port = free_port()
            command = _bounded(self._prepare(port), self.lifetime)
            with self.log_path.open("ab") as log:
                proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )  # fmt: skip
            if _wait_for(proc, lambda port=port: self._ready(port), deadline):
                self._proc, self.port = proc, port
                return self
            _stop_process(proc)
            failures.append(f"port {port}: exit status {proc.returncode}")
            if time.monotonic() >= deadline:
                break
        raise ServerStartError(
            f"{self.name} did not start within {self.start_seconds:g} s "
            f"({'; '.join(failures)}); its log ({self.log_path}):\n{_read_log(self.log_path)}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _stop_process(proc)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        return _read_log(self.log_path)

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SshServer(_Server):
    """``sshd`` on 127.0.0.1 for the current user, with throw-away keys in ``workdir``.

    Bare repositories may live anywhere this user can read and write; :meth:`remote`
    creates one under ``workdir/repos``.  Git must use :attr:`ssh_command` (as
    ``GIT_SSH_COMMAND``): it sends the throw-away client key and trusts nothing but the
    throw-away host key, on this server's port and every port given to :meth:`url`.
    """

    name = "sshd"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        user: str | None = None,
        start_seconds: float = START_SECONDS,
        lifetime: float = LIFETIME,
    ) -> None:
        super().__init__(workdir, start_seconds=start_seconds, lifetime=lifetime)
        self.sshd = _find("sshd", SSH_PACKAGES, sbin=True)
        self.ssh = _find("ssh", SSH_PACKAGES)
        self.keygen = _find("ssh-keygen", SSH_PACKAGES)
        self.user = user or pwd.getpwuid(os.geteuid()).pw_name
        self.root = self.workdir / "repos"
        self.log_path = self.workdir / "sshd.log"
        self.config_path = self.workdir / "sshd_config"
        self.host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self._trusted_ports: list[int] = []

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`Unavailable` unless sshd, ssh and ssh-keygen are installed."""
        for program, sbin in (("sshd", True), ("ssh", False), ("ssh-keygen", False)):
            _find(program, SSH_PACKAGES, sbin=sbin)

    @property
    def ssh_command(self) -> str:
        """The ``GIT_SSH_COMMAND`` that reaches this server with its keys, and nothing else."""
        return self.client_command()

    def client_command(self, known_hosts: str | os.PathLike[str] | None = None) -> str:
        """:attr:`ssh_command`, trusting the host keys in ``known_hosts`` instead."""
        return shlex.join([
            self.ssh, "-F", "none",  # no user or system ssh configuration
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={_ssh_quote(known_hosts or self.known_hosts)}",
            "-o", "GlobalKnownHostsFile=none",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
        ])  # fmt: skip

    def _keygen(self, path: Path, comment: str) -> None:
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)
        subprocess.run(
            [self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def _write_keys(self) -> None:
        if not self.host_key.exists():
            self._keygen(self.host_key, "distribute-test-host")
        if not self.client_key.exists():
            self._keygen(self.client_key, "distribute-test-client")
        public = (self.client_key.with_name(self.client_key.name + ".pub")).read_text().strip()
        # restrict: no forwarding, no pty, no agent; running git's commands stays allowed
        self.authorized_keys.write_text(f"restrict {public}\n")

    def trust_port(self, port: int) -> None:
        """Make the client trust the host key on ``port`` (a proxy in front of this server)."""
        if port not in self._trusted_ports:
            self._trusted_ports.append(port)
        key = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        hosts = ",".join(f"[{LOOPBACK}]:{p}" for p in self._trusted_ports)
        self.known_hosts.write_text(f"{hosts} {key[0]} {key[1]}\n")

    #: settings that only speed tests up or keep them steady: left out, one by one, by an
    #: sshd too old to know them
    _OPTIONAL = {
        # bash reads ~/.bashrc for the commands sshd runs unless it looks nested: this keeps
        # the user's interactive setup (slow, or printing) out of git's protocol
        "SetEnv": "SetEnv SHLVL=1",
        # the default post-quantum key exchange costs ~0.1 s more per connection
        "KexAlgorithms": "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
        # OpenSSH >= 9.8 slows down a client address that "misbehaves" (tests do)
        "PerSourcePenalties": "PerSourcePenalties no",
    }

    def _config(self, port: int, optional: list[str]) -> str:
        lines = [
            f"Port {port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "AuthorizedPrincipalsFile none",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "AcceptEnv GIT_PROTOCOL",
            "PermitUserEnvironment no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PermitTTY no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            # a worker pool opens many connections at once: never drop one at random
            "MaxStartups 200",
            "LoginGraceTime 30",
            "LogLevel VERBOSE",
            *(self._OPTIONAL[name] for name in optional),
        ]
        return "\n".join(lines) + "\n"

    def _check_config(self, port: int) -> None:
        """Write the configuration and have sshd check it; make its privilege separation
        folder when running as root and it is missing (no service manager made it)."""
        optional = list(self._OPTIONAL)
        for _ in range(len(self._OPTIONAL) + 2):
            self.config_path.write_text(self._config(port, optional))
            result = subprocess.run(
                [self.sshd, "-t", "-f", str(self.config_path)],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
            )  # fmt: skip
            if result.returncode == 0:
                return
            missing = re.search(r"Missing privilege separation directory: (\S+)", result.stderr)
            unknown = [name for name in optional if name in result.stderr]
            if unknown:
                optional.remove(unknown[0])
            elif missing and os.geteuid() == 0:
                os.makedirs(missing.group(1), mode=0o755, exist_ok=True)
            else:
                break
        raise ServerStartError(
            f"sshd refused its configuration {self.config_path}:\n{result.stderr.strip()}"
        )

    def _prepare(self, port: int) -> list[str]:
        self._write_keys()
        self._check_config(port)
        self._trusted_ports = []  # proxies are put in front once the server is up
        self.trust_port(port)
        # -D: stay in the foreground; -e: log to stderr (our log file)
        return [self.sshd, "-D", "-e", "-f", str(self.config_path)]

    def _ready(self, port: int) -> bool:
        return _ssh_banner(port)

    def start(self) -> SshServer:
        super().start()
        return self

    def url(self, path: str | os.PathLike[str], *, port: int | None = None) -> str:
        """``ssh://USER@127.0.0.1:PORT/abs/path`` of the bare repository at ``path``;
        ``port`` (a proxy in front of this server) is trusted with the same host key."""
        if port is not None:
            self.trust_port(port)
        return f"ssh://{self.user}@{LOOPBACK}:{port or self.port}{Path(path).absolute()}"

    def _repo_url(self, name: str, path: Path) -> str:
        return self.url(path)


class HttpServer(_Server):
    """``git http-backend`` behind lighttpd with basic authentication, on 127.0.0.1.

    Serves the bare repositories under ``workdir/repos`` (``GIT_PROJECT_ROOT``) to
    ``user``/``password``; every other request is answered 401.
    """

    name = "lighttpd"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        user: str = "git-tester",
        password: str | None = None,
        start_seconds: float = START_SECONDS,
        lifetime: float = LIFETIME,
        lfs: bool = False,
    ) -> None:
        super().__init__(workdir, start_seconds=start_seconds, lifetime=lifetime)
        self.lighttpd = _find("lighttpd", HTTP_PACKAGES, sbin=True)
        #: with ``lfs``: a Git LFS server (``tests/lfs_cgi.py``) at each repository's
        #: ``/info/lfs``; its objects in ``lfs_store``, one line per request in ``lfs_log``
        self.lfs = lfs
        self.lfs_store = self.workdir / "lfs-objects"
        self.lfs_log = self.workdir / "lfs.log"
        self.backend = self._backend()
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.root = self.workdir / "repos"
        self.log_path = self.workdir / "lighttpd.log"
        self.config_path = self.workdir / "lighttpd.conf"

    @staticmethod
    def _backend() -> str:
        git = _find("git", HTTP_PACKAGES)
        try:
            exec_path = subprocess.run(
                [git, "--exec-path"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            raise Unavailable(f"git --exec-path failed: {err}") from err
        backend = os.path.join(exec_path, "git-http-backend")
        if not os.access(backend, os.X_OK):
            raise Unavailable(
                f"git http-backend is not installed; install the Debian packages "
                f"{' '.join(HTTP_PACKAGES)}"
            )
        return backend

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`Unavailable` unless lighttpd and ``git http-backend`` are installed."""
        _find("lighttpd", HTTP_PACKAGES, sbin=True)
        cls._backend()

    @staticmethod
    def _quote(value: object) -> str:
        text = str(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _prepare(self, port: int) -> list[str]:
        q = self._quote
        for folder in (self.root, self.workdir / "htdocs", self.workdir / "uploads"):
            folder.mkdir(parents=True, exist_ok=True)
        users = self.workdir / "users"
        users.write_text(f"{self.user}:{self.password}\n")
        users.chmod(0o600)
        config = f"""\
server.modules = ("mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi",
                  "mod_accesslog")
server.bind = {q(LOOPBACK)}
server.port = {port}
server.document-root = {q(self.workdir / "htdocs")}
server.upload-dirs = ({q(self.workdir / "uploads")})
server.pid-file = {q(self.workdir / "lighttpd.pid")}
server.errorlog = {q(self.log_path)}
accesslog.filename = {q(self.workdir / "access.log")}
server.max-keep-alive-idle = 30
# answer a wrong password at once (lighttpd waits a while by default, against guessing)
server.feature-flags = ("auth.delay-invalid-creds" => "disable")
# every path is PATH_INFO of git http-backend: /remote.git/info/refs and so on
alias.url = ("/" => {q(self.backend + "/")})
cgi.assign = ("" => "")
setenv.add-environment = (
    "GIT_PROJECT_ROOT" => {q(self.root)},
    "GIT_HTTP_EXPORT_ALL" => "1",
    "GIT_CONFIG_NOSYSTEM" => "1",
)
auth.backend = "plain"
auth.backend.plain.userfile = {q(users)}
auth.require = ("/" => ("method" => "basic", "realm" => "distribute tests",
                        "require" => "valid-user"))
"""
        if self.lfs:
            config += self._lfs_config()
        self.config_path.write_text(config)
        # -D: stay in the foreground
        return [self.lighttpd, "-D", "-f", str(self.config_path)]

    def _lfs_config(self) -> str:
        q = self._quote
        self.lfs_store.mkdir(parents=True, exist_ok=True)
        self.lfs_log.touch()
        program = self.workdir / "lfs-server"  # no suffix: run as it is, like the backend
        script = Path(__file__).with_name("lfs_cgi.py")
        program.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                           f"{shlex.quote(str(script))}\n")
        program.chmod(0o755)
        token = secrets.token_hex(8)
        return f"""
$HTTP["url"] =~ "(^/lfs-content/|/info/lfs/)" {{
    alias.url = ("/" => {q(str(program) + "/")})
    setenv.add-environment = (
        "LFS_STORE" => {q(self.lfs_store)},
        "LFS_TOKEN" => {q(token)},
        "LFS_LOG" => {q(self.lfs_log)},
    )
}}
$HTTP["url"] =~ "^/lfs-content/" {{
    auth.require = ()
}}
"""

    def lfs_requests(self) -> list[str]:
        """The LFS server's requests so far, one ``<what> <oid>`` each."""
        return self.lfs_log.read_text().splitlines() if self.lfs_log.exists() else []

    def start(self) -> HttpServer:
        super().start()
        return self

    def url(self, name: str = "remote.git", *, port: int | None = None,
            password: str | None = None) -> str:  # fmt: skip
        """``http://USER:PASSWORD@127.0.0.1:PORT/<name>`` (``port``: a proxy in front;
        ``password``: another password, to test refusals)."""
        secret = self.password if password is None else password
        return f"http://{self.user}:{secret}@{LOOPBACK}:{port or self.port}/{name}"

    def _repo_url(self, name: str, path: Path) -> str:
        return self.url(name)


class LatencyProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``, delaying each chunk of data
    ``delay_ms`` in each direction (pipelined: a slow line, not a slow server).

    Runs an asyncio loop in a daemon thread; stops on :meth:`stop`, at the end of a
    ``with`` block, or by itself after ``lifetime`` seconds, whichever comes first.
    """

    CHUNK = 64 * 1024
    QUEUE = 256  # chunks in flight per direction before the reader waits

    def __init__(
        self,
        target_port: int,
        delay_ms: float,
        *,
        lifetime: float = LIFETIME,
        start_seconds: float = START_SECONDS,
    ) -> None:
        if delay_ms < 0 or lifetime <= 0:
            raise ValueError("delay_ms must be >= 0 and lifetime > 0")
        self.target_port = target_port
        self.delay = delay_ms / 1000.0
        self.lifetime = lifetime
        self.start_seconds = start_seconds
        self.port = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> LatencyProxy:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_seconds) or self._error is not None or not self.port:
            self.stop()
            raise ServerStartError(f"latency proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stopping.set)
        thread.join(STOP_SECONDS)
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by start(), never raised in the thread
            self._error = err
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.lifetime)
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.target_port), timeout=10
            )
            pipes = [asyncio.ensure_future(self._pipe(reader, upstream)),
                     asyncio.ensure_future(self._pipe(up_reader, writer))]  # fmt: skip
            try:
                # both directions end at EOF; an error in either ends the connection
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.wait(pipes, timeout=STOP_SECONDS)
        except (OSError, asyncio.TimeoutError):
            pass  # the target refused or went away: close both sides below
        except asyncio.CancelledError:
            pass  # the proxy is stopping: close both sides below
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.close()
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy ``source`` to ``sink``, each chunk ``delay`` after it arrived; pass EOF on."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.QUEUE)

        async def read() -> None:
            try:
                while True:
                    data = await source.read(self.CHUNK)
                    await queue.put((loop.time() + self.delay, data))
                    if not data:
                        return
            except OSError:
                await queue.put((loop.time(), b""))

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
        finally:
            reading.cancel()
