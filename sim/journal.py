"""Journals: one JSON-lines file per worker process life, plus the fault injector's.

Every record carries ``kind``, ``t`` (``time.monotonic()``, system-wide on
Linux, so comparable across the processes of one host), ``wall``
(``time.time()``: the process's own wall clock, which the simulator skews per
worker life, so never compared across processes), ``worker``, ``life``, ``pid``,
``session`` (the worker's session once it has one) and ``seq`` (order within
the file).  Kinds:

* ``start`` / ``exit``: a process life begins or ends (``exit`` carries
  ``reason`` and, for an unexpected error, ``error_type`` and ``error``);
* ``op``: a step of the seed loop -- ``op`` (``get_next_job``, ``next_job``,
  ``run``, ``commit_update``, ``finish_job``, ``fail_job``) and ``phase``
  (``invoke``, ``ok`` with ``result``, ``fail`` with ``error_type`` and
  ``error``);
* ``event``: a coordinator journal event (``event`` plus its fields);
* ``push``: a push through :class:`sim.faults.FaultyTransport` -- ``phase``
  ``invoke`` (``id``, ``refs`` as ``[ref, old, new]`` triples, ``own_ref``)
  then ``done`` (``id``, ``outcome``);
* ``cleanup``: what a restarted life removed from its local copy;
* ``no-job``: ``get_next_job`` returned ``None`` and the worker leaves its
  loop (written at once, before the worker is closed); the last of these
  ends the run's idle tail (see :func:`sim.checker.idle_tail`);
* ``fault``: written by the injector (``fault`` is ``kill``, ``pause``,
  ``resume`` or ``restart``; ``worker`` and ``life`` name the target).

Lines are flushed one by one, so a process killed with ``SIGKILL`` loses at
most the line it was writing; :func:`read_journals` skips a torn last line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

COMMON = frozenset({"kind", "t", "wall", "worker", "life", "pid", "session", "seq"})


class Journal:
    """Appends records to one JSON-lines file; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike[str], worker: str, life: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.life = life
        self.session: str | None = None
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, kind: str, **fields: Any) -> None:
        """Append one record; ``worker``/``life`` in ``fields`` override the journal's own."""
        with self._lock:
            if self._file is None:
                return
            self._seq += 1
            rec: dict[str, Any] = {
                "kind": kind,
                "t": time.monotonic(),
                "wall": time.time(),
                "worker": fields.pop("worker", self.worker),
                "life": fields.pop("life", self.life),
                "pid": fields.pop("pid", os.getpid()),
                "session": self.session,
                "seq": self._seq,
            }
            for key, value in fields.items():
                rec[f"f_{key}" if key in COMMON else key] = value
            self._file.write(json.dumps(rec, default=str, ensure_ascii=True) + "\n")
            self._file.flush()

    def event(self, event: str, **fields: Any) -> None:
        """The coordinator's ``journal(event, **fields)`` callback."""
        self.record("event", event=event, **fields)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of one journal file; a torn or damaged line is skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_journals(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of every ``*.jsonl`` file in ``folder``."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        records.extend(iter_records(path))
    return records
