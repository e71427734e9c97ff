"""What git starts for a worker's look, and what it does not.

A worker fetches several times a job.  After each fetch git would start
``git maintenance run --auto``, a process that counts loose objects and mostly
does nothing; the worker packs its copy itself (``Worker._housekeeping``, with
git's own limits), so its commands turn that off (``maintenance.auto=false``)."""

from __future__ import annotations

import json
from pathlib import Path

from distribute.dist import worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import QueueJobs


def started(trace: Path) -> list[list[str]]:
    """The command line of every git process traced into ``trace`` (a folder)."""
    found = []
    for path in trace.iterdir():
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "start":
                found.append(event["argv"])
    return found


def test_a_look_that_fetches_starts_no_maintenance(tmp_path, monkeypatch):
    remote = tmp_path / "remote.git"
    init_remote(remote)
    add_jobs(str(remote), ["j1", "j2"])
    url = f"file://{remote}"
    a, b = (worker_from_url(url, path=str(tmp_path / n), name=n, lease_seconds=30,
                            poll_seconds=0.05, heartbeat=False) for n in ("a", "b"))
    try:
        assert a.get_next_job(QueueJobs()) == "j1"
        assert b.get_next_job(QueueJobs()) == "j2"  # the main branch moved: a has new
        trace = tmp_path / "trace"
        trace.mkdir()
        monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
        snap = a.coord.observe()
        monkeypatch.delenv("GIT_TRACE2_EVENT")
        assert snap.main == b.coord.observe().main  # it fetched what b claimed
        commands = started(trace)
        assert any("fetch" in argv for argv in commands), commands
        assert not any("maintenance" in argv or "gc" in argv for argv in commands), commands
    finally:
        for w in (a, b):
            w.close()
