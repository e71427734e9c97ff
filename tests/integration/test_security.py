"""A password in an HTTP URL never lands on disk, on a command line or in any output.

A smart-HTTP server with basic auth runs on 127.0.0.1; its password is a random
canary.  The command line and the Python API are used the way a user would,
failures included (a wrong password, a kill -9 mid-job), while a sampler reads
every process's command line.  Then every file under the folders Distribute
wrote to (its cache, the local copies, the temporary folder), everything
printed, every sampled command line and every object of the remote are searched
for the canary: zero hits.  The folders Distribute made must be private (0700).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_run import cli_env as env_for

PY = sys.executable
TIMEOUT = 60

pytestmark = [
    pytest.mark.hosted,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="samples /proc"),
]


class CommandLines:
    """Samples every process's command line every few milliseconds while it runs."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 600  # bounded, whatever happens to the test
        while not self._stop.is_set() and time.monotonic() < deadline:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                            self.seen.add(f.read())
                    except OSError:
                        pass
            time.sleep(0.005)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


def test_a_password_in_the_url_is_never_stored_shown_or_on_a_command_line(
        http_server, tmp_path):
    canary = http_server.password.encode()
    url, bare = http_server.remote("remote.git")  # an empty repository on main
    env = env_for(tmp_path)
    outputs: list[str] = []

    # the URL reaches Distribute through the environment where a command allows it (as
    # the README advises for a URL with a password); the commands this test starts with
    # the URL as an argument are left out of the search: only Distribute's own
    # processes (git above all) are judged
    env["DISTRIBUTE_REMOTE"] = url
    ours: set[bytes] = set()

    def cli(*args: str, check: bool = True, remote: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        run_env = env if remote is None else {**env, "DISTRIBUTE_REMOTE": remote}
        argv = [PY, "-m", "distribute", *args]
        ours.add(b"\0".join(a.encode() for a in argv) + b"\0")
        result = subprocess.run(argv, capture_output=True,
                                text=True, env=run_env, cwd=tmp_path, timeout=TIMEOUT)
        outputs.extend([result.stdout, result.stderr])
        if check:
            assert result.returncode == 0, f"{args[:2]}: {result.stderr}"
        return result

    job = "import os, time; open(os.path.join(os.environ['DISTRIBUTE_JOB_DIR'], 'r.txt'), 'w')"
    with CommandLines() as sampled:
        cli("init", url, "a", "b")
        cli("add", url, "c", "hang")
        cli("work", "--name", "w1", "--max-jobs", "3", "--", PY, "-c", job)
        cli("status")
        cli("logs", url, "a")
        # a worker killed mid-job, and its restart with the same name
        hang = (f"{job}\nif os.environ['DISTRIBUTE_JOB'] == 'hang' and "
                "os.environ['DISTRIBUTE_ATTEMPT'] == '1': time.sleep(60)")
        worker = subprocess.Popen([PY, "-m", "distribute", "work", "--name", "w2",
                                   "--", PY, "-c", hang], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # until the job runs
            running = subprocess.run(["git", "--git-dir", str(bare), "show", "main:running.txt"],
                                     capture_output=True, text=True).stdout
            if running.startswith("hang"):
                break
            time.sleep(0.1)
        worker.send_signal(signal.SIGKILL)
        out, err = worker.communicate(timeout=TIMEOUT)
        outputs.extend([out, err])
        cli("work", "--name", "w2", "--lease", "5", "--", PY, "-c", hang)
        cli("unlock")
        cli("doctor")
        cli("requeue", url, "--failed", check=False)
        # a push the server refuses (its hook says why), and a server that is not there
        hook = bare / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'no pushes today'\nexit 1\n")
        hook.chmod(0o755)
        refused_push = cli("add", url, "refused", check=False)
        assert refused_push.returncode != 0 and "no pushes today" in refused_push.stderr
        hook.unlink()
        gone = f"http://{http_server.user}:{http_server.password}@127.0.0.1:9/remote.git"
        assert cli("status", check=False, remote=gone).returncode != 0
        # the Python API, and a wrong password
        code = ("import os, sys\nfrom distribute.dist import worker_from_url\n"
                "w = worker_from_url(os.environ['DISTRIBUTE_REMOTE'], path=sys.argv[1], "
                "name='api')\nprint(w.get_running())\nw.close()\n")
        api = subprocess.run([PY, "-c", code, str(tmp_path / "api-copy")],
                             capture_output=True, text=True, env=env, timeout=TIMEOUT)
        outputs.extend([api.stdout, api.stderr])
        assert api.returncode == 0, api.stderr
        wrong = http_server.url("remote.git", password="not-" + http_server.password[::-1])
        refused = cli("status", check=False, remote=wrong)
        assert refused.returncode != 0
    done = subprocess.run(["git", "--git-dir", str(bare), "show", "main:done.txt"],
                          capture_output=True, text=True, check=True).stdout
    assert sorted(line.split("\t")[0] for line in done.splitlines()) == ["a", "b", "c", "hang"]
    assert len(outputs) > 20

    assert files_holding(tmp_path / "cache", canary) == []
    assert files_holding(tmp_path / "tmp", canary) == []
    assert files_holding(tmp_path / "api-copy", canary) == []
    assert [o for o in outputs if http_server.password in o] == []
    assert [c for c in sampled.seen - ours if canary in c] == []
    assert len(sampled.seen) > 10  # the sampler did see processes
    objects = subprocess.run(["git", "--git-dir", str(bare), "cat-file", "--batch-all-objects",
                              "--batch"], capture_output=True, check=True).stdout
    assert canary not in objects
    # the copies and their parents that Distribute made are private
    copies = [p for p in (tmp_path / "cache" / "distribute").rglob("*")
              if p.is_dir() and (p / ".git").is_dir()]
    assert copies
    for copy in copies:
        for folder in (copy, copy.parent, copy.parent.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((tmp_path / "api-copy").stat().st_mode) == 0o700
