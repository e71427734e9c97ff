"""Hostile or damaged remote content: a clear error or a skip, never a crash loop, never a
write outside the local copy.

Real bare repositories on disk, edited behind Distribute's back with git plumbing (a
damaged ledger line, a lock or liveness ref that points at the wrong object, job names and
branch names made to look like paths, symbolic links committed into job folders, a big
file); real workers (``worker_from_url`` with short leases); the command line as a
subprocess.  Every worker gets a ``sleep`` that raises :class:`StillWaiting` past a
deadline, so a worker that would loop fails its test in seconds instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cli_run import cli_env

from distribute.core.errors import DistributeError, RemoteStateError
from distribute.core.lock import LockState, lock_message
from distribute.core.names import LOCK_REF, encode_component, job_branch, job_dir
from distribute.dist import Worker, worker_from_url
from distribute.remote import init_remote
from distribute.sources import queue_jobs_func

PY = sys.executable
TIMEOUT = 60
#: Seconds a worker may wait in all before :class:`StillWaiting` ends its test.
BOUND = 8.0
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "hostile",
    "GIT_AUTHOR_EMAIL": "hostile@localhost",
    "GIT_COMMITTER_NAME": "hostile",
    "GIT_COMMITTER_EMAIL": "hostile@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
LINK = "120000"
FILE = "100644"


# ---- helpers --------------------------------------------------------------------------------
class StillWaiting(Exception):
    """A worker was still waiting (looping) when its test's deadline passed."""


def bounded(seconds: float = BOUND) -> Callable[[float], None]:
    """A ``sleep`` for a worker that raises :class:`StillWaiting` once ``seconds`` passed."""
    deadline = time.monotonic() + seconds

    def sleep(delay: float) -> None:
        if time.monotonic() + delay > deadline:
            raise StillWaiting(f"still waiting after {seconds} s")
        time.sleep(delay)

    return sleep


def git(bare: Path, *args: str, data: bytes | None = None,
        env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", "--git-dir", str(bare), *args], input=data, capture_output=True,
        env={**GIT_ENV, **(env or {})}, timeout=TIMEOUT, check=True,
    )
    return result.stdout.decode().strip()


def commit_files(bare: Path, files: Mapping[str, tuple[str, bytes] | None], *,
                 ref: str = "refs/heads/main", parent: str = "refs/heads/main") -> str:
    """Commit ``path: (mode, contents)`` (``None`` deletes) on top of ``parent`` and point
    ``ref`` at it, with plumbing only (nothing Distribute checks)."""
    env = {"GIT_INDEX_FILE": str(bare / "hostile.index")}
    git(bare, "read-tree", parent, env=env)
    for path, entry in files.items():
        if entry is None:
            git(bare, "update-index", "--force-remove", path, env=env)
            continue
        mode, data = entry
        blob = git(bare, "hash-object", "-w", "--stdin", data=data)
        git(bare, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
    tree = git(bare, "write-tree", env=env)
    commit = git(bare, "commit-tree", tree, "-p", parent, "-m", "a hostile edit")
    git(bare, "update-ref", ref, commit)
    (bare / "hostile.index").unlink()
    return commit


def garbage(bare: Path, kind: str, record: str = "lock") -> str:
    """An object that a lock or liveness ref should never point at."""
    blob = git(bare, "hash-object", "-w", "--stdin", data=b"not a record\n")
    if kind == "blob":
        return blob
    if kind == "tree":
        return git(bare, "mktree", data=f"{FILE} blob {blob}\tx\n".encode())
    empty = git(bare, "mktree", data=b"")
    if kind == "commit":
        return git(bare, "commit-tree", empty, "-m", "just a commit")
    assert kind == "record-missing-field"
    message = f'distribute {record}\n\n{{"kind": "{record}", "v": 1}}\n'
    return git(bare, "commit-tree", empty, "-m", message)


GARBAGE_KINDS = ["blob", "tree", "commit", "record-missing-field"]


def tree_of(bare: Path, rev: str = "main") -> dict[str, str]:
    """``path: mode`` of every file at ``rev``."""
    out = git(bare, "ls-tree", "-r", "-z", rev)
    entries = {}
    for item in filter(None, out.split("\0")):
        meta, path = item.split("\t", 1)
        entries[path] = meta.split()[0]
    return entries


def show(bare: Path, path: str, rev: str = "main") -> str:
    return git(bare, "show", f"{rev}:{path}")


def cli(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "distribute", *map(str, args)], capture_output=True, text=True,
        timeout=TIMEOUT, env=cli_env(tmp_path), cwd=tmp_path,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed command (no traceback)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    return lines[0]


def work(tmp_path: Path, remote: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``distribute work`` with a shell script as the job's command, until no job is left."""
    return cli(tmp_path, "work", remote, "--path", tmp_path / "copy", "--name", "me",
               "--lease", "5", "--no-wait", "--", "sh", "-c", script)


def make_worker(remote: Path, tmp_path: Path, name: str = "me", **options: object) -> Worker:
    options.setdefault("lease_seconds", 2)
    options.setdefault("poll_seconds", 0.05)
    options.setdefault("retry_seconds", 1)
    options.setdefault("wait_for_running", False)
    options.setdefault("sleep", bounded())
    return worker_from_url(str(remote), path=tmp_path / f"copy-{name}", name=name, **options)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    init_remote(bare, jobs=["j1"])
    return bare


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every local copy, holding a file nothing may change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "target").write_text('{"secret": 4242}\n')
    return folder


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert (outside / "target").read_text() == '{"secret": 4242}\n'


# ---- 1. damaged ledgers ---------------------------------------------------------------------
GOOD = b"ok\tworker=w\ttoken=1\tattempt=1\n"
DAMAGED_LEDGERS = {
    "field-not-key-value": ("running.txt", GOOD + b"broken\tno-equals-sign\n", 2,
                            "cannot read field 'no-equals-sign' (not key=value)"),
    "token-not-a-number": ("running.txt", b"broken\tworker=w\ttoken=x1\tattempt=1\n", 1,
                           "bad number token='x1'"),
    "nul-byte": ("done.txt", GOOD + b"\nbro\x00ken\tworker=w\ttoken=2\tattempt=1\n", 3,
                 "the job name holds a NUL byte"),
    "invalid-utf8": ("done.txt", GOOD + b"\xff\xfebroken\tworker=w\ttoken=2\tattempt=1\n", 2,
                     "text that is not UTF-8"),
}


@pytest.mark.parametrize("case", DAMAGED_LEDGERS)
def test_damaged_ledger_line_is_a_clear_error_naming_file_and_line(remote, tmp_path, case):
    file, data, line, why = DAMAGED_LEDGERS[case]
    commit_files(remote, {file: (FILE, data)})
    before = git(remote, "rev-parse", "main", LOCK_REF)
    started = time.monotonic()
    with make_worker(remote, tmp_path) as w, \
            pytest.raises(RemoteStateError, match=rf"^{file} line {line}: ") as caught:
        w.get_next_job(queue_jobs_func)
    assert time.monotonic() - started < BOUND  # raised at once: no retry, no loop
    assert why in str(caught.value) and "fix or delete that line" in str(caught.value)
    assert git(remote, "rev-parse", "main", LOCK_REF) == before  # nothing claimed or locked

    error = one_error_line(cli(tmp_path, "status", remote))
    assert error.startswith(f"error: {file} line {line}: {why}")
    assert "UnicodeDecodeError" not in error


def test_work_on_a_damaged_ledger_exits_at_once(remote, tmp_path):
    commit_files(remote, {"running.txt": (FILE, b"\xc3(\tworker=w\n")})
    started = time.monotonic()
    result = work(tmp_path, remote, "exit 0")
    assert time.monotonic() - started < 30
    assert "running.txt line 1: text that is not UTF-8" in one_error_line(result)


# ---- 2. a lock ref that holds no lock record ---------------------------------------------------


@pytest.mark.parametrize("kind", [
    "blob", "tree",
    "commit", "record-missing-field",
])
def test_lock_ref_without_a_lock_record_stops_the_worker_with_the_repair(
    remote, tmp_path, kind
):
    git(remote, "update-ref", LOCK_REF, garbage(remote, kind))
    started = time.monotonic()
    with make_worker(remote, tmp_path) as w, pytest.raises(RemoteStateError) as caught:
        w.get_next_job(queue_jobs_func)
    assert time.monotonic() - started < BOUND
    message = str(caught.value)
    assert message.startswith(f"{LOCK_REF} on the remote does not hold a lock record")
    assert "`distribute unlock REMOTE`" in message


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_status_names_the_lock_ref_and_the_repair(remote, tmp_path, kind):
    git(remote, "update-ref", LOCK_REF, garbage(remote, kind))
    error = one_error_line(cli(tmp_path, "status", remote))
    assert error.startswith(f"error: {LOCK_REF} on the remote does not hold a lock record")
    assert "`distribute unlock REMOTE`" in error
    if kind in ("blob", "tree"):
        assert f"it points at a {kind}, not a commit" in error


def _claim_token(remote, job):
    line = next(x for x in show(remote, "running.txt").splitlines() if x.startswith(job + "\t"))
    return int(line.split("token=")[1].split("\t")[0])


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_unlock_repairs_a_lock_without_a_record_above_every_recorded_token(
    remote, tmp_path, kind
):
    with make_worker(remote, tmp_path) as w:  # a job done: its token is on record
        assert w.get_next_job(queue_jobs_func) == "j1"
        w.finish_job()
    recorded = int(show(remote, "done.txt").split("token=")[1].split("\t")[0])
    assert cli(tmp_path, "add", remote, "j2").returncode == 0
    git(remote, "update-ref", LOCK_REF, garbage(remote, kind))
    result = cli(tmp_path, "unlock", remote)
    assert result.returncode == 0, result.stderr
    assert "held no lock record" in result.stdout and f"next token {recorded + 1}" in result.stdout
    with make_worker(remote, tmp_path, name="w2") as w:
        assert w.get_next_job(queue_jobs_func) == "j2"
        assert _claim_token(remote, "j2") > recorded
        w.finish_job()


def test_a_lock_written_anew_by_init_starts_above_the_recorded_tokens(remote, tmp_path):
    """Deleting the lock ref and running init (the repair older versions named) must not
    hand out tokens again: a claim under a reused token could pass a stale holder's
    fencing check."""
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"
        w.finish_job()
    recorded = int(show(remote, "done.txt").split("token=")[1].split("\t")[0])
    assert cli(tmp_path, "add", remote, "j2").returncode == 0
    git(remote, "update-ref", "-d", LOCK_REF)
    assert cli(tmp_path, "init", remote).returncode == 0
    with make_worker(remote, tmp_path, name="w2") as w:
        assert w.get_next_job(queue_jobs_func) == "j2"
        assert _claim_token(remote, "j2") > recorded
        w.finish_job()
    assert len(show(remote, "done.txt").splitlines()) == 2


def test_lock_record_naming_a_missing_main_commit_does_not_stall_workers(remote, tmp_path):
    message = lock_message(LockState(token=3, main="0" * 40, last="ghost"))
    empty = git(remote, "mktree", data=b"")
    git(remote, "update-ref", LOCK_REF, git(remote, "commit-tree", empty, "-m", message))
    with make_worker(remote, tmp_path, lease_seconds=1, sleep=bounded(3)) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"


# ---- 3. liveness records that are garbage ------------------------------------------------------
@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_garbage_liveness_record_is_skipped_and_shown_unreadable(remote, tmp_path, kind):
    # "a-ghost" sorts before "me": were it read as an idle worker, it would go first
    git(remote, "update-ref", "refs/distribute/workers/a-ghost", garbage(remote, kind, "worker"))
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"
        result = cli(tmp_path, "status", remote, "--json")
        assert result.returncode == 0, result.stderr
        table = cli(tmp_path, "status", remote) if kind == "blob" else None
        w.finish_job()
    workers = {w["name"]: w for w in json.loads(result.stdout)["workers"]}
    assert workers["me"]["unreadable"] is None and workers["me"]["jobs"] == ["j1"]
    ghost = workers["a-ghost"]
    assert ghost["unreadable"].startswith("refs/distribute/workers/a-ghost holds no liveness")
    assert (ghost["session"], ghost["seq"], ghost["jobs"]) == (None, None, [])
    if table is not None:
        assert table.returncode == 0 and "a-ghost" in table.stdout
        assert "unreadable:" in table.stdout


def test_liveness_ref_whose_name_encodes_no_name_is_skipped(remote, tmp_path):
    git(remote, "update-ref", "refs/distribute/workers/a%ZZ", garbage(remote, "commit"))
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"


def test_garbage_record_of_a_dead_holder_does_not_block_the_takeover(remote, tmp_path):
    commit_files(remote, {"jobs.txt": (FILE, b""),
                          "running.txt": (FILE, b"j0\tworker=x\ttoken=1\tattempt=1\n")})
    git(remote, "update-ref", "refs/distribute/workers/x", garbage(remote, "commit"))
    # x's record stays unchanged, so its lease expires 1.5 s after this worker first sees it
    with make_worker(remote, tmp_path, lease_seconds=1, wait_for_running=True,
                     sleep=bounded(5)) as w:
        assert w.get_next_job(queue_jobs_func) == "j0"
        assert w.attempt == 2


# ---- 4. names that look like paths -------------------------------------------------------------
def hostile_names(tmp_path: Path) -> list[str]:
    return ["..", ".", str(tmp_path / "outside" / "abs"), "a/../../../outside/x", "%2E%2E",
            "..%2F..%2Foutside", "x/%2F..%2F..", "/", ".git", "updates"]


def test_job_names_that_look_like_paths_stay_in_their_folders(tmp_path):
    remote = tmp_path / "remote.git"
    names = hostile_names(tmp_path)
    init_remote(remote, jobs=names)
    before = set(tmp_path.iterdir())
    result = work(tmp_path, remote, 'echo "ran $DISTRIBUTE_JOB"; '
                                    'echo \'{"ok": 1}\' > "$DISTRIBUTE_JOB_DIR/metrics.json"')
    assert result.returncode == 0, result.stderr
    assert set(tmp_path.iterdir()) - before <= {tmp_path / d for d in ("copy", "cache", "tmp")}
    assert not (tmp_path / "outside").exists()
    files = [p for p in tree_of(remote) if p.startswith("updates/")]
    assert sorted(files) == sorted(
        f"{job_dir(n)}/{f}" for n in names for f in ("log.txt", "metrics.json")
    )
    for name in names:
        folder = encode_component(name)
        assert "/" not in folder and folder not in (".", "..") and folder[0] not in ".-"

    log = cli(tmp_path, "logs", remote, "..")
    assert log.returncode == 0 and "ran ..\n" in log.stdout
    absolute = cli(tmp_path, "logs", remote, names[2])
    assert absolute.returncode == 0 and f"ran {names[2]}\n" in absolute.stdout
    rows = json.loads(cli(tmp_path, "results", remote, "--format", "json").stdout)
    assert {r["job"]: r["ok"] for r in rows} == dict.fromkeys(names, 1)


def test_crafted_job_branch_names_resume_inside_the_copy(remote, tmp_path):
    # a released job "..", last run by a worker called "..": its branch name decodes to
    # jobs/../../7
    crafted = "jobs/%2E%2E/%2E%2E/7"
    assert job_branch("..", "..", 7) == crafted
    commit_files(remote, {"running.txt": (
        FILE, b"..\tworker=\ttoken=7\tattempt=1\twas=..\treason=crafted\n")})
    commit_files(remote, {"updates/%2E%2E/ckpt.txt": (FILE, b"from the crafted branch\n")},
                 ref=f"refs/heads/{crafted}")
    before = set(tmp_path.iterdir())
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == ".."
        assert w.resumed_from == crafted
        folder = Path(w.job_dir)
        assert folder == Path(w.path) / "updates" / "%2E%2E"
        assert (folder / "ckpt.txt").read_text() == "from the crafted branch\n"
        (folder / "more.txt").write_text("attempt 2\n")
        w.finish_job()
    assert set(tmp_path.iterdir()) - before == {tmp_path / "copy-me"}
    assert {p for p in tree_of(remote) if p.startswith("updates/")} == {
        "updates/%2E%2E/ckpt.txt", "updates/%2E%2E/more.txt"}


# ---- 5. symbolic links from the remote ---------------------------------------------------------
def link_to(path: Path) -> tuple[str, bytes]:
    return LINK, str(path).encode()


def plant_links(remote: Path, outside: Path, case: str) -> None:
    folder = job_dir("j1")
    target = outside / "target"
    if case == "log-and-metrics-on-main":
        commit_files(remote, {f"{folder}/log.txt": link_to(target),
                              f"{folder}/metrics.json": link_to(target)})
    elif case == "job-folder-on-main":
        commit_files(remote, {folder: link_to(outside)})
    elif case == "updates-on-main":
        commit_files(remote, {"updates": link_to(outside)})
    else:  # the previous attempt's branch holds the link; the retry merges it in
        assert case == "previous-attempt-branch"
        commit_files(remote, {"jobs.txt": (FILE, b""), "running.txt": (
            FILE, b"j1\tworker=\ttoken=5\tattempt=1\twas=old\treason=failed\n")})
        commit_files(remote, {f"{folder}/log.txt": link_to(target)},
                     ref=f"refs/heads/{job_branch('old', 'j1', 5)}")


LINK_CASES = ["log-and-metrics-on-main", "job-folder-on-main", "updates-on-main",
              "previous-attempt-branch"]


@pytest.mark.parametrize("case", LINK_CASES)
def test_work_never_writes_through_a_symlink_from_the_remote(remote, tmp_path, outside, case):
    plant_links(remote, outside, case)
    result = work(tmp_path, remote, 'echo "from the job"; '
                                    'echo \'{"loss": 1}\' > "$DISTRIBUTE_JOB_DIR/metrics.json"')
    assert result.returncode == 0, result.stderr
    untouched(outside)
    # the links were replaced: by a real folder on the way, by the job's own files in it
    folder = job_dir("j1")
    modes = tree_of(remote)
    assert modes[f"{folder}/log.txt"] == modes[f"{folder}/metrics.json"] == FILE
    assert LINK not in modes.values()
    assert "from the job" in show(remote, f"{folder}/log.txt")
    assert "removed the symbolic link" in show(remote, f"{folder}/log.txt")  # and says so
    assert json.loads(show(remote, f"{folder}/metrics.json")) == {"loss": 1}


def test_commit_update_and_finish_do_not_follow_symlinks(remote, tmp_path, outside):
    plant_links(remote, outside, "log-and-metrics-on-main")
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"
        Path(w.job_dir, "other.txt").write_text("written by the job\n")
        assert w.commit_update()
        w.finish_job()
    untouched(outside)
    log = f"{job_dir('j1')}/log.txt"
    # committed as the link it is (or as removed, once the worker removes such links)
    assert tree_of(remote).get(log, LINK) == LINK
    assert show(remote, f"{job_dir('j1')}/other.txt") == "written by the job"


@pytest.mark.parametrize("case", ["log-and-metrics-on-main", "job-folder-on-main"])
def test_a_python_job_writing_its_log_does_not_clobber_a_link_target(
    remote, tmp_path, outside, case
):
    plant_links(remote, outside, case)
    with make_worker(remote, tmp_path) as w:
        assert w.get_next_job(queue_jobs_func) == "j1"
        os.makedirs(w.job_dir, exist_ok=True)
        with open(os.path.join(w.job_dir, "log.txt"), "a") as f:
            f.write("working on j1\n")
        w.finish_job()
    untouched(outside)


def test_queue_file_that_is_a_symlink_is_not_followed(remote, tmp_path, outside):
    (outside / "target").write_text("secret-line\n")
    commit_files(remote, {"jobs.txt": link_to(outside / "target")})
    # a clear error is fine; reading or writing through the link is not
    with make_worker(remote, tmp_path) as w, contextlib.suppress(DistributeError):
        w.get_next_job(queue_jobs_func)
    assert (outside / "target").read_text() == "secret-line\n"
    assert "secret-line" not in show(remote, "running.txt") + show(remote, "done.txt")


def test_results_and_logs_do_not_read_through_symlinks(remote, tmp_path, outside):
    commit_files(remote, {
        "jobs.txt": (FILE, b""), "done.txt": (FILE, b"j1\tworker=w\ttoken=1\tattempt=1\n"),
        f"{job_dir('j1')}/metrics.json": link_to(outside / "target"),
        f"{job_dir('j1')}/log.txt": link_to(outside / "target"),
    })
    results = cli(tmp_path, "results", remote, "--format", "json")
    assert results.returncode == 0, results.stderr
    assert "4242" not in results.stdout + results.stderr
    (row,) = json.loads(results.stdout)
    assert row["job"] == "j1" and "error" in row and "secret" not in row
    logs = cli(tmp_path, "logs", remote, "j1")
    assert "4242" not in logs.stdout + logs.stderr
    untouched(outside)


# ---- 6. a big file on the main branch ----------------------------------------------------------
def test_big_file_on_the_main_branch(remote, tmp_path, record_property):
    size = 50 * 1024 * 1024
    writer = subprocess.Popen(["git", "--git-dir", str(remote), "hash-object", "-w", "--stdin"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=GIT_ENV)
    assert writer.stdin is not None
    chunk = bytes(1024 * 1024)
    for _ in range(size // len(chunk)):
        writer.stdin.write(chunk)
    out, _ = writer.communicate(timeout=TIMEOUT)
    commit_files(remote, {})  # a commit to build on
    env = {"GIT_INDEX_FILE": str(remote / "big.index")}
    git(remote, "read-tree", "main", env=env)
    git(remote, "update-index", "--add", "--cacheinfo", f"{FILE},{out.decode().strip()},big.bin",
        env=env)
    commit = git(remote, "commit-tree", git(remote, "write-tree", env=env), "-p", "main",
                 "-m", "a big file")
    git(remote, "update-ref", "refs/heads/main", commit)

    started = time.monotonic()
    w = make_worker(remote, tmp_path)
    cloned = time.monotonic()
    with w:
        assert w.get_next_job(queue_jobs_func) == "j1"
        claimed = time.monotonic()
        assert os.path.getsize(Path(w.path, "big.bin")) == size
        os.makedirs(w.job_dir, exist_ok=True)
        Path(w.job_dir, "result.txt").write_text("done\n")
        w.finish_job()
    record_property("clone_seconds", round(cloned - started, 3))
    record_property("claim_seconds", round(claimed - cloned, 3))
    print(f"clone {cloned - started:.2f} s, claim {claimed - cloned:.2f} s")
    assert show(remote, "done.txt").startswith("j1\t")
