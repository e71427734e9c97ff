"""The original project's README example, made runnable.

    python examples/seed_example.py                      # a temporary remote with 5 jobs
    python examples/seed_example.py REMOTE PATH NAME     # a worker on your remote

Without arguments it prepares a bare repository in a temporary folder, queues
a few jobs in its ``jobs.txt`` and runs one worker until the queue is empty;
start several copies with different PATH and NAME on one REMOTE to see them
share the queue.  The loop below is the README's, with its typos fixed: a
worker on a remote, the queue as the next-job function, a stand-in for an
expensive function writing into ``worker.job_dir``, two ``commit_update()``
calls and ``finish_job()``.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

from distribute import init_remote, whetlab_make_next_jobs_func  # noqa: F401 - as in the README
from distribute.dist import worker_from_url

worker = None  # the README's next-job functions read the global worker


def some_expensive_function(job, log_path):
    """Stand-in for training: appends a few epochs of a made-up loss to files in log_path."""
    os.makedirs(log_path, exist_ok=True)
    curve = os.path.join(log_path, "curve.csv")
    first = not os.path.exists(curve)
    loss = None
    with open(curve, "a") as f, open(os.path.join(log_path, "log.txt"), "a") as log:
        if first:
            f.write("epoch,loss\n")
        start = 0 if first else 3
        for epoch in range(start, start + 3):
            loss = round(1.0 / (2 + epoch + len(job) % 5), 4)
            f.write(f"{epoch},{loss}\n")
            log.write(f"{job}: epoch {epoch} loss {loss}\n")
            time.sleep(0.02)
    return loss


def some_expensive_function_final(job, log_path):
    loss = some_expensive_function(job, log_path)
    with open(os.path.join(log_path, "final.txt"), "w") as f:
        f.write(f"{job}\tloss={loss}\n")
    return loss


# Next-job functions: the README's samples.  They run alone among all workers
# (under the remote lock), with the working tree at the latest main branch.
def random_jobs_func():
    """Simplest of job functions: a random number as the job."""
    return str(random.randint(0, 2**31))


def queue_jobs_func():
    """Take the first job of jobs.txt and rewrite the rest; the edit is committed with the claim."""
    with open(os.path.join(worker.path, "jobs.txt"), "r+") as jobs_file:
        jobs = jobs_file.read().strip().split("\n")
        if jobs[0] == "":
            return None
        next_job = jobs[0]
        remaining_jobs = jobs[1:]

    with open(os.path.join(worker.path, "jobs.txt"), "w+") as jobs_file:
        jobs_file.write("\n".join(remaining_jobs) + "\n")
    return next_job


def main(remote_url, path, name):
    global worker
    # A worker manages one local copy of the remote; every worker needs a unique name.
    worker = worker_from_url(remote_url, path=path, name=name, lease_seconds=30)

    # How jobs are chosen: random_jobs_func, queue_jobs_func, or
    # whetlab_make_next_jobs_func(worker, experiment) for a Whetlab-style service.
    next_job_func = queue_jobs_func

    finished = []
    try:
        while True:
            # Claims the next job and checks out its branch in the local copy.
            job = worker.get_next_job(next_job_func)

            # None: no job left, and no other worker still runs one.
            if job is None:
                break

            # Updates (logs, training curves) go under updates/<job> (path-safe for any name).
            updates_path = worker.job_dir
            some_expensive_function(job, log_path=updates_path)

            # Commit the changed files and push them to the job's branch.
            worker.commit_update()

            some_expensive_function_final(job, log_path=updates_path)
            worker.commit_update()

            # Merge the job branch into the main branch; the job moves to done.txt.
            worker.finish_job()
            finished.append(job)
            print(f"{worker.name} finished {job}")
    finally:
        worker.close()
    return finished


if __name__ == "__main__":
    if len(sys.argv) == 4:
        main(*sys.argv[1:4])
    elif len(sys.argv) == 1:
        root = tempfile.mkdtemp(prefix="distribute-example-")
        remote = init_remote(os.path.join(root, "remote.git"), jobs=[f"job-{i}" for i in range(5)])
        main(remote, os.path.join(root, "copy"), "example-worker")
        print(f"see the history: git --git-dir {remote} log --oneline --graph main")
    else:
        sys.exit(__doc__)
