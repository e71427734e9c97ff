"""The simulator's fault coverage (sim/coverage.py): counting from journals, minimums, verdict."""

from __future__ import annotations

import pytest

from sim.coverage import (
    COVERAGE,
    EXIT_NOT_ENOUGH_COVERAGE,
    ITEMS,
    REFERENCE,
    count,
    evaluate,
    minimums,
    parse_overrides,
)
from sim.runner import SimConfig

LOCK = "refs/distribute/lock"
MAIN = "refs/heads/main"


def reference() -> SimConfig:
    """A run at least as large as the reference profile in every respect."""
    return SimConfig(workers=6, jobs=40, job_seconds=0.4, job_fail_rate=0.05)


def test_every_item_has_a_meaning_and_its_needs_are_settings():
    fields = set(SimConfig.__dataclass_fields__)
    assert len(ITEMS) == len(COVERAGE)
    for item in COVERAGE:
        assert item.meaning and item.minimum >= 0
        assert set(item.needs) <= fields, item
    assert set(REFERENCE) <= fields


def test_the_default_profile_enables_faults_and_requires_them():
    config = SimConfig()
    assert config.kill_rate > 0 and config.pause_rate > 0
    assert config.push_fail_rate > 0 and config.unknown_rate > 0
    need = minimums(config)
    for name in ("kills", "restarts", "pauses", "push_failures", "unknown_landed",
                 "unknown_not_landed"):
        assert need[name] == ITEMS[name].minimum > 0, name


def test_counts_at_the_minimums_pass_and_one_below_fails_naming_the_gap():
    config = reference()
    need = minimums(config)
    assert evaluate(need, config).ok
    short = dict(need, kills=need["kills"] - 2, pauses=0)
    coverage = evaluate(short, config)
    assert not coverage.ok
    assert [s.name for s in coverage.shortfalls] == ["kills", "pauses"]
    assert coverage.shortfalls[0].missing == 2
    message = coverage.message()
    assert message.startswith("not enough coverage: ")
    assert f"kills: {need['kills'] - 2} < {need['kills']} (short by 2)" in message
    assert f"pauses: 0 < {need['pauses']} (short by {need['pauses']})" in message
    assert coverage.to_dict()["short"]["pauses"]["missing"] == need["pauses"]


def test_a_fault_switched_off_is_not_required():
    config = reference()
    config.kill_rate = 0.0
    need = minimums(config)
    for item in COVERAGE:
        if "kill_rate" in item.needs:
            assert need[item.name] == 0, item.name
    assert need["pauses"] == ITEMS["pauses"].minimum
    assert evaluate(dict(need, kills=0, restarts=0), config).ok


def test_smaller_runs_and_lower_rates_scale_the_minimums_down():
    config = reference()
    config.pause_rate = REFERENCE["pause_rate"] / 2
    assert minimums(config)["pauses"] == ITEMS["pauses"].minimum // 2
    tiny = SimConfig(workers=2, jobs=4, job_seconds=0.3)
    assert minimums(tiny)["claim_races"] == 0  # a tenth of the reference queue
    alone = SimConfig(workers=1, jobs=400)
    assert minimums(alone)["finish_races"] == 0 and minimums(alone)["kills"] > 0
    bigger = SimConfig(jobs=4000, kill_rate=50.0)
    assert minimums(bigger)["kills"] == ITEMS["kills"].minimum  # never scaled up


def test_min_coverage_off_and_overrides():
    config = reference()
    config.min_coverage = "off"
    coverage = evaluate({}, config)
    assert coverage.ok and not coverage.checked and coverage.minimums == {}
    config.min_coverage = "kills=100,job_failures=0"
    need = minimums(config)
    assert need["kills"] == 100 and need["job_failures"] == 0
    assert need["pauses"] == ITEMS["pauses"].minimum
    assert not evaluate({"kills": 99}, config).ok
    assert parse_overrides("pauses=3") == {"pauses": 3}
    for bad in ("sometimes", "kills", "nothing=3", "kills=x", "kills=-1"):
        with pytest.raises(ValueError, match="--min-coverage"):
            parse_overrides(bad)
        with pytest.raises(ValueError):
            SimConfig(min_coverage=bad).validate()
    assert EXIT_NOT_ENOUGH_COVERAGE not in (0, 1, 2)


def test_command_repeats_a_run_without_faults():
    command = SimConfig(kill_rate=0.0, pause_rate=0.0, min_coverage="off", seed=4).command()
    assert "--kill-rate 0.0" in command and "--pause-rate 0.0" in command
    assert "--min-coverage off" in command and "--seed 4" in command
    assert "--push-fail-rate" not in command  # left at the default


# ---- counting from hand-made journals -----------------------------------------------------


class Journal:
    """Builds journal records the way sim.worker and the injector write them."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.t = 0.0
        self.push_id = 0

    def add(self, kind: str, worker: str, life: int = 0, **fields) -> dict:
        self.t += 1.0
        rec = {"kind": kind, "t": self.t, "worker": worker, "life": life, "seq": len(self.records),
               **fields}
        self.records.append(rec)
        return rec

    def event(self, worker: str, event: str, life: int = 0, **fields) -> None:
        self.add("event", worker, life, event=event, **fields)

    def push(self, worker: str, refs: list[str], outcome: str | None, life: int = 0) -> None:
        self.push_id += 1
        self.add("push", worker, life, phase="invoke", id=self.push_id,
                 refs=[[r, "a", "b"] for r in refs])
        if outcome is not None:
            self.add("push", worker, life, phase="done", id=self.push_id, outcome=outcome)

    def fault(self, fault: str, worker: str, life: int = 0, **fields) -> None:
        self.add("fault", worker, life, fault=fault, **fields)


def test_count_kills_pauses_and_what_they_hit():
    j = Journal()
    j.event("w00", "lock-acquire", token=1, takeover=False, previous="")
    j.push("w00", [MAIN, LOCK], "applied")
    j.event("w00", "claim", job="a", token=1, attempt=1)
    j.add("op", "w00", op="finish_job", phase="invoke", job="a")
    j.push("w00", [MAIN], None)  # in flight when the kill comes
    j.fault("kill", "w00")
    j.fault("restart", "w00", life=1)
    j.event("w00", "adopt", life=1, job="a", token=1, tip="t")
    j.event("w01", "lock-acquire", token=2, takeover=False, previous="")
    j.add("op", "w01", op="get_next_job", phase="invoke")
    j.fault("kill", "w01")  # holds the lock inside get_next_job: mid-claim
    j.event("w02", "claim", job="b", token=3, attempt=1)
    j.fault("pause", "w02", seconds=3.0)
    j.fault("resume", "w02")
    j.fault("pause", "w03", seconds=3.0)  # idle: holds nothing
    j.fault("kill", "w03", at_end=True)  # the end of the run: not a fault
    n = count(j.records)
    assert n["kills"] == 2 and n["restarts"] == 1 and n["pauses"] == 2
    assert n["kills_holding_job"] == 1 and n["kills_mid_push"] == 1
    assert n["kills_mid_finish"] == 1 and n["kills_mid_claim"] == 1
    assert n["pauses_holding_job"] == 1 and n["restart_adopts"] == 1


def test_count_push_outcomes_and_races():
    j = Journal()
    j.push("w00", [MAIN, LOCK, "refs/heads/jobs/w00/a/1"], "rejected")  # a claim lost
    j.push("w00", [MAIN], "rejected")  # a finish lost
    j.push("w00", [MAIN], "unknown-rejected")  # answer lost, and it had lost too
    j.push("w01", [LOCK], "rejected")  # a lock race: neither
    j.push("w01", [LOCK], "failed")
    j.push("w01", [LOCK], "unknown-applied")
    j.push("w01", [LOCK], "unknown-dropped")
    n = count(j.records)
    assert n["claim_races"] == 1 and n["finish_races"] == 2
    assert n["push_failures"] == 1
    assert n["unknown_landed"] == 1 and n["unknown_not_landed"] == 2


def test_count_takeovers_of_dead_and_live_holders_and_late_refusals():
    j = Journal()
    j.event("w00", "lock-acquire", token=1, takeover=False, previous="")
    j.event("w00", "claim", job="a", token=1, attempt=1)
    j.event("w01", "claim", job="b", token=2, attempt=1)
    j.event("w02", "claim", job="c", token=3, attempt=1)
    j.event("w03", "lock-acquire", token=4, takeover=False, previous="")
    j.fault("kill", "w00")
    j.fault("kill", "w02")
    j.fault("pause", "w01", seconds=4)
    j.event("w02", "claim", life=1, job="c", token=5, attempt=2)  # its own job, new life
    j.event("w03", "lock-acquire", token=6, takeover=True, previous="w00")  # w00 is dead
    j.event("w03", "claim", job="a", token=6, attempt=2, revoked="w00")
    j.event("w03", "claim", job="b", token=7, attempt=2, revoked="w01")  # w01 only paused
    j.event("w04", "lock-acquire", token=8, takeover=True, previous="w03")  # w03 is alive
    j.fault("resume", "w01")
    j.event("w01", "revoked", by="w03", token=7)
    j.add("op", "w01", op="commit_update", phase="fail", error_type="LeaseLost", job="b")
    j.event("w01", "finish-refused", job="b", token=2)
    j.add("op", "w01", op="finish_job", phase="fail", error_type="LeaseLost", job="b")
    j.event("w05", "claim", job="d", token=9, attempt=1)
    j.event("w05", "fail", job="d", token=9, reason="x", outcome="retry")
    j.event("w04", "claim", job="d", token=10, attempt=2)  # a retry after a failure
    n = count(j.records)
    assert n["retries_own_job"] == 1
    assert n["takeovers_of_dead"] == 1 and n["takeovers_of_live"] == 1
    assert n["lock_takeovers_of_dead"] == 1 and n["lock_takeovers_of_live"] == 1
    assert n["revocations_seen"] == 1
    assert n["late_updates_refused"] == 1 and n["late_finishes_refused"] == 1
    assert n["job_failures"] == 1


def test_a_run_without_faults_counts_none():
    j = Journal()
    j.event("w00", "lock-acquire", token=1, takeover=False, previous="")
    j.push("w00", [MAIN, LOCK], "applied")
    j.event("w00", "claim", job="a", token=1, attempt=1)
    j.push("w00", [MAIN], "applied")
    j.event("w00", "finish", job="a", token=1, tip="t")
    n = count(j.records)
    assert set(n) == set(ITEMS)
    assert not any(n.values()), n
