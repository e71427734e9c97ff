"""`distribute status` tells a worker that renews its record from a silent one without
--watch, by comparing with this machine's last status of the same remote."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from cli_run import PY, cli_env, ok

from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.sources import QueueJobs


def status(tmp_path, remote):
    return json.loads(ok(tmp_path, "status", remote, "--json").stdout)


def worker_row(doc, name):
    return next(w for w in doc["workers"] if w["name"] == name)


def test_the_second_status_says_who_renewed_since_the_first(tmp_path):
    remote = tmp_path / "remote.git"
    init_remote(remote, jobs=["j"])
    with worker_from_url(str(remote), path=tmp_path / "copy", name="w",
                         heartbeat=False) as w:
        assert w.get_next_job(QueueJobs()) == "j"
        first = status(tmp_path, remote)
        assert first["compared_with_last_look"] is False
        assert first["running"][0]["lease"] == "unknown"
        assert worker_row(first, "w")["renewed"] is None
        text = ok(tmp_path, "status", remote).stdout  # the second look, as a table
        assert "compared with this machine's last look" in text and "unchanged" in text
        silent = status(tmp_path, remote)
        assert silent["compared_with_last_look"] is True
        assert silent["running"][0]["lease"] == "unchanged"
        assert worker_row(silent, "w")["renewed"] is False
        assert silent["watched_seconds"] > 0
        assert w.coord.renew_beat()  # the worker writes its record again
        alive = status(tmp_path, remote)
        assert alive["running"][0]["lease"] == "renewed"
        assert worker_row(alive, "w")["renewed"] is True
        w.finish_job()


def test_workers_gone_for_long_drop_out_of_the_table_and_all_shows_them(tmp_path):
    remote = tmp_path / "remote.git"
    init_remote(remote, jobs=["j"])
    with worker_from_url(str(remote), path=tmp_path / "copy", name="old-w",
                         heartbeat=False) as w:
        assert w.get_next_job(QueueJobs()) == "j"
        w.finish_job()
    # closed: its last record says it left
    assert worker_row(status(tmp_path, remote), "old-w")["gone"] is True
    shown = status(tmp_path, remote)
    assert worker_row(shown, "old-w")["silent_seconds"] is not None
    assert "gone (silent" in ok(tmp_path, "status", remote).stdout  # its row, shown
    # this machine's looks have seen the record unchanged for two hours
    (memory,) = (tmp_path / "cache" / "distribute" / "looks").glob("*.json")
    data = json.loads(memory.read_text())
    data["since"] = {ref: data["at"] - 7200 for ref in data["refs"]}
    memory.write_text(json.dumps(data))
    table = ok(tmp_path, "status", remote).stdout
    assert "gone (silent" not in table
    assert "1 worker(s) gone for over 60 min not shown" in table
    everything = ok(tmp_path, "status", remote, "--all").stdout
    assert "gone (silent" in everything and "not shown" not in everything


def _start_worker(tmp_path, remote, name, lease, go):
    """A real `distribute work` whose job waits (at most 60 s) for the file ``go``."""
    script = (f"import os, time\nend = time.monotonic() + 60\n"
              f"while not os.path.exists({str(go)!r}) and time.monotonic() < end:\n"
              f"    time.sleep(0.05)\n")
    return subprocess.Popen(
        [PY, "-m", "distribute", "work", str(remote), "--name", name, "--lease", str(lease),
         "--max-jobs", "1", "--", PY, "-c", script],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(tmp_path),
        cwd=tmp_path)


def _wait_running(tmp_path, remote, names, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = status(tmp_path, remote)
        if {e["worker"] for e in doc["running"]} >= set(names):
            return
        time.sleep(0.2)
    raise AssertionError(f"{names} did not start their jobs within {timeout} s: {doc}")


def test_a_killed_worker_reads_gone_past_its_lease_and_a_paused_one_silent(tmp_path):
    remote = tmp_path / "remote.git"
    init_remote(remote, jobs=["j1", "j2"])
    go = tmp_path / "go"
    killed = _start_worker(tmp_path, remote, "killed", 2, go)
    paused = _start_worker(tmp_path, remote, "paused", 600, go)
    try:
        _wait_running(tmp_path, remote, ["killed", "paused"])
        killed.kill()
        killed.wait(timeout=60)
        paused.send_signal(signal.SIGSTOP)
        first = status(tmp_path, remote)
        assert worker_row(first, "killed")["lease_seconds"] == 2
        assert worker_row(first, "paused")["lease_seconds"] == 600
        time.sleep(2.5)  # more than the killed worker's lease: a renewal was due before it
        second = status(tmp_path, remote)
        assert worker_row(second, "killed")["past_lease"] is True, second["workers"]
        assert worker_row(second, "paused")["past_lease"] is False, second["workers"]
        assert worker_row(second, "paused")["silent_seconds"] > 2
        table = ok(tmp_path, "status", remote).stdout
        assert "gone? silent" in table and "past its 2 s lease" in table
        assert "unchanged (silent" in table  # the paused one
    finally:
        go.touch()
        for proc in (killed, paused):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=60)
