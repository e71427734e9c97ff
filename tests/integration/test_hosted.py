"""Distribute against real hosting on 127.0.0.1: sshd, smart HTTP, and a slow line.

The servers come from ``tests/servers.py`` through the fixtures of ``tests/conftest.py``;
the transport contract suite runs over them too (``test_transport_contract.py``).  Here:
the README's worker loop with three processes over each, and what a user sees when the
password is wrong or the server's host key is not the trusted one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import HttpServer, LatencyProxy, ServerStartError, SshServer
from test_seed_loop import JOBS, check_remote, run_workers

from distribute.core.errors import OutcomeUnknown, RemoteStateError, TransportError
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.transport.base import RefUpdate
from distribute.transport.git import GitTransport
from distribute.transport.local_copy import GitLocalCopy

MAIN = "refs/heads/main"
LOCK = "refs/distribute/lock"
#: a refused login must be reported well within this (no retries, no waiting for prompts)
FAIL_FAST_SECONDS = 10.0

hosted = pytest.mark.hosted
Clone = Callable[[str, Path], GitLocalCopy]


@pytest.fixture
def clone() -> Iterator[Clone]:
    """``GitLocalCopy.clone``, closing every copy it made when the test ends."""
    made: list[GitLocalCopy] = []

    def make(url: str, path: Path) -> GitLocalCopy:
        made.append(GitLocalCopy.clone(url, path))
        return made[-1]

    yield make
    for copy in made:
        copy.close()


# ---- the README's loop, three worker processes ---------------------------------------------


@hosted
def test_three_workers_over_ssh(ssh_remote: tuple[str, Path], tmp_path: Path) -> None:
    url, bare = ssh_remote
    init_remote(url, jobs=JOBS)
    check_remote(bare, run_workers(url, tmp_path))


@hosted
def test_three_workers_over_http(http_remote: tuple[str, Path], tmp_path: Path) -> None:
    url, bare = http_remote
    init_remote(url, jobs=JOBS)
    check_remote(bare, run_workers(url, tmp_path))


@hosted
@pytest.mark.slow
def test_three_workers_over_ssh_with_latency(
    ssh_latency_remote: tuple[str, Path], tmp_path: Path
) -> None:
    url, bare = ssh_latency_remote
    init_remote(url, jobs=JOBS)
    check_remote(bare, run_workers(url, tmp_path))


# ---- refused logins: fast, clear, and no password in sight ---------------------------------


def refusals(
    url: str, good_copy: GitLocalCopy, worker_copy: Path | None, scratch: Path
) -> list[TransportError]:
    """Every way a user meets a refused ``url``: cloning, a transport's fetch, look and
    push, and (given ``worker_copy``, cloned while the remote accepted us) making workers:
    a new one, and two on that copy (retries cut to half a second); each a plain
    TransportError (nothing was sent)."""
    errors: list[TransportError] = []
    with pytest.raises(TransportError) as cloning:
        GitLocalCopy.clone(url, scratch / "never")
    errors.append(cloning.value)
    if worker_copy is not None:
        errors += worker_refusals(url, worker_copy, scratch)
    main = good_copy.head()
    assert main is not None
    with GitTransport(good_copy.path, url, timeout=20) as t:
        calls: list[Callable[[], object]] = [
            lambda: t.fetch([MAIN]),
            lambda: t.list_refs("refs/heads/"),
            lambda: t.push([RefUpdate(MAIN, main, main)]),
        ]
        for call in calls:
            with pytest.raises(TransportError) as caught:
                call()
            errors.append(caught.value)
    for err in errors:
        assert not isinstance(err, OutcomeUnknown), err
    return errors


def worker_refusals(url: str, worker_copy: Path, scratch: Path) -> list[TransportError]:
    errors: list[TransportError] = []
    with pytest.raises(TransportError) as making:
        worker_from_url(url, scratch / "worker", "w1")
    errors.append(making.value)
    options = {"retry_seconds": 0.5, "heartbeat": False}
    with pytest.raises(TransportError) as opening:  # it asks the remote for its branch
        worker_from_url(url, worker_copy, "w2", **options)
    errors.append(opening.value)
    worker = worker_from_url(url, worker_copy, "w2", branch="main", **options)
    try:
        with pytest.raises(TransportError) as asking:
            worker.get_next_job(lambda: None)
        errors.append(asking.value)
    finally:
        with contextlib.suppress(TransportError):
            worker.close()
    return errors


def shown(err: TransportError) -> str:
    """Everything an error shows: message, repr, context, and the errors behind it."""
    parts = [str(err), repr(err), repr(err.context)]
    cause = err.__cause__ or err.__context__
    while cause is not None:
        parts.append(repr(cause))
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


@hosted
def test_a_wrong_password_fails_fast_and_is_never_shown(
    http_server: HttpServer, http_remote: tuple[str, Path], tmp_path: Path, clone: Clone
) -> None:
    url, bare = http_remote
    init_remote(url, jobs=["a"])
    copy = clone(url, tmp_path / "copy")
    wrong = "wrong-" + secrets.token_hex(8)
    bad = http_server.url("remote.git", password=wrong)
    worker_copy = clone(url, tmp_path / "worker-copy")
    started = time.monotonic()
    errors = refusals(bad, copy, worker_copy.path, tmp_path)
    assert time.monotonic() - started < FAIL_FAST_SECONDS * len(errors)
    for err in errors:
        assert "authentication failed" in str(err).lower(), err
        assert wrong not in shown(err) and http_server.password not in shown(err)
    # lighttpd writes its log a little after each answer: read it once it has settled
    lines = access_log_lines(http_server, until=lambda lines: any(" 401 " in x for x in lines))
    assert any(" 401 " in line for line in lines), lines


def access_log_lines(
    server: HttpServer, settle: float = 5.0, until: Callable[[list[str]], bool] | None = None,
) -> list[str]:
    """The server's access log, once it has stopped growing (lighttpd writes it a little
    after each answer), or once ``until`` says it holds what is awaited (a busy machine
    can delay a write past a pause in the growth); bounded by ``settle`` seconds."""
    log = server.workdir / "access.log"
    seen, deadline = -1, time.monotonic() + settle
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        done = until(lines) if until is not None else len(lines) == seen
        if done or time.monotonic() > deadline:
            return lines
        seen = len(lines)
        time.sleep(0.3)


@hosted
def test_a_worker_sends_its_password_with_the_first_request(
    http_server: HttpServer, http_remote: tuple[str, Path], tmp_path: Path
) -> None:
    """git asks for a password only after two refusals (401) per command; a worker gives
    it with the first request instead, so a job over HTTP meets no refusal at all."""
    url, _ = http_remote
    init_remote(url, jobs=["a", "b"])
    before = len(access_log_lines(http_server))
    with worker_from_url(url, tmp_path / "copy", "w", heartbeat=False) as worker:
        from distribute.sources import queue_jobs_func

        while worker.get_next_job(queue_jobs_func) is not None:
            Path(worker.job_dir).mkdir(parents=True, exist_ok=True)
            Path(worker.job_dir, "log.txt").write_text("ok\n")
            worker.finish_job()
    lines = access_log_lines(http_server)[before:]
    assert len(lines) >= 10  # the clone, the claims and finishes all went over HTTP
    refused = [line for line in lines if '" 401 ' in line]
    assert refused == [], refused[:3]
    assert http_server.password not in "\n".join(lines)


@hosted
def test_a_workers_git_commands_share_one_ssh_login(
    ssh_server: SshServer, ssh_remote: tuple[str, Path], tmp_path: Path
) -> None:
    """Each git command over ssh used to log in anew; a worker's commands now share one
    connection (OpenSSH's ControlMaster), so a whole run logs in a few times only."""
    url, _ = ssh_remote
    init_remote(url, jobs=["a", "b", "c"])
    def logins_so_far() -> int:
        return ssh_server.log_path.read_text(errors="replace").count("Accepted publickey")

    before = logins_so_far()
    commands = 0
    with worker_from_url(url, tmp_path / "copy", "w", heartbeat=False) as worker:
        from distribute.sources import queue_jobs_func

        while worker.get_next_job(queue_jobs_func) is not None:
            Path(worker.job_dir).mkdir(parents=True, exist_ok=True)
            Path(worker.job_dir, "log.txt").write_text("ok\n")
            worker.finish_job()
        stats = worker.coord.stats
        commands = stats.pushes + stats.fetches
    logins = logins_so_far() - before
    assert commands >= 10  # many git commands went over ssh
    # (the connection init_remote opened in this process may serve them all: 0 is fine)
    assert logins <= 3, (logins, commands)


@hosted
def test_an_unknown_or_changed_ssh_host_key_fails_fast(
    ssh_server: SshServer,
    ssh_remote: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clone: Clone,
) -> None:
    url, bare = ssh_remote
    init_remote(url, jobs=["a"])
    copy = clone(url, tmp_path / "copy")  # with the trusted host key
    worker_copy = clone(url, tmp_path / "worker-copy")
    unknown = tmp_path / "known_hosts_empty"
    unknown.write_text("")
    changed = tmp_path / "known_hosts_changed"
    impostor = tmp_path / "impostor"
    subprocess.run(
        [ssh_server.keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)],
        check=True, capture_output=True,
    )  # fmt: skip
    kind, key = impostor.with_name("impostor.pub").read_text().split()[:2]
    changed.write_text(f"[127.0.0.1]:{ssh_server.port} {kind} {key}\n")
    for n, known_hosts in enumerate([unknown, changed]):
        monkeypatch.setenv("GIT_SSH_COMMAND", ssh_server.client_command(known_hosts=known_hosts))
        started = time.monotonic()
        # workers meet the unknown key; a changed one goes the same way through ssh
        errors = refusals(url, copy, worker_copy.path if n == 0 else None, tmp_path / f"try{n}")
        assert time.monotonic() - started < FAIL_FAST_SECONDS * len(errors)
        for err in errors:
            assert "host key verification failed" in str(err).lower(), err
    assert "Accepted publickey" in ssh_server.log()  # the trusted clone did log in


# ---- what the servers say, as the transport reports it --------------------------------------


def hosted_remote(request: pytest.FixtureRequest, kind: str) -> tuple[str, Path]:
    remote: tuple[str, Path] = request.getfixturevalue(f"{kind}_remote")
    return remote


def missing_repository_url(request: pytest.FixtureRequest, kind: str, path: Path) -> str:
    if kind == "ssh":
        server: SshServer = request.getfixturevalue("ssh_server")
        return server.url(path.parent / "missing.git")
    http: HttpServer = request.getfixturevalue("http_server")
    return http.url("missing.git")




@hosted
@pytest.mark.parametrize(
    "kind", ["ssh", "http"]
)  # fmt: skip
def test_a_repository_the_server_lacks_is_a_plain_transport_error(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, clone: Clone
) -> None:
    url, bare = hosted_remote(request, kind)
    copy = clone(url, tmp_path / "copy")
    main = copy.head()
    assert main is not None
    with GitTransport(copy.path, missing_repository_url(request, kind, bare), timeout=20) as t:
        with pytest.raises(TransportError) as fetching:
            t.fetch([MAIN])
        assert not isinstance(fetching.value, OutcomeUnknown)
        with pytest.raises(TransportError) as pushing:
            t.push([RefUpdate(MAIN, main, main)])
        assert not isinstance(pushing.value, OutcomeUnknown), pushing.value  # nothing was sent


def hook(bare: Path, name: str, body: str) -> None:
    path = bare / "hooks" / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@hosted
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ssh", "http"])
class TestServerSide:
    """The server's own answers (hooks, stalls) through sshd and HTTP."""

    def test_a_hook_refusal_is_a_remote_state_error(
        self,
        request: pytest.FixtureRequest,
        kind: str,
        tmp_path: Path,
        run_git: Callable[..., str],
        clone: Clone,
    ) -> None:
        url, bare = hosted_remote(request, kind)
        hook(bare, "pre-receive", "cat >/dev/null\necho protected by policy >&2\nexit 1\n")
        with clone(url, tmp_path / "w").transport() as t:
            main = t.fetch([MAIN])[MAIN]
            new = t.write_commit(parents=[main], message="x", base=main, changes={"x": b"x"})
            with pytest.raises(RemoteStateError, match="pre-receive hook declined"):
                t.push([RefUpdate(MAIN, main, new)])
        assert run_git("--git-dir", bare, "rev-parse", MAIN) == main

    @pytest.mark.parametrize("lands", [False, True])
    def test_a_stalled_push_is_resolved_by_reading_the_refs(
        self,
        request: pytest.FixtureRequest,
        kind: str,
        lands: bool,
        tmp_path: Path,
        run_git: Callable[..., str],
        clone: Clone,
    ) -> None:
        url, bare = hosted_remote(request, kind)
        if lands:  # the update is committed, then the server stalls
            body = 'cat >/dev/null\nif [ "$1" = committed ]; then sleep 3; fi\n'
            hook(bare, "reference-transaction", body)
        else:  # the server stalls, then refuses
            hook(bare, "pre-receive", "cat >/dev/null\nsleep 3\nexit 1\n")
        copy = clone(url, tmp_path / "w")
        with copy.transport(timeout=1) as t:
            main = t.fetch([MAIN])[MAIN]
            new = t.write_commit(parents=[main], message="x", base=main, changes={"x": b"x"})
            started = time.monotonic()
            assert t.push([RefUpdate(MAIN, main, new)]) is lands
            assert time.monotonic() - started >= 1  # it did time out
        assert run_git("--git-dir", bare, "rev-parse", MAIN) == (new if lands else main)


@hosted
@pytest.mark.parametrize("kind", [pytest.param("ssh", marks=pytest.mark.slow), "http"])
def test_a_pack_of_several_megabytes_goes_both_ways(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, clone: Clone
) -> None:
    """Over HTTP a pack above git's 1 MiB post buffer is sent in chunks."""
    url, bare = hosted_remote(request, kind)
    data = {"big.bin": os.urandom(3 << 20), "updates/j/model.bin": os.urandom(1 << 20)}
    with clone(url, tmp_path / "w").transport() as t:
        main = t.fetch([MAIN])[MAIN]
        new = t.write_commit(parents=[main], message="big", base=main, changes=data)
        assert t.push([RefUpdate(MAIN, main, new), RefUpdate(LOCK, None, new)])
    with clone(url, tmp_path / "r").transport() as t:
        assert t.fetch([MAIN, LOCK]) == {MAIN: new, LOCK: new}
        for name, content in data.items():
            assert t.read_file(new, name) == content


# ---- the servers themselves ----------------------------------------------------------------


def first_byte_after(port: int, request: bytes) -> float:
    """Seconds from sending ``request`` to 127.0.0.1:``port`` until its answer begins."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(request)
        assert sock.recv(1), "no answer"
        return time.monotonic() - started


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@hosted
def test_the_latency_proxy_delays_each_direction(
    http_server: HttpServer, http_remote: tuple[str, Path], run_git: Callable[..., str]
) -> None:
    request = b"GET /remote.git/info/refs HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    with LatencyProxy(http_server.port, delay_ms=60) as proxy:
        direct = first_byte_after(http_server.port, request)
        slowed = first_byte_after(proxy.port, request)
        assert 0.12 <= slowed < direct + 5, (direct, slowed)  # 60 ms there, 60 ms back
        refs = run_git("ls-remote", http_server.url("remote.git", port=proxy.port))
        assert refs.endswith(MAIN)
        port = proxy.port
    assert not accepts(port)


def test_the_latency_proxy_stops_by_itself_after_its_lifetime() -> None:
    with socket.create_server(("127.0.0.1", 0)) as target:
        proxy = LatencyProxy(target.getsockname()[1], delay_ms=0, lifetime=0.5).start()
        try:
            assert accepts(proxy.port)
            deadline = time.monotonic() + 10
            while accepts(proxy.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not accepts(proxy.port)
        finally:
            proxy.stop()


class _Misconfigured(HttpServer):
    def _prepare(self, port: int) -> list[str]:
        command = super()._prepare(port)
        with self.config_path.open("a") as config:
            config.write("server.no-such-option = this-is-not-lighttpd\n")
        return command


@hosted
def test_a_server_that_does_not_start_fails_with_its_log(
    http_server: HttpServer, tmp_path: Path
) -> None:
    """(``http_server`` only checks that lighttpd is installed.)"""
    with pytest.raises(ServerStartError) as caught:
        _Misconfigured(tmp_path / "broken", start_seconds=5).start()
    assert "lighttpd did not start" in str(caught.value)
    assert "this-is-not-lighttpd" in str(caught.value) or "no-such-option" in str(caught.value)
