"""A checkpoint whose upload outlasts the lease keeps its job (real git, real threads).

The worker's push of its job branch is slowed to three leases; another worker waits
for jobs meanwhile.  The heartbeat must keep the first worker's liveness record moving
through the upload, so the job is not taken over and its finish lands.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import queue_jobs_func

LEASE = 1.5


def test_a_job_whose_upload_outlasts_the_lease_is_not_taken_over(tmp_path: Path):
    remote = tmp_path / "remote.git"
    init_remote(remote)
    add_jobs(remote, ["j1"])
    with worker_from_url(str(remote), tmp_path / "a", "a", lease_seconds=LEASE,
                         poll_seconds=0.1) as a:
        assert a.get_next_job(queue_jobs_func) == "j1"
        transport = a.coord.transport
        push = transport.push
        uploads: list[float] = []

        def slow_push(updates, *args, **kw):  # type: ignore[no-untyped-def]
            if any(u.ref == "refs/heads/" + a.job_branch for u in updates):
                started = time.monotonic()
                time.sleep(3 * LEASE)  # a large checkpoint on a slow link
                uploads.append(time.monotonic() - started)
            return push(updates, *args, **kw)

        transport.push = slow_push  # type: ignore[method-assign]
        got: list[str | None] = []

        def other() -> None:
            with worker_from_url(str(remote), tmp_path / "b", "b", lease_seconds=LEASE,
                                 poll_seconds=0.1) as b:
                got.append(b.get_next_job(queue_jobs_func))

        waiting = threading.Thread(target=other, daemon=True)
        waiting.start()
        Path(a.job_dir).mkdir(parents=True, exist_ok=True)
        Path(a.job_dir, "model.bin").write_bytes(b"weights")
        assert a.commit_update("checkpoint")
        transport.push = push  # type: ignore[method-assign]
        assert uploads and uploads[0] >= 3 * LEASE  # the upload did outlast the lease
        a.finish_job()  # raises LeaseLost if b took the job over meanwhile
    waiting.join(60)
    assert got == [None]  # b found nothing to take: j1 is done, not orphaned
