"""`distribute doctor` and `init` tell what a remote allows, by trying it, and name the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distribute.core.errors import RemoteStateError
from distribute.doctor import diagnose, require_ready
from distribute.transport.repository import PARTIAL_CLONE_SETTINGS

PY = sys.executable


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def bare(tmp_path: Path, name: str = "r.git") -> Path:
    path = tmp_path / name
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path))
    return path


def refs(path: Path) -> str:
    return git("--git-dir", str(path), "for-each-ref")


def verdicts(url: str) -> dict[str, bool]:
    """The verdicts on what workers need (advice left out)."""
    return {c.name: c.ok for c in diagnose(url) if c.required}


def test_a_plain_bare_repository_allows_everything_and_keeps_nothing(tmp_path):
    path = bare(tmp_path)
    for url in (str(path), path.as_uri()):
        assert verdicts(url) == {"reach": True, "atomic": True, "custom refs": True,
                                 "forced updates": True, "job branches": True}
    assert refs(path) == ""


NO_FORCE = """#!/bin/sh
zero=0000000000000000000000000000000000000000
if [ "$2" != "$zero" ] && [ "$3" != "$zero" ] && ! git merge-base --is-ancestor "$2" "$3"; then
    echo "forced updates are not allowed on $1"
    exit 1
fi
"""


def refuse_forced_updates_everywhere(path: Path) -> None:
    hook = path / "hooks" / "update"
    hook.write_text(NO_FORCE)
    hook.chmod(0o755)


def test_git_s_own_deny_non_fast_forwards_protects_branches_only_and_is_fine(tmp_path):
    path = bare(tmp_path)
    git("--git-dir", str(path), "config", "receive.denyNonFastForwards", "true")
    assert all(verdicts(path.as_uri()).values())


def test_a_host_that_refuses_forced_updates_everywhere_is_named(tmp_path):
    """A policy of no forced push on any ref: liveness records cannot be renewed."""
    path = bare(tmp_path)
    refuse_forced_updates_everywhere(path)
    checks = {c.name: c for c in diagnose(path.as_uri())}
    assert not checks["forced updates"].ok
    assert "forced updates are not allowed" in checks["forced updates"].detail
    assert "forced updates of refs/distribute/*" in checks["forced updates"].fix
    assert all(c.ok for n, c in checks.items() if n != "forced updates" and c.required)
    assert refs(path) == ""


def test_a_hook_that_refuses_custom_refs_is_named_with_its_words(tmp_path):
    path = bare(tmp_path)
    hook = path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do case $ref in refs/heads/*) ;; "
                    "*) echo \"custom refs are not allowed: $ref\"; exit 1;; esac; done\n")
    hook.chmod(0o755)
    checks = {c.name: c for c in diagnose(path.as_uri())}
    assert not checks["custom refs"].ok and not checks["atomic"].ok
    assert "custom refs are not allowed" in checks["custom refs"].detail
    assert checks["job branches"].ok
    with pytest.raises(RemoteStateError, match="custom refs: .*allow pushes to refs/distribute"):
        require_ready(path.as_uri())


def test_init_refuses_a_remote_workers_cannot_use_and_writes_nothing(tmp_path):
    path = bare(tmp_path)
    refuse_forced_updates_everywhere(path)
    result = subprocess.run([PY, "-m", "distribute", "init", path.as_uri(), "a"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "forced updates" in result.stderr and "protect only your main branch" in result.stderr
    assert refs(path) == ""
    doctor = subprocess.run([PY, "-m", "distribute", "doctor", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1 and "FAIL  forced updates" in doctor.stdout


def test_an_unreachable_remote_fails_every_check_with_a_reason(tmp_path):
    checks = [c for c in diagnose((tmp_path / "missing.git").as_uri(), timeout=20)
              if c.required]
    assert [c.ok for c in checks] == [False] * 5
    assert "not checked" in checks[1].detail


def test_partial_clones_are_advice_named_with_their_fix(tmp_path):
    plain = bare(tmp_path)  # git's defaults serve no filters
    served = bare(tmp_path, "served.git")
    for key in PARTIAL_CLONE_SETTINGS:
        git("--git-dir", str(served), "config", key, "true")
    for version in ("0", "2"):  # the features are read from either protocol's answer
        os.environ["GIT_CONFIG_PARAMETERS"] = f"'protocol.version={version}'"
        try:
            advice = {c.name: c for c in diagnose(plain.as_uri())}["partial clones"]
            assert not advice.ok and not advice.required
            assert "uploadpack.allowFilter" in advice.fix
            assert {c.name: c for c in diagnose(served.as_uri())}["partial clones"].ok
        finally:
            del os.environ["GIT_CONFIG_PARAMETERS"]
    # an unmet advice does not make the remote unready, and is shown as a note
    doctor = subprocess.run([PY, "-m", "distribute", "doctor", plain.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "note  partial clones" in doctor.stdout and "ready for workers" in doctor.stdout
    require_ready(plain.as_uri())  # init goes ahead


def test_a_remote_made_by_init_serves_partial_clones(tmp_path):
    made = tmp_path / "made.git"
    subprocess.run([PY, "-m", "distribute", "init", str(made)], check=True, capture_output=True)
    assert {c.name: c for c in diagnose(made.as_uri())}["partial clones"].ok
