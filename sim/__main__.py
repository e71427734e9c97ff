"""``python -m sim``: many worker processes, one remote, injected faults, a checked history.

Each worker is its own OS process with its own local copy, running the seed
README's loop over a ``jobs.txt`` queue (``--jobs``) or a next-job function
(``--next-job-func module:function``).  Faults: ``--kill-rate`` (kills per
second, fleet-wide; the worker is restarted with the same name and local
copy), ``--pause-rate`` (pauses per second; ``SIGSTOP`` for 1.5 to 3 leases,
then ``SIGCONT``), ``--push-fail-rate`` and ``--unknown-rate`` (probability
per push), ``--latency`` (mean seconds added to each remote operation).
Afterwards the checker verifies the guarantees of docs/protocol.md (section 4)
from the journals and the remote's final state, and that the workers leave
promptly once the queue is drained (the idle tail, within
:func:`sim.checker.idle_tail_bound`).  Exit status: 0 when it holds, 1 on any
violation (the seed and the command that repeats the run are printed), 2 on bad
usage.

Profiles (2 cores; scale down ``--workers`` on smaller machines)::

    # the default profile: 8 workers, 80 jobs, every fault; ~20-35 s
    python -m sim

    # the integration test's profile (tests/integration/test_sim.py), ~20 s
    python -m sim --workers 6 --jobs 40 --lease 1.5 --job-seconds 0.4 --seed 20241126

    # mid-sized: every fault at once, over git daemon
    python -m sim --workers 12 --jobs 300 --lease 2 --kill-rate 0.3 --pause-rate 0.2 \\
        --push-fail-rate 0.03 --unknown-rate 0.03 --latency 0.01 --remote daemon \\
        --duration 600 --seed 7 --out sim-runs/mid

    # over real hosting on 127.0.0.1: sshd (key authentication) or smart HTTP (lighttpd
    # and git http-backend, basic authentication), started from the repository's
    # tests/servers.py and stopped at the end; a missing program is named with its package
    python -m sim --workers 8 --jobs 60 --kill-rate 0.3 --pause-rate 0.2 \\
        --push-fail-rate 0.03 --unknown-rate 0.03 --remote ssh --seed 3

    # large: 32 workers, 2,000 jobs, hundreds of faults (tens of minutes on 2 cores)
    python -m sim --workers 32 --jobs 2000 --lease 3 --kill-rate 0.3 --pause-rate 0.3 \\
        --push-fail-rate 0.02 --unknown-rate 0.02 --duration 3600 --seed 11 --out sim-runs/large

``--out DIR`` writes the journals (``DIR/journal/*.jsonl``), ``timeline.svg``
and ``summary.json``; ``--keep`` keeps the remote and the local copies and
prints where they are.
"""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
