"""The history checker on hand-made histories: one good, and one per broken guarantee."""

from __future__ import annotations

import itertools
import json

import pytest

from sim.checker import (
    RULES,
    check,
    idle_tail_bound,
    lease_margin,
    parse_ledger,
    parse_main_subject,
    percentiles,
    poll_ceiling,
)

LOCK = "refs/distribute/lock"
MAIN = "refs/heads/main"
LEASE = 2.0


def own(worker):
    return f"refs/distribute/workers/{worker}"


def lock_msg(token, holder="", session=""):
    body = json.dumps({"kind": "lock", "v": 1, "token": token, "holder": holder,
                       "session": session, "renewal": 0})
    return f"distribute lock: {holder or 'free'} (token {token})\n\n{body}\n"


class History:
    """Builds journal records the way sim.worker and sim.faults write them."""

    def __init__(self):
        self.records = []
        self.ids = itertools.count(1)
        self.lock = [lock_msg(0)]  # what the lock ref's history will hold
        self.subjects = ["distribute: prepare the remote"]  # the main branch's

    def rec(self, t, proc, kind, **fields):
        worker, life = proc.split("#")
        self.records.append({"kind": kind, "t": t, "worker": worker, "life": int(life),
                             "session": proc, **fields})

    def push(self, t, proc, refs, outcome="applied", took=0.02):
        pid = next(self.ids)
        worker = proc.split("#")[0]
        self.rec(t, proc, "push", phase="invoke", id=pid, own_ref=own(worker),
                 refs=[[r, "old", "new"] for r in refs])
        self.rec(t + took, proc, "push", phase="done", id=pid, outcome=outcome)
        return t + took

    def acquire(self, t, proc, token, takeover=False):
        done = self.push(t, proc, [LOCK])
        self.rec(done, proc, "event", event="lock-acquire", token=token, takeover=takeover)
        self.lock.append(lock_msg(token, proc.split("#")[0], proc))

    def renew(self, t, proc, token):
        self.rec(self.push(t, proc, [LOCK]), proc, "event", event="lock-renew", token=token)
        self.lock.append(lock_msg(token, proc.split("#")[0], proc))

    def release(self, t, proc, token):
        self.rec(self.push(t, proc, [LOCK]), proc, "event", event="lock-release", token=token,
                 ok=True)
        self.lock.append(lock_msg(token))

    def claim(self, t, proc, job, token, attempt=1, revoked=""):
        worker = proc.split("#")[0]
        branch = f"jobs/{worker}/{job}/{token}"
        done = self.push(t, proc, [MAIN, LOCK, f"refs/heads/{branch}", own(worker)])
        self.rec(done, proc, "event", event="claim", job=job, token=token, attempt=attempt,
                 branch=branch, revoked=revoked)
        self.lock.append(lock_msg(token))
        self.subjects.append(f"distribute: claim {job} by {worker} (token {token}, "
                             f"attempt {attempt})")
        return branch

    def beat(self, t, proc, outcome="applied"):
        self.push(t, proc, [own(proc.split("#")[0])], outcome=outcome)

    def update(self, t, proc, job, token, tip):
        worker = proc.split("#")[0]
        done = self.push(t, proc, [f"refs/heads/jobs/{worker}/{job}/{token}"])
        self.rec(done, proc, "event", event="update", job=job, token=token, tip=tip)

    def finish(self, t, proc, job, token, tip, landed=True):
        self.rec(self.push(t, proc, [MAIN]), proc, "event", event="finish", job=job,
                 token=token, tip=tip)
        if landed:
            self.subjects.append(f"distribute: finish {job} by {proc.split('#')[0]} (token "
                                 f"{token}, attempt 1)")

    def final(self, **state):
        return {"lock_history": list(self.lock), "main_subjects": list(self.subjects), **state}

    def refused(self, t, proc, job, token):
        self.rec(t, proc, "event", event="finish-refused", job=job, token=token)

    def fault(self, t, proc, fault):
        worker, life = proc.split("#")
        self.records.append({"kind": "fault", "fault": fault, "t": t, "worker": worker,
                             "life": int(life)})

    def session(self, t, proc):
        self.rec(t, proc, "session")

    def no_job(self, t, proc):
        self.rec(t, proc, "no-job")


def good_history():
    """Three jobs, two workers; w1 is killed holding job-c and its restart takes it back;
    w0 is paused past its lease on job-b, w1 takes it over, w0's late finish is refused."""
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.claim(0.1, "w0#0", "job-a", 1)
    h.acquire(0.2, "w1#0", 2)
    h.claim(0.3, "w1#0", "job-c", 2)
    h.update(0.5, "w0#0", "job-a", 1, "a1")
    h.finish(0.6, "w0#0", "job-a", 1, "a1")
    h.acquire(0.7, "w0#0", 3)
    h.renew(1.2, "w0#0", 3)
    h.claim(1.3, "w0#0", "job-b", 3)
    h.fault(1.5, "w1#0", "kill")
    h.fault(1.6, "w0#0", "pause")          # w0 holds job-b, last sign of life at 1.3
    h.fault(1.8, "w1#1", "restart")
    h.acquire(1.9, "w1#1", 4, takeover=True)
    h.claim(2.0, "w1#1", "job-c", 4, attempt=2)  # its own job: at once
    h.update(2.2, "w1#1", "job-c", 4, "c2")
    h.finish(2.3, "w1#1", "job-c", 4, "c2")
    h.acquire(3.9, "w1#1", 5)
    h.claim(4.0, "w1#1", "job-b", 5, attempt=2, revoked="w0")  # 2.7 s after w0's claim
    h.fault(4.5, "w0#0", "resume")
    h.rec(4.6, "w0#0", "event", event="revoked", by="w1", token=5)
    h.update(4.7, "w0#0", "job-b", 3, "b-stale")
    h.refused(4.8, "w0#0", "job-b", 3)
    h.update(5.0, "w1#1", "job-b", 5, "b5")
    h.finish(5.1, "w1#1", "job-b", 5, "b5")
    final = h.final(
        done="job-a\tworker=w0\ttoken=1\tattempt=1\n"
             "job-c\tworker=w1\ttoken=4\tattempt=2\n"
             "job-b\tworker=w1\ttoken=5\tattempt=2\n",
        running="",
        failed="",
        jobs="",
        branches={"jobs/w0/job-a/1": "a1", "jobs/w1/job-c/2": "c-old",
                  "jobs/w0/job-b/3": "b-stale", "jobs/w1/job-c/4": "c2",
                  "jobs/w1/job-b/5": "b5"},
        reachable={"a1": True, "c2": True, "b5": True, "b-stale": False},
        timed_out=False,
        exits={"w0#0": 0, "w1#1": 0},
    )
    return h, final


def run_check(h, final, **kw):
    kw.setdefault("expected_jobs", ["job-a", "job-b", "job-c"])
    return check(h.records, final, lease=LEASE, **kw)


def rules(result):
    return set(result.by_rule())


def test_good_history_passes():
    h, final = good_history()
    result = run_check(h, final)
    assert result.ok, result.violations
    assert result.stats["jobs_done"] == 3
    assert result.stats["retries"] == 2
    assert result.stats["fenced_finishes"] == 1
    assert result.stats["kills"] == 1 and result.stats["pauses"] == 1
    # w1 killed at 1.5 holding job-c, re-claimed at 2.02; w0 paused at 1.6, job-b re-claimed 4.02
    rec = result.stats["recovery_s"]
    assert rec["count"] == 2 and rec["max"] == pytest.approx(2.42)


def test_double_completion_in_done_txt():
    h, final = good_history()
    final["done"] += "job-a\tworker=w0\ttoken=1\tattempt=1\n"
    assert "double-finish" in rules(run_check(h, final))


def test_double_completion_by_two_finish_events():
    h, final = good_history()
    h.finish(5.5, "w0#0", "job-b", 3, "b-stale")  # the stale holder's finish "succeeded" too
    r = run_check(h, final)
    assert {"double-finish", "stale-write"} <= rules(r)


def test_a_restarted_life_reporting_its_earlier_lifes_finish_is_one_finish():
    """w0 is killed after its finish of job-a landed, before it noted so; its restart
    completes the finish, finds it landed, and reports it: the same holding (token 1)."""
    h, final = good_history()
    h.fault(0.65, "w0#0", "kill")
    h.fault(0.66, "w0#1", "restart")
    h.finish(0.67, "w0#1", "job-a", 1, "a1")
    assert "double-finish" not in rules(run_check(h, final))
    h.finish(0.68, "w1#0", "job-a", 1, "a1")  # another worker, the same token: not one holding
    assert "double-finish" in rules(run_check(h, final))


def test_double_finish_commits_on_main():
    h, final = good_history()
    final["main_subjects"].append("distribute: finish job-a by w1 (token 2, attempt 1)")
    assert "double-finish" in rules(run_check(h, final))


def test_overlapping_lock_holdings():
    h, final = good_history()
    # w1 takes the lock at 1.0 while w0's holding (token 3, acquired 0.72, renewed at 1.2) is valid
    h.acquire(0.98, "w1#0", 9, takeover=True)
    r = run_check(h, final)
    assert "lock-overlap" in rules(r)
    assert any("token 3" in v.message and "token 9" in v.message for v in r.violations)


def test_holding_ends_at_its_lease_without_renewal():
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.acquire(2.6, "w1#0", 2, takeover=True)  # w0 sent its acquire at 0.0: valid until 2.0
    final = {"done": "", "running": "", "lock_history": [lock_msg(1, "w0", "s"),
                                                         lock_msg(2, "w1", "t")]}
    assert check(h.records, final, lease=LEASE, expected_jobs=[]).ok
    h.renew(1.5, "w0#0", 1)  # now valid until 3.5: the takeover at 2.6 overlaps
    assert "lock-overlap" in rules(check(h.records, final, lease=LEASE, expected_jobs=[]))


def test_lock_tokens_must_increase_along_the_lock_history():
    h, final = good_history()
    final["lock_history"].append(lock_msg(4, "w0", "w0#9"))
    assert "lock-token" in rules(run_check(h, final))


def test_stale_write_accepted():
    h, final = good_history()
    # w0's late finish of job-b (token 3) was accepted: done.txt holds its token
    final["done"] = final["done"].replace("job-b\tworker=w1\ttoken=5", "job-b\tworker=w0\ttoken=3")
    h.records = [r for r in h.records if not (r.get("event") == "finish" and r["job"] == "job-b")]
    h.finish(4.8, "w0#0", "job-b", 3, "b-stale")
    r = run_check(h, final)
    assert "stale-write" in rules(r)
    assert any("re-claimed it later under token 5" in v.message for v in r.violations)


def test_finish_missing_from_done_txt():
    h, final = good_history()
    final["done"] = "".join(line + "\n" for line in final["done"].splitlines()
                            if not line.startswith("job-a"))
    assert {"finish-missing", "unfinished"} <= rules(run_check(h, final))


def test_lost_update():
    h, final = good_history()
    final["reachable"]["a1"] = False
    r = run_check(h, final)
    assert rules(r) == {"lost-update"}
    assert r.violations[0].job == "job-a"


def test_done_job_whose_result_file_is_not_on_main_is_a_lost_update():
    h, final = good_history()
    final["result_files"] = {"job-a": True, "job-b": True, "job-c": True}
    assert run_check(h, final).ok
    final["result_files"]["job-b"] = False
    r = run_check(h, final)
    assert rules(r) == {"lost-update"} and r.violations[0].job == "job-b"


def test_a_job_that_failed_for_good_must_keep_its_updates_on_a_branch_or_an_archive():
    h, final = good_history()
    h.update(6.3, "w1#1", "job-f", 6, "f1")  # its claim left out: no rule here reads it
    final["failed"] = "job-f\tworker=w0\ttoken=6\tattempt=1\treason=boom\n"
    final["kept"] = {"a1": True, "c2": True, "b5": True, "b-stale": True, "f1": True}
    kw = {"expected_jobs": ["job-a", "job-b", "job-c", "job-f"], "allow_failed": True}
    assert run_check(h, final, **kw).ok, run_check(h, final, **kw).violations
    final["kept"]["f1"] = False  # its branch deleted, and no archive holds it
    r = run_check(h, final, **kw)
    assert rules(r) == {"failed-lost"} and r.violations[0].job == "job-f"


def test_refused_finish_must_keep_its_branch():
    h, final = good_history()
    del final["branches"]["jobs/w0/job-b/3"]
    assert rules(run_check(h, final)) == {"branch-lost"}


def test_rerun_before_the_lease_expired():
    h, final = good_history()
    h.beat(3.5, "w0#0")  # w0 renewed its liveness at 3.5; w1 re-claims job-b at 4.0
    r = run_check(h, final)
    assert rules(r) == {"early-reclaim"}
    assert "job-b" in r.violations[0].message


def test_a_beat_that_did_not_land_is_no_sign_of_life():
    h, final = good_history()
    h.beat(3.5, "w0#0", outcome="rejected")
    h.beat(3.6, "w0#0", outcome="failed")
    assert run_check(h, final).ok


def test_a_beat_whose_push_never_returned_may_have_landed():
    h, final = good_history()
    h.rec(3.5, "w0#0", "push", phase="invoke", id=999, own_ref=own("w0"), refs=[[own("w0"),
                                                                                 "o", "n"]])
    assert "early-reclaim" in rules(run_check(h, final))


def test_rerun_by_the_same_life_is_not_a_restart():
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.claim(0.1, "w0#0", "job-a", 1)
    h.acquire(0.5, "w0#0", 2)
    h.claim(0.6, "w0#0", "job-a", 2, attempt=2)
    h.finish(0.8, "w0#0", "job-a", 2, "t")
    final = {"done": "job-a\tworker=w0\ttoken=2\tattempt=2\n", "running": "",
             "reachable": {"t": True}}
    assert "early-reclaim" in rules(check(h.records, final, lease=LEASE))


def test_rerun_after_a_failed_attempt_is_allowed_at_once():
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.claim(0.1, "w0#0", "job-a", 1)
    h.rec(0.3, "w0#0", "event", event="fail", job="job-a", token=1, outcome="retry")
    h.acquire(0.4, "w1#0", 2)
    h.claim(0.5, "w1#0", "job-a", 2, attempt=2)
    h.finish(0.8, "w1#0", "job-a", 2, "t")
    final = {"done": "job-a\tworker=w1\ttoken=2\tattempt=2\n", "running": "",
             "reachable": {"t": True}}
    assert check(h.records, final, lease=LEASE).ok


def test_a_finish_reported_but_not_on_main_is_a_lost_write():
    h, final = good_history()
    final["main_subjects"] = [x for x in final["main_subjects"] if "finish job-c" not in x]
    r = run_check(h, final)
    assert rules(r) == {"lost-write"} and r.violations[0].job == "job-c"


def test_an_acquire_missing_from_the_lock_history_is_a_lost_write():
    h, final = good_history()
    final["lock_history"] = [m for m in final["lock_history"]
                             if not ('"token": 3' in m and '"holder": "w0"' in m)]
    r = run_check(h, final)
    assert rules(r) == {"lost-write"} and "token 3" in r.violations[0].message


def test_a_release_missing_from_the_lock_history_is_a_lost_write():
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.release(0.1, "w0#0", 1)
    final = h.final(done="", running="")
    assert check(h.records, final, lease=LEASE, expected_jobs=[]).ok
    final["lock_history"].pop()
    assert rules(check(h.records, final, lease=LEASE, expected_jobs=[])) == {"lost-write"}


def test_a_claim_missing_from_main_is_a_lost_write():
    h, final = good_history()
    final["main_subjects"] = [x for x in final["main_subjects"] if "claim job-a" not in x]
    assert rules(run_check(h, final)) == {"lost-write"}


def test_job_claimed_twice_as_new():
    h, final = good_history()
    h.acquire(5.5, "w0#0", 6)
    h.claim(5.6, "w0#0", "job-a", 6)
    assert "double-claim" in rules(run_check(h, final))


def test_job_never_finished():
    h, final = good_history()
    final["done"] = "".join(line + "\n" for line in final["done"].splitlines()
                            if not line.startswith("job-b"))
    final["running"] = "job-b\tworker=w1\ttoken=5\tattempt=2\n"
    h.records = [r for r in h.records if not (r.get("event") == "finish" and r["job"] == "job-b")]
    r = run_check(h, final)
    assert rules(r) == {"unfinished"}
    assert any("job-b" in v.message and "never finished" in v.message for v in r.violations)
    assert any("running.txt" in v.message for v in r.violations)


def test_queue_left_over_and_timeout_are_unfinished():
    h, final = good_history()
    final["jobs"] = "job-d\n"
    final["timed_out"] = True
    r = run_check(h, final)
    assert rules(r) == {"unfinished"} and len(r.violations) == 2


def test_failed_jobs_only_with_injected_failures():
    h, final = good_history()
    final["failed"] = "job-x\tworker=w0\ttoken=7\tattempt=3\treason=boom\n"
    assert "unfinished" in rules(run_check(h, final))
    assert run_check(h, final, allow_failed=True).ok


def test_crashed_worker():
    h, final = good_history()
    h.rec(6.0, "w0#0", "exit", reason="error", error_type="JobAlreadyRunning", error="boom")
    final["exits"]["w0#0"] = 1
    r = run_check(h, final)
    assert rules(r) == {"crash"} and len(r.violations) == 2


def test_without_faults_every_job_is_claimed_once():
    h = History()
    h.acquire(0.0, "w0#0", 1)
    h.claim(0.1, "w0#0", "job-a", 1)
    h.acquire(3.0, "w1#0", 2, takeover=True)
    h.claim(3.1, "w1#0", "job-a", 2, attempt=2, revoked="w0")
    h.finish(3.5, "w1#0", "job-a", 2, "t")
    final = {"done": "job-a\tworker=w1\ttoken=2\tattempt=2\n", "running": "",
             "reachable": {"t": True}}
    assert rules(check(h.records, final, lease=LEASE)) == {"double-claim"}
    h.fault(1.0, "w0#0", "pause")
    assert check(h.records, final, lease=LEASE).ok


def test_every_rule_is_described():
    assert set(RULES) == {
        "lock-overlap", "lock-token", "double-finish", "double-claim", "finish-missing",
        "stale-write", "early-reclaim", "lost-update", "branch-lost", "failed-lost",
        "unfinished", "lost-write", "crash", "idle-tail",
    }


def test_parsers():
    assert parse_ledger("a b\tworker=w\ttoken=3\tattempt=2\n\nc\n") == [
        {"job": "a b", "worker": "w", "token": 3, "attempt": 2},
        {"job": "c", "worker": "", "token": 0, "attempt": 1},
    ]
    assert parse_main_subject("distribute: finish j 1 by w (token 4, attempt 2)") == {
        "what": "finish", "job": "j 1", "worker": "w", "token": 4, "attempt": 2}
    assert parse_main_subject("distribute: prepare the remote") is None
    assert percentiles([]) == {"count": 0, "p50": None, "p99": None, "max": None}
    assert percentiles([3.0, 1.0, 2.0]) == {"count": 3, "p50": 2.0, "p99": 3.0, "max": 3.0}


# ---- the idle tail: from the last finish to the last worker leaving its loop ----------

#: the bound at LEASE = 2 s and the simulator's poll of 0.05 s: a 0.5 s poll ceiling + 1 s
BOUND = idle_tail_bound(LEASE, 0.05)
#: what a worker stalled on a lease waits: the lease, its margin and a poll
STALL = LEASE + lease_margin(LEASE) + 0.1


def two_done(h):
    """The remote at the end of a run in which w0 finished job-a (token 1, tip a1) and w1
    job-b (token 2, tip b1), without faults."""
    return h.final(
        done="job-a\tworker=w0\ttoken=1\tattempt=1\njob-b\tworker=w1\ttoken=2\tattempt=1\n",
        running="", failed="", jobs="",
        branches={"jobs/w0/job-a/1": "a1", "jobs/w1/job-b/2": "b1"},
        reachable={"a1": True, "b1": True}, timed_out=False, exits={"w0#0": 0, "w1#0": 0},
    )


def drained_history():
    """w0 and w1 run one job each, without faults; the last finish is journalled at 1.02."""
    h = History()
    h.session(0.0, "w0#0")
    h.session(0.0, "w1#0")
    h.acquire(0.1, "w0#0", 1)
    h.claim(0.2, "w0#0", "job-a", 1)
    h.acquire(0.3, "w1#0", 2)
    h.claim(0.4, "w1#0", "job-b", 2)
    h.finish(0.8, "w0#0", "job-a", 1, "a1")
    h.finish(1.0, "w1#0", "job-b", 2, "b1")
    return h, two_done(h)


def drain_under_lock(h, t, proc, token):
    """A next-job function that runs under the lock finds nothing: acquire, release, leave."""
    h.acquire(t, proc, token)
    h.release(t + 0.1, proc, token)
    h.no_job(t + 0.13, proc)


def check_tail(h, final):
    # the lock's history as it stands now, with the holdings added after drained_history()
    final = {**final, "lock_history": list(h.lock), "main_subjects": list(h.subjects)}
    return check(h.records, final, lease=LEASE, poll=0.05, expected_jobs=["job-a", "job-b"])


def test_the_bound_is_a_poll_ceiling_plus_slack_and_stays_below_a_lease():
    assert idle_tail_bound(LEASE, 0.05) == pytest.approx(0.5 + 1.0)
    # the real default lease: the idle ceiling (a sixth of it, at most 20 s) plus 2 s
    assert poll_ceiling(120, 0.1) == 20.0 and idle_tail_bound(120, 0.1) == pytest.approx(22.0)
    assert idle_tail_bound(2.0, 0.05, max_poll=1.0) == pytest.approx(2.0)
    for lease in (1.01, 1.5, 2.0, 3.0, 4.0, 10.0, 30.0, 120.0):
        # else a worker stalled for a lease would pass: the check would prove nothing
        assert idle_tail_bound(lease, 0.05) < lease + lease_margin(lease), lease


def test_a_short_idle_tail_passes_and_is_reported():
    h, final = drained_history()
    h.no_job(1.3, "w0#0")
    h.no_job(1.6, "w1#0")
    r = check_tail(h, final)
    assert r.ok, r.violations
    assert r.stats["idle_tail_s"] == pytest.approx(0.58)
    assert r.stats["idle_tail_judged_s"] == pytest.approx(0.58)
    assert r.stats["idle_tail_bound_s"] == pytest.approx(BOUND)
    assert r.stats["idle_tail_worker"] == "w1#0"
    assert r.stats["idle_tail_from"] == "the last job end"


def test_a_worker_stalled_for_a_lease_after_the_last_finish_fails_liveness():
    h, final = drained_history()
    h.no_job(1.3, "w0#0")
    h.no_job(1.02 + STALL, "w1#0")  # the lock was free and running.txt empty all along
    r = check_tail(h, final)
    assert rules(r) == {"idle-tail"}
    message = r.violations[0].message
    assert message.startswith("liveness: w1#0") and "the last job end" in message
    assert r.stats["idle_tail_s"] == pytest.approx(STALL)


def test_a_history_without_no_job_records_is_not_judged():
    h, final = good_history()
    stats = run_check(h, final).stats
    assert stats["idle_tail_s"] is None and stats["idle_tail_judged_s"] is None


def test_workers_going_one_by_one_through_the_lock_are_each_judged_from_the_last_release():
    h, final = drained_history()
    h.session(0.0, "w2#0")
    drain_under_lock(h, 1.1, "w0#0", 3)  # leaves at 1.23
    drain_under_lock(h, 1.9, "w1#0", 4)  # 0.8 s after w0 freed the lock at 1.22
    drain_under_lock(h, 2.7, "w2#0", 5)  # 0.8 s after w1 freed it at 2.02
    r = check_tail(h, final)
    assert r.ok, r.violations
    assert r.stats["idle_tail_s"] == pytest.approx(2.83 - 1.02)  # longer than the bound
    assert r.stats["idle_tail_judged_s"] == pytest.approx(0.81)


def test_a_stall_in_a_chain_of_lock_holders_fails():
    h, final = drained_history()
    h.session(0.0, "w2#0")
    drain_under_lock(h, 1.1, "w0#0", 3)
    drain_under_lock(h, 1.9, "w1#0", 4)
    drain_under_lock(h, 2.02 + STALL, "w2#0", 5)  # the lock was free from 2.02
    r = check_tail(h, final)
    assert rules(r) == {"idle-tail"}
    assert "w2#0" in r.violations[0].message and "release by w1#0" in r.violations[0].message


def test_a_kill_of_the_lock_holder_excuses_a_wait_for_its_lease():
    h, final = drained_history()
    h.acquire(1.1, "w0#0", 3)  # the function runs under the lock, and w0 is killed there
    h.fault(1.2, "w0#0", "kill")
    h.acquire(1.2 + STALL, "w1#0", 4, takeover=True)  # the lock expired: taken over
    h.release(1.3 + STALL, "w1#0", 4)
    h.no_job(1.33 + STALL, "w1#0")
    r = check_tail(h, final)
    assert r.ok, r.violations
    assert r.stats["idle_tail_from"] == "a lease after the kill of w0#0"
    # the same wait with no fault to explain it: w0 left holding the lock
    h.records = [x for x in h.records if x.get("kind") != "fault"]
    assert rules(check_tail(h, final)) == {"idle-tail"}


def test_a_pause_excuses_a_lease_and_a_bound_after_it_and_no_more():
    h, final = drained_history()
    h.fault(1.1, "w0#0", "pause")  # w0 looks idle: the others may give it its turns
    h.fault(1.5, "w0#0", "resume")
    h.no_job(1.6, "w0#0")
    expired = 1.1 + LEASE + lease_margin(LEASE)
    h.no_job(expired + BOUND - 0.1, "w1#0")
    assert check_tail(h, final).ok
    h.records[-1]["t"] = expired + BOUND + 0.3
    r = check_tail(h, final)
    assert rules(r) == {"idle-tail"}
    assert "a lease after the pause of w0#0" in r.violations[0].message


def test_a_restarted_life_may_wait_a_lease_after_it_opened_and_no_more():
    h, final = drained_history()
    h.no_job(1.3, "w0#0")
    h.fault(1.1, "w1#0", "kill")
    h.fault(1.5, "w1#1", "restart")
    h.session(2.4, "w1#1")  # a slow start; then every record is new to it, the dead ones too
    expired = 2.4 + LEASE + lease_margin(LEASE)
    h.no_job(expired + 0.2, "w1#1")
    r = check_tail(h, final)
    assert r.ok, r.violations
    assert r.stats["idle_tail_judged_s"] == pytest.approx(0.2)
    assert r.stats["idle_tail_from"] == "a lease after its restarted Worker opened"
    h.records[-1]["t"] = expired + BOUND + 0.3
    assert rules(check_tail(h, final)) == {"idle-tail"}


def test_a_run_cut_short_by_its_cap_is_not_judged_on_its_tail():
    h, final = drained_history()
    h.no_job(1.02 + STALL, "w1#0")
    final["timed_out"] = True
    assert rules(check_tail(h, final)) == {"unfinished"}


def hand_off_history():
    """w0 claims job-a with no acquire and hands job-b to w1 in the same push (tokens 1 and
    2, the free lock moves to 2); w1 takes it up and finishes it."""
    h = History()
    done = h.push(0.0, "w0#0", [MAIN, LOCK, "refs/heads/jobs/w0/job-a/1",
                               "refs/heads/jobs/w1/job-b/2", own("w0")])
    h.rec(done, "w0#0", "event", event="lock-acquire", token=1, takeover=False, previous="",
          unlocked=True)
    h.rec(done, "w0#0", "event", event="claim", job="job-a", token=1, attempt=1,
          branch="jobs/w0/job-a/1", revoked="")
    h.rec(done, "w0#0", "event", event="hand-off", job="job-b", token=2, to="w1",
          with_token=1)
    body = json.dumps({"kind": "lock", "v": 1, "token": 2, "holder": "", "session": "",
                       "renewal": 0, "last": "w0"})
    h.lock.append(f"distribute lock: free (last token 2)\n\n{body}\n")
    h.subjects.append("distribute: claim job-a by w0 (token 1, attempt 1)")
    h.beat(0.3, "w1#0")
    h.rec(0.33, "w1#0", "event", event="claim", job="job-b", token=2, attempt=1,
          branch="jobs/w1/job-b/2", revoked="", by="w0")
    h.finish(0.6, "w0#0", "job-a", 1, "a1")
    h.finish(0.7, "w1#0", "job-b", 2, "b1")
    return h, two_done(h)


def test_a_hand_off_taken_up_once_passes():
    h, final = hand_off_history()
    result = run_check(h, final, expected_jobs=["job-a", "job-b"])
    assert result.ok, result.violations


def test_a_handed_job_taken_up_twice_is_a_double_claim():
    h, final = hand_off_history()
    h.rec(0.8, "w1#0", "event", event="claim", job="job-b", token=2, attempt=1,
          branch="jobs/w1/job-b/2", revoked="", by="w0")
    assert "double-claim" in rules(run_check(h, final, expected_jobs=["job-a", "job-b"]))


def test_a_hand_off_whose_claim_is_not_on_main_is_a_lost_write():
    h, final = hand_off_history()
    final["main_subjects"] = [s for s in final["main_subjects"] if "claim job-a" not in s]
    result = run_check(h, final, expected_jobs=["job-a", "job-b"])
    assert any("handing 'job-b'" in v.message for v in result.violations)


def test_an_unlocked_claim_the_lock_history_lacks_is_a_lost_write():
    h, final = hand_off_history()
    final["lock_history"] = final["lock_history"][:1]  # the free lock never moved
    result = run_check(h, final, expected_jobs=["job-a", "job-b"])
    assert any("unlocked claim under token 1" in v.message for v in result.violations)


def handed_then_retried(after_beat: float):
    """w1 last wrote its record at 0.0; w0 handed it job-b at 3.0, and w1 never took the job
    up; w0 retries it ``after_beat`` seconds after w1's record."""
    h = History()
    h.beat(0.0, "w1#0")
    done = h.push(3.0, "w0#0", [MAIN, LOCK])
    h.rec(done, "w0#0", "event", event="hand-off", job="job-b", token=2, to="w1",
          with_token=1)
    h.acquire(after_beat - 0.1, "w0#0", 3)
    h.claim(after_beat, "w0#0", "job-b", 3, attempt=2, revoked="w1")
    return h


def test_a_handed_job_is_retried_by_its_workers_record_not_by_the_hand_off():
    """The claimer's push is no sign of life of the worker it handed a job to."""
    late = handed_then_retried(LEASE + 0.5)
    assert "early-reclaim" not in rules(run_check(late, late.final(), expected_jobs=None))
    early = handed_then_retried(LEASE - 0.5)
    assert "early-reclaim" in rules(run_check(early, early.final(), expected_jobs=None))
