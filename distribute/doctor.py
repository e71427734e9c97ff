"""What a remote allows, checked by trying it: ``distribute doctor`` and ``init``.

Theory of operation
-------------------
Hosts differ in what they let a push do: some refuse refs outside
``refs/heads/`` and ``refs/tags/``, some refuse forced updates everywhere, some
have no atomic pushes.  Reading their settings is impossible from outside, so
each check is a small push of scratch refs that would fail the same way the
protocol's own pushes would, made through the same transport, then undone:

* reach: the remote answers (credentials and host keys are right);
* atomic: one push changes two refs at once (``git push --atomic``);
* custom refs: refs under ``refs/distribute/`` can be created and deleted;
* forced updates there: a liveness record is replaced by a commit that does
  not descend from it (every renewal does that);
* job branches: a branch under ``refs/heads/jobs/`` can be created and deleted;
* partial clones (advice, not a need): the remote serves ``git clone --filter``,
  so a new worker leaves other jobs' large files on it.

Scratch refs carry a random name under ``doctor-`` and a "gone" liveness
record, so a worker that sees one meanwhile neither waits for it nor counts
it.  Each check that fails comes with the fix a user can apply.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distribute.core.errors import DistributeError, RemoteStateError
from distribute.core.lock import Beat, beat_message
from distribute.core.names import WORKERS_PREFIX, scrub_url
from distribute.transport.base import RefUpdate
from distribute.transport.git import GitTransport
from distribute.transport.repository import init_bare_repo


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: what was tried, whether it worked, and what to do if not."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    #: workers cannot use the remote without it; an unmet advice only costs speed
    required: bool = True


FIXES = {
    "reach": "check the URL, your credentials (a token with write access) or ssh key, "
             "and that the repository exists",
    "atomic": "use a server that supports `git push --atomic` (git 2.4 or newer; GitHub, "
              "GitLab and Gitea do)",
    "custom refs": "allow pushes to refs/distribute/* (on GitLab or Gitea, check push rules "
                   "and server hooks; on a self-hosted server, its pre-receive hook)",
    "forced updates": "allow forced updates of refs/distribute/* (liveness records are "
                      "replaced at each renewal); protect only your main branch",
    "job branches": "allow creating and deleting branches under jobs/ (each job's "
                    "results go to its own branch)",
    "partial clones": "run `git config uploadpack.allowFilter true` and `git config "
                      "uploadpack.allowAnySHA1InWant true` in the repository on the server "
                      "(GitHub and GitLab allow them); until then every new worker downloads "
                      "every job's results",
}


def diagnose(url: str, *, timeout: float = 60) -> list[Check]:
    """Try what the protocol needs on ``url``; return one :class:`Check` per need.

    Everything created is deleted again; a check that cannot run because an
    earlier one failed is reported as not checked.
    """
    scratch = Path(tempfile.mkdtemp(prefix="distribute-doctor-"))
    try:
        with GitTransport(init_bare_repo(scratch / "objects.git"), url, timeout=timeout) as t:
            return _diagnose(t)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _diagnose(t: GitTransport) -> list[Check]:
    checks: list[Check] = []
    tag = f"doctor-{uuid.uuid4().hex[:10]}"
    record = WORKERS_PREFIX + tag
    branch = f"refs/heads/jobs/{tag}/check"
    scratch = f"refs/distribute/{tag}"

    def gone(seq: int) -> str:
        return t.write_commit(parents=[], message=beat_message(
            Beat(worker=tag, session=tag, seq=seq, gone=True)))

    def attempt(name: str, step: Callable[[], bool], failed: str) -> bool:
        try:
            landed = step()
        except DistributeError as err:
            checks.append(Check(name, False, scrub_url(str(err)), FIXES[name]))
            return False
        if not landed:
            checks.append(Check(name, False, failed, FIXES[name]))
            return False
        checks.append(Check(name, True))
        return True

    if not attempt("reach", lambda: t.list_refs("refs/heads/") is not None, "no answer"):
        return checks + [Check(n, False, "not checked: the remote could not be reached", FIXES[n])
                         for n in ("atomic", "custom refs", "forced updates", "job branches")]
    first, second = gone(1), gone(2)
    created = attempt(
        "atomic", lambda: t.push([RefUpdate(scratch, None, first), RefUpdate(record, None, first)]),
        "an atomic push of two new refs was refused",
    )
    if created:
        checks.append(Check("custom refs", True))
        attempt("forced updates", lambda: t.push([RefUpdate(record, first, second)]),
                "replacing a liveness record by a commit that does not descend from it "
                "was refused")
    else:
        # not atomic, or refs/distribute/ refused: tell which with one ref alone
        attempt("custom refs", lambda: t.push([RefUpdate(scratch, None, first)]),
                "creating a ref under refs/distribute/ was refused")
        checks.append(Check("forced updates", False, "not checked", FIXES["forced updates"]))
    attempt("job branches", lambda: t.push([RefUpdate(branch, None, first)]),
            "creating a branch under refs/heads/jobs/ was refused")
    _clean(t, [scratch, record, branch])
    try:
        served = t.serves_filters()
        detail = "" if served else "the remote does not offer git's filters"
    except DistributeError as err:
        served, detail = False, scrub_url(str(err))
    checks.append(Check("partial clones", served, detail,
                        "" if served else FIXES["partial clones"], required=False))
    return checks


def _clean(t: GitTransport, refs: list[str]) -> None:
    """Delete whatever scratch refs exist (best effort, one ref at a time)."""
    try:
        present = t.list_refs("refs/")
    except DistributeError:
        return
    for ref in refs:
        if ref in present:
            with contextlib.suppress(DistributeError):
                t.push([RefUpdate(ref, present[ref], None)])


def require_ready(url: str, *, timeout: float = 60) -> list[Check]:
    """:func:`diagnose`, raising ``RemoteStateError`` naming each failed need and its fix."""
    checks = diagnose(url, timeout=timeout)
    failed = [c for c in checks if not c.ok and c.required]
    if failed:
        raise RemoteStateError(
            f"the remote {scrub_url(url)} does not allow what workers need: "
            + "; ".join(f"{c.name}: {c.detail} -- {c.fix}" for c in failed),
            failed=[c.name for c in failed],
        )
    return checks


__all__ = ["FIXES", "Check", "diagnose", "require_ready"]
