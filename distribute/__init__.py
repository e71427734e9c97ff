"""Distribute: run machine-learning jobs on many machines, coordinated by one git remote.

The seed API lives in :mod:`distribute.dist` (``Worker``, ``worker_from_url``).
"""

from distribute.core.errors import (
    AttemptsExhausted,
    DirtyWorkingTree,
    DistributeError,
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
from distribute.sources import QueueJobs, RandomJobs, queue_jobs_func, whetlab_make_next_jobs_func

__version__ = "1.0.0"

__all__ = [
    "AttemptsExhausted",
    "DirtyWorkingTree",
    "DistributeError",
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
    "__version__",
    "init_remote",
    "queue_jobs_func",
    "whetlab_make_next_jobs_func",
]


def __getattr__(name: str) -> object:
    # init_remote pulls in git; import it lazily so the core stays light
    if name == "init_remote":
        from distribute.remote import init_remote

        return init_remote
    raise AttributeError(name)
