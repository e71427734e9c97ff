"""The heartbeat goes on while the worker's own thread waits on the network.

A checkpoint can take minutes to upload, and a look at a busy remote minutes to
download.  Were the coordinator's lock held across that wait, the heartbeat thread
would queue behind it, the worker's liveness record would stop moving, and another
worker would take its job over mid-upload.  These tests block the main thread's
transfer and require the heartbeat to land meanwhile (in-memory remote, fake clock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fake_clock import Clock

from distribute.coordination import Coordinator, JobHolding, prepare_remote
from distribute.core.plan import CallNextJobFunction
from distribute.transport.memory import MemoryRemote

LEASE = 30.0
BOUND = 10.0  # seconds any thread here may wait before the test gives up on it


def running_worker() -> tuple[Coordinator, Clock, JobHolding]:
    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": b"j1\n"})
    clock = Clock()
    a = Coordinator(remote.transport("a"), worker="a", session="a#1", branch="main",
                    lease=LEASE, margin=5.0, max_attempts=3, clock=clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    job = a.claim(snap, CallNextJobFunction(), "j1", None)
    assert isinstance(job, JobHolding)
    return a, clock, job


class Gate:
    """Holds the calls ``blocks(...)`` picks until :meth:`open`; says when one waits."""

    def __init__(self, blocks: Callable[..., bool]) -> None:
        self.blocks = blocks
        self.waiting = threading.Event()
        self._open = threading.Event()

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kw: Any) -> Any:
            if self.blocks(*args, **kw):
                self.waiting.set()
                assert self._open.wait(BOUND), "the gate was never opened"
            return call(*args, **kw)
        return gated

    def open(self) -> None:
        self._open.set()


def renews_while_blocked(a: Coordinator, clock: Clock, gate: Gate,
                         transfer: Callable[[], object]) -> tuple[bool, list[object]]:
    """Run ``transfer`` in a thread, held at the gate; run one heartbeat tick meanwhile.
    Returns whether the tick finished while the transfer still waited, and what the
    transfer returned (or raised)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(transfer())
        except Exception as exc:  # noqa: BLE001 - handed to the test to look at
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert gate.waiting.wait(BOUND), "the transfer never reached the network"
    clock.now += LEASE / 3 + 1  # the liveness record is due for renewal
    before = a.stats.renewals
    beat = threading.Thread(target=a.renew, daemon=True)
    beat.start()
    beat.join(BOUND)
    done_meanwhile = not beat.is_alive() and a.stats.renewals == before + 1
    gate.open()
    beat.join(BOUND)
    worker.join(BOUND)
    assert not worker.is_alive()
    return done_meanwhile, out


def test_the_heartbeat_lands_while_an_update_uploads():
    a, clock, job = running_worker()
    tip = a.transport.write_commit(parents=[job.tip], message="checkpoint",
                                   changes={"updates/j1/model.bin": b"weights"})
    gate = Gate(lambda updates: any(u.ref == job.branch_ref for u in updates))
    a.transport.push = gate.wrap(a.transport.push)  # type: ignore[method-assign]
    meanwhile, out = renews_while_blocked(a, clock, gate, lambda: a.update(tip))
    assert meanwhile, "the heartbeat waited for the upload"
    assert out == [None] and a.job is job and job.tip == tip


def reads_held(a: Coordinator, step: Callable[[], object]) -> tuple[Gate, Callable[[], object]]:
    """A gate on the reads of the remote (fetches, ref listings) that ``step`` makes
    from its own thread (the heartbeat's are let through), and the step to hand to
    :func:`renews_while_blocked`."""
    stepping: list[int] = []
    gate = Gate(lambda refs: threading.get_ident() in stepping)
    a.transport.fetch = gate.wrap(a.transport.fetch)  # type: ignore[method-assign]
    a.transport.list_refs = gate.wrap(a.transport.list_refs)  # type: ignore[method-assign]

    def run() -> object:
        stepping.append(threading.get_ident())
        return step()

    return gate, run


@pytest.mark.parametrize("step", ["look", "peek", "finish", "fail"])
def test_the_heartbeat_lands_while_a_step_downloads(step: str):
    """A look, a finish and a fail each start with a fetch of the main branch, which
    brings what other workers finished meanwhile: possibly much; a peek reads refs."""
    a, clock, _ = running_worker()
    steps: dict[str, Callable[[], object]] = {
        "look": a.observe, "peek": a.peek, "finish": a.finish_step,
        "fail": lambda: a.fail_step("boom"),
    }
    gate, run = reads_held(a, steps[step])
    meanwhile, out = renews_while_blocked(a, clock, gate, run)
    assert meanwhile, f"the heartbeat waited for the {step}'s read"
    assert len(out) == 1 and out[0] is not None and not isinstance(out[0], Exception)


def test_the_heartbeat_reads_back_a_lost_answer_without_waiting_for_a_look():
    """Found in review: git fetches one at a time (the transport's fetch lock), so a
    heartbeat that read back its push with a fetch waited for a look's download.  The
    answer of the heartbeat's push is lost here; its read-back must not wait."""
    a, clock, _ = running_worker()
    fetching = threading.Lock()  # as GitTransport's fetch lock
    stepping: list[int] = []
    gate = Gate(lambda refs: threading.get_ident() in stepping)
    fetch = gate.wrap(a.transport.fetch)

    def one_at_a_time(refs: object) -> object:
        with fetching:
            return fetch(refs)

    a.transport.fetch = one_at_a_time  # type: ignore[method-assign,assignment]
    a.transport.remote.fault_hook = lambda name, ups: (  # type: ignore[attr-defined]
        "unknown-applied" if any(u.ref == a.own_ref for u in ups) else None)

    def look() -> object:
        stepping.append(threading.get_ident())
        return a.observe()

    meanwhile, out = renews_while_blocked(a, clock, gate, look)
    assert meanwhile, "the heartbeat's read-back waited for the look's fetch"
    assert len(out) == 1 and not isinstance(out[0], Exception)


def test_an_update_that_finds_its_job_taken_over_still_says_so():
    """Taking the lock off the upload must not lose the fencing: a revocation seen by
    the heartbeat during the upload makes the update raise ``LeaseLost``."""
    from distribute.core.errors import LeaseLost

    a, clock, job = running_worker()
    tip = a.transport.write_commit(parents=[job.tip], message="checkpoint",
                                   changes={"updates/j1/model.bin": b"weights"})
    gate = Gate(lambda updates: any(u.ref == job.branch_ref for u in updates))
    a.transport.push = gate.wrap(a.transport.push)  # type: ignore[method-assign]
    out: list[object] = []

    def run() -> None:
        try:
            a.update(tip)
            out.append(None)
        except LeaseLost as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert gate.waiting.wait(BOUND)
    a.revoked = True  # what the heartbeat records when it finds its record revoked
    gate.open()
    t.join(BOUND)
    assert len(out) == 1 and isinstance(out[0], LeaseLost)
    assert a.job is None


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


def test_looks_and_heartbeats_at_once_keep_the_in_memory_mirror_whole():
    """Found in review: with looks no longer under the coordinator's lock, a look and a
    heartbeat's read-back of a push whose answer was lost fetch at once, and the
    in-memory transport's mirror changed size under one of them."""
    import sys

    remote = MemoryRemote()
    seed = remote.transport("init")
    prepare_remote(seed, "main", {"jobs.txt": b"j1\n"})
    empty = seed.write_commit(parents=[], message="x", changes={})
    for i in range(300):  # other workers' records: a long mirror to rebuild
        remote.set_ref(f"refs/distribute/workers/other{i}", empty)
    clock = Clock()
    a = Coordinator(remote.transport("a"), worker="a", session="a#1", branch="main",
                    lease=LEASE, margin=5.0, max_attempts=3, clock=clock)
    snap = a.observe()
    assert a.try_acquire(snap)
    assert isinstance(a.claim(snap, CallNextJobFunction(), "j1", None), JobHolding)
    # every push of a's record lands but its answer is lost: read back with a fetch
    remote.fault_hook = lambda name, ups: (
        "unknown-applied" if any(u.ref == a.own_ref for u in ups) else None)
    stop = threading.Event()
    errors: list[str] = []

    def heartbeat() -> None:
        while not stop.is_set():
            clock.now += LEASE / 3 + 1
            try:
                a.renew()
            except (RuntimeError, KeyError) as exc:
                errors.append(f"heartbeat: {exc!r}")
                stop.set()
            except Exception:  # noqa: BLE001, S112 - the library's own errors: tick again
                continue

    def looks() -> None:
        for _ in range(200):
            if stop.is_set():
                return
            try:
                a.observe()
            except (RuntimeError, KeyError) as exc:
                errors.append(f"look: {exc!r}")
                stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=heartbeat, daemon=True),
                   threading.Thread(target=looks, daemon=True)]
        for t in threads:
            t.start()
        threads[1].join(60)
        stop.set()
        threads[0].join(BOUND)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
