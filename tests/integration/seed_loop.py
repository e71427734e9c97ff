"""The seed README's worker loop, runnable as a process by the integration tests.

Usage: python seed_loop.py URL PATH NAME [--defaults]

With ``--defaults`` the worker keeps every default option (the 120 s lease among them).
It prints ``RAN<TAB>job`` for each job it ran, and the system's monotonic clock (the same
for every process on this machine) when each finish landed (``FINISHED``) and when
``get_next_job`` returned ``None`` (``NONE``).
"""

from __future__ import annotations

import os
import sys
import time

from distribute.dist import worker_from_url


def queue_jobs_func_for(worker):
    # the seed's hand-written queue function, reading worker.path
    def queue_jobs_func():
        with open(os.path.join(worker.path, "jobs.txt"), "r+") as jobs_file:
            jobs = jobs_file.read().strip().split("\n")
            if jobs[0] == "":
                return None
            next_job = jobs[0]
            remaining_jobs = jobs[1:]
        with open(os.path.join(worker.path, "jobs.txt"), "w+") as jobs_file:
            jobs_file.write("\n".join(remaining_jobs) + "\n")
        return next_job

    return queue_jobs_func


def some_expensive_function(job, log_path, stage):
    os.makedirs(log_path, exist_ok=True)
    with open(os.path.join(log_path, f"{stage}.txt"), "w") as f:
        f.write(f"{job} {stage}\n")


def main(url, path, name, *flags):
    options = {} if "--defaults" in flags else {"lease_seconds": 20, "poll_seconds": 0.05}
    worker = worker_from_url(url, path=path, name=name, **options)
    next_job_func = queue_jobs_func_for(worker)
    ran = []
    while True:
        job = worker.get_next_job(next_job_func)
        if job is None:
            print(f"NONE\t{time.monotonic()}", flush=True)
            break
        updates_path = worker.job_dir
        some_expensive_function(job, updates_path, "progress")
        worker.commit_update()
        some_expensive_function(job, updates_path, "final")
        worker.commit_update()
        worker.finish_job()
        print(f"FINISHED\t{time.monotonic()}", flush=True)
        ran.append(job)
    worker.close()
    for job in ran:
        print("RAN\t" + job)


if __name__ == "__main__":
    main(*sys.argv[1:])
