"""Mutation testing on the project's own terms: plausible one-line bugs in the library,
each of which some test must catch.

Every :class:`Mutation` names a file of the library, an exact piece of its text (which
must occur there exactly once) and what to put instead: the kind of slip a reasonable
change could make (a fencing check dropped, a margin cut, a lost answer trusted).  To
try one, the repository is copied (without ``.git``, virtual environments and caches)
to a temporary folder, the mutation is applied to the copy, and the mutation's chosen
tests run there in a subprocess whose ``PYTHONPATH`` starts with the copy; a preflight
checks that it is the copy's ``distribute`` that gets imported.  The files of the
repository itself are never written.

A mutation is *caught* when pytest exits with 1 and names a failed test, and that test
passes on an unmutated copy (so a test broken for other reasons never takes the
credit).  Exit 0 means it survived; 2, 3, 4 or 5 (interrupted, internal error, usage
error, nothing collected) are errors, never catches.  A mutation whose original text is
gone (the code was refactored) is reported as "no longer applies" instead of being
skipped in silence: update it to the new code.

Run ``python tests/mutation/mutate.py`` for a report (``--list`` to list them, or name
some ids), or ``pytest -m slow tests/mutation`` (add ``-n 2`` to try two at a time).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Not copied: version control, environments and build output (at the top), caches (anywhere).
TOP_LEVEL_SKIPPED = frozenset({".git", ".ci-venv", ".venv", ".tox", "build", "dist", "sim-runs"})
CACHES = frozenset({"__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
#: Seconds one mutation's tests may take in all, and one test (pytest-timeout).
RUN_TIMEOUT = 240.0
TEST_TIMEOUT = 120
#: ``no_shrinking`` (this folder's plugin): a run only needs to know that a test fails.
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-p", "no_shrinking", "-rf",
               f"--timeout={TEST_TIMEOUT}")


@dataclass(frozen=True)
class Mutation:
    """One plausible bug: in ``path``, ``original`` (occurring exactly once) becomes
    ``replacement``; ``tests`` (files or node ids, fastest and most telling first) must
    catch it."""

    id: str
    path: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]


MACHINE = "tests/property/test_protocol_machine.py"
REGRESSIONS = "tests/property/test_regressions.py"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "ledger-unfenced",
        "distribute/core/ledger.py",
        "if entry is None or entry.worker != worker or entry.token != token:",
        "if entry is None or entry.worker != worker:",
        "Ledger._fenced checks the holder but not the fencing token: a finish or fail under "
        "an old token of the same worker is accepted",
        ("tests/unit/test_ledger.py", MACHINE),
    ),
    Mutation(
        "lease-no-margin",
        "distribute/core/lease.py",
        "return self.unchanged_for(ref, now) >= self.lease + self.margin",
        "return self.unchanged_for(ref, now) > self.lease",
        "LeaseWatch.expired compares with the lease alone, without the observer's margin",
        ("tests/unit/test_lock_and_lease.py", MACHINE),
    ),
    Mutation(
        "resolve-trusts",
        "distribute/coordination.py",
        "return self._holds(current, first.new)",
        "return True",
        "Coordinator.resolve_unknown trusts a push whose answer was lost to have landed",
        (REGRESSIONS, MACHINE),
    ),
    Mutation(
        "torn-never",
        "distribute/coordination.py",
        "return not self.watch.expired(LOCK_REF, self.clock())",
        "return False",
        "Coordinator.torn never sees a torn read (a released lock next to an older main)",
        (REGRESSIONS,),
    ),
    Mutation(
        "retry-live-holder",
        "distribute/core/plan.py",
        "elif entry.worker in expired:",
        "elif entry.worker:",
        "plan_claim retries a job whose holder's lease has not expired",
        ("tests/unit/test_plan.py", MACHINE),
    ),
    Mutation(
        "peek-keeps-watching",
        "distribute/core/pacing.py",
        'return LookAgain("the held lock moved")',
        "return KeepWatching(now)",
        "after_peek keeps watching a held lock that moved (released or taken over) instead "
        "of looking again",
        ("tests/property/test_pacing_liveness.py",),
    ),
    Mutation(
        "turns-uncapped",
        "distribute/core/pacing.py",
        "left = min(ahead, TURNS_WAITED) * slot - min(unchanged_for, waiting_for)",
        "left = ahead * slot - min(unchanged_for, waiting_for)",
        "turn_wait waits a turn for every idle worker ahead, not for four at most",
        ("tests/integration/test_worker_edges.py"
         "::test_a_worker_behind_gone_workers_waits_a_few_turns_only",
         "tests/property/test_pacing_liveness.py"),
    ),
    Mutation(
        "worker-tiny-margin",
        "distribute/dist.py",
        "max(0.5, lease_seconds / 10)",
        "lease_seconds / 1000",
        "the Worker's default margin_seconds is a thousandth of the lease, far below what "
        "clock-rate differences need",
        ("tests/property/test_margin_default.py",),
    ),
    Mutation(
        "finishing-ignored",
        "distribute/coordination.py",
        "return beat.worker",
        "return None",
        "Coordinator.others_finishing never reports a finish that asked for its turn",
        ("tests/property/test_finish_priority.py",),
    ),
    Mutation(
        "holder-acts-past-lease",
        "distribute/core/lock.py",
        "if age >= lease:",
        "if age >= 2 * lease:",
        "holder_verdict lets a holder act for two lease periods without a renewal",
        ("tests/unit/test_lock_and_lease.py", REGRESSIONS, MACHINE),
    ),
    Mutation(
        "acquire-ignores-session",
        "distribute/core/lock.py",
        "if observed.holder == me and observed.session != session:",
        "if observed.holder == me or observed.session != session:",
        "decide_acquire takes over any holding of another session at once, not only this "
        "worker's own from before a restart",
        ("tests/unit/test_lock_and_lease.py", MACHINE),
    ),
    Mutation(
        "takeover-without-revoke",
        "distribute/coordination.py",
        "if not dead:",
        "if True:",
        "a takeover of a dead worker's job does not revoke its liveness record",
        (MACHINE,),
    ),
    Mutation(
        "seal-drops-a-line",
        "distribute/core/ledger.py",
        "format_ledger_text(done[start : start + DONE_PART_LINES])",
        "format_ledger_text(done[start + 1 : start + DONE_PART_LINES])",
        "sealing done.txt into a part leaves the first of its lines out",
        ("tests/unit/test_done_parts.py", "tests/property/test_sealed_parts.py"),
    ),
    Mutation(
        "rewritten-parts-kept",
        "distribute/core/ledger.py",
        "files.setdefault(path, None)",
        "files.get(path, None)",
        "a part no longer needed after a rewrite (the list got shorter) stays, so its lines "
        "are listed twice",
        ("tests/unit/test_done_parts.py", "tests/integration/test_done_parts_git.py"),
    ),
    Mutation(
        "archive-drops-the-tips",
        "distribute/coordination.py",
        "parents=[*([parent] if parent is not None else []), *chunk],",
        "parents=[parent] if parent is not None else [],",
        "an archive commit lists the archived branches but does not take their tips as "
        "parents, so once their refs are deleted, git may collect what they held",
        ("tests/unit/test_prune_branches.py",),
    ),
)


# ---- copies, runs, verdicts --------------------------------------------------------------


class NoLongerApplies(Exception):
    """The mutation's original text does not occur exactly once in its file."""


def copy_tree(dest: Path) -> Path:
    """Copy the repository to ``dest`` (which must not exist yet) and return it."""
    def skipped(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == ROOT
        return {n for n in names if n in CACHES or n.endswith(".pyc")
                or (top and n in TOP_LEVEL_SKIPPED)}

    shutil.copytree(ROOT, dest, ignore=skipped, symlinks=True)
    return dest


def apply(mutation: Mutation, root: Path) -> None:
    path = root / mutation.path
    text = path.read_text(encoding="utf-8")
    found = text.count(mutation.original)
    if found != 1:
        raise NoLongerApplies(
            f"mutation {mutation.id!r} no longer applies: {mutation.path} contains its "
            f"original text {found} times, not once ({mutation.original!r}); update it to "
            "the code as it is now")
    path.write_text(text.replace(mutation.original, mutation.replacement), encoding="utf-8")


def environment(root: Path) -> dict[str, str]:
    """The environment of a run in ``root``: its folder first on the import path (then
    this folder, for the ``no_shrinking`` plugin), nothing from an enclosing pytest run,
    the derandomized Hypothesis profile unless one is set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    paths = (str(root), str(root / "tests" / "mutation"), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("HYPOTHESIS_PROFILE", "ci")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def preflight(root: Path) -> None:
    """Check that a subprocess in ``root`` imports the copy's ``distribute`` and ``sim``."""
    code = "import distribute, sim; print(distribute.__file__); print(sim.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=environment(root),
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"the copy in {root} does not import: {done.stderr.strip()}")
    for line in done.stdout.split():
        if not Path(line).resolve().is_relative_to(root.resolve()):
            raise RuntimeError(f"the copy in {root} imports {line}, not its own code")


@dataclass(frozen=True)
class Run:
    code: int | None  # pytest's exit code; None: timed out
    failed: tuple[str, ...]  # node ids of the failed tests
    seconds: float
    output: str


#: A failed test in pytest's short summary (``-rf``): ``FAILED <node id>[ - <message>]``.
FAILED = re.compile(r"^FAILED (.+?)(?: - .*)?$", re.MULTILINE)


def run_tests(root: Path, tests: Sequence[str], timeout: float = RUN_TIMEOUT) -> Run:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=root,
            env=environment(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return Run(None, (), time.monotonic() - started, out)
    return Run(done.returncode, tuple(FAILED.findall(done.stdout)),
               time.monotonic() - started, done.stdout + done.stderr)


@dataclass(frozen=True)
class Verdict:
    mutation: Mutation
    caught: bool
    by: str  # the test that caught it
    summary: str  # one line for the report
    seconds: float
    output: str = ""


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def judge(mutation: Mutation, work: Path, clean: Path | None = None) -> Verdict:
    """Try ``mutation`` in a fresh copy under ``work``.  ``clean`` is an unmutated copy in
    which the catching test is run again (made on demand when ``None``)."""
    root = copy_tree(work / f"mutant-{mutation.id}")
    try:
        apply(mutation, root)
    except NoLongerApplies as exc:
        return Verdict(mutation, False, "", str(exc), 0.0)
    preflight(root)
    run = run_tests(root, mutation.tests)
    if run.code is None:
        return Verdict(mutation, False, "", f"timed out after {run.seconds:.0f} s: neither "
                       "caught nor survived", run.seconds, tail(run.output))
    if run.code == 0:
        return Verdict(mutation, False, "", f"SURVIVED: {', '.join(mutation.tests)} all "
                       "passed", run.seconds, tail(run.output))
    if run.code != 1 or not run.failed:
        return Verdict(mutation, False, "", f"pytest exited with {run.code} and no test "
                       "failed (an error, not a catch)", run.seconds, tail(run.output))
    by = run.failed[0]
    if clean is None:
        clean = work / "clean"
        if not clean.exists():
            copy_tree(clean)
    again = run_tests(clean, [by])
    if again.code != 0:
        return Verdict(mutation, False, by, f"{by} failed, but it fails without the mutation "
                       f"too (exit {again.code}): not a catch", run.seconds, tail(again.output))
    return Verdict(mutation, True, by, f"caught by {by}", run.seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutations to try (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    unknown = set(args.ids) - {m.id for m in MUTATIONS}
    if unknown:
        parser.error(f"no such mutation: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.id:<24} {m.path}: {m.description}")
        return 0
    failures = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="distribute-mutants-") as tmp:
        for m in chosen:
            verdict = judge(m, Path(tmp))
            failures += not verdict.caught
            print(f"{'ok  ' if verdict.caught else 'MISS'} {m.id:<24} {verdict.seconds:6.1f} s  "
                  f"{verdict.summary}", flush=True)
            if verdict.output:
                print(verdict.output)
    print(f"{len(chosen) - failures} of {len(chosen)} caught in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
