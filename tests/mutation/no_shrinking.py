"""A pytest plugin for mutation runs (``-p no_shrinking``): the Hypothesis profile the
suite loads, minus shrinking and explaining.

A mutation run only needs to know *that* a test fails.  Shrinking a failing state
machine run can take minutes, so each time a plugin or ``conftest.py`` is registered
(the property tier's conftest loads its profile when it is imported), the profile in
force is loaded again without those phases.  Nothing else about it changes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import Phase, settings

NAME = "mutation-run"


def pytest_plugin_registered(plugin: Any, manager: Any) -> None:
    current = settings.default
    if Phase.shrink not in current.phases and Phase.explain not in current.phases:
        return
    phases = [p for p in current.phases if p not in (Phase.shrink, Phase.explain)]
    settings.register_profile(NAME, current, phases=phases)
    settings.load_profile(NAME)
