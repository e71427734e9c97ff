"""A job's command must not outlive its worker: the parent-death signal and the child record.

Theory of operation
-------------------
``distribute work`` runs each job's command as a child in a session (and so a
process group) of its own.  A worker can die without running any clean-up
code (``kill -9``, the OOM killer, a power cut of the process), and the
command would then carry on as an orphan -- and a restarted worker would run
a second copy of the same job beside it, in the same folder, on the same GPU.
Two layers prevent that:

1. On Linux the child asks the kernel, between ``fork`` and ``exec``, for
   SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
   :func:`parent_death_guard`).  The request takes effect only from that
   moment, so the child then checks that its parent is still the expected
   process and kills itself if not.  The signal reaches the direct child
   only; its own children (``sh -c 'python train.py'``, data loader workers)
   are not covered.  Note that Linux sends it when the *thread* that started
   the child ends; the runner waits for its child in that thread.

2. The worker records its running child -- pid, process group, session and
   start time -- in ``.git/distribute-child.json`` of its local copy
   (:func:`record_child`) and removes the record once the child has been
   reaped (:func:`clear_child_record`).  A record found later was left by a
   worker that died; :func:`reap_leftover_command` stops whatever is left of
   that process group (SIGTERM, a bounded wait, then SIGKILL) and removes the
   record.  Only the process that owns the local copy (holds its file lock)
   may call it, before it starts a command of its own.

A pid is not an identity: it is handed out again once its process is gone.
A process counts as a leftover only when it is in the recorded process group
and session, and the group is still the recorded one: its leader, if still
there, has the recorded start time, and no member started before it.  The
start time is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot; the
record also names the boot, so a record from before a reboot matches
nothing).  Where there is no ``/proc`` the process table and start times (in
whole seconds) come from ``ps``.  Linux does not give out a number while a
process group of that id still has members, so a live group cannot be
confused with a newer one.  A record written on another host is ignored.
"""

from __future__ import annotations

import calendar
import contextlib
import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

#: The record of the running child, in the local copy's ``.git`` folder.
CHILD_RECORD = "distribute-child.json"

_PROC = Path("/proc")
_PR_SET_PDEATHSIG = 1
_PROC_CLOCK = "proc"  # start times in clock ticks since boot
_PS_CLOCK = "ps"  # start times in seconds since the epoch (whole seconds)
_AFTER_SIGKILL = 2.0  # seconds to wait for SIGKILL to take effect


@dataclass(frozen=True)
class ProcessInfo:
    """One row of the process table."""

    pid: int
    pgid: int
    sid: int | None  # None where the table does not say
    start: int
    zombie: bool


@dataclass(frozen=True)
class ChildRecord:
    """What a worker writes about its running child (see the module docstring)."""

    pid: int
    pgid: int
    sid: int | None
    start: int | None  # None: unknown, and then the record matches nothing
    clock: str
    boot: str | None
    host: str
    job: str = ""
    worker: str = ""


# ---- the process table ----------------------------------------------------------------------
def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def _has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def _parse_stat(pid: int, text: str) -> ProcessInfo | None:
    # the command name (field 2) is in parentheses and may hold spaces and parentheses itself
    fields = text[text.rfind(")") + 2:].split()
    try:
        return ProcessInfo(
            pid=pid, pgid=int(fields[2]), sid=int(fields[3]), start=int(fields[19]),
            zombie=fields[0] in ("Z", "X"),
        )
    except (IndexError, ValueError):
        return None


def _each_process(name: str) -> Iterator[tuple[int, bytes]]:
    """``(pid, content of /proc/<pid>/<name>)`` of every process whose file can be read
    (one gone meanwhile, or not ours to read, is left out)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(_PROC):
            if not entry.name.isdigit():
                continue
            try:
                content = Path(entry.path, name).read_bytes()
            except OSError:
                continue
            yield int(entry.name), content


def _proc_table() -> dict[int, ProcessInfo]:
    table: dict[int, ProcessInfo] = {}
    for pid, stat in _each_process("stat"):
        info = _parse_stat(pid, stat.decode("utf-8", errors="replace"))
        if info is not None:
            table[info.pid] = info
    return table


def _ps_table(pid: int | None = None) -> dict[int, ProcessInfo]:
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    which = ["-A"] if pid is None else ["-p", str(pid)]
    try:
        out = subprocess.run(
            ["ps", *which, "-o", "pid=,pgid=,stat=,lstart="], capture_output=True, text=True,
            env=env, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    table: dict[int, ProcessInfo] = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4:
            continue
        try:
            stamp = time.strptime(" ".join(parts[3].split()), "%a %b %d %H:%M:%S %Y")
            info = ProcessInfo(
                pid=int(parts[0]), pgid=int(parts[1]), sid=None, start=calendar.timegm(stamp),
                zombie=parts[2].startswith("Z"),
            )
        except ValueError:
            continue
        table[info.pid] = info
    return table


def process_table() -> tuple[str, dict[int, ProcessInfo]]:
    """The clock the start times are in, and every process by pid (zombies included)."""
    if _has_proc():
        return _PROC_CLOCK, _proc_table()
    return _PS_CLOCK, _ps_table()


def process_info(pid: int) -> tuple[str, ProcessInfo | None]:
    """The clock the start times are in, and the process ``pid`` (``None``: not there)."""
    if _has_proc():
        try:
            text = (_PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return _PROC_CLOCK, None
        return _PROC_CLOCK, _parse_stat(pid, text)
    return _PS_CLOCK, _ps_table(pid).get(pid)


# ---- the record -----------------------------------------------------------------------------
def record_child(
    git_dir: str | os.PathLike[str], pid: int, *, job: str = "", worker: str = ""
) -> ChildRecord:
    """Write the record of the child ``pid`` (just started) into ``git_dir``; return it.

    Written to a temporary name and renamed, so a reader never sees half a record.

    Raises:
        OSError: the record could not be written.
    """
    clock, info = process_info(pid)
    try:
        pgid = os.getpgid(pid)
    except OSError:
        pgid = info.pgid if info is not None else pid
    record = ChildRecord(
        pid=pid, pgid=pgid, sid=info.sid if info is not None else None,
        start=info.start if info is not None else None, clock=clock,
        boot=_boot_id(), host=platform.node(), job=job, worker=worker,
    )
    path = Path(git_dir) / CHILD_RECORD
    scratch = path.with_name(f"{CHILD_RECORD}.{os.getpid()}.tmp")
    scratch.write_text(json.dumps(asdict(record)), encoding="utf-8")
    os.replace(scratch, path)
    return record


def read_child_record(git_dir: str | os.PathLike[str]) -> ChildRecord | None:
    """The record in ``git_dir``, or ``None`` when there is none or it cannot be read."""
    try:
        raw = json.loads((Path(git_dir) / CHILD_RECORD).read_text(encoding="utf-8"))
        return ChildRecord(
            pid=int(raw["pid"]), pgid=int(raw["pgid"]),
            sid=None if raw.get("sid") is None else int(raw["sid"]),
            start=None if raw.get("start") is None else int(raw["start"]),
            clock=str(raw["clock"]), boot=raw.get("boot"), host=str(raw["host"]),
            job=str(raw.get("job", "")), worker=str(raw.get("worker", "")),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def clear_child_record(git_dir: str | os.PathLike[str]) -> None:
    """Remove the record (nothing happens when there is none)."""
    with contextlib.suppress(OSError):
        (Path(git_dir) / CHILD_RECORD).unlink(missing_ok=True)


# ---- finding and stopping leftovers ----------------------------------------------------------
def leftover_members(record: ChildRecord) -> list[ProcessInfo]:
    """The live (not zombie) processes of the recorded process group, if it is still the
    recorded one; ``[]`` when nothing of it is left or it cannot be told apart."""
    if record.start is None or record.host != platform.node():
        return []
    if record.boot is not None and _boot_id() not in (None, record.boot):
        return []
    if record.pgid <= 1 or record.pgid == os.getpgrp():
        return []  # never this process's own group (or every process: pgid 0 and 1)
    clock, table = process_table()
    if clock != record.clock:
        return []
    leader = table.get(record.pid)
    if leader is not None and leader.start != record.start:
        return []  # the pid was given to another process: the group is gone
    group = [
        p for p in table.values()
        if p.pgid == record.pgid and (record.sid is None or p.sid in (None, record.sid))
    ]
    if any(p.start < record.start for p in group):
        return []  # older than the recorded child: not the group the worker started
    return [p for p in group if not p.zombie and p.pid != os.getpid()]


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_empty(record: ChildRecord, seconds: float) -> list[ProcessInfo]:
    """Poll until the group has no live member or ``seconds`` passed; the members left."""
    deadline = time.monotonic() + seconds
    members = leftover_members(record)
    while members and time.monotonic() < deadline:
        time.sleep(0.05)
        members = leftover_members(record)
    return members


def kill_leftovers(record: ChildRecord) -> int:
    """SIGKILL what is left of the recorded group (after its child was reaped); the count."""
    members = leftover_members(record)
    if members:
        _signal_group(record.pgid, signal.SIGKILL)
    return len(members)


def reap_leftover_command(git_dir: str | os.PathLike[str], grace: float = 5.0) -> str | None:
    """Stop the command a dead worker left running in this local copy; remove its record.

    Call it only while holding the local copy (no live worker uses it), before
    starting anything there.  The recorded process group, when it still has
    members that are provably the ones the worker started, gets SIGTERM, up to
    ``grace`` seconds to end, then SIGKILL.

    Returns:
        a line for the log saying what was stopped, or ``None`` when nothing was.
    """
    record = read_child_record(git_dir)
    try:
        if record is None:
            return None
        members = leftover_members(record)
        if not members:
            return None
        count = len(members)
        _signal_group(record.pgid, signal.SIGTERM)
        left = _wait_empty(record, grace)
        how = "it ended on SIGTERM"
        if left:
            _signal_group(record.pgid, signal.SIGKILL)
            left = _wait_empty(record, _AFTER_SIGKILL)
            how = f"it did not end within {grace:g} s of SIGTERM and was sent SIGKILL"
            if left:
                how += f"; {len(left)} process(es) still there (pids {_pids(left)})"
        job = f" of job {record.job!r}" if record.job else ""
        by = f" by worker {record.worker!r}" if record.worker else ""
        return (
            f"stopped the command{job} left running{by} in an earlier process: "
            f"{count} process(es) in process group {record.pgid} (pids {_pids(members)}); {how}"
        )
    finally:
        clear_child_record(git_dir)


def kill_git_left_in(git_dir: str | os.PathLike[str], wait: float = _AFTER_SIGKILL) -> list[int]:
    """Kill the processes that a dead worker left working in its copy ``git_dir``: git
    commands (and what they started) whose environment has ``GIT_DIR=git_dir``, as
    every git command a worker runs in its copy has; return their pids.

    The caller holds the copy's file lock, so no live worker runs git there: such a
    process outlived the worker that started it (``kill -9`` of the worker does not
    reach its git), and would race with the restart that is about to remove git's
    lock files and check out.  Linux only (it reads ``/proc/<pid>/environ``); elsewhere
    it finds nothing.
    """
    wanted = b"GIT_DIR=" + os.fsencode(str(Path(git_dir).resolve()))
    found = []
    for pid, environ in _each_process("environ"):
        if pid != os.getpid() and wanted in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                found.append(pid)
    deadline = time.monotonic() + wait
    while found and time.monotonic() < deadline:
        table = _proc_table()
        if all(pid not in table or table[pid].zombie for pid in found):
            break
        time.sleep(0.02)
    return found


def _pids(members: list[ProcessInfo]) -> str:
    return ", ".join(str(p.pid) for p in sorted(members, key=lambda p: p.pid))


# ---- the parent-death signal -------------------------------------------------------------------
def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    func: Callable[..., int] = prctl
    return func


_PRCTL: list[Callable[..., int] | None] = []


def parent_death_guard(parent: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child killed (SIGKILL) when its parent dies.

    ``parent`` is the pid the child's parent must have (default: this process).
    ``prctl`` is looked up here, in the parent, so that the child only calls
    it.  ``None`` where there is no ``prctl`` (anything but Linux): the
    record-based clean-up then has to do alone.
    """
    if not _PRCTL:
        _PRCTL.append(_load_prctl())
    prctl = _PRCTL[0]
    if prctl is None:
        return None
    expected = os.getpid() if parent is None else parent
    signum = int(signal.SIGKILL)

    def guard() -> None:  # runs in the child, between fork and exec
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            return  # not granted: the record still covers the child
        if os.getppid() != expected:  # the parent died before the request took effect
            os.kill(os.getpid(), signum)

    return guard


__all__ = [
    "CHILD_RECORD",
    "ChildRecord",
    "ProcessInfo",
    "clear_child_record",
    "kill_git_left_in",
    "kill_leftovers",
    "leftover_members",
    "parent_death_guard",
    "process_info",
    "process_table",
    "read_child_record",
    "reap_leftover_command",
    "record_child",
]
