"""Several workers from one command: ``distribute work REMOTE --gpus N`` (or ``--slots N``).

Theory of operation
-------------------
``work --gpus`` starts one child process per GPU, each an ordinary ``distribute
work`` without ``--name``, so that each takes a slot of this machine
(``<host>-1``, ``<host>-2``, ...) and keeps it across restarts, exactly like
workers started by hand; ``work --slots N`` does the same for N workers that
share this machine's devices.  The children's copies of the remote share one
object store (:mod:`distribute.transport.shared_objects`), so N workers cost one
download and one store of the remote's history, not N.  A child's environment
has ``DISTRIBUTE_SLOT`` set to its number among the children (0, 1, ...: the
``{slot}`` of its jobs' commands) and, with ``--gpus``, ``CUDA_VISIBLE_DEVICES``
set to its GPU; a job's command inherits both.  The parent only supervises:

* each line a child prints is printed by the parent with a ``[gpu G: worker]``
  (or ``[slot S: worker]``) prefix, before the child has named itself
  ``[gpu G]``, on the same stream;
* every SIGINT and SIGTERM the parent gets is passed on to every child, which
  stops as a lone ``work`` would (the command is stopped, the attempt ends as
  interrupted, what the worker held is released); a second signal makes the
  children kill their commands at once, as it does for a lone ``work``;
* the children run in sessions of their own, so a terminal's Ctrl-C reaches
  them once, through the parent;
* a child is started with the parent-death signal (:mod:`distribute.orphans`),
  so a parent killed without warning takes its children along, and each
  child's own command with it; the next ``work`` on a slot stops what is left
  and resumes that slot's job.

The exit code combines the children's (:func:`combined_exit_code`).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from distribute.core.errors import UsageError
from distribute.orphans import parent_death_guard
from distribute.runner import SLOT_ENV

#: The environment variable that tells CUDA (and the frameworks on it) which GPU to use.
DEVICE_ENV = "CUDA_VISIBLE_DEVICES"

_GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_ANNOUNCE = re.compile(r"^worker (\S+) on ")
_EXIT_BREAKER, _EXIT_ALL_FAILED = 3, 4
_HINT = "give a count (--gpus 2) or GPU ids (--gpus 0,1,3; a single id: --gpus 3,)"


def parse_gpus(spec: str) -> list[str]:
    """The GPU ids ``--gpus`` names: ``N`` is ``0..N-1``; ``0,1,3`` (or ``3,``) those ids.

    Raises:
        UsageError: an empty or malformed spec, an id twice, or a count of 0.
    """
    text = spec.strip()
    if "," not in text:
        if not text.isdigit():
            raise UsageError(f"--gpus {spec!r} is not a GPU count or list; {_HINT}")
        count = int(text)
        if count < 1:
            raise UsageError(f"--gpus {spec} starts no worker; {_HINT}")
        return [str(i) for i in range(count)]
    ids = [part.strip() for part in text.split(",")]
    if ids and ids[-1] == "":
        ids.pop()  # "3," is GPU 3 alone
    if not ids or any(not _GPU_ID.match(i) for i in ids):
        raise UsageError(f"--gpus {spec!r}: each GPU id must be a number or a GPU's name "
                         f"(letters, digits, '-', '_', '.', ':'); {_HINT}")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UsageError(f"--gpus {spec!r} names GPU {', '.join(twice)} twice; {_HINT}")
    return ids


def combined_exit_code(codes: Sequence[int], signum: int | None = None) -> int:
    """One exit code for the workers' exit codes (negative: killed by that signal).

    128 + ``signum`` when a signal stopped them all; else 1 when any worker ended
    with an error (any code but 0, 3 and 4, or killed); else 3 when any worker's
    breaker stopped it; else 4 when every worker's every job failed; else 0.
    """
    if signum:
        return 128 + signum
    if any(c not in (0, _EXIT_BREAKER, _EXIT_ALL_FAILED) for c in codes):
        return 1
    if _EXIT_BREAKER in codes:
        return _EXIT_BREAKER
    if codes and all(c == _EXIT_ALL_FAILED for c in codes):
        return _EXIT_ALL_FAILED
    return 0


@dataclass
class Child:
    """One worker process and what the parent learnt of it."""

    slot: int
    gpu: str | None
    proc: subprocess.Popen[bytes]
    name: str = ""
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"slot {self.slot}" if self.gpu is None else f"gpu {self.gpu}"
        return where + (f": {self.name}" if self.name else "")


class GpuWorkers:
    """Start ``argv`` once per slot and supervise the children (see the module docstring).

    Args:
        gpus: per slot, its GPU id, or ``None`` for a slot without a GPU of its own.
        argv: the child's command line (a ``distribute work`` without ``--gpus``).
        env: the children's environment; each gets ``DISTRIBUTE_SLOT`` and, for a slot
            with a GPU, ``CUDA_VISIBLE_DEVICES`` on top.
        out, err: where the children's prefixed stdout and stderr lines go.
    """

    def __init__(
        self, gpus: Sequence[str | None], argv: Sequence[str], env: Mapping[str, str],
        out: IO[str], err: IO[str],
    ) -> None:
        self.gpus = list(gpus)
        self.argv = list(argv)
        self.env = dict(env)
        self.out, self.err = out, err
        self.children: list[Child] = []
        self.signum: int | None = None
        self._write_lock = threading.Lock()

    # ---- output ------------------------------------------------------------------
    def _pump(self, child: Child, stream: IO[bytes], sink: IO[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not child.name and sink is self.err:
                found = _ANNOUNCE.match(line)
                if found:
                    child.name = found.group(1)
            self._say(f"[{child.label}] {line}", sink)
        stream.close()

    def _say(self, line: str, sink: IO[str]) -> None:
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            sink.write(line + "\n")
            sink.flush()

    # ---- signals -----------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        for child in self.children:
            self._send(child, signum)

    @staticmethod
    def _send(child: Child, signum: int) -> None:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)

    # ---- the run -----------------------------------------------------------------
    def run(self) -> int:
        """Run the workers to their end; return :func:`combined_exit_code` of them."""
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        finished = False
        try:
            for slot, gpu in enumerate(self.gpus):
                if self.signum is not None:
                    break
                self._start(slot, gpu)
            # the readers start once every child is: no fork while threads of ours run
            for child in self.children:
                for reader in child.readers:
                    reader.start()
            for child in self.children:
                child.proc.wait()
            for child in self.children:
                for reader in child.readers:
                    if reader.is_alive():
                        reader.join(timeout=30)
            finished = True
        finally:
            if not finished:  # an error here: no child may run on without its supervisor
                self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        codes = [c.proc.returncode for c in self.children]
        return combined_exit_code(codes, self.signum)

    def _start(self, slot: int, gpu: str | None) -> None:
        env = {**self.env, SLOT_ENV: str(slot)}
        if gpu is not None:
            env[DEVICE_ENV] = gpu
        proc = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=parent_death_guard(),
        )
        child = Child(slot, gpu, proc)
        self.children.append(child)
        if self.signum is not None:  # a signal came while it was being started
            self._send(child, self.signum)
        assert proc.stdout is not None and proc.stderr is not None
        for stream, sink in ((proc.stdout, self.out), (proc.stderr, self.err)):
            child.readers.append(threading.Thread(
                target=self._pump, args=(child, stream, sink), daemon=True))

    def _stop_all(self) -> None:
        for child in self.children:
            self._send(child, signal.SIGTERM)
        for child in self.children:
            try:
                child.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    def summary(self) -> str:
        """One line: each worker, its GPU or slot and how it ended."""

        def ended(code: int | None) -> str:
            if code is None:
                return "running"
            if code < 0:
                return f"killed by signal {-code}"
            return f"exit {code}"

        parts = [f"{c.label} {ended(c.proc.returncode)}" for c in self.children]
        return f"{len(self.children)} workers: " + ", ".join(parts)


__all__ = [
    "DEVICE_ENV",
    "GpuWorkers",
    "combined_exit_code",
    "parse_gpus",
]
