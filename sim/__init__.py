"""The simulator: many worker processes, one remote, injected faults, a history checker.

Run it with ``python -m sim`` (see :mod:`sim.__main__` for the options and
profiles).  :func:`sim.checker.check` is pure and usable on its own;
:func:`sim.runner.run` starts processes and git.
"""

from __future__ import annotations

from typing import Any

from .checker import CheckResult, Violation, check
from .faults import FaultPlan, FaultyTransport

__all__ = [
    "CheckResult",
    "FaultPlan",
    "FaultyTransport",
    "SimConfig",
    "Violation",
    "check",
    "main",
    "run",
]


def __getattr__(name: str) -> Any:
    # the runner and the command line pull in processes, git and rich: import them lazily
    if name in ("SimConfig", "run"):
        from . import runner

        return getattr(runner, name)
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(name)
