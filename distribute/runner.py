"""Running a command per job: the loop behind ``distribute work``.

Theory of operation
-------------------
:class:`JobRunner` takes jobs from a :class:`~distribute.dist.Worker` one at
a time and runs one child process per job.  The job reaches the child as one
argument (every ``{job}`` in the command is replaced; with ``shell=True`` the
command is one ``/bin/sh -c`` script and the job is shell-quoted) and through
the environment (``DISTRIBUTE_JOB``, ``DISTRIBUTE_WORKER``,
``DISTRIBUTE_ATTEMPT``, ``DISTRIBUTE_JOB_DIR``, ``DISTRIBUTE_RESUMED_FROM``,
and ``DISTRIBUTE_SLOT``, the worker's slot, which also fills ``{slot}``).
A job named by parameters (``lr=0.1 seed=0``, see :mod:`distribute.sweeps`)
also fills ``{lr}``, ``{seed}`` and ``{args}`` (``--lr=0.1 --seed=0``: separate
arguments when ``{args}`` is a whole argument), and each parameter is in
``DISTRIBUTE_PARAM_<NAME>``.  A ``{name}`` that this job lacks but another
job of the queue or the ledgers has fails that attempt with a reason naming
it; braces around any other word are left alone (code in a ``python -c``
argument), and ``{{name}}`` is a literal ``{name}``.

A breaker guards the queue against a broken setup.  A command that cannot
start, or exits non-zero within ``breaker_seconds``, failed *at once*.  Until
this worker's command has once worked (succeeded, or run longer than that),
such a failure cannot be told from a broken machine, so it ends the attempt
as interrupted (it does not use up ``max_attempts``), and ``breaker`` of them
in a row stop the worker: the last job is put back as interrupted and
:attr:`WorkSummary.breaker` says why (``distribute work`` exits with 3).  Once
the command has worked, failures at once count as usual, and the worker stops
only after ``breaker`` *different* jobs in a row failed at once, so that one
job that always crashes is retried and recorded as failed while the worker
goes on.

With ``wait_for_jobs`` the loop does not end when the queue is empty: it
looks at the main branch's ref (one ``ls-remote``, or a read of a ref file for
a remote on this machine) at the worker's idle pace, from ``poll_seconds``
doubling up to ``idle_poll_seconds``, and asks for a job again once the main
branch moved (a job was queued, or one was released), and at least every half
lease (a dead worker's job may be offered).  ``idle_exit`` ends the wait after
that many seconds without a job.

The child writes into the job's folder in the working tree
(``DISTRIBUTE_JOB_DIR``, ``updates/<encoded job>``); ``commit_update`` never
rewrites working-tree files, so files the child keeps open stay the ones
that get committed.  The child's stdout and stderr go through a pipe to a
pump thread that appends them to ``log.txt`` there.  Every ``commit_every``
seconds the runner commits (``commit_update``); the pump pauses meanwhile,
so a commit never holds a half-written chunk.  Exit status 0 finishes the job,
anything else fails the attempt (the protocol retries it while attempts are
left); ``timeout`` kills the child's process group and fails the attempt.

Signals: SIGINT and SIGTERM are forwarded to the child's process group (it
runs in a session of its own, so a terminal's Ctrl-C reaches it once).  Once
the child is gone the attempt ends as *interrupted*: the job runs again (from
the files its last commit holds) and the attempt does not count toward
``max_attempts``, only toward the generous ``max_interruptions``; the worker
is closed and the loop
reports the signal, so that the command exits with 128 + signum.  A signal
while waiting for a job interrupts the wait; afterwards the runner releases
whatever this process still holds on the remote (the lock, if the signal came
between a push and its bookkeeping, and the jobs its liveness record names).
A second signal kills the child at once; a third ends the process.

Symbolic links from the remote are never followed.  The job's folder comes
from the remote (the main branch, or the earlier attempt's branch a retried
job resumes), and a committed link there -- ``updates/<job>/log.txt``, the
folder itself, or ``updates`` -- would make the runner's log, and the
command's own writes, land wherever it points.  Before the command starts,
:func:`secure_job_folder` removes every link on the way to the job's folder
(making a real folder in its place) and every link in it that leads out of
it; the link's target is never touched, each removal is noted in
``log.txt``, and the removal is committed with the job.  Links within the
folder (``best.ckpt -> epoch-5.ckpt``) stay.  The log itself is opened
without following a link.

A command never outlives its worker (see :mod:`distribute.orphans`).  On
Linux the child is started with a parent-death signal (SIGKILL), so a worker
killed without warning (``kill -9``, the OOM killer) takes its child along.
While it runs, the child -- pid, process group, start time -- is recorded in
``.git/distribute-child.json`` of the local copy; the next worker process on
that copy stops what is left of the group (the grandchildren the parent-death
signal does not reach) before it runs anything, and the record is removed
once the child has been reaped.  When the child exits, however it ends, what
is left in its process group is killed (SIGKILL) before the job is finished
or failed: a background process of the command must not write into the job
folder while it is committed, nor live on into the next job.  The child is
waited for without reaping it first (``waitid`` with ``WNOWAIT``), so its
pid, and with it the id of its process group, cannot be given to another
process before that group has been killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from distribute.backoff import Backoff
from distribute.core.errors import (
    DistributeError,
    FileTooLarge,
    LeaseLost,
    MergeConflict,
    TransportError,
    UsageError,
)
from distribute.core.ledger import DONE_PARTS, LEDGER_FILES, parts_in_order
from distribute.jobfolder import secure_job_folder
from distribute.orphans import (
    ChildRecord,
    clear_child_record,
    kill_leftovers,
    parent_death_guard,
    record_child,
)
from distribute.sources import JOBS_FILE
from distribute.sweeps import KEY_PATTERN, parse_job

if TYPE_CHECKING:
    from distribute.dist import Worker

JOB_PLACEHOLDER = "{job}"
ARGS_PLACEHOLDER = "{args}"
#: The environment variable that holds a worker's slot number, and fills ``{slot}``.
SLOT_ENV = "DISTRIBUTE_SLOT"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.json"
PARAM_ENV_PREFIX = "DISTRIBUTE_PARAM_"
#: ``distribute work`` exit codes beyond 0, 1, 2 and 128 + signal: the breaker stopped the
#: worker; every job the worker ran failed.
EXIT_BREAKER, EXIT_ALL_FAILED = 3, 4
#: ``{{name}}`` (a literal ``{name}``) or ``{name}`` (a placeholder); never ``${name}``, a
#: shell's variable.
_PLACEHOLDER = re.compile(
    r"(?<!\$)\{\{(" + KEY_PATTERN + r")\}\}|(?<!\$)\{(" + KEY_PATTERN + r")\}"
)

#: Outcomes of one job: finished, attempt failed and queued again, failed for good,
#: taken over by another worker, or stopped by a signal.
DONE, RETRY, FAILED, LOST, INTERRUPTED = "done", "retry", "failed", "lost", "interrupted"


class Interrupted(BaseException):
    """A signal ended the wait for a job (a ``BaseException``, like ``KeyboardInterrupt``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class CommandTemplateError(UsageError):
    """The command names a ``{placeholder}`` that the job has no value for."""


def _missing(name: str, job: str, params: Mapping[str, str]) -> CommandTemplateError:
    has = (
        f"its parameters: {', '.join(params)}" if params
        else "it has none: only words of the form key=value in a job name are parameters"
    )
    return CommandTemplateError(
        f"the command uses {{{name}}}, but job {job!r} has no parameter {name} ({has}); "
        f"write {{{{{name}}}}} for a literal {{{name}}}",
        job=job, placeholder=name,
    )


def command_for_job(
    command: Sequence[str], job: str, *, shell: bool = False,
    params: Mapping[str, str] | None = None, known: Iterable[str] | None = None,
    slot: str | None = None,
) -> list[str]:
    """The argument list that runs ``command`` for ``job``.

    Placeholders: ``{job}`` is the job name, ``{NAME}`` the value of its parameter
    NAME (``params``, by default :func:`~distribute.sweeps.parse_job` of the name),
    and ``{args}`` every parameter as ``--NAME=VALUE``: separate arguments when
    ``{args}`` is a whole argument, else joined by spaces.  ``{slot}`` is ``slot``, the
    worker's slot number (a job parameter named ``slot`` comes first; without a
    ``slot``, ``{slot}`` is an unknown name like any other).  ``{{NAME}}`` stays as
    a literal ``{NAME}``, and so does ``${NAME}`` (a shell variable).  Without
    ``shell`` an argument stays one argument whatever the values hold; nothing is
    parsed by a shell.  With ``shell`` the arguments are joined with spaces into
    one ``/bin/sh -c`` script and every value is ``shlex.quote``-d.

    Args:
        known: parameter names of the sweep (of any job on the remote): a ``{NAME}``
            with one of these names that this job lacks is an error, and braces around
            any other word are left as they are (code such as ``f'{x}'`` in a
            ``python -c`` argument).  ``None``: every ``{NAME}`` must be filled.

    Raises:
        UsageError: ``command`` is empty.
        CommandTemplateError: a placeholder the job has no value for.
    """
    if not command:
        raise UsageError("no command given: put the command to run after `--`")
    values = parse_job(job) if params is None else dict(params)
    sweep = None if known is None else frozenset(known)
    flags = [f"--{key}={value}" for key, value in values.items()]

    def fill(text: str, quote: Callable[[str], str]) -> str:
        def one(match: re.Match[str]) -> str:
            literal, name = match.group(1), match.group(2)
            if literal is not None:
                return "{" + literal + "}"
            if name == "job":
                return quote(job)
            if name == "args":
                return " ".join(quote(flag) for flag in flags)
            if name in values:
                return quote(values[name])
            if name == "slot" and slot is not None:
                return quote(slot)
            if sweep is not None and name not in sweep:
                return match.group(0)
            raise _missing(name, job, values)

        return _PLACEHOLDER.sub(one, text)

    if shell:
        return ["/bin/sh", "-c", fill(" ".join(command), shlex.quote)]
    argv: list[str] = []
    for arg in command:
        if arg == ARGS_PLACEHOLDER:
            argv.extend(flags)
        else:
            argv.append(fill(arg, str))
    return argv


def param_env_name(key: str) -> str:
    """``DISTRIBUTE_PARAM_<KEY>``: upper-cased, every character but letters and digits as ``_``."""
    return PARAM_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def job_environment(
    base: Mapping[str, str], *, job: str, worker: str, attempt: int, job_dir: str,
    resumed_from: str | None = None, params: Mapping[str, str] | None = None,
    slot: int = 0,
) -> dict[str, str]:
    """``base`` plus the ``DISTRIBUTE_*`` variables a job's command receives.

    ``DISTRIBUTE_RESUMED_FROM`` names the earlier attempt's branch whose files the job
    folder starts with (empty for a fresh start): a job that finds it set may go on
    from its last checkpoint.  Each parameter of the job (``params``, by default read
    from its name) is in ``DISTRIBUTE_PARAM_<NAME>`` (see :func:`param_env_name`);
    such variables inherited from ``base`` are dropped.  ``DISTRIBUTE_SLOT`` is the
    worker's ``slot`` number.
    """
    env = {k: v for k, v in base.items() if not k.startswith(PARAM_ENV_PREFIX)}
    env.update(
        DISTRIBUTE_JOB=job,
        DISTRIBUTE_WORKER=worker,
        DISTRIBUTE_ATTEMPT=str(attempt),
        DISTRIBUTE_JOB_DIR=job_dir,
        DISTRIBUTE_RESUMED_FROM=resumed_from or "",
    )
    env[SLOT_ENV] = str(slot)
    for key, value in (parse_job(job) if params is None else params).items():
        env[param_env_name(key)] = value
    return env


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (a negative code from ``subprocess``)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _open_nofollow(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that fails (``ELOOP``) rather than follow a symbolic link at ``path``."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)


def last_line(path: str, limit: int = 4096) -> str:
    """The last non-empty line of a text file (reads only its tail), or ``""``."""
    try:
        with open(_open_nofollow(path, os.O_RDONLY), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [
        ln.strip() for ln in tail.splitlines()
        if ln.strip() and not ln.startswith("[distribute]")
    ]
    return lines[-1] if lines else ""


class LogSink:
    """Appends output to a log file; :meth:`paused` holds writers off during a commit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        with self.lock:
            try:
                fd = _open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            except OSError:
                if not os.path.islink(self.path):
                    raise
                os.unlink(self.path)  # a link made since the job began: never followed
                fd = _open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with open(fd, "ab") as f:
                f.write(data)
            self.bytes += len(data)

    def note(self, text: str) -> None:
        self.write(f"[distribute] {text}\n".encode())

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self.lock:
            yield


class LineEcho:
    """Hands the command's output on line by line (``echo(job, line)``), for a person
    watching ``distribute work``; a last line without a newline is handed on at the end.
    A line rewritten with carriage returns (a progress bar) is handed on as it ends up,
    once, when it ends; one left unfinished keeps only its last 64 KiB."""

    def __init__(self, job: str, echo: Callable[[str, str], None]) -> None:
        self.job = job
        self.echo = echo
        self._partial = b""

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:
            self._partial = self._partial.rsplit(b"\r", 1)[-1][-65536:]
        for line in lines:
            self._say(line)

    def close(self) -> None:
        if self._partial:
            self._say(self._partial)
            self._partial = b""

    def _say(self, line: bytes) -> None:
        shown = line.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        with contextlib.suppress(Exception):  # a closed terminal never stops the job
            self.echo(self.job, shown.decode("utf-8", "replace"))


def _pump(stream: int, sink: LogSink, echo: LineEcho | None = None) -> None:
    try:
        while True:
            try:
                chunk = os.read(stream, 65536)
            except OSError:
                return
            if not chunk:
                return
            sink.write(chunk)
            if echo is not None:
                echo.feed(chunk)
    finally:
        if echo is not None:
            echo.close()


#: The child can be waited for without being reaped (see the module docstring).
_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the child's process group (to the child alone where groups are absent).

    Nothing is sent once the child has been reaped: its pid may belong to
    another process by then.  An exited child not yet reaped still holds its
    pid, so its group can be signalled.  Never reaps the child itself.
    """
    if proc.returncode is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signum)
        else:  # pragma: no cover - not POSIX
            proc.send_signal(signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the child to exit; ``True`` once it has.

    With ``waitid`` the exited child is left a zombie, not reaped: its pid
    still names it, and its process group can be killed safely.  Elsewhere it
    is reaped here (``Popen.wait``).
    """
    if not _WAITID:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            return True
        try:
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere; Popen.wait copes with that
            return True
        if exited is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.02, left))


def _end_group(proc: subprocess.Popen[bytes], record: ChildRecord | None) -> None:
    """Kill whatever is left in the child's process group (the child too, if it still
    runs), then reap the child."""
    if proc.returncode is None:
        _signal_group(proc, signal.SIGKILL)  # the group id is still the child's pid
        proc.wait()
    elif record is not None:  # reaped already (no waitid): tell the group by its record
        kill_leftovers(record)


@dataclass
class JobOutcome:
    """What became of one job this worker ran."""

    job: str
    attempt: int
    status: str
    reason: str = ""
    returncode: int | None = None
    seconds: float = 0.0


@dataclass
class WorkSummary:
    """What a :meth:`JobRunner.run` did.

    ``signum`` is set when a signal stopped it, ``breaker`` (why) when the breaker
    did (see the module docstring).
    """

    outcomes: list[JobOutcome] = field(default_factory=list)
    signum: int | None = None
    breaker: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def all_failed(self) -> bool:
        """Jobs ran, and every one of them failed (finished none, lost or stopped none)."""
        return bool(self.outcomes) and all(o.status in (RETRY, FAILED) for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """128 + signal; else :data:`EXIT_BREAKER`; else :data:`EXIT_ALL_FAILED`; else 0."""
        if self.signum:
            return 128 + self.signum
        if self.breaker:
            return EXIT_BREAKER
        return EXIT_ALL_FAILED if self.all_failed else 0


Reporter = Callable[[str], None]


class JobRunner:
    """Run ``command`` for every job the worker gets from ``next_job_func``.

    Args:
        worker: the worker; it is not closed here.
        command: the command and its arguments (``{job}`` is replaced).
        next_job_func: the next-job function (e.g. :class:`~distribute.sources.QueueJobs`).
        shell: run the command through ``/bin/sh -c``.
        timeout: seconds a job may run before it is killed and failed (``None``: no limit).
        commit_every: seconds between commits of the log while a job runs.
        max_jobs: stop after this many jobs (``None``: until there are none).
        grace: seconds the child has to exit after SIGTERM before SIGKILL.
        report: receives one line per event for the person watching.
        cwd: the child's working folder (default: this process's).
        breaker: stop after this many failures at once in a row (0: never; see the
            module docstring).
        breaker_seconds: a non-zero exit within this many seconds is a failure at once.
        wait_for_jobs: when there is no job, wait for new ones instead of returning.
        idle_exit: with ``wait_for_jobs``, return after this many seconds without a job
            (``None``: wait until a signal).
        slot: this worker's slot number among the workers of one ``work --gpus`` or
            ``--slots`` (0 for a lone worker): ``{slot}`` and ``DISTRIBUTE_SLOT``.
    """

    def __init__(
        self,
        worker: Worker,
        command: Sequence[str],
        next_job_func: Callable[..., str | None],
        *,
        shell: bool = False,
        timeout: float | None = None,
        commit_every: float = 5.0,
        max_jobs: int | None = None,
        grace: float = 10.0,
        report: Reporter | None = None,
        cwd: str | None = None,
        breaker: int = 3,
        breaker_seconds: float = 5.0,
        wait_for_jobs: bool = False,
        idle_exit: float | None = None,
        echo: Callable[[str, str], None] | None = None,
        slot: int = 0,
    ) -> None:
        if not command:
            raise UsageError("no command given: put the command to run after `--`")
        if timeout is not None and timeout <= 0:
            raise UsageError("timeout must be > 0 seconds")
        if commit_every <= 0:
            raise UsageError("commit_every must be > 0 seconds")
        if breaker < 0 or breaker_seconds < 0:
            raise UsageError("breaker and breaker_seconds must be >= 0")
        if idle_exit is not None and idle_exit < 0:
            raise UsageError("idle_exit must be >= 0 seconds")
        self.worker = worker
        self.command = list(command)
        self.next_job_func = next_job_func
        self.shell = shell
        self.timeout = timeout
        self.commit_every = commit_every
        self.max_jobs = max_jobs
        self.grace = grace
        self.report: Reporter = report or (lambda line: None)
        self.cwd = cwd
        self.breaker = breaker
        self.breaker_seconds = breaker_seconds
        self.wait_for_jobs = wait_for_jobs or idle_exit is not None
        self.idle_exit = idle_exit
        self.slot = slot
        self.echo = echo
        self._clock: Callable[[], float] = time.monotonic
        self._sleep: Callable[[float], None] = time.sleep
        self._worked = False  # the command has once succeeded or run past breaker_seconds
        #: parameter names in each sealed part of done.txt read, by (name, size, mtime):
        #: a part does not change, so each is read once
        self._part_keys: dict[tuple[str, int, int], frozenset[str]] = {}
        self._at_once: list[str] = []  # jobs that failed at once since then, in a row
        self._tripped: str | None = None
        self._said_waiting: float | None = None
        self._idle_backoff: Backoff | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._signum: int | None = None
        self._signals = 0
        self._may_raise = False
        self._previous: dict[int, object] = {}

    # ---- signals -------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signum is None:
            self._signum = signum
        if self._signals >= 3:
            os._exit(128 + signum)
        child = self._child
        if child is not None:
            _signal_group(child, signal.SIGKILL if self._signals > 1 else signum)
            return
        if self._may_raise:
            self._may_raise = False
            raise Interrupted(signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    # ---- the loop ------------------------------------------------------------
    def run(self) -> WorkSummary:
        """Take and run jobs until there are none (with ``wait_for_jobs``: until
        ``idle_exit``), ``max_jobs`` were run, a signal came or the breaker stopped it."""
        summary = WorkSummary()
        self.report(f"command: {shlex.join(self.command)}")
        self._install()
        idle_since = self._clock()
        try:
            while self.max_jobs is None or len(summary.outcomes) < self.max_jobs:
                if self._signum is not None:
                    break
                seen = self._main_value() if self.wait_for_jobs else None
                try:
                    self._may_raise = True
                    if self._signum is not None:
                        break
                    job = self.worker.get_next_job(self.next_job_func)
                except Interrupted:
                    self._release_leftovers()
                    break
                finally:
                    self._may_raise = False
                if job is None:
                    if self.wait_for_jobs and self._wait_for_a_job(idle_since, seen):
                        continue
                    if not self.wait_for_jobs:
                        self.report("no more jobs")
                    break
                self._idle_backoff = None
                summary.outcomes.append(self._run_one(job))
                idle_since = self._clock()
                if self._tripped is not None:
                    summary.breaker = self._tripped
                    break
        finally:
            self._restore()
            summary.signum = self._signum
        return summary

    # ---- waiting for new jobs --------------------------------------------------
    def _main_value(self) -> str | None:
        """The remote's main branch commit, read without a fetch (``None`` if unknown)."""
        ref = "refs/heads/" + self.worker.branch
        try:
            return self.worker.transport.list_refs(ref).get(ref)
        except DistributeError:
            return None

    def _wait_for_a_job(self, idle_since: float, seen: str | None) -> bool:
        """Sleep until the main branch moves away from ``seen`` (looking at the worker's
        idle pace) or half a lease passed; ``False`` when ``idle_exit`` ran out or a
        signal came."""
        worker = self.worker
        deadline = None if self.idle_exit is None else idle_since + self.idle_exit
        if self._said_waiting != idle_since:
            self._said_waiting = idle_since
            limit = "" if self.idle_exit is None else f" (for at most {self.idle_exit:g} s)"
            self.report(f"no job now: waiting for new jobs{limit}")
        if self._idle_backoff is None:
            # kept across the periodic full looks; started again when the main branch moves
            self._idle_backoff = Backoff(worker.poll_seconds, worker.idle_poll_seconds,
                                         spread=0.25)
        backoff = self._idle_backoff
        look_by = self._clock() + max(worker.idle_poll_seconds, worker.lease_seconds / 2)
        try:
            self._may_raise = True
            while self._signum is None:
                now = self._clock()
                if deadline is not None and now >= deadline:
                    self.report(f"no job for {self.idle_exit:g} s: stopping")
                    return False
                if now >= look_by:
                    return True
                delay = min(backoff.next(), look_by - now)
                if deadline is not None:
                    delay = min(delay, deadline - now)
                self._sleep(max(0.0, delay))
                if self._signum is None and self._main_value() != seen:
                    self._idle_backoff = None
                    return True
            return False
        except Interrupted:
            return False
        finally:
            self._may_raise = False

    def _run_one(self, job: str) -> JobOutcome:
        worker = self.worker
        attempt = worker.attempt or 1
        outcome = JobOutcome(job, attempt, RETRY)
        if self._signum is not None:
            outcome.status, outcome.reason = INTERRUPTED, "interrupted before it started"
            return self._fail(outcome, "interrupted")
        job_dir = worker.job_dir
        # the worker removed the links its claim brought; this makes the folder, and says so
        removed = [*worker.removed_links, *secure_job_folder(worker.path, job_dir)]
        return self._run_in(job_dir, outcome, removed)

    def _run_in(
        self, job_dir: str, outcome: JobOutcome, removed: Sequence[str] = ()
    ) -> JobOutcome:
        worker, job, attempt = self.worker, outcome.job, outcome.attempt
        branch = worker.job_branch or "?"
        started = time.monotonic()
        sink = LogSink(os.path.join(job_dir, LOG_FILE))
        self.report(f"job {job!r} (attempt {attempt}) started")
        for link in removed:
            note = (f"removed the symbolic link {link} that came with the job: it led out of "
                    "the job's folder (its target was not touched)")
            sink.note(note)
            self.report(f"job {job!r}: {note}")
        try:
            argv = command_for_job(self.command, job, shell=self.shell, known=self._sweep_keys(),
                                   slot=str(self.slot))
        except CommandTemplateError as exc:
            sink.note(str(exc))
            return self._failed_at_once(outcome, str(exc))
        env = job_environment(
            os.environ, job=job, worker=worker.name, attempt=attempt, job_dir=job_dir,
            resumed_from=worker.resumed_from, slot=self.slot,
        )
        sink.note(f"job {job!r} attempt {attempt} on worker {worker.name}: {shlex.join(argv)}")
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=parent_death_guard(),
            )
        except OSError as exc:
            os.close(read_end)
            sink.note(f"could not start the command: {exc}")
            outcome.seconds = time.monotonic() - started
            return self._failed_at_once(outcome, f"could not start the command: {exc}")
        finally:
            with contextlib.suppress(OSError):
                os.close(write_end)
        self._child = proc
        record = self._record_child(proc, job)
        if self._signum is not None:  # a signal came just before the child existed
            _signal_group(proc, self._signum)
        echo = LineEcho(job, self.echo) if self.echo is not None else None
        pump = threading.Thread(target=_pump, args=(read_end, sink, echo), daemon=True)
        pump.start()
        timed_out = lost = False
        try:
            timed_out, lost = self._supervise(proc, sink, started)
        finally:
            self._child = None
            # the command has exited (or an error escaped): nothing of it may run on
            _end_group(proc, record)
            if record is not None:
                clear_child_record(self._git_dir())
            pump.join(timeout=5)
            with contextlib.suppress(OSError):
                os.close(read_end)
        outcome.returncode = proc.returncode
        outcome.seconds = time.monotonic() - started
        sink.note(f"{describe_exit(proc.returncode)} after {outcome.seconds:.1f} s")
        if lost:
            by = getattr(self.worker.coord, "revoked_by", "")
            outcome.status = LOST
            if by.startswith("cli@"):
                outcome.reason = f"cancelled by {by}"
                self.report(f"job {job!r}: cancelled ({by}); its updates stay on branch {branch}")
            else:
                outcome.reason = "taken over by another worker"
                self.report(f"job {job!r}: lost -- another worker took it over; its updates "
                            f"stay on branch {branch}")
            self._drop_lost_job()
            return outcome
        if self._signum is not None:
            name = signal.Signals(self._signum).name
            outcome.status, outcome.reason = INTERRUPTED, f"interrupted ({name})"
            return self._fail(outcome, "interrupted")
        if timed_out:
            self._command_worked()
            return self._fail(outcome, f"timed out after {self.timeout:g} s")
        if proc.returncode == 0:
            self._command_worked()
            return self._finish(outcome)
        tail = last_line(sink.path)
        reason = describe_exit(proc.returncode) + (f": {tail}" if tail else "")
        if outcome.seconds < self.breaker_seconds:
            return self._failed_at_once(outcome, reason)
        self._command_worked()
        return self._fail(outcome, reason)

    def _sweep_keys(self) -> set[str]:
        """Parameter names of the jobs in the local copy's queue and ledgers (the main
        branch as of this job's claim), ``done.txt``'s sealed parts included: the names
        that are placeholders in the command."""
        keys: set[str] = set()
        for name in (JOBS_FILE, *LEDGER_FILES):
            keys.update(self._keys_in(name))
        folder = os.path.join(self.worker.path, DONE_PARTS)
        try:  # a link from the remote where the folder belongs is not followed either
            names = [] if os.path.islink(folder) else [
                e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
        except OSError:
            names = []
        for name in parts_in_order(names):
            try:
                info = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            seen = (name, info.st_size, info.st_mtime_ns)
            if seen not in self._part_keys:
                self._part_keys[seen] = frozenset(self._keys_in(f"{DONE_PARTS}/{name}"))
            keys.update(self._part_keys[seen])
        return keys

    def _keys_in(self, name: str) -> set[str]:
        """Parameter names of the jobs listed in file ``name`` of the local copy."""
        keys: set[str] = set()
        try:  # never through a link from the remote (it could name any file)
            with open(_open_nofollow(os.path.join(self.worker.path, name), os.O_RDONLY),
                      encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            return keys
        for line in text.split("\n"):
            keys.update(parse_job(line.split("\t", 1)[0].strip()))
        return keys

    # ---- the breaker --------------------------------------------------------------
    def _command_worked(self) -> None:
        self._worked = True
        self._at_once.clear()

    def _failed_at_once(self, outcome: JobOutcome, reason: str) -> JobOutcome:
        """End an attempt whose command could not start or failed at once; trip the
        breaker after ``breaker`` of them in a row (see the module docstring)."""
        if not self.breaker:
            return self._fail(outcome, reason)
        self._at_once.append(outcome.job)
        count = len(set(self._at_once)) if self._worked else len(self._at_once)
        if count >= self.breaker:
            what = "different jobs" if self._worked else "attempts"
            self._tripped = (
                f"the command failed within {self.breaker_seconds:g} s of starting on "
                f"{count} {what} in a row, so worker {self.worker.name} stopped "
                f"(--breaker {self.breaker}); the last, job {outcome.job!r}: {reason}; "
                f"command: {shlex.join(self.command)}. That job was put back without using "
                "up an attempt: fix the command or this machine's setup, then start the "
                "worker again"
            )
            return self._fail(outcome, f"{reason} (the breaker stopped the worker)",
                              interrupted=True)
        if self._worked:
            return self._fail(outcome, reason)
        return self._fail(outcome, f"{reason} (failed at once: not counted as an attempt)",
                          interrupted=True)

    @property
    def tripped(self) -> str | None:
        """Why the breaker stopped this runner, or ``None``."""
        return self._tripped

    def _supervise(
        self, proc: subprocess.Popen[bytes], sink: LogSink, started: float
    ) -> tuple[bool, bool]:
        """Wait for the child, committing its log; return (timed_out, lost)."""
        deadline = started + self.timeout if self.timeout else None
        next_commit = started + self.commit_every
        stop_sent: float | None = None
        timed_out = too_large = False
        lost = False
        while True:
            if _wait_exit(proc, 0.1):
                return timed_out, lost
            now = time.monotonic()
            if self._signum is not None and stop_sent is None:
                stop_sent = now  # forwarded by the handler; start the grace period
            if deadline is not None and now >= deadline and stop_sent is None:
                timed_out = True
                stop_sent = now
                sink.note(f"timeout of {self.timeout:g} s reached: stopping the command")
                _signal_group(proc, signal.SIGTERM)
            if stop_sent is not None and now - stop_sent >= self.grace:
                _signal_group(proc, signal.SIGKILL)
                stop_sent = float("inf")
            if now >= next_commit and stop_sent is None:
                next_commit = now + self.commit_every
                try:
                    with sink.paused():
                        self.worker.commit_update(f"progress of {self.worker.running_job}")
                except LeaseLost:
                    # taken over or cancelled: the command stops, with its grace period
                    lost, stop_sent = True, now
                    sink.note("the job was taken away from this worker: stopping the command")
                    _signal_group(proc, signal.SIGTERM)
                except TransportError as exc:
                    # the remote is away; the heartbeat decides about the lease
                    self.report(f"could not push the log ({exc}); will try again")
                except FileTooLarge as exc:
                    # nothing was committed; the finish will refuse it too, and say why
                    if not too_large:
                        sink.note(str(exc))
                        self.report(f"job {self.worker.running_job!r}: {exc}")
                    too_large = True

    def _git_dir(self) -> Path:
        return Path(self.worker.path) / ".git"

    def _record_child(self, proc: subprocess.Popen[bytes], job: str) -> ChildRecord | None:
        """Note the running child in the local copy, for the next worker process there."""
        git_dir = self._git_dir()
        if not git_dir.is_dir():
            return None
        try:
            return record_child(git_dir, proc.pid, job=job, worker=self.worker.name)
        except OSError as exc:
            self.report(f"could not record the running command ({exc}); if this process is "
                        "killed, stop the command by hand before restarting")
            return None

    def _drop_lost_job(self) -> None:
        """Throw away what the lost job wrote after its last update (its branch keeps
        the rest), so that the local copy is clean for the next job."""
        self.worker.discard_changes()

    def _finish(self, outcome: JobOutcome) -> JobOutcome:
        try:
            self.worker.finish_job()
        except LeaseLost as exc:
            outcome.status, outcome.reason = LOST, str(exc)
            self.report(f"job {outcome.job!r}: {exc}")
            self._drop_lost_job()
            return outcome
        except MergeConflict as exc:
            outcome.status, outcome.reason = FAILED, str(exc)
            self.report(f"job {outcome.job!r}: {exc}")
            return outcome
        except FileTooLarge as exc:
            return self._fail(outcome, str(exc))
        outcome.status = DONE
        self.report(f"job {outcome.job!r}: done in {outcome.seconds:.1f} s")
        return outcome

    def _fail(
        self, outcome: JobOutcome, reason: str, *, interrupted: bool | None = None
    ) -> JobOutcome:
        """End the attempt: as failed, or as interrupted when a signal stopped it (or
        ``interrupted`` says so; an interruption does not use up ``max_attempts``)."""
        stopped = outcome.status == INTERRUPTED
        try:
            result = self.worker.fail_job(
                reason, interrupted=stopped if interrupted is None else interrupted
            )
        except LeaseLost as exc:
            outcome.status, outcome.reason = LOST, str(exc)
            self.report(f"job {outcome.job!r}: {exc}")
            self._drop_lost_job()
            return outcome
        if not stopped:
            outcome.status = RETRY if result == "retry" else FAILED
        outcome.reason = outcome.reason or reason
        then = "queued for another attempt" if result == "retry" else "no attempts left (failed)"
        self.report(f"job {outcome.job!r} attempt {outcome.attempt}: {reason}; {then}")
        return outcome

    # ---- cleaning up after a signal ------------------------------------------------
    def _release_leftovers(self) -> None:
        """Give back what a signal may have left half-recorded: the lock and claimed jobs.

        A signal can land between a push and the bookkeeping that remembers it.
        The lock is released when the remote says this process (worker name and
        session) holds it; jobs are failed as ``interrupted`` when this
        session's liveness record names them.
        """
        worker = self.worker
        if worker.running_job is not None:
            with contextlib.suppress(DistributeError):
                worker.fail_job("interrupted", interrupted=True)
            return
        with contextlib.suppress(DistributeError):
            release_own_leftovers(worker, "interrupted")


def release_own_leftovers(worker: Worker, reason: str) -> None:
    """Release the lock and fail the jobs that this worker process holds on the remote
    (see :meth:`distribute.coordination.Coordinator.release_leftovers`)."""
    worker.coord.release_leftovers(reason)


# ---- the README's loop, for the demo ------------------------------------------------
def fake_training(job: str, folder: str, epochs: int, seconds: float, start: int = 0) -> float:
    """A stand-in for an expensive function: a training curve and a log in ``folder``.

    The made-up loss falls with the epochs toward a floor that depends on the
    job's ``lr`` parameter, if it has one (lowest near 0.01), plus a little noise
    fixed by the job name, so a sweep's results have a shape worth plotting.
    Returns the last loss.
    """
    os.makedirs(folder, exist_ok=True)
    try:
        lr = float(parse_job(job).get("lr", "0.01"))
    except ValueError:
        lr = 0.01
    lr = lr if lr > 0 and math.isfinite(lr) else 0.01
    floor = 0.05 + 0.08 * (math.log10(lr) + 2) ** 2 + random.Random(job).uniform(-0.01, 0.01)
    loss = 1.0
    with open(os.path.join(folder, "curve.csv"), "a", encoding="utf-8") as curve, open(
        os.path.join(folder, LOG_FILE), "a", encoding="utf-8"
    ) as log:
        if start == 0:
            curve.write("epoch,loss\n")
        for epoch in range(start, start + epochs):
            loss = round(floor + (1 - floor) * math.exp(-(epoch + 1) / 2), 4)
            curve.write(f"{epoch},{loss}\n")
            log.write(f"{job}: epoch {epoch} loss {loss}\n")
            time.sleep(seconds / max(1, epochs))
    return loss


def write_metrics(folder: str, metrics: Mapping[str, object]) -> None:
    """Write ``metrics`` as the JSON object ``folder/metrics.json`` (what ``distribute
    results`` reads by default)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(dict(metrics), f, sort_keys=False)
        f.write("\n")


def seed_loop(worker: Worker, work_seconds: float = 0.2, report: Reporter | None = None) -> int:
    """The seed README's worker loop over the ``jobs.txt`` queue; returns the jobs finished."""
    from distribute.sources import QueueJobs

    say = report or (lambda line: None)
    next_job_func = QueueJobs()
    finished = 0
    while True:
        job = worker.get_next_job(next_job_func)
        if job is None:
            return finished
        updates_path = worker.job_dir
        fake_training(job, updates_path, epochs=3, seconds=work_seconds / 2)
        worker.commit_update()
        loss = fake_training(job, updates_path, epochs=3, seconds=work_seconds / 2, start=3)
        Path(updates_path, "final.txt").write_text(f"{job}\tloss={loss}\n", encoding="utf-8")
        write_metrics(updates_path, {"loss": loss, "epochs": 6})
        worker.commit_update()
        worker.finish_job()
        finished += 1
        say(f"{worker.name} finished {job}")


__all__ = [
    "DONE",
    "EXIT_ALL_FAILED",
    "EXIT_BREAKER",
    "FAILED",
    "INTERRUPTED",
    "LOST",
    "RETRY",
    "CommandTemplateError",
    "Interrupted",
    "JobOutcome",
    "JobRunner",
    "LogSink",
    "WorkSummary",
    "command_for_job",
    "describe_exit",
    "fake_training",
    "job_environment",
    "last_line",
    "param_env_name",
    "release_own_leftovers",
    "seed_loop",
    "write_metrics",
]
