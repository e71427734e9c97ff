"""Results: reading a job's file, shaping the table, output formats, plots, and collecting
from a real bare repository with done, running, released and failed jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distribute.core.errors import UsageError
from distribute.dist import worker_from_url
from distribute.remote import init_remote
from distribute.results import (
    collect,
    columns,
    filter_rows,
    flatten,
    format_csv,
    format_json,
    parse_batch,
    plot,
    read_metrics,
    sort_rows,
    to_dataframe,
)
from distribute.sources import QueueJobs

# ---- one file --------------------------------------------------------------------------------


def test_a_json_object_nested_objects_become_dotted_columns():
    data = json.dumps({"loss": 0.5, "val": {"acc": 0.9, "top": {"k": 5}}, "curve": [1, 2]})
    assert read_metrics(data.encode()) == {
        "loss": 0.5, "val.acc": 0.9, "val.top.k": 5, "curve": "[1, 2]",
    }


def test_json_lines_take_the_last_complete_line():
    data = b'{"step": 1, "loss": 0.9}\n{"step": 2, "loss": 0.7}\n{"step": 3, "lo'
    assert read_metrics(data, "log.jsonl") == {"step": 2, "loss": 0.7}


def test_csv_and_tsv_take_the_last_row_as_numbers():
    data = b"epoch,loss,note\n0,0.9,start\n1,0.5,\n\n"
    assert read_metrics(data, "curve.csv") == {"epoch": 1, "loss": 0.5, "note": None}
    assert read_metrics(b"a\tb\n1\tx\n", "m.tsv") == {"a": 1, "b": "x"}


@pytest.mark.parametrize("data, file, why", [
    (b"[1, 2]", "metrics.json", "JSON list"),
    (b"not json", "metrics.json", "no JSON object"),
    (b"", "m.csv", "empty"),
    (b"a,b\n", "m.csv", "no rows"),
    (b"\xff\xfe", "metrics.json", "UTF-8"),
])
def test_unreadable_files_say_why(data, file, why):
    with pytest.raises(ValueError, match=why):
        read_metrics(data, file)


def test_parse_batch_splits_cat_file_output():
    out = b"abc blob 3\nxyz\nx:y/z missing\ndef tree 2\n..\nghi blob 0\n\n"
    assert parse_batch(out, 4) == [b"xyz", None, None, b""]
    assert flatten({}) == {}


# ---- the table -------------------------------------------------------------------------------

ROWS = [
    {"job": "lr=0.1 seed=0", "lr": "0.1", "seed": "0", "state": "done", "attempt": 1,
     "worker": "a", "loss": 0.5, "acc": 0.8},
    {"job": "lr=0.01 seed=0", "lr": "0.01", "seed": "0", "state": "done", "attempt": 2,
     "worker": "b", "loss": 0.25},
    {"job": "lr=0.001 seed=1", "lr": "0.001", "seed": "1", "state": "failed", "attempt": 3,
     "worker": "a", "error": "metrics.json: holds no JSON object"},
    {"job": "lr=1e-4 seed=1", "lr": "1e-4", "seed": "1", "state": "running", "attempt": 1,
     "worker": "c", "loss": 2.0},
]


def test_columns_are_job_params_state_attempt_worker_metrics_error():
    assert columns(ROWS) == ["job", "lr", "seed", "state", "attempt", "worker", "loss", "acc",
                             "error"]


def test_sort_is_numeric_when_it_can_be_and_missing_values_go_last():
    assert [r["lr"] for r in sort_rows(ROWS, "lr")] == ["1e-4", "0.001", "0.01", "0.1"]
    assert [r.get("loss") for r in sort_rows(ROWS, "-loss")] == [2.0, 0.5, 0.25, None]
    assert sort_rows(ROWS, "loss")[-1]["state"] == "failed"
    assert [r["worker"] for r in sort_rows(ROWS, "-worker")] == ["c", "b", "a", "a"]
    with pytest.raises(UsageError, match="no column 'nope'.*loss"):
        sort_rows(ROWS, "nope")


def test_where_compares_numbers_as_numbers():
    assert [r["lr"] for r in filter_rows(ROWS, ["lr<0.05"])] == ["0.01", "0.001", "1e-4"]
    assert [r["lr"] for r in filter_rows(ROWS, ["lr<0.05", "state=done"])] == ["0.01"]
    assert [r["lr"] for r in filter_rows(ROWS, ["loss>=0.5"])] == ["0.1", "1e-4"]
    assert len(filter_rows(ROWS, ["seed!=1"])) == 2
    assert filter_rows(ROWS, ["lr=0.10"])[0]["job"] == "lr=0.1 seed=0"  # 0.10 == 0.1
    with pytest.raises(UsageError, match="COLUMN=VALUE"):
        filter_rows(ROWS, ["loss"])
    with pytest.raises(UsageError, match="no column"):
        filter_rows(ROWS, ["los<1"])


def test_csv_and_json_keep_values_as_collected():
    lines = format_csv(ROWS).splitlines()
    assert lines[0] == "job,lr,seed,state,attempt,worker,loss,acc,error"
    assert lines[1] == "lr=0.1 seed=0,0.1,0,done,1,a,0.5,0.8,"
    doc = json.loads(format_json(ROWS))
    assert list(doc[0]) == ["job", "lr", "seed", "state", "attempt", "worker", "loss", "acc"]
    assert doc[3]["lr"] == "1e-4"


def test_to_dataframe_makes_numeric_columns_numeric():
    pandas = pytest.importorskip("pandas")
    frame = to_dataframe(ROWS)
    assert list(frame.columns) == columns(ROWS)
    assert pandas.api.types.is_float_dtype(frame["lr"]) and frame["lr"].min() == 1e-4
    assert frame["job"].tolist()[0] == "lr=0.1 seed=0"


def test_to_dataframe_without_pandas_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # an import of it now fails
    with pytest.raises(ImportError, match="pip install pandas"):
        to_dataframe(ROWS)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot(ROWS, "loss", "lr", tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        default = plot(ROWS, "loss")  # x: the first parameter that varies
    finally:
        os.chdir(here)
    assert default.name == "loss-by-lr.png" and (tmp_path / default).exists()
    with pytest.raises(UsageError, match="no job has a numeric 'worker'"):
        plot(ROWS, "worker")


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match=r"pip install 'distribute-jobs\[plot\]'"):
        plot(ROWS, "loss", out=tmp_path / "x.png")


# ---- collecting from a real remote -----------------------------------------------------------


def _write(folder, name, text):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def test_collect_reads_done_jobs_from_main_and_the_others_from_their_branches(tmp_path):
    jobs = ["lr=0.1 seed=0", "lr=0.01 seed=0", "lr=0.001 seed=0", "plain name", "queued"]
    url = init_remote(tmp_path / "remote.git", "main", jobs)
    queue = QueueJobs()
    with worker_from_url(url, tmp_path / "a", "a", max_attempts=1, heartbeat=False) as a:
        assert a.get_next_job(queue) == "lr=0.1 seed=0"
        _write(a.job_dir, "metrics.json", '{"loss": 0.5, "seed": 9}')
        a.finish_job()
        assert a.get_next_job(queue) == "lr=0.01 seed=0"
        _write(a.job_dir, "metrics.json", "[]")
        a.finish_job()
        assert a.get_next_job(queue) == "lr=0.001 seed=0"
        _write(a.job_dir, "metrics.json", '{"loss": 3.0}')
        a.fail_job("diverged")  # one attempt allowed: failed, its file on its branch
        assert a.get_next_job(queue) == "plain name"
        _write(a.job_dir, "metrics.json", '{"step": 1, "loss": 1.5}\n')
        a.commit_update()  # running: its last update is on its branch
        rows = collect(str(tmp_path / "remote.git"))
        assert [(r["job"], r["state"], r["worker"]) for r in rows] == [
            ("lr=0.1 seed=0", "done", "a"), ("lr=0.01 seed=0", "done", "a"),
            ("plain name", "running", "a"), ("lr=0.001 seed=0", "failed", "a"),
        ]
        done, broken, running, failed = rows
        assert done["lr"] == "0.1" and done["loss"] == 0.5 and done["metrics.seed"] == 9
        assert "JSON list" in broken["error"]
        assert running["loss"] == 1.5 and "lr" not in running
        assert failed["loss"] == 3.0 and failed["attempt"] == 1
        assert "loss" not in collect(url, live=False)[3]  # main only: nothing for it there
    rows = collect(url, "metrics.json")  # closed: the running job was released
    assert rows[2]["state"] == "released" and rows[2]["worker"] == "a"
    assert rows[2]["loss"] == 1.5


def test_collect_reads_every_file_with_one_git_process(tmp_path, monkeypatch):
    jobs = [f"n={i} worker={i % 2}" for i in range(6)]
    url = init_remote(tmp_path / "remote.git", "main", jobs)
    with worker_from_url(url, tmp_path / "a", "a", heartbeat=False) as a:
        while a.get_next_job(QueueJobs()) is not None:
            n = int(a.running_job.split()[0][2:])
            _write(a.job_dir, "metrics.json", json.dumps({"twice": 2 * n}))
            a.finish_job()
    batches = []
    real_run = subprocess.run

    def counting_run(args, *rest, **kw):
        if "cat-file" in args:
            batches.append(args)
        return real_run(args, *rest, **kw)

    monkeypatch.setattr(subprocess, "run", counting_run)
    rows = collect(url)
    assert [r["twice"] for r in rows] == [0, 2, 4, 6, 8, 10]
    assert len(batches) == 1
    # a parameter named like a fixed column keeps its value, under another name
    assert columns(rows)[:6] == ["job", "n", "param.worker", "state", "attempt", "worker"]
    assert rows[1]["param.worker"] == "1" and rows[1]["worker"] == "a"
