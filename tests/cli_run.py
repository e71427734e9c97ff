"""Running the `distribute` command line from tests, each test in an environment of its
own: no DISTRIBUTE_* or CUDA_VISIBLE_DEVICES from the caller, the repository importable,
and the cache and temporary folders inside the test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TIMEOUT = 90


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DISTRIBUTE_") and k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")
    env.update(extra)
    return env


def run(tmp_path: Path, *args: Any, timeout: float = TIMEOUT, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``distribute ARGS`` in ``tmp_path``, its output captured (``env``: instead of
    :func:`cli_env`'s; ``input``: its standard input)."""
    return subprocess.run([PY, "-m", "distribute", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env or cli_env(tmp_path),
                          cwd=tmp_path, input=input)


def ok(tmp_path: Path, *args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    """:func:`run`, which must exit 0."""
    result = run(tmp_path, *args, **kw)
    assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stderr}"
    return result
