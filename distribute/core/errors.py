"""Every error Distribute raises, grouped by whose fault it is.

* :class:`UsageError` -- the caller broke a rule (a bad job name, a dirty
  working tree, a second worker on one local copy).  Fix the call.
* :class:`RemoteStateError` -- the remote is not in a state Distribute can
  work with (ledgers missing, ``--atomic`` refused).  Fix the remote.
* :class:`LeaseLost` -- this worker's holding was taken over; its late write
  was refused and nothing on the main branch changed.
* :class:`TransportError` -- the remote could not be reached or git failed.

All of them pickle with their arguments, so a simulator can pass them
between processes.  Messages never contain credentials: the transport scrubs
URLs before building them (see :func:`distribute.core.names.scrub_url`).
"""

from __future__ import annotations

from typing import Any


class DistributeError(Exception):
    """Base of every error raised by Distribute."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[DistributeError], message: str, context: dict[str, Any]) -> DistributeError:
    return cls(message, **context)


class UsageError(DistributeError):
    """The caller broke a rule of the API; the message says which and how to fix it."""


class InvalidName(UsageError, ValueError):
    """A job or worker name cannot be stored in a ledger line."""


class DirtyWorkingTree(UsageError):
    """The local copy has changes that Distribute would otherwise overwrite."""


class LocalCopyBusy(UsageError):
    """Another process already runs a worker on this local copy."""


class NoRunningJob(UsageError):
    """An operation needs a running job and the worker has none."""


class FileTooLarge(UsageError):
    """A file the job wrote is over the worker's ``max_file_bytes``; nothing was pushed."""


class JobAlreadyRunning(UsageError):
    """``get_next_job`` was called while the worker still runs a job."""


class RemoteStateError(DistributeError):
    """The remote lacks something Distribute needs (ledgers, atomic push)."""


class LeaseLost(DistributeError):
    """This worker's lock or job holding was taken over; its write was refused."""


class MergeConflict(DistributeError):
    """Finishing the job would conflict with the main branch; the job branch is kept."""


class AttemptsExhausted(DistributeError):
    """A job failed more often than ``max_attempts`` allows."""


class TransportError(DistributeError):
    """git failed or the remote could not be reached (credentials removed)."""


class OutcomeUnknown(TransportError):
    """A push was sent but its result is unknown; read the refs to learn it."""
