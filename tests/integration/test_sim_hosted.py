"""The simulator over real hosting on 127.0.0.1: ``--remote ssh`` (sshd, key authentication
only) and ``--remote http`` (lighttpd and ``git http-backend``, basic authentication).

The runs start their servers themselves, from ``tests/servers.py``, and must stop them
at the end, also when interrupted.  Without the programs the tests skip, naming the
Debian packages to install, unless ``CI`` is set: then they fail (as the hosted
fixtures of ``tests/conftest.py`` do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import servers

from sim.cli import main
from sim.runner import PACKAGE_ROOT, RunOutcome, SimConfig, run

pytestmark = [pytest.mark.hosted, pytest.mark.timeout(240)]

#: A short run with every fault on, as the faulty profile of test_sim.py, scaled down to 3
#: workers and 10 jobs.  The lease is set per kind (below).
PROFILE = dict(workers=3, jobs=10, kill_rate=0.6, pause_rate=0.6, push_fail_rate=0.05,
               unknown_rate=0.08, job_seconds=0.3, duration=150, max_faults=6)
#: Leases: over ssh every git command opens a connection of its own (0.2 to 0.4 s on 2
#: busy cores), and a worker's last get_next_job makes about four of them (a look, the
#: lock taken and given back, its liveness record); the checker's idle-tail bound
#: (sim.checker.idle_tail_bound) grows with the lease, and at 1.5 s it is 1.1 s, which
#: such a tail overshoots.  At 4 s the bound is 3 s and a stalled worker would still wait
#: 4.5 s.  Smart HTTP is quicker per command: a lease of 2 s keeps a wide margin.
HOSTED_RUNS = [
    pytest.param("ssh", 4.0, 20241129, marks=pytest.mark.slow, id="ssh"),  # 20 to 40 s
    pytest.param("http", 2.0, 20241127, id="http"),  # 10 to 20 s
]


def need(kind: str) -> None:
    """Skip (fail under CI) when the programs of the ``kind`` server are missing."""
    server = servers.SshServer if kind == "ssh" else servers.HttpServer
    try:
        server.check_available()
    except servers.Unavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} -- CI is set, and CI must provide it")
        pytest.skip(str(err))


def explain(outcome: RunOutcome) -> str:
    return "\n".join([f"{v.rule}: {v.message}" for v in outcome.result.violations]
                     + [f"reproduce: {outcome.config.command()}"])


def processes() -> dict[int, tuple[int, str]]:
    """Live processes (zombies aside): pid -> (parent pid, command line)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), cmdline.decode(errors="replace"))
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    return [cmdline for _, cmdline in processes().values() if text in cmdline]


@pytest.mark.parametrize(("kind", "lease", "seed"), HOSTED_RUNS)
def test_a_short_run_with_faults_over_a_hosted_remote(
    kind: str, lease: float, seed: int, tmp_path: Path
) -> None:
    need(kind)
    outcome = run(SimConfig(**PROFILE, remote=kind, lease=lease, seed=seed, out=str(tmp_path)))
    assert outcome.url.startswith(f"{kind}://") and "@127.0.0.1:" in outcome.url
    stats = outcome.result.stats
    assert outcome.ok, explain(outcome)
    assert stats["jobs_done"] == PROFILE["jobs"] and not outcome.timed_out, stats
    faults = sum(stats.get(name, 0) for name in
                 ("kills", "pauses", "push_faults", "unknown_outcomes"))
    assert faults > 0, stats
    # the server went with the run: nothing is left serving its folder
    assert not processes_mentioning(str(outcome.workdir)), "a server outlived the run"


def test_a_missing_server_program_is_named_with_its_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = servers.shutil.which
    monkeypatch.setattr(servers.shutil, "which",
                        lambda name, *a, **k: None if name == "sshd" else real(name, *a, **k))
    code = main(["--remote", "ssh", "--workers", "1", "--jobs", "1", "--seed", "1", "-q",
                 "--no-faults"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot serve --remote ssh" in err and "openssh-server" in err, err


def test_ctrl_c_stops_the_workers_and_the_server() -> None:
    need("ssh")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--remote", "ssh", "--workers", "2", "--jobs", "200",
         "--seed", "1", "--lease", "1.5", "--no-faults", "-q"],
        cwd=PACKAGE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # wait until the run's sshd is up and its workers are at work
        deadline = time.monotonic() + 60
        workdir = ""
        while time.monotonic() < deadline and proc.poll() is None:
            running = processes()
            for parent, cmdline in running.values():
                if parent == proc.pid and "sshd_config" in cmdline:
                    workdir = cmdline.split(" -f ", 1)[1].rsplit("/ssh/", 1)[0]
            workers = [c for parent, c in running.values()
                       if parent == proc.pid and "sim.worker" in c]
            if workdir and len(workers) == 2:
                break
            time.sleep(0.1)
        assert workdir, "the run never started its sshd"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: its process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode(errors="replace")
    assert b"interrupted" in err
    assert not processes_mentioning(workdir), "workers or the server outlived Ctrl-C"
