"""The command line's pieces without real git: argument handling, edits, status, the job runner."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from distribute.cli import (
    STATUS_SCHEMA,
    FencedEdit,
    break_lock,
    default_copy_path,
    find_log,
    main,
    queue_edit,
    requeue_edit,
    status_document,
    validate_jobs,
)
from distribute.core.errors import InvalidName, RemoteStateError, UsageError
from distribute.core.ledger import DONE, FAILED, RUNNING, Entry, Ledger
from distribute.core.lock import Beat, LockState, beat_message, lock_message, parse_lock_message
from distribute.core.names import LOCK_REF, encode_component, job_branch, job_dir, worker_ref
from distribute.remote import RemoteView
from distribute.runner import (
    DONE as OUT_DONE,
)
from distribute.runner import (
    FAILED as OUT_FAILED,
)
from distribute.runner import (
    INTERRUPTED,
    JobRunner,
    command_for_job,
    describe_exit,
    job_environment,
    last_line,
)
from distribute.transport.base import RefUpdate
from distribute.transport.memory import MemoryRemote

PY = sys.executable

# ---- the command for a job ------------------------------------------------------------


def test_job_is_one_argument_without_a_shell():
    job = "lr=0.1 seed=1; rm -rf / $(x) 'q'"
    assert command_for_job(["train", "{job}", "--name={job}"], job) == [
        "train", job, f"--name={job}"
    ]


def test_command_without_placeholder_is_kept():
    assert command_for_job(["echo", "hi"], "j") == ["echo", "hi"]


def test_shell_quotes_the_job():
    job = "it's $HOME `x` a b"
    argv = command_for_job(["printf", "%s", "{job}"], job, shell=True)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert shlex.split(argv[2]) == ["printf", "%s", job]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == job


def test_empty_command_is_a_usage_error():
    with pytest.raises(UsageError, match="after `--`"):
        command_for_job([], "j")


def test_environment_names_the_job():
    env = job_environment({"A": "1"}, job="j k", worker="w", attempt=2, job_dir="/x")
    assert env == {"A": "1", "DISTRIBUTE_JOB": "j k", "DISTRIBUTE_WORKER": "w",
                   "DISTRIBUTE_ATTEMPT": "2", "DISTRIBUTE_JOB_DIR": "/x",
                   "DISTRIBUTE_RESUMED_FROM": "", "DISTRIBUTE_SLOT": "0"}
    env = job_environment({}, job="j", worker="w", attempt=3, job_dir="/x",
                          resumed_from="jobs/v/j/7", slot=2)
    assert env["DISTRIBUTE_RESUMED_FROM"] == "jobs/v/j/7"
    assert env["DISTRIBUTE_SLOT"] == "2"


def test_slot_fills_its_placeholder_unless_the_job_has_a_parameter_of_that_name():
    command = ["run", "--port=60{slot}", "{slot}", "{{slot}}"]
    assert command_for_job(command, "lr=1", slot="3") == ["run", "--port=603", "3", "{slot}"]
    assert command_for_job(command, "slot=a", slot="3") == ["run", "--port=60a", "a", "{slot}"]
    assert command_for_job(["run", "{slot}"], "lr=1", slot="3", known=["lr"]) == ["run", "3"]
    # without a slot, {slot} is a name like any other: left alone when no job has it
    assert command_for_job(["run", "{slot}"], "lr=1", known=["lr"]) == ["run", "{slot}"]
    assert shlex.split(command_for_job(["echo", "{slot}"], "j", shell=True, slot="1")[2]) == [
        "echo", "1"]


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_last_line_skips_own_notes(tmp_path):
    p = tmp_path / "log.txt"
    p.write_text("a\nValueError: bad lr\n\n[distribute] exit code 1\n")
    assert last_line(str(p)) == "ValueError: bad lr"
    assert last_line(str(tmp_path / "missing")) == ""


# ---- names and files ------------------------------------------------------------------------


def test_all_names_are_checked_first():
    assert validate_jobs(["a", "b c"]) == ["a", "b c"]
    with pytest.raises(InvalidName, match="tab.*nothing was queued"):
        validate_jobs(["ok", "a\tb"])
    with pytest.raises(InvalidName, match="2 job names are invalid"):
        validate_jobs(["a\nb", "ok", " x"])


def test_default_copy_is_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        p = default_copy_path("git@host:me/runs.git", "w 1")
        assert p.parent.parent == tmp_path / "distribute"
        assert p.name == encode_component("w 1")
        assert p.parent.name.startswith("runs.git-")
        assert default_copy_path("/a/runs.git", "w") != default_copy_path("/b/runs.git", "w")


# ---- queue and ledger edits (pure) ----------------------------------------------------------


def test_queue_edit_dedupes_against_queue_and_ledgers():
    ledger = Ledger(running=(Entry("r", "w", 1),), done=(Entry("d", "w", 1),),
                    failed=(Entry("f", "w", 1, 3, "x"),))
    result: dict = {}
    out = queue_edit(["a", "q", "r", "d", "f", "a", "b"], result)(ledger, ["q"])
    assert out is not None
    assert out[1] == ["q", "a", "b"]
    assert result["added"] == ["a", "b"]
    assert set(result["skipped"]) == {"q", "r", "d", "f"}
    assert queue_edit(["q"], {})(ledger, ["q"]) is None


def test_requeue_puts_failed_jobs_first_and_resets_them():
    ledger = Ledger(failed=(Entry("f1", "w", 4, 3, "boom"), Entry("f2", "w", 5, 3, "x")),
                    running=(Entry("rel", "", 2, 1, "interrupted"), Entry("held", "v", 3)))
    result: dict = {}
    new, queue, _ = requeue_edit(None, False, result)(ledger, ["q"])
    assert queue == ["f1", "f2", "q"] and new.failed == ()
    new, queue, _ = requeue_edit(["rel"], False, result)(ledger, ["q", "rel"])
    assert queue == ["rel", "q"] and new.state_of("rel") is None
    with pytest.raises(UsageError, match="running on worker 'v'.*--force"):
        requeue_edit(["held", "f1"], False, {})(ledger, [])
    new, queue, _ = requeue_edit(["held"], True, {})(ledger, [])
    assert new.state_of("held") is None and queue == ["held"]
    with pytest.raises(UsageError, match="not known"):
        requeue_edit(["nope"], False, {})(ledger, [])
    ledger2 = Ledger(done=(Entry("d", "w", 1),))
    with pytest.raises(UsageError, match="'d' is done"):
        requeue_edit(["d"], False, {})(ledger2, [])
    result = {}
    assert requeue_edit(["q"], False, result)(ledger, ["q"]) is None
    assert result["skipped"] == ["q"]


# ---- status document ------------------------------------------------------------------------

SCHEMA_KEYS = {"schema", "remote", "branch", "main", "watched_seconds", "counts", "queued",
               "running", "done", "failed", "lock", "workers"}


def test_status_document_schema_and_lease_judgement():
    ledger = Ledger(
        running=(Entry("rel", "", 1, 1, "interrupted"), Entry("a", "w1", 2), Entry("b", "w2", 3),
                 Entry("c", "ghost", 4), Entry("d", "w3", 5)),
        done=(Entry("z", "w1", 1),),
        failed=(Entry("f", "w2", 1, 3, "exit code 1"),),
    )
    beats = {"w1": Beat("w1", "s1", 3, ("a",)), "w2": Beat("w2", "s2", 1, ("b",)),
             "w3": Beat("w3", "s3", 1, ("d",), revoked_by="w1", token=9)}
    doc = status_document(
        remote="https://user:secret@host/r.git", branch="main", main="0" * 40, ledger=ledger,
        queue=["q1", "q2"], lock=LockState(7, "w1", "s1", 2), beats=beats,
    )
    assert set(doc) == SCHEMA_KEYS and doc["schema"] == STATUS_SCHEMA == 1
    assert "secret" not in json.dumps(doc)
    assert doc["counts"] == {"queued": 2, "running": 5, "done": 1, "failed": 1}
    lease = {r["job"]: r["lease"] for r in doc["running"]}
    assert lease == {"rel": "released", "a": "unknown", "b": "unknown", "c": "no-record",
                     "d": "revoked"}
    assert doc["running"][0]["worker"] is None and doc["running"][0]["branch"] is None
    assert doc["running"][1]["branch"] == job_branch("w1", "a", 2)
    assert doc["lock"] == {"held": True, "holder": "w1", "token": 7, "session": "s1",
                           "renewal": 2, "changed": None}
    assert doc["failed"][0]["reason"] == "exit code 1"
    assert [w["name"] for w in doc["workers"]] == ["w1", "w2", "w3"]
    assert doc["workers"][2]["revoked_by"] == "w1"
    watched = status_document(
        remote="r", branch="main", main="0" * 40, ledger=ledger, queue=[], lock=LockState(),
        beats=beats, watched_seconds=2.0, lock_changed=False, renewed={"w1": True, "w2": False},
    )
    lease = {r["job"]: r["lease"] for r in watched["running"]}
    assert lease["a"] == "renewed" and lease["b"] == "unchanged"
    assert watched["lock"]["held"] is False and watched["lock"]["holder"] is None
    json.dumps(watched)


# ---- fenced edits against the in-memory remote ------------------------------------------------


def memory_view(jobs=()):
    remote = MemoryRemote()
    t = remote.transport("setup")
    main = t.write_commit(parents=[], message="init", changes={
        RUNNING: b"", DONE: b"", FAILED: b"", "jobs.txt": "".join(j + "\n" for j in jobs).encode()
    })
    lock = t.write_commit(parents=[], message=lock_message(LockState()), changes={})
    assert t.push([RefUpdate("refs/heads/main", None, main), RefUpdate(LOCK_REF, None, lock)])
    view = RemoteView.__new__(RemoteView)
    view.transport = remote.transport("cli")
    view.branch, view.main_ref = "main", "refs/heads/main"
    return remote, view


def read(remote, path, ref="refs/heads/main"):
    t = remote.transport()
    return t.read_file(remote.get_ref(ref), path)


def lock_state(remote):
    return parse_lock_message(remote.transport().commit_message(remote.get_ref(LOCK_REF)))


def test_fenced_edit_commits_queue_and_releases_lock_in_one_push():
    remote, view = memory_view(["a"])
    result: dict = {}
    assert FencedEdit(view, "cli@test").apply(queue_edit(["b", "a"], result))
    assert read(remote, "jobs.txt") == b"a\nb\n"
    state = lock_state(remote)
    assert state.free and state.token == 1  # acquired (token 1), released with the edit
    assert not FencedEdit(view, "cli@test").apply(queue_edit(["a"], {}))
    assert lock_state(remote).free


def held_lock_and_edit(holder: str, session: str):
    """A memory remote whose lock ``holder`` holds (never renewed), and a fenced edit by
    ``cli`` that waits 5 s of a fake clock for it; returns the remote, the held lock
    commit, the edit and the clock."""
    remote, view = memory_view()
    t = remote.transport()
    old = remote.get_ref(LOCK_REF)
    held = t.write_commit(parents=[old], message=lock_message(LockState(3, holder, session)),
                          changes={})
    assert t.push([RefUpdate(LOCK_REF, old, held)])
    now = [0.0]

    def sleep(s):
        now[0] += s

    return remote, held, FencedEdit(view, "cli", wait=5, sleep=sleep, clock=lambda: now[0]), now


def test_fenced_edit_gives_up_on_a_lock_that_never_changes():
    remote, held, edit, _ = held_lock_and_edit("ghost", "s")
    with pytest.raises(RemoteStateError, match="held by 'ghost'.*distribute unlock"):
        edit.apply(queue_edit(["a"], {}))
    assert read(remote, "jobs.txt") == b""
    assert remote.get_ref(LOCK_REF) == held


def test_a_fenced_edit_never_takes_over_a_holding_of_its_own_name():
    """A worker takes its own name's holding from another session over at once (its
    earlier life); an edit must not: two edits of one process share a holder name."""
    remote, held, edit, now = held_lock_and_edit("cli", "other")
    with pytest.raises(RemoteStateError, match="held by 'cli'"):
        edit.apply(queue_edit(["a"], {}))
    assert remote.get_ref(LOCK_REF) == held and now[0] >= 5


def test_fenced_edit_releases_the_lock_when_the_edit_refuses():
    remote, view = memory_view()
    with pytest.raises(UsageError):
        FencedEdit(view, "cli").apply(requeue_edit(["nope"], False, {}))
    assert lock_state(remote).free


def test_fenced_edit_redoes_the_edit_when_the_lock_is_broken_meanwhile():
    remote, view = memory_view(["a"])
    broke = []

    def edit(ledger, queue):
        if not broke:  # someone runs `unlock` while we edit
            broke.append(1)
            t = remote.transport()
            old = remote.get_ref(LOCK_REF)
            state = parse_lock_message(t.commit_message(old))
            new = t.write_commit(parents=[old], message=lock_message(LockState(state.token + 1)),
                                 changes={})
            assert t.push([RefUpdate(LOCK_REF, old, new)])
        return ledger, queue + ["b"], "queue b"

    assert FencedEdit(view, "cli", sleep=lambda s: None).apply(edit)
    assert read(remote, "jobs.txt") == b"a\nb\n"
    assert lock_state(remote).free


def test_break_lock_is_a_cas_to_the_next_token():
    remote, view = memory_view()
    before, after = break_lock(view)
    assert before.free and after is None
    t = remote.transport()
    old = remote.get_ref(LOCK_REF)
    held = t.write_commit(parents=[old], message=lock_message(LockState(4, "w9", "s9", 1)),
                          changes={})
    assert t.push([RefUpdate(LOCK_REF, old, held)])
    before, after = break_lock(view)
    assert before.holder == "w9" and after == LockState(token=5)
    assert lock_state(remote) == LockState(token=5)


def test_find_log_reads_main_when_done_and_the_job_branch_otherwise():
    remote, view = memory_view()
    t = remote.transport()
    main = remote.get_ref("refs/heads/main")
    path = f"{job_dir('r j')}/log.txt"
    branch = t.write_commit(parents=[main], base=main, changes={path: b"running log\n"},
                            message="update")
    ledger = Ledger(running=(Entry("r j", "w 1", 7),), done=(Entry("d", "w", 1),),
                    failed=(Entry("f", "", 3, 3, "boom"),))
    new_main = t.write_commit(
        parents=[main], base=main, message="state",
        changes={**ledger.to_files(), f"{job_dir('d')}/log.txt": b"done log\n"},
    )
    fbranch = t.write_commit(parents=[main], base=main, message="u",
                             changes={f"{job_dir('f')}/log.txt": b"failed log\n"})
    assert t.push([
        RefUpdate("refs/heads/main", main, new_main),
        RefUpdate("refs/heads/" + job_branch("w 1", "r j", 7), None, branch),
        RefUpdate("refs/heads/" + job_branch("w2", "f", 3), None, fbranch),
    ])
    assert find_log(view, "d") == (b"done log\n", "main")
    assert find_log(view, "r j") == (b"running log\n", job_branch("w 1", "r j", 7))
    assert find_log(view, "f")[0] == b"failed log\n"  # released entry: found by branch search
    with pytest.raises(UsageError, match="not known"):
        find_log(view, "nope")


def test_status_reads_worker_records():
    from distribute.cli import observe_status

    remote, view = memory_view(["q"])
    t = remote.transport()
    beat = t.write_commit(parents=[], message=beat_message(Beat("w", "s", 2, ("a",))), changes={})
    assert t.push([RefUpdate(worker_ref("w"), None, beat)])
    doc = observe_status(view, "mem://r")
    assert doc["queued"] == ["q"] and doc["workers"][0]["name"] == "w"
    assert doc["lock"]["held"] is False


# ---- main(): exit codes and one-line errors ----------------------------------------------------


def test_missing_command_is_a_usage_error(capsys):
    assert main(["work", "somewhere", "--"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no command given") and err.count("\n") == 1


def test_command_without_dashes_is_a_usage_error(capsys):
    assert main(["work", "somewhere", "python", "x.py"]) == 2
    assert "after `--`" in capsys.readouterr().err


def test_unknown_remote_is_one_line(capsys, tmp_path):
    assert main(["status", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no remote at") and err.count("\n") == 1


def test_invalid_names_fail_before_the_remote_is_touched(capsys, tmp_path):
    assert main(["add", str(tmp_path / "nope"), "ok", "a\tb"]) == 1
    assert "tab" in capsys.readouterr().err


def test_requeue_needs_jobs_or_failed(capsys):
    assert main(["requeue", "r"]) == 2
    assert main(["requeue", "r", "a", "--failed"]) == 2


def test_every_command_has_an_example(capsys):
    for command in ["init", "add", "work", "status", "logs", "requeue", "unlock", "demo"]:
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Example" in out and f"distribute {command}" in out, command


def test_sim_is_forwarded_or_explained(capsys, monkeypatch):
    import types

    seen = []
    module = types.ModuleType("distribute_sim.__main__")
    module.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "distribute_sim.__main__", module)
    assert main(["sim", "--workers", "2", "-x"]) == 3
    assert seen == [["--workers", "2", "-x"]]
    for name in ("distribute_sim.__main__", "sim.__main__"):  # neither can be imported
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["sim"]) == 1
    assert "simulator is not available" in capsys.readouterr().err


def test_remote_from_the_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTRIBUTE_REMOTE", str(tmp_path / "from-env"))
    assert main(["status"]) == 1
    assert "from-env" in capsys.readouterr().err


# ---- the job runner with a stand-in worker -------------------------------------------------------


class FakeWorker:
    """Enough of distribute.dist.Worker for JobRunner."""

    def __init__(self, path, jobs, outcome="retry"):
        self.name = "fake"
        self.path = str(path)
        self.jobs = list(jobs)
        self.running_job = None
        self.attempt = None
        self.job_branch = None
        self.resumed_from = None
        self.removed_links = []
        self.calls = []
        self.outcome = outcome

    @property
    def job_dir(self):
        return os.path.join(self.path, *job_dir(self.running_job).split("/"))

    def get_next_job(self, func):
        if not self.jobs:
            return None
        self.running_job, self.attempt = self.jobs.pop(0), 1
        return self.running_job

    def commit_update(self, message=None):
        self.calls.append(("update", self.running_job))
        return True

    def finish_job(self):
        self.calls.append(("finish", self.running_job))
        self.running_job = None

    def fail_job(self, reason="failed", *, interrupted=False):
        self.calls.append(("fail", self.running_job, reason, interrupted))
        self.running_job = None
        return self.outcome


def log_of(worker, job):
    with open(os.path.join(worker.path, *job_dir(job).split("/"), "log.txt")) as f:
        return f.read()


def test_runner_finishes_fails_and_logs(tmp_path):
    w = FakeWorker(tmp_path, ["ok job", "bad"])
    code = (
        "import os, sys\n"
        "print('arg', sys.argv[1])\n"
        "print('env', os.environ['DISTRIBUTE_JOB'], os.environ['DISTRIBUTE_ATTEMPT'])\n"
        "open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'out.txt'), 'w').write(sys.argv[1])\n"
        "sys.stderr.write('oops\\n')\n"
        "sys.exit(0 if sys.argv[1] == 'ok job' else 4)\n"
    )
    summary = JobRunner(w, [PY, "-c", code, "{job}"], lambda: None).run()
    assert [o.status for o in summary.outcomes] == [OUT_DONE, "retry"]
    assert w.calls[0] == ("finish", "ok job")
    assert w.calls[1][0] == "fail" and w.calls[1][2] == "exit code 4: oops"
    log = log_of(w, "ok job")
    assert "arg ok job" in log and "env ok job 1" in log and "oops" in log
    assert "[distribute] exit code 0" in log
    assert summary.exit_code == 0


def test_runner_timeout_kills_and_fails(tmp_path):
    w = FakeWorker(tmp_path, ["slow"], outcome="failed")
    summary = JobRunner(w, [PY, "-c", "import time; time.sleep(30)"], lambda: None,
                        timeout=0.5, grace=1).run()
    o = summary.outcomes[0]
    assert o.status == OUT_FAILED and o.seconds < 10
    assert w.calls[-1] == ("fail", "slow", "timed out after 0.5 s", False)


def test_runner_commits_the_log_periodically(tmp_path):
    w = FakeWorker(tmp_path, ["j"])
    JobRunner(w, [PY, "-c", "import time; time.sleep(1.2)"], lambda: None,
              commit_every=0.3).run()
    assert sum(1 for c in w.calls if c[0] == "update") >= 2


def test_runner_missing_program_fails_the_attempt(tmp_path):
    w = FakeWorker(tmp_path, ["j"])
    summary = JobRunner(w, [str(tmp_path / "no-such-program")], lambda: None).run()
    assert summary.outcomes[0].status == "retry"
    assert "could not start" in w.calls[-1][2]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_runner_forwards_sigterm_and_fails_as_interrupted(tmp_path):
    w = FakeWorker(tmp_path, ["j", "never"])
    marker = tmp_path / "child-got-term"
    code = (f"import os, signal, sys, time\n"
            f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(),"
            f" sys.exit(0)))\n"
            f"os.kill(os.getppid(), signal.SIGTERM)\n"
            f"time.sleep(30)\n")
    summary = JobRunner(w, [PY, "-c", code], lambda: None, grace=5).run()
    assert marker.exists()
    assert summary.signum == signal.SIGTERM and summary.exit_code == 128 + signal.SIGTERM
    assert [o.status for o in summary.outcomes] == [INTERRUPTED]
    assert w.calls[-1] == ("fail", "j", "interrupted", True)  # not a failure
    assert w.jobs == ["never"]  # no further job was taken
    assert signal.getsignal(signal.SIGTERM) is not None


# ---- the job folder: a command's open files across periodic commits ----------------------------


def test_open_files_survive_periodic_commits(tmp_path):
    w = FakeWorker(tmp_path, ["j"])
    code = ("import os, time\n"
            "f = open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'metrics.csv'), 'a')\n"
            "for i in range(20):\n"
            "    f.write(f'{i}\\n'); f.flush(); print('line', i, flush=True); time.sleep(0.05)\n")
    JobRunner(w, [PY, "-c", code], lambda: None, commit_every=0.2).run()
    assert sum(1 for c in w.calls if c[0] == "update") >= 2
    w.running_job = "j"
    with open(os.path.join(w.job_dir, "metrics.csv")) as f:
        metrics = f.read().split()
    assert metrics == [str(i) for i in range(20)]
    assert log_of(w, "j").count("line ") == 20


