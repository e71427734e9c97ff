"""The simulator end to end: worker processes over real git, faults on, the checker at the end."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from sim.checker import check, idle_tail_bound
from sim.cli import main
from sim.coverage import EXIT_NOT_ENOUGH_COVERAGE, ITEMS
from sim.report import print_report, timeline_svg
from sim.runner import SimConfig, run

pytestmark = pytest.mark.timeout(240)

#: 6 workers, 40 jobs, lease 1.5 s, every fault of the default profile: ~20 s on 2 idle
#: cores.  Fault rates are per second (kills, pauses) or per push: high enough that even a
#: fast run reaches the coverage minimums of sim/coverage.py with a wide margin.
PROFILE = dict(workers=6, jobs=40, lease=1.5, kill_rate=0.6, pause_rate=0.6,
               push_fail_rate=0.05, unknown_rate=0.08, job_seconds=0.4, duration=100,
               seed=20241126, max_faults=15)
#: For the tests of other things: no injected faults (so no coverage asked of them), and
#: short jobs.
NO_FAULTS = dict(kill_rate=0.0, pause_rate=0.0, push_fail_rate=0.0, unknown_rate=0.0,
                 job_seconds=0.05)


def explain(outcome):
    return "\n".join([f"{v.rule}: {v.message}" for v in outcome.result.violations]
                     + [f"reproduce: {outcome.config.command()}"])


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return run(SimConfig(**PROFILE, out=str(out)))


def recheck(outcome, final):
    return check(outcome.records, final, lease=outcome.config.lease,
                 expected_jobs=outcome.expected_jobs)


def test_short_run_with_kills_and_pauses_passes_the_checker(faulty_run):
    stats = faulty_run.result.stats
    assert faulty_run.ok, explain(faulty_run)
    assert stats["jobs_done"] == PROFILE["jobs"] and not faulty_run.timed_out
    assert stats["claims"] >= PROFILE["jobs"]
    assert stats["wall_s"] < 120, stats
    svg = timeline_svg(faulty_run.records, faulty_run.result.holdings)
    assert ET.fromstring(svg).tag.endswith("svg")
    assert (faulty_run.journal_dir / "injector.jsonl").exists()


def test_the_test_profile_reaches_its_coverage_minimums(faulty_run):
    coverage = faulty_run.coverage
    assert coverage.checked and faulty_run.verdict == "ok", coverage.message()
    # the profile is the reference size, so every minimum of the table applies in full
    for name, item in ITEMS.items():
        if name != "job_failures":
            assert coverage.minimums[name] == item.minimum, name
    assert coverage.counts["kills"] == faulty_run.result.stats["kills"] > 0
    assert coverage.counts["pauses"] == faulty_run.result.stats["pauses"] > 0
    console = Console(record=True, width=120)
    print_report(faulty_run, console)
    table = console.export_text()
    assert "fault coverage" in table and "unknown_not_landed" in table


def test_checker_catches_a_finish_erased_from_done_txt(faulty_run):
    final = copy.deepcopy(faulty_run.final)
    lines = final["done"].splitlines(keepends=True)
    erased = lines.pop(len(lines) // 2).split("\t")[0]
    final["done"] = "".join(lines)
    result = recheck(faulty_run, final)
    assert not result.ok
    assert "unfinished" in result.by_rule()
    assert any(erased in v.message for v in result.violations)


def test_checker_catches_an_update_missing_from_main(faulty_run):
    final = copy.deepcopy(faulty_run.final)
    finishes = [r for r in faulty_run.records if r.get("event") == "finish"]
    tip = finishes[0]["tip"]
    final["reachable"][tip] = False
    result = recheck(faulty_run, final)
    assert set(result.by_rule()) == {"lost-update"}
    assert result.violations[0].job == finishes[0]["job"]


def test_done_txt_sealed_every_few_lines_under_kills_and_pauses(tmp_path):
    # workers seal done.txt into parts all the time while they are killed and paused,
    # and the checker reads every part back
    outcome = run(SimConfig(workers=4, jobs=30, lease=1.5, kill_rate=0.3, pause_rate=0.3,
                            push_fail_rate=0.05, unknown_rate=0.05, job_seconds=0.2,
                            done_part_lines=3, seed=11, duration=90, keep=True,
                            min_coverage="off"))
    try:
        assert outcome.ok, explain(outcome)
        assert outcome.result.stats["jobs_done"] == 30
        listed = subprocess.run(
            ["git", "--git-dir", str(outcome.workdir / "remote.git"), "ls-tree", "--name-only",
             "main", "done/"], capture_output=True, text=True, check=True).stdout.split()
        assert len(listed) == 10, listed  # 30 lines, three a part
        assert "--done-part-lines 3" in outcome.config.command()
    finally:
        shutil.rmtree(outcome.workdir, ignore_errors=True)


def test_failed_jobs_branches_are_archived_under_kills_and_pauses(tmp_path):
    # jobs fail for good while workers are killed and paused; their workers archive the
    # branches, and the checker finds every update of a failed job on a branch or in an
    # archive (failed-lost)
    outcome = run(SimConfig(workers=3, jobs=16, lease=1.5, kill_rate=0.3, pause_rate=0.3,
                            push_fail_rate=0.05, unknown_rate=0.05, job_seconds=0.1,
                            job_fail_rate=0.5, max_attempts=1, seed=12, duration=90, keep=True,
                            min_coverage="off"))
    try:
        assert outcome.ok, explain(outcome)
        assert outcome.result.stats["jobs_failed"] > 0
        remote = str(outcome.workdir / "remote.git")
        archives = subprocess.run(
            ["git", "--git-dir", remote, "for-each-ref", "--format=%(refname)",
             "refs/distribute/archive/"], capture_output=True, text=True, check=True).stdout.split()
        listed = [line for ref in archives for line in subprocess.run(
            ["git", "--git-dir", remote, "show", ref + ":archived.txt"],
            capture_output=True, text=True, check=True).stdout.splitlines()]
        assert listed, "no failed job's branch was archived"
    finally:
        shutil.rmtree(outcome.workdir, ignore_errors=True)


def test_checker_catches_a_transport_that_reports_unsent_pushes_as_applied(tmp_path):
    # FaultyTransport's lie_rate breaks the transport contract on purpose.  A lie about a
    # push that changed nothing lasting (a liveness beat) leaves no trace, so the run
    # makes enough pushes that some lie surely matters, however fast the machine
    outcome = run(SimConfig(workers=3, jobs=24, lease=1.5, lie_rate=0.15, seed=5, duration=60,
                            out=str(tmp_path), **NO_FAULTS))
    assert outcome.result.stats["lies"] > 0
    assert not outcome.ok
    assert "lost-write" in outcome.result.by_rule(), explain(outcome)


def test_command_line_json_summary_and_timeline(tmp_path, capsys):
    code = main(["--workers", "2", "--jobs", "4", "--seed", "3", "--lease", "1.5", "-q",
                 "--no-faults", "--json", "--out", str(tmp_path)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0, data["violations"]
    assert data["ok"] and data["figures"]["jobs_done"] == 4
    assert data["verdict"] == "ok" and data["coverage"]["checked"]
    assert data["coverage"]["counts"]["kills"] == 0 and not data["coverage"]["short"]
    assert data["command"].startswith("python -m sim ") and "--seed 3" in data["command"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["seed"] == 3
    assert saved["figures"]["idle_tail_s"] is not None
    assert saved["figures"]["idle_tail_judged_s"] <= saved["figures"]["idle_tail_bound_s"]
    ET.parse(tmp_path / "timeline.svg")
    assert sorted(p.name for p in (tmp_path / "journal").glob("w*.jsonl")) == [
        "w00.000.jsonl", "w01.000.jsonl"]


def test_a_short_run_reports_its_idle_tail_and_keeps_within_the_bound(tmp_path):
    # six workers wait for the last jobs together; a worker that waits a lease for a free
    # lock at the end (the stall users saw) fails the run's liveness check. ~4 s
    outcome = run(SimConfig(workers=6, jobs=12, lease=2.0, seed=1, duration=60,
                            out=str(tmp_path), **NO_FAULTS))
    stats = outcome.result.stats
    assert "idle-tail" not in outcome.result.by_rule(), explain(outcome)
    assert outcome.ok, explain(outcome)
    assert stats["idle_tail_bound_s"] == pytest.approx(idle_tail_bound(2.0, SimConfig().poll))
    assert 0 <= stats["idle_tail_judged_s"] <= stats["idle_tail_bound_s"]
    assert stats["idle_tail_s"] >= 0 and stats["idle_tail_worker"].startswith("w")
    no_jobs = [r for r in outcome.records if r.get("kind") == "no-job"]
    assert sorted(r["worker"] for r in no_jobs) == [f"w{i:02d}" for i in range(6)]
    # each worker ran on a wall clock of its own (--clock-skew), minutes apart, and the
    # run checked out all the same: the library reads no time of day
    offsets = sorted(r["wall"] - r["t"] for r in no_jobs)
    assert offsets[-1] - offsets[0] > 5, offsets
    console = Console(record=True, width=120)
    print_report(outcome, console)
    table = console.export_text()
    assert f"{stats['idle_tail_s']}" in table and "idle tail" in table


def test_command_line_rejects_bad_options(capsys):
    assert main(["--workers", "0", "-q"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["--min-coverage", "kills", "-q"]) == 2
    assert "--min-coverage" in capsys.readouterr().err


def test_a_run_short_of_its_minimums_fails_with_not_enough_coverage(tmp_path, capsys):
    # faults switched off, yet kills and pauses required: every guarantee holds, and the run
    # still fails, with its own verdict and exit status. ~3 s
    code = main(["--workers", "2", "--jobs", "4", "--seed", "3", "--lease", "1.5", "-q",
                 "--no-faults", "--json", "--min-coverage", "kills=1,pauses=2"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["violations"] == []
    assert code == EXIT_NOT_ENOUGH_COVERAGE
    assert data["verdict"] == "not enough coverage" and not data["ok"]
    assert data["coverage"]["short"] == {"kills": {"count": 0, "minimum": 1, "missing": 1},
                                         "pauses": {"count": 0, "minimum": 2, "missing": 2}}
    assert "not enough coverage: kills: 0 < 1 (short by 1); pauses: 0 < 2 (short by 2)" in \
        captured.err.replace("\n", " ")


@pytest.mark.slow
@pytest.mark.daemon
def test_every_fault_over_git_daemon(tmp_path):
    outcome = run(SimConfig(
        workers=8, jobs=150, lease=2.0, kill_rate=0.3, pause_rate=0.2, push_fail_rate=0.03,
        unknown_rate=0.03, latency=0.01, job_seconds=0.3, remote="daemon", duration=400,
        seed=7, out=str(tmp_path),
    ))
    assert outcome.ok, explain(outcome)
    stats = outcome.result.stats
    assert stats["push_faults"] > 0 and stats["unknown_outcomes"] > 0 and stats["kills"] > 0
