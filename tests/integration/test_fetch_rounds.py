"""A look at the remote negotiates in one round.

git's fetch finds what to send by a negotiation: the client names commits it has
until the server has found, for every ref asked for, history the client already has.
A liveness record used to be a commit without parents, which no history the client
has can ever reach, so every fetch that brought a moved record ran two or three
rounds: over ssh one round trip each, over HTTP one request each.  A record now has
the main branch commit its worker saw last as a parent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from distribute.dist import Worker, worker_from_url
from distribute.remote import add_jobs, init_remote
from distribute.sources import QueueJobs


def rounds(trace: Path) -> list[int]:
    """The negotiation rounds of every fetch traced into ``trace`` (a folder)."""
    found = []
    for path in trace.iterdir():
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "data" and event.get("key") == "total_rounds":
                found.append(int(event["value"]))
    return found


def test_a_look_that_brings_moved_records_negotiates_once(tmp_path, monkeypatch):
    remote = tmp_path / "remote.git"
    init_remote(remote)
    add_jobs(str(remote), ["j1", "j2", "j3"])
    url = f"file://{remote}"
    a, b = (worker_from_url(url, path=str(tmp_path / n), name=n, lease_seconds=30,
                            poll_seconds=0.05, heartbeat=False) for n in ("a", "b"))
    try:
        assert a.get_next_job(QueueJobs()) == "j1"
        assert b.get_next_job(QueueJobs()) == "j2"
        a.coord.observe()  # a has b's record and the main branch as they are now
        assert b.coord.renew_beat()  # b's record moves: a record parking nothing
        trace = tmp_path / "trace"
        trace.mkdir()
        monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
        snap = a.coord.observe()
        monkeypatch.delenv("GIT_TRACE2_EVENT")
        assert snap.refs["refs/distribute/workers/b"] == b.coord.beat_oid  # it came
        assert rounds(trace) == [1]
    finally:
        for w in (a, b):
            w.close()


@pytest.mark.parametrize("parked", [False, True])
def test_a_record_has_the_main_branch_it_saw_as_a_parent(tmp_path, parked):
    remote = tmp_path / "remote.git"
    init_remote(remote)
    add_jobs(str(remote), ["j1", "j2"])
    url = f"file://{remote}"
    w: Worker = worker_from_url(url, path=str(tmp_path / "w"), name="w", lease_seconds=30,
                                poll_seconds=0.05, heartbeat=False)
    other = worker_from_url(url, path=str(tmp_path / "o"), name="o", lease_seconds=30,
                            poll_seconds=0.05, heartbeat=False)
    try:
        assert w.get_next_job(QueueJobs()) == "j1"
        if parked:
            assert other.get_next_job(QueueJobs()) == "j2"
            w.coord.observe()  # w sees o about: its finish parks
        w.finish_job()
        assert w.coord.renew_beat()
        parents = subprocess.run(
            ["git", "rev-list", "--parents", "-n", "1", w.coord.beat_oid], cwd=remote,
            capture_output=True, text=True, check=True).stdout.split()[1:]
        assert w.coord.last_seen is not None and w.coord.last_seen.main in parents
        tips = [p.tip for p in w.coord.beat.parked]
        assert bool(tips) == parked and all(t in parents for t in tips)
    finally:
        if other.running_job:
            other.finish_job()
        for x in (w, other):
            x.close()
