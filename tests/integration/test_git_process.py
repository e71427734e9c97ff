"""How the transport starts git: an exception inside the wait leaves nothing behind.

``distribute work`` turns SIGTERM into an exception raised wherever the main thread is,
often inside a git command.  When the wait was GitPython's, its timeout timer (a
non-daemon thread) outlived the exception and the interpreter waited for it at exit: a
worker stopped by SIGTERM hung for the whole git timeout.
"""

from __future__ import annotations

import signal
import threading
import time

import git
import pytest

from distribute.transport import process as transport


class _Stop(BaseException):
    pass


def _raise_stop(signum, frame):
    raise _Stop


@pytest.fixture
def alarm():
    previous = signal.signal(signal.SIGALRM, _raise_stop)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_exception_in_the_wait_leaves_no_thread_behind(alarm):
    # an alias that runs a shell command: git waits for it, so the wait is long
    args = ["-c", "alias.slow=!sleep 1.5", "slow"]
    before = {t.ident for t in threading.enumerate()}
    alarm(0.3)
    started = time.monotonic()
    with pytest.raises(_Stop):
        transport._execute(git.Git(), args, stdin=None, env=None, timeout=60)
    assert time.monotonic() - started < 1.2, "the exception waited for git"
    left = [t for t in threading.enumerate() if t.ident not in before and not t.daemon]
    assert left == [], f"threads the interpreter would wait for at exit: {left}"


def test_a_timeout_kills_git_and_reads_as_killed():
    result = transport._execute(
        git.Git(), ["-c", "alias.slow=!sleep 5", "slow"], stdin=None, env=None, timeout=0.3
    )
    assert result.killed and result.status < 0


def test_output_stdin_and_environment_reach_git(tmp_path):
    result = transport._execute(
        git.Git(), ["hash-object", "--stdin"], stdin=b"hello\n", env={"GIT_DIR": str(tmp_path)},
        timeout=30,
    )
    assert result.status == 0
    assert result.stdout == b"ce013625030ba8dba906f756967f9e9ca394464a\n"
    failed = transport._execute(git.Git(), ["no-such-command"], stdin=None, env=None, timeout=30)
    assert failed.status != 0 and "no-such-command" in failed.stderr
