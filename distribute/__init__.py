"""Distribute: run machine-learning jobs on many machines, coordinated by one git remote.

The seed API lives in :mod:`distribute.dist` (``Worker``, ``worker_from_url``).
"""

from distribute.core.errors import (
    AttemptsExhausted,
    DirtyWorkingTree,
    DistributeError,
    FileTooLarge,
    InvalidName,
    JobAlreadyRunning,
    LeaseLost,
    LocalCopyBusy,
    MergeConflict,
    NoRunningJob,
    OutcomeUnknown,
    RemoteStateError,
    TransportError,
    UsageError,
)
from distribute.sources import (
    QueueJobs,
    RandomJobs,
    queue_jobs_func,
    repo_only,
    whetlab_make_next_jobs_func,
)

__version__ = "1.0.0"

__all__ = [
    "AttemptsExhausted",
    "DirtyWorkingTree",
    "DistributeError",
    "FileTooLarge",
    "InvalidName",
    "JobAlreadyRunning",
    "LeaseLost",
    "LocalCopyBusy",
    "MergeConflict",
    "NoRunningJob",
    "OutcomeUnknown",
    "QueueJobs",
    "RandomJobs",
    "RemoteStateError",
    "TransportError",
    "UsageError",
    "Worker",
    "__version__",
    "add_jobs",
    "init_remote",
    "queue_jobs_func",
    "repo_only",
    "whetlab_make_next_jobs_func",
    "worker_from_url",
]


def __getattr__(name: str) -> object:
    # these pull in git; import them lazily so the core stays light
    if name in ("init_remote", "add_jobs"):
        from distribute import remote

        return getattr(remote, name)
    if name in ("Worker", "worker_from_url"):
        from distribute import dist

        return getattr(dist, name)
    raise AttributeError(name)
