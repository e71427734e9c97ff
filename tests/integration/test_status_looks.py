"""`distribute status` tells a worker that renews its record from a silent one without
--watch, by comparing with this machine's last status of the same remote."""

from __future__ import annotations

import json

from cli_run import ok

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
