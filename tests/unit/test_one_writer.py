"""The remote's coordination state (the lock, the liveness records, the ledgers) has one
writer: distribute/coordination.py.  Checked on the source: every ref update, every lock
or liveness record and every ledger change is built there, apart from refs that are no
coordination state (named below, with why)."""

from __future__ import annotations

import ast
from pathlib import Path

import distribute

PACKAGE = Path(distribute.__file__).parent
WRITER = "coordination.py"
#: Modules that build ref updates of their own, and what those refs are.
OTHER_REFS = {
    "optuna.py": "the Optuna journal's own ref",
    "doctor.py": "throw-away probe refs under a unique name, deleted after the check",
}
#: Functions whose result is a write of coordination state (a record or a ledger change).
RECORD_BUILDERS = {"lock_message", "beat_message", "changed_files", "RefUpdate"}


def calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def writers(package: Path) -> dict[str, set[str]]:
    """Module (relative path) -> the record builders it calls; the pure core (which
    defines them) and the transports (which carry any update) are left out."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith(("core/", "transport/")):
            continue
        used = calls(ast.parse(path.read_text(encoding="utf-8"))) & RECORD_BUILDERS
        if used:
            found[relative] = used
    return found


def test_only_the_protocol_module_writes_coordination_state():
    found = writers(PACKAGE)
    assert WRITER in found and {"lock_message", "RefUpdate"} <= found[WRITER]
    others = {module: used for module, used in found.items() if module != WRITER}
    unexpected = {m: u for m, u in others.items() if m not in OTHER_REFS}
    assert not unexpected, f"coordination state written outside {WRITER}: {unexpected}"
    # the allowed modules write their own refs, never a lock record or a ledger
    assert all(used <= {"RefUpdate", "beat_message"} for used in others.values()), others


def test_the_check_sees_a_lock_write_outside_the_protocol_module(tmp_path):
    (tmp_path / WRITER).write_text("RefUpdate(LOCK_REF, a, lock_message(s))\n")
    (tmp_path / "cli.py").write_text(
        "def unlock(t):\n    t.push([RefUpdate(LOCK_REF, old, new)])\n")
    assert writers(tmp_path) == {WRITER: {"RefUpdate", "lock_message"}, "cli.py": {"RefUpdate"}}
