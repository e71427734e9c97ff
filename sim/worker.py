"""One simulated worker process: the seed loop, journalled.

Run as ``python -m sim.worker CONFIG.json`` by :mod:`sim.runner`; one process
per worker life.  The config is a JSON object (see :class:`WorkerConfig`).

The loop is the seed README's: ``get_next_job``, run the job function
(which writes under ``worker.job_dir``), ``commit_update()``,
``finish_job()``.  A ``LeaseLost`` is journalled and the loop goes on.  Every
step is journalled as ``invoke`` / ``ok`` / ``fail`` records, every
coordinator event through ``Worker(journal=...)``, every push through the
:class:`~sim.faults.FaultyTransport` that ``Worker(wrap_transport=...)``
puts around the git transport.

A restarted life (after ``kill -9``) first cleans its local copy the way an
operator would: removes git's stale ``*.lock`` files and resets the working
tree.  What it removed is journalled as a ``cleanup`` record.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from distribute.core import ledger
from distribute.core.names import scrub_url
from distribute.sources import call_next_job_function

from .faults import FaultPlan, FaultyTransport
from .journal import Journal

#: What the default job function writes into ``worker.job_dir`` last.
RESULT_FILE = "result.txt"
#: The file next to a local copy that marks its clone as complete.
CLONED_SUFFIX = ".cloned"


class InjectedJobFailure(Exception):
    """The default job function failed on purpose (``--job-fail-rate``)."""


@dataclass(slots=True)
class WorkerConfig:
    """Everything one worker process needs, passed as JSON."""

    url: str
    copy: str
    name: str
    journal: str
    life: int = 0
    seed: int = 0
    lease: float = 2.0
    poll: float = 0.05
    max_attempts: int = 50
    retry_seconds: float = 30.0
    deadline: float = 0.0  # time.monotonic() after which the loop stops
    job_seconds: float = 0.05
    job_fail_rate: float = 0.0
    job_func: str = ""
    next_job_func: str = ""
    locked_claims: bool = False
    done_part_lines: int = 0  # 0: the library's default
    latency: float = 0.0
    push_fail_rate: float = 0.0
    unknown_rate: float = 0.0
    lie_rate: float = 0.0
    clock_offset: float = 0.0  # seconds this process's wall clock is off (skew_wall_clock)
    clock_rate: float = 1.0  # how fast it runs against the real one
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def faults(self) -> FaultPlan:
        return FaultPlan(self.latency, self.push_fail_rate, self.unknown_rate, self.lie_rate)


def skew_wall_clock(offset: float, rate: float) -> None:
    """Give this process a wall clock of its own: from now on ``time.time()`` (and
    ``time.time_ns()``) reads ``offset`` seconds off the real one and runs ``rate`` times as
    fast, as an unsynchronised machine's clock would.  The monotonic clocks are untouched.

    For the simulator's worker processes only, before the library is imported: the
    library must never decide anything from the time of day (the lint in
    ``tests/unit/test_no_wall_clock.py`` forbids it), so a run with skewed clocks must
    check out exactly like one without.  The commit dates Distribute writes (its one
    allowed wall clock use) and the journal's ``wall`` field show the skew.
    """
    if offset == 0 and rate == 1:
        return
    real_time = time.time
    origin = real_time()

    def skewed() -> float:
        return origin + offset + (real_time() - origin) * rate

    time.time = skewed
    time.time_ns = lambda: int(skewed() * 1e9)


def load_callable(spec: str) -> Callable[..., Any]:
    """``module:function`` (or ``module:Class`` -- instantiated with no argument)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:function, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


def sleep_job(seconds: float, fail_rate: float, rng: random.Random) -> Callable[[Any, str], None]:
    """The default job: write a progress file, sleep a while, write a result file.

    The sleep is drawn from an exponential distribution with mean ``seconds``
    (capped at five times it); with probability ``fail_rate`` the job raises
    :class:`InjectedJobFailure` halfway.
    """

    def job(worker: Any, name: str) -> None:
        folder = worker.job_dir
        os.makedirs(folder, exist_ok=True)
        pause = min(seconds * 5, rng.expovariate(1 / seconds)) if seconds > 0 else 0.0
        with open(os.path.join(folder, "progress.txt"), "a", encoding="utf-8") as f:
            f.write(f"{name} attempt {worker.attempt} by {worker.name}\n")
        time.sleep(pause / 2)
        if fail_rate and rng.random() < fail_rate:
            raise InjectedJobFailure(f"injected failure of {name}")
        time.sleep(pause / 2)
        with open(os.path.join(folder, RESULT_FILE), "w", encoding="utf-8") as f:
            f.write(f"{name}\t{worker.name}\tattempt={worker.attempt}\n")

    return job


def remove_unfinished_clone(copy: Path) -> bool:
    """Remove a local copy whose clone a killed life did not finish; ``True`` if it did.

    Everything else a kill leaves in a finished copy (git's lock files, the
    edits of a next-job function) is cleared by the Worker when it opens it.
    """
    if copy.with_name(copy.name + CLONED_SUFFIX).exists() or not copy.exists():
        return False
    shutil.rmtree(copy)
    return True


class SimWorker:
    """The seed loop of one worker life, with its journal."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.journal = Journal(
            Path(config.journal) / f"{config.name}.{config.life:03d}.jsonl",
            config.name, config.life,
        )
        self.rng = random.Random(f"{config.seed}/{config.name}/{config.life}")

    def op(self, name: str, step: Callable[[], Any], **fields: Any) -> Any:
        """Run one step of the loop between ``invoke`` and ``ok``/``fail`` records."""
        self.journal.record("op", op=name, phase="invoke", **fields)
        try:
            result = step()
        except BaseException as exc:
            self.journal.record(
                "op", op=name, phase="fail", error_type=type(exc).__name__, error=str(exc)[:500],
                **fields,
            )
            raise
        self.journal.record("op", op=name, phase="ok", result=_jsonable(result), **fields)
        return result

    def run(self) -> int:
        from distribute.core.errors import LeaseLost
        from distribute.core.names import worker_ref
        from distribute.dist import worker_from_url
        from distribute.sources import QueueJobs

        c = self.config
        self.journal.record("start", copy=c.copy, lease=c.lease, url=scrub_url(c.url))
        copy = Path(c.copy)
        removed_clone = c.life > 0 and remove_unfinished_clone(copy)
        fault_rng = random.Random(f"{c.seed}/{c.name}/{c.life}/faults")

        def wrap(transport: Any) -> Any:
            return FaultyTransport(
                transport, c.faults, fault_rng, record=self.journal.record,
                own_ref=worker_ref(c.name),
            )

        worker = self.op("open", lambda: worker_from_url(
            c.url, copy, c.name, lease_seconds=c.lease, poll_seconds=c.poll,
            max_attempts=c.max_attempts, retry_seconds=c.retry_seconds,
            journal=self.journal.event, wrap_transport=wrap,
            rng=random.Random(f"{c.seed}/{c.name}/{c.life}/backoff"),
        ))
        copy.with_name(copy.name + CLONED_SUFFIX).touch()
        if c.life > 0:
            # as an operator would: a killed life's unsaved job files go
            dirty = worker.copy.changed_paths()
            if dirty:
                self.op("discard_changes", worker.discard_changes)
            self.journal.record("cleanup", removed_clone=removed_clone, dirty=dirty[:20],
                                dirty_count=len(dirty))
        self.journal.session = worker.session
        self.journal.record("session")
        next_job = load_callable(c.next_job_func) if c.next_job_func else QueueJobs()
        job_func = (
            load_callable(c.job_func) if c.job_func
            else sleep_job(c.job_seconds, c.job_fail_rate, self.rng)
        )

        def next_job_func(w: Any) -> Any:
            return self.op("next_job", lambda: call_next_job_function(next_job, w))

        if not c.next_job_func and not c.locked_claims:
            queue, op = next_job, self.op

            class FromFiles:
                """The queue as the library's own: repo-only and answering from the files
                (so claims go unlocked and hand jobs off), its answers journalled."""

                repo_only = True

                def __call__(self, w: Any) -> Any:
                    return next_job_func(w)

                def next_job_from_files(self, read: Any) -> Any:
                    return op("next_job", lambda: queue.next_job_from_files(read))

            next_job_func = FromFiles()  # type: ignore[assignment]

        reason = "no more jobs"
        try:
            while True:
                if time.monotonic() > c.deadline:
                    reason = "deadline"
                    break
                job = self.op("get_next_job", partial(worker.get_next_job, next_job_func))
                if job is None:
                    # the end of this worker's loop, timed before close(): the checker's
                    # idle tail runs from the last finish to the last of these
                    self.journal.record("no-job")
                    break
                try:
                    self.op("run", partial(job_func, worker, job), job=job)
                except InjectedJobFailure as exc:
                    self._fail(worker, job, str(exc), LeaseLost)
                    continue
                try:
                    self.op("commit_update", worker.commit_update, job=job)
                    self.op("finish_job", worker.finish_job, job=job)
                except LeaseLost:
                    self._after_lease_lost(worker, job)
        finally:
            self.op("close", worker.close)
        self.journal.record("exit", reason=reason)
        return 0

    def _fail(self, worker: Any, job: str, reason: str, lease_lost: type[Exception]) -> None:
        try:
            self.op("fail_job", lambda: worker.fail_job(reason), job=job)
        except lease_lost:
            self._after_lease_lost(worker, job)

    def _after_lease_lost(self, worker: Any, job: str) -> None:
        """After ``LeaseLost`` the worker runs no job; what the lost job wrote since its
        last update is thrown away so that the next job starts on a clean copy."""
        if worker.running_job is not None:
            raise AssertionError(f"the worker still runs {worker.running_job!r} after LeaseLost")
        self.op("discard_changes", worker.discard_changes, job=job)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.worker")
    parser.add_argument("config", help="path of the worker's JSON config")
    args = parser.parse_args(argv)
    config = WorkerConfig.from_json(Path(args.config).read_text(encoding="utf-8"))
    skew_wall_clock(config.clock_offset, config.clock_rate)
    if config.done_part_lines:
        ledger.DONE_PART_LINES = config.done_part_lines
    sim = SimWorker(config)
    try:
        return sim.run()
    except BaseException as exc:
        sim.journal.record(
            "exit", reason="error", error_type=type(exc).__name__, error=str(exc)[:1000],
            traceback=traceback.format_exc()[-4000:],
        )
        print(f"{config.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        sim.journal.close()


if __name__ == "__main__":
    sys.exit(main())
