"""A worker's local copy stays packed: snapshots and fetches from a remote on this machine
write loose objects, which nothing else would ever pack (git packs on its own only after
its own fetches), so a worker packs its copy when they pile up: at start, and every
hundred jobs it finishes."""

from __future__ import annotations

import subprocess

from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.sources import QueueJobs
from distribute.transport import local_copy


def counts(copy) -> dict[str, int]:
    out = subprocess.run(["git", "-C", str(copy), "count-objects", "-v"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return {k: int(v) for k, _, v in (line.partition(": ") for line in out.splitlines())
            if v.isdigit()}


def run_jobs(remote, copy, n):
    with worker_from_url(str(remote), path=copy, name="w") as w:
        for _ in range(n):
            job = w.get_next_job(QueueJobs())
            assert job is not None
            (copy / w.job_dir).mkdir(parents=True, exist_ok=True)
            (copy / w.job_dir / "out.txt").write_text(job)
            w.finish_job()


def test_a_copy_whose_loose_objects_piled_up_is_packed_when_a_worker_opens_it(
    tmp_path, monkeypatch
):
    remote = tmp_path / "remote.git"
    init_remote(remote, jobs=[f"j{i}" for i in range(6)])
    copy = tmp_path / "copy"
    run_jobs(remote, copy, 3)
    loose = counts(copy)["count"]
    assert loose > 10  # the direct path and the snapshots wrote them loose
    monkeypatch.setattr(local_copy, "COPY_LOOSE_LIMIT", loose + 100)
    run_jobs(remote, copy, 1)  # below the limit: left alone
    assert counts(copy)["count"] >= loose
    monkeypatch.setattr(local_copy, "COPY_LOOSE_LIMIT", 5)
    with worker_from_url(str(remote), path=copy, name="w"):  # opening it packs it
        after = counts(copy)
    assert after["count"] == 0 and after["packs"] >= 1, after
    subprocess.run(["git", "-C", str(copy), "fsck", "--connectivity-only", "--no-dangling"],
                   check=True, capture_output=True, timeout=60)
    run_jobs(remote, copy, 1)  # and it works on
