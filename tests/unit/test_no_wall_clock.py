"""No wall clock in the library: leases and waits are judged on each worker's monotonic
clock (README, "No clock is compared across machines"), so ``distribute/`` must not read the
time of day.

A small AST check over ``distribute/**/*.py`` reports every reference (a call, or a function
passed as a value) to ``time.time``, ``time.time_ns``, ``datetime.now``, ``datetime.utcnow``,
``datetime.today`` and ``date.today``, under any import spelling (``import time as t``,
``from time import time``, ``from datetime import datetime as dt``, ``import datetime``).
What it cannot see: a clock reached by ``getattr`` or through another module's name for it.

A use that is right gets an entry in :data:`ALLOWED` with its reason; an entry no code uses
any more fails too, so the list stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "distribute"

#: Fully qualified names of wall clocks.
WALL_CLOCKS = frozenset({
    "time.time",
    "time.time_ns",
    "datetime.datetime.now",
    "datetime.datetime.utcnow",
    "datetime.datetime.today",
    "datetime.date.today",
})

#: (module, wall clock it may use) -> why that use is right.
ALLOWED: dict[tuple[str, str], str] = {
    ("distribute.looks", "time.time"): (
        "`distribute status` compares a look with the one this machine's last status "
        "remembered, across two runs of the command: only this machine's own clock, "
        "never a time another machine wrote, and it decides nothing but a label"
    ),
    ("distribute.transport.repository", "time.time"): (
        "the author and committer date of the commits Distribute writes itself: git needs "
        "one, people read it in `git log`, and no decision is ever made from it"
    ),
}


def _qualified(node: ast.expr, names: dict[str, str]) -> str | None:
    """``a.b.c`` with ``a`` replaced by what its import binds it to; ``None`` if ``a`` is
    not an imported name, or the expression is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    return ".".join([names[node.id], *reversed(parts)])


def wall_clock_uses(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """Every ``(line, wall clock)`` that ``source`` refers to, imports included."""
    tree = ast.parse(source, filename)
    names: dict[str, str] = {}  # a name in the module -> the dotted name it was imported as
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names[alias.asname or alias.name] = full
                if full in WALL_CLOCKS:
                    found.append((node.lineno, full))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
            name = _qualified(node, names)
            if name in WALL_CLOCKS:
                found.append((node.lineno, name))
    return sorted(set(found))


def library_uses() -> dict[tuple[str, str], list[int]]:
    """(module, wall clock) -> lines, over every module of the library."""
    uses: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for line, clock in wall_clock_uses(path.read_text(encoding="utf-8"), str(path)):
            uses.setdefault((module, clock), []).append(line)
    return uses


def test_the_library_reads_no_wall_clock_outside_the_allow_list():
    uses = library_uses()
    assert uses, "the check found no module at all"  # it read nothing: a wrong root
    bad = [f"{module}:{line}: {clock}" for (module, clock), lines in sorted(uses.items())
           if (module, clock) not in ALLOWED for line in lines]
    assert not bad, ("wall clock read in the library (use time.monotonic, or add an entry "
                     "with its reason to ALLOWED):\n" + "\n".join(bad))


def test_every_allowed_use_still_exists_and_has_a_reason():
    uses = library_uses()
    for key, reason in ALLOWED.items():
        assert key in uses, f"{key} is allowed but no longer used: remove it from ALLOWED"
        assert len(reason.split()) >= 5, key


@pytest.mark.parametrize(("source", "expected"), [
    ("import time\nstarted = time.time()\n", [(2, "time.time")]),
    ("import time as t\nx = t.time_ns()\n", [(2, "time.time_ns")]),
    ("from time import time\nx = time()\n", [(1, "time.time"), (2, "time.time")]),
    ("from time import time as now\n", [(1, "time.time")]),
    ("import time\ndef f(clock=time.time):\n    return clock()\n", [(2, "time.time")]),
    ("from datetime import datetime\nx = datetime.now()\ny = datetime.utcnow()\n",
     [(2, "datetime.datetime.now"), (3, "datetime.datetime.utcnow")]),
    ("from datetime import datetime as dt, date\nx = dt.today()\ny = date.today()\n",
     [(2, "datetime.datetime.today"), (3, "datetime.date.today")]),
    ("import datetime\nx = datetime.datetime.now(datetime.timezone.utc)\n",
     [(2, "datetime.datetime.now")]),
    ("import datetime as d\ndef f():\n    return d.date.today()\n", [(3, "datetime.date.today")]),
])
def test_the_check_reports_a_wall_clock(source, expected):
    assert wall_clock_uses(source) == expected


@pytest.mark.parametrize("source", [
    "import time\nx = time.monotonic()\ntime.sleep(0.1)\ny = time.perf_counter()\n",
    "from time import monotonic\nx = monotonic()\n",
    "from datetime import datetime\nx = datetime.fromtimestamp(0)\n",
    "def time():\n    return 0\nx = time()\n",  # a local function named time, not the clock
    "import os\nx = os.stat('.').st_mtime\n",
])
def test_the_check_lets_other_clocks_and_names_pass(source):
    assert wall_clock_uses(source) == []
