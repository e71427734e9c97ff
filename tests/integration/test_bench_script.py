"""The benchmark script runs end to end on a tiny budget and prints every figure it promises
(its numbers are not judged here: speed is read from its output, never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def test_the_benchmark_prints_its_figures():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--single-jobs", "3", "--workers", "2", "--jobs", "4",
         "--raw-samples", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert re.search(r"remote: path \(written directly\)", out)
    assert re.search(r"raw git CAS cycle .*: [\d.]+ ms", out)
    assert re.search(r"through Distribute's transport: [\d.]+ ms = [\d.]+ raw cycles", out)
    assert re.search(r"1 worker: .* = [\d.]+ raw cycles", out)
    assert re.search(r"at most [\d.]+ jobs/s", out)
    assert re.search(r"2 workers: 4 jobs in .* busiest \d+, least busy \d+", out)
    assert re.search(r"per job: .*pushes [\d.]+", out)
    assert re.search(r"a claim landed every [\d.]+ s \(median\); the machine's CPU was \d+% busy",
                     out)
    assert re.search(r"first claim [\d.]+ s after the start, last claim at [\d.]+ s, every "
                     r"worker done at [\d.]+ s", out)
    tail = re.search(r"idle tail ([\d.]+) s: the last finish landed at ([\d.]+) s, the last "
                     r"worker got no job at ([\d.]+) s and its process was done at ([\d.]+) s",
                     out)
    assert tail, out
    # the figures hang together (they are read, not judged: no bound here)
    finished, left, exited = (float(tail[i]) for i in (2, 3, 4))
    assert finished <= exited and left <= exited
    assert float(tail[1]) == pytest.approx(exited - finished, abs=0.02)
