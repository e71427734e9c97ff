"""Example next-job and job functions for ``--next-job-func`` and ``--job-func``.

``python -m sim --next-job-func sim.jobs:counter`` takes jobs from a counter
file kept in the repository (``sim-counter.txt``): each call reads it,
writes it back incremented, and returns ``count-<n>`` -- an edit that must
travel with the claim, atomically, and be replayed when the main branch moved.
It stops after :data:`COUNTER_LIMIT` jobs.  ``--job-func sim.jobs:touch``
writes one small file and returns at once.
"""

from __future__ import annotations

import os
from typing import Any

COUNTER_FILE = "sim-counter.txt"
COUNTER_LIMIT = 20


def counter(worker: Any) -> str | None:
    """The next ``count-<n>`` from the counter file, or ``None`` after :data:`COUNTER_LIMIT`."""
    path = os.path.join(worker.path, COUNTER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            n = int(f.read().strip() or "0")
    except FileNotFoundError:
        n = 0
    if n >= COUNTER_LIMIT:
        return None
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{n + 1}\n")
    return f"count-{n + 1:04d}"


def touch(worker: Any, job: str) -> None:
    """Write ``worker.job_dir/touched.txt`` naming the job and the worker."""
    os.makedirs(worker.job_dir, exist_ok=True)
    with open(os.path.join(worker.job_dir, "touched.txt"), "w", encoding="utf-8") as f:
        f.write(f"{job}\t{worker.name}\n")
