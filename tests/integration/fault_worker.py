"""A worker process that can be stopped at a precise point, run by test_faults.py.

Usage: python fault_worker.py URL PATH NAME [options]

The loop is the README's: ``get_next_job(QueueJobs())``, write
``progress.txt`` under ``worker.job_dir``, ``commit_update()``, wait
``--work`` seconds, write ``final.txt``, ``finish_job()``.

``--hang POINT`` makes the process stop itself once, at POINT, by writing
``--marker`` (JSON: the point, the job if any, the time) and then sleeping
until the test kills it (``kill -9``); it exits 99 by itself after
``--hang-limit`` seconds so that a broken test leaves no process behind.
POINT is one of:

* ``next-job``: inside the next-job function, while this worker holds the
  lock (before the function touches ``jobs.txt``; ``next-job-edited``: after
  it removed the job from ``jobs.txt`` in the working tree);
* ``running``: while running a job, after its claim and one update, before
  its finish;
* ``claim-push``: inside ``push`` right after the first claim push landed on
  the remote, before the worker learns it did (through ``wrap_transport``);
* ``finish-push``: the same, after the first finish push.

``--pause POINT`` (``next-job`` or ``running``) with ``--marker`` and
``--go``: write the marker at POINT, then wait for the go file to appear
(the test stops the process with SIGSTOP meanwhile, and creates the file
before SIGCONT) and carry on; after a ``running`` pause the job writes
``late.txt`` before it tries to finish.  Without the go file within
``--hang-limit`` seconds the process exits 98.

Prints one tab-separated line per event on stdout: ``CLAIM job attempt
branch``, ``RAN job attempt``, ``LOST job branch`` (``LeaseLost``), ``END
count``.  With ``--exit-on-lost`` a ``LeaseLost`` ends the process with exit
status 3.  ``--journal FILE`` receives one JSON line per coordinator event
and transport error, with ``time.time()`` as ``t``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from distribute.core.errors import LeaseLost, TransportError
from distribute.dist import worker_from_url
from distribute.sources import QueueJobs

EXIT_LEASE_LOST = 3
EXIT_HANG_LIMIT = 99
EXIT_NO_GO = 98


class Journal:
    """JSON lines, one per event, written through at once (the process may be killed)."""

    def __init__(self, path: str | None, worker: str) -> None:
        self.worker = worker
        self.file = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        if self.file is None:
            return
        record = {"t": time.time(), "worker": self.worker, "event": event}
        record.update({k: v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)
                       for k, v in fields.items()})
        with self.lock:
            self.file.write(json.dumps(record) + "\n")


class StopPoint:
    """Stop this process once at a given point: write the marker, then either sleep
    until killed (a hang) or wait for the go file (a pause) and carry on."""

    def __init__(self, point: str, pause: bool, marker: str | None, go: str | None,
                 limit: float, journal: Journal) -> None:
        self.point = point
        self.pause = pause
        self.marker = marker
        self.go = go
        self.limit = limit
        self.journal = journal
        self.done = False

    def at(self, point: str, **info: Any) -> bool:
        """Stop here if this is the point; ``True`` after a pause ended."""
        if self.done or point != self.point:
            return False
        self.done = True
        self.journal("pause" if self.pause else "hang", point=point, **info)
        if self.marker:
            write_marker(self.marker, point=point, pid=os.getpid(), **info)
        if self.pause:
            if self.go and wait_for(self.go, self.limit):
                self.journal("resume", point=point)
                return True
            os._exit(EXIT_NO_GO)
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            time.sleep(0.2)
        os._exit(EXIT_HANG_LIMIT)


class StopAfterPush:
    """Wraps the transport: journals transport errors, and hangs right after the first
    claim (or finish) push that landed, before the coordinator learns that it did."""

    def __init__(self, inner: Any, stop: StopPoint, journal: Journal) -> None:
        self.inner = inner
        self.stop = stop
        self.journal = journal
        self.fetched = False

    def _kind(self, updates: Any) -> str:
        if any(u.ref.startswith("refs/heads/jobs/") and u.old is None for u in updates):
            return "claim"
        first = updates[0]  # a finish: the main branch, then the merged branch's deletion
        if (first.ref.startswith("refs/heads/") and first.new
                and self.inner.commit_message(first.new).startswith("distribute: finish ")):
            return "finish"
        return "other"

    def push(self, updates: Any) -> bool:
        try:
            ok = self.inner.push(updates)
        except TransportError as exc:
            self.journal("transport-error", op="push", error=type(exc).__name__)
            raise
        if ok:
            kind = self._kind(updates)
            if kind in ("claim", "finish"):
                refs = {u.ref: u.new for u in updates}
                self.stop.at(f"{kind}-push", refs=json.dumps(refs))
        return ok

    def fetch(self, refs: Any) -> Any:
        try:
            values = self.inner.fetch(refs)
        except TransportError as exc:
            self.journal("transport-error", op="fetch", error=type(exc).__name__)
            raise
        if not self.fetched:
            self.fetched = True
            self.journal("first-fetch")
        return values

    def list_refs(self, prefix: str) -> Any:
        try:
            return self.inner.list_refs(prefix)
        except TransportError as exc:
            self.journal("transport-error", op="list_refs", error=type(exc).__name__)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def write_marker(path: str, **info: Any) -> None:
    """Write a JSON marker whole (through a rename), so a reader never sees half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"t": time.time(), **info}, f)
    os.replace(tmp, path)


def wait_for(path: str, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


def write(folder: str, name: str, text: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        f.write(text)


def say(*fields: object) -> None:
    print("\t".join(str(f) for f in fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fault_worker.py")
    p.add_argument("url")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--poll", type=float, default=0.05)
    p.add_argument("--max-poll", type=float, default=None)
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--retry", type=float, default=30.0)
    p.add_argument("--work", type=float, default=0.0, help="seconds between update and finish")
    p.add_argument("--hang", default="none", choices=[
        "none", "next-job", "next-job-edited", "running", "claim-push", "finish-push"])
    p.add_argument("--pause", default="none", choices=["none", "next-job", "running"])
    p.add_argument("--marker", default=None)
    p.add_argument("--go", default=None)
    p.add_argument("--hang-limit", type=float, default=120.0)
    p.add_argument("--journal", default=None)
    p.add_argument("--exit-on-lost", action="store_true")
    args = p.parse_args(argv)

    if args.hang != "none" and args.pause != "none":
        p.error("--hang and --pause exclude each other")
    journal = Journal(args.journal, args.name)
    paused = args.pause != "none"
    stop = StopPoint(args.pause if paused else args.hang, paused, args.marker, args.go,
                     args.hang_limit, journal)
    worker = worker_from_url(
        args.url, path=args.path, name=args.name, lease_seconds=args.lease,
        poll_seconds=args.poll, max_poll_seconds=args.max_poll, margin_seconds=args.margin,
        retry_seconds=args.retry, journal=journal,
        wrap_transport=lambda t: StopAfterPush(t, stop, journal),
    )
    journal("start", session=worker.session, pid=os.getpid())
    queue = QueueJobs()

    def next_job(w: Any) -> str | None:
        stop.at("next-job")
        job = queue(w)
        stop.at("next-job-edited", job=job)
        return job

    count = 0
    while True:
        job = worker.get_next_job(next_job)
        if job is None:
            break
        branch, attempt = worker.job_branch, worker.attempt
        say("CLAIM", job, attempt, branch)
        journal("got-job", job=job, attempt=attempt, branch=branch)
        try:
            write(worker.job_dir, "progress.txt", f"{job} attempt {attempt}\n")
            worker.commit_update()
            if stop.at("running", job=job, attempt=attempt, branch=branch):
                write(worker.job_dir, "late.txt", f"{job} late, by {args.name}\n")
            if args.work:
                time.sleep(args.work)
            write(worker.job_dir, "final.txt", f"{job} final\n")
            worker.finish_job()
        except LeaseLost:
            say("LOST", job, branch)
            journal("lease-lost", job=job, branch=branch)
            if args.exit_on_lost:
                worker.close()
                return EXIT_LEASE_LOST
            worker.discard_changes()
            continue
        count += 1
        say("RAN", job, attempt)
        journal("ran", job=job, attempt=attempt)
    worker.close()
    say("END", count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
