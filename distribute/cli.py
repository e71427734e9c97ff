"""The ``distribute`` command line.

Theory of operation
-------------------
Every command that reads or edits the remote works on a throw-away clone
(:func:`distribute.remote.remote_view`) through the transport, never through
a person's working tree.  Edits of the queue and the ledgers (``add``,
``requeue``) are made *under the remote lock*, like a worker's claim: the CLI
takes the lock by compare-and-swap, then pushes ``{main branch: the edit,
lock: released}`` in one atomic push.  A worker's next-job function therefore
never sees ``jobs.txt`` change under it, and an edit that loses the lock
(someone ran ``unlock``) is refused whole and redone.  ``unlock`` breaks the
lock by compare-and-swap from the exact value it observed, to a free state
with the next token, so a holder that was alive finds its next push refused.

``work`` hands a :class:`~distribute.dist.Worker` to
:class:`~distribute.runner.JobRunner`, which runs one child process per job.
``demo`` starts worker processes of this same program (a hidden
``_demo-worker`` command running the seed README's loop) against a fresh bare
repository in a temporary folder.

Exit codes: 0 success; 1 an error (one line ``error: ...`` on stderr, no
traceback unless ``-v``); 2 a usage error; 3 the breaker stopped ``work`` (its
command could not start or failed at once several times in a row; one
``error: ...`` line names the command and the last error); 4 every job ``work``
ran failed; 128 + signum when a signal stopped ``work``.  ``logs --follow``
exits 0 when the job is done and 1 when it failed; ``cancel`` exits 1 when any
named job was not cancelled; ``work --gpus`` combines its workers' codes (see
:func:`distribute.gpus.combined_exit_code`).  Remote URLs are printed with
their credentials removed.

The ``status --json`` document (``"schema": 1``)::

    {
      "schema": 1,
      "remote": str,                  # URL or path, credentials removed
      "branch": str,                  # the main branch
      "main": str,                    # its commit id
      "watched_seconds": float,       # --watch, or the time since the last look compared
      "compared_with_last_look": bool, # the second look is this machine's last status
      "counts": {"queued": int, "running": int, "done": int, "failed": int},
      "queued": [str, ...],           # jobs.txt, in order
      "running": [{
          "job": str,
          "worker": str | null,       # null: released, waiting for another attempt
          "token": int,               # fencing token of the claim
          "attempt": int,
          "reason": str,              # why the previous attempt failed ("" if none)
          "branch": str | null,       # jobs/<worker>/<job>/<token>
          "lease": "released" | "revoked" | "gone" | "no-record" | "unknown"
                   | "renewed" | "unchanged"
                   | "finished",          # its finish is parked on its worker's record:
                                      # done, listed in done.txt at the next claim
          "interrupted": int,         # ended attempts that were interrupted, not failed
          "failures": int             # ended attempts that failed (max_attempts counts these)
      }, ...],
      "done":   [{"job": str, "worker": str, "token": int, "attempt": int,
                  "branch": str | null}, ...],  # the branch of a done job is deleted
                                      # once merged: its tip is the second parent of
                                      # the main branch's "finish <job>" commit
      "failed": [{"job": str, "worker": str, "token": int, "attempt": int,
                  "reason": str, "branch": str | null}, ...],
      "lock": {
          "held": bool, "holder": str | null, "token": int,
          "session": str | null, "renewal": int,
          "changed": bool | null      # seen to change during --watch; null without it
      },
      "workers": [{
          "name": str, "session": str, "seq": int,
          "jobs": [str, ...],         # jobs running.txt shows it holding
          "revoked_by": str | null,   # who took its jobs over, if anyone did
          "renewed": bool | null,     # seen to renew during --watch; null without it
          "gone": bool,               # its last record says it left
          "silent_seconds": float | null,  # how long this machine's looks have seen
                                      # its record unchanged (null: not compared)
          "lease_seconds": float | null,   # the lease its record states (null: none)
          "past_lease": bool | null,  # seen silent for longer than that lease: presumed
                                      # dead (null: not known, or it left or was revoked)
          "unreadable": str | null    # why its ref holds no liveness record (then the
                                      # name is the ref's, session and seq are null)
      }, ...]
    }

``lease`` says what one observation can tell: ``released`` (the job waits for
another attempt), ``revoked`` (its worker's liveness record was revoked by a
takeover), ``gone`` (its worker's last record says it left: the job is taken
at once), ``no-record`` (its worker has no liveness record), ``unknown`` (a
record exists; whether it is still renewed needs a second look).  With
``--watch S`` the liveness refs are read twice, S seconds apart:
``renewed`` (the record changed: the worker is alive) or ``unchanged`` (it did
not; after more than a lease period the job is offered to other workers).
Without ``--watch``, the second look is this machine's last ``status`` of the same
remote and branch (``compared_with_last_look`` is then true and ``watched_seconds``
says how long ago it was; see :mod:`distribute.looks`).
Keys are only ever added within one schema version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import filelock
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distribute import __version__, coordination
from distribute.core.errors import (
    DistributeError,
    InvalidName,
    LocalCopyBusy,
    RemoteStateError,
    UsageError,
)
from distribute.core.ledger import MAX_INTERRUPTIONS, Entry, Ledger
from distribute.core.lock import (
    Beat,
    LockState,
    bad_lock,
    parse_beat_message,
    parse_lock_message,
)
from distribute.core.names import (
    LOCK_REF,
    WORKERS_PREFIX,
    check_name,
    decode_component,
    encode_component,
    forbidden_character,
    job_branch,
    scrub_url,
)
from distribute.credentials import private_folder
from distribute.fenced import FencedEdit, cancel_edit, cli_holder, queue_edit, requeue_edit
from distribute.transport.shared_objects import STORE_NAME, store_lock

if TYPE_CHECKING:
    from distribute.dist import Worker
    from distribute.remote import RemoteView

ENV_REMOTE = "DISTRIBUTE_REMOTE"
STATUS_SCHEMA = 1
LOG_FILE = "log.txt"
JOBS_FILE = "jobs.txt"

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_VERBOSITY = 0  # set by the group's callback; read by main() to decide on tracebacks


# ---- output ----------------------------------------------------------------------
@dataclass
class Output:
    """Where messages go: results to stdout, progress and errors to stderr."""

    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    def __post_init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, text: str) -> None:
        """A line that answers the command (suppressed by ``-q``)."""
        if self.verbosity >= 0:
            self.out.print(text, markup=False)

    def info(self, text: str) -> None:
        """Progress for the person watching, on stderr (suppressed by ``-q``)."""
        if self.verbosity >= 0:
            self.err.print(scrub_url(text), markup=False)

    def debug(self, text: str) -> None:
        if self.verbosity >= 1:
            self.err.print(scrub_url(text), markup=False, style="dim")


def _output(ctx: click.Context) -> Output:
    obj = ctx.find_object(Output)
    return obj if obj is not None else Output()


# ---- remotes ---------------------------------------------------------------------------
def resolve_remote(remote: str) -> str:
    """A remote as the library wants it: an absolute path for a folder, a URL as given.

    Raises:
        RemoteStateError: a folder that does not exist.
    """
    from distribute.remote import is_local_path

    if not remote:
        raise UsageError(f"no remote given: pass REMOTE or set {ENV_REMOTE}")
    if not is_local_path(remote):
        return remote
    path = Path(remote).expanduser()
    if not path.exists():
        hint = ""
        if os.environ.get(ENV_REMOTE):
            hint = (
                f" ({ENV_REMOTE} fills REMOTE only when no positional argument is given; "
                "here the first argument was read as REMOTE)"
            )
        raise RemoteStateError(
            f"no remote at {remote!r}: that folder does not exist; create one with "
            f"`distribute init {remote}`{hint}"
        )
    return str(path.resolve())


@contextlib.contextmanager
def open_remote(remote: str, branch: str | None = None) -> Iterator[RemoteView]:
    from distribute.remote import remote_view

    with remote_view(resolve_remote(remote), branch) as view:
        yield view


def validate_jobs(jobs: Sequence[str]) -> list[str]:
    """Check every name before anything is written; one error names the first bad one.

    Raises:
        InvalidName: one or more names cannot be stored in a ledger line.
    """
    bad: list[InvalidName] = []
    for job in jobs:
        try:
            check_name(job, "job")
        except InvalidName as exc:
            bad.append(exc)
    if len(bad) == 1:
        raise InvalidName(f"{bad[0]}; nothing was queued", name=bad[0].context.get("name"))
    if bad:
        raise InvalidName(
            f"{len(bad)} job names are invalid, nothing was queued; the first: {bad[0]}",
            name=bad[0].context.get("name"),
        )
    return list(jobs)


def read_job_file(path: str) -> list[str]:
    """Job names from a file (``-`` is stdin), one per line; blank lines are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the job file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the job file {path!r} is not UTF-8 text") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


# ---- fenced edits of the queue and the ledgers ---------------------------------------
# ---- reading the remote's state ------------------------------------------------------------
def _branch_of(entry: Entry) -> str | None:
    if not entry.worker:
        return None
    return job_branch(entry.worker, entry.job, entry.token)


def status_document(
    *,
    remote: str,
    branch: str,
    main: str,
    ledger: Ledger,
    queue: Sequence[str],
    lock: LockState,
    beats: dict[str, Beat],
    watched_seconds: float = 0.0,
    lock_changed: bool | None = None,
    renewed: dict[str, bool] | None = None,
    unreadable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``status --json`` document (schema 1; see the module docstring).

    Args:
        beats: liveness records by worker name.
        renewed: by worker name, whether its record changed during the watch
            (``None``: a single observation); for an unreadable record, by its name.
        unreadable: liveness refs that hold no readable record: why, by the name the
            ref gives (shown, and otherwise ignored, as workers ignore them).
    """

    def lease(entry: Entry) -> str:
        if entry.released:
            return "released"
        beat = beats.get(entry.worker)
        if beat is None:
            return "no-record"
        if any((p.job, p.token) == (entry.job, entry.token) for p in beat.parked):
            return "finished"  # parked: the next move of the main branch lists it as done
        if beat.revoked:
            return "revoked"
        if beat.gone:
            return "gone"  # its worker left without giving it back: anyone may take it
        if renewed is None:
            return "unknown"
        return "renewed" if renewed.get(entry.worker) else "unchanged"

    return {
        "schema": STATUS_SCHEMA,
        "remote": scrub_url(remote),
        "branch": branch,
        "main": main,
        "watched_seconds": watched_seconds,
        "counts": {
            "queued": len(queue),
            "running": len(ledger.running),
            "done": len(ledger.done),
            "failed": len(ledger.failed),
        },
        "queued": list(queue),
        "running": [
            {
                "job": e.job,
                "worker": e.worker or None,
                "token": e.token,
                "attempt": e.attempt,
                "reason": e.reason,
                "branch": _branch_of(e),
                "lease": lease(e),
                "interrupted": e.interrupted,
                "failures": e.failures,
            }
            for e in ledger.running
        ],
        "done": [
            {"job": e.job, "worker": e.worker, "token": e.token, "attempt": e.attempt,
             "branch": _branch_of(e)}
            for e in ledger.done
        ],
        "failed": [
            {"job": e.job, "worker": e.worker, "token": e.token, "attempt": e.attempt,
             "reason": e.reason, "branch": _branch_of(e)}
            for e in ledger.failed
        ],
        "lock": {
            "held": not lock.free,
            "holder": lock.holder or None,
            "token": lock.token,
            "session": lock.session or None,
            "renewal": lock.renewal,
            "changed": lock_changed,
        },
        "workers": [
            {
                "name": b.worker,
                "session": b.session,
                "seq": b.seq,
                "jobs": [e.job for e in ledger.running if e.worker == name],
                "revoked_by": b.revoked_by or None,
                "renewed": None if renewed is None else bool(renewed.get(name)),
                "gone": b.gone,
                "lease_seconds": b.lease or None,
                "unreadable": None,
            }
            for name, b in sorted(beats.items())
        ] + [
            {
                "name": name, "session": None, "seq": None, "jobs": [], "revoked_by": None,
                "renewed": None if renewed is None else bool(renewed.get(name)),
                "gone": False, "lease_seconds": None, "unreadable": why,
            }
            for name, why in sorted((unreadable or {}).items())
        ],
    }


def observe_status(
    view: RemoteView, remote: str, watch: float = 0.0, sleep: Callable[[float], None] = time.sleep,
    memory: Path | None = None,
) -> dict[str, Any]:
    """Read the remote once (twice, ``watch`` seconds apart) and build the status document.

    Without ``watch``, a ``memory`` file (see :mod:`distribute.looks`) gives the second
    look: this machine's last ``status`` of the same remote and branch.  This look is
    remembered for the next one either way.
    """
    from distribute import looks
    from distribute.sources import read_queue

    transport = view.transport
    values = transport.fetch([view.main_ref, LOCK_REF, WORKERS_PREFIX + "*"])
    main = values.get(view.main_ref)
    if main is None:
        raise RemoteStateError(
            f"the remote has no branch {view.branch!r}; prepare it with `distribute init REMOTE`"
        )
    ledger = view.ledger(main)
    queue = read_queue((transport.read_file(main, JOBS_FILE) or b"").decode("utf-8"))
    lock_oid = values.get(LOCK_REF)
    lock = _lock_at(view, lock_oid) if lock_oid else LockState()
    beats: dict[str, Beat] = {}
    beat_refs: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for ref, oid in values.items():
        if ref.startswith(WORKERS_PREFIX):
            try:
                beat = parse_beat_message(transport.commit_message(oid))
            except DistributeError as exc:
                # workers ignore such a record; show it, so that someone can delete the ref
                name = _ref_name(ref[len(WORKERS_PREFIX):])
                unreadable[name] = f"{ref} holds no liveness record: {exc}"
                beat_refs[name] = ref
                continue
            beats[beat.worker] = beat
            beat_refs[beat.worker] = ref
    lock_changed: bool | None = None
    renewed: dict[str, bool] | None = None
    watched = watch
    compared = False
    seen = {ref: oid for ref, oid in values.items()
            if ref == LOCK_REF or ref.startswith(WORKERS_PREFIX)}
    if watch > 0:
        sleep(watch)
        later = transport.list_refs(WORKERS_PREFIX)
        later_lock = transport.list_refs(LOCK_REF).get(LOCK_REF)
        lock_changed = later_lock != lock_oid
        renewed = {w: later.get(ref) != values.get(ref) for w, ref in beat_refs.items()}
        seen = {**later, **({LOCK_REF: later_lock} if later_lock else {})}
    silent: dict[str, float] = {}
    if memory is not None:
        now = looks.now()
        comparison = looks.compare(looks.recall(memory), seen, now)
        if comparison is not None and watch <= 0:
            compared, watched = True, round(comparison.seconds, 1)
            lock_changed = comparison.changed.get(LOCK_REF, lock_oid is not None)
            renewed = {w: comparison.changed.get(ref, True) for w, ref in beat_refs.items()}
            quiet = comparison.unchanged_for
            silent = {w: round(quiet[ref], 1) for w, ref in beat_refs.items() if ref in quiet}
        looks.remember(memory, seen, now, comparison)
    doc = status_document(
        remote=remote, branch=view.branch, main=main, ledger=ledger, queue=queue, lock=lock,
        beats=beats, watched_seconds=watched, lock_changed=lock_changed, renewed=renewed,
        unreadable=unreadable,
    )
    doc["compared_with_last_look"] = compared
    for row in doc["workers"]:
        row["silent_seconds"] = silent.get(row["name"])
        still = row["silent_seconds"]
        if still is None and watch > 0 and row["renewed"] is False:
            still = watch
        lease = row["lease_seconds"]
        row["past_lease"] = (None if still is None or not lease or row["gone"]
                             or row["revoked_by"] else still > lease)
    return doc


def _ref_name(component: str) -> str:
    """The name a ref component encodes, or the component itself when it encodes none (or
    one no name may be: a control character never reaches the terminal)."""
    try:
        name = decode_component(component)
    except ValueError:
        return component
    return component if forbidden_character(name) is not None else name


def _lock_at(view: RemoteView, oid: str) -> LockState:
    """The lock record at ``oid``; a ref that points at no commit, or at a commit that is
    no lock record, raises :func:`~distribute.core.lock.bad_lock` (naming the repair)."""
    try:
        message = view.transport.commit_message(oid)
    except DistributeError:
        copy = getattr(view, "copy", None)
        if copy is None:
            raise
        kind = subprocess.run(
            ["git", "-C", str(copy.path), "cat-file", "-t", oid],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.strip()
        if kind not in ("blob", "tree", "tag"):
            raise  # not a wrong object: the read itself failed
        raise bad_lock(f"it points at a {kind}, not a commit") from None
    return parse_lock_message(message)


def _cell(text: object) -> str:
    return escape(str(text))


#: A worker whose last record says it left, seen so for this long, drops out of the table.
GONE_HIDDEN_AFTER = 3600.0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(doc: dict[str, Any], console: Console, limit: int | None = 20) -> None:
    """Print a status document as rich tables."""
    c = doc["counts"]
    console.print(
        f"[bold]{_cell(doc['remote'])}[/bold]  branch {_cell(doc['branch'])} @ {doc['main'][:10]}"
    )
    console.print(
        f"queued [cyan]{c['queued']}[/cyan] · running [yellow]{c['running']}[/yellow] · "
        f"done [green]{c['done']}[/green] · failed [red]{c['failed']}[/red]"
    )
    rows: list[tuple[str, str, str, str, str, str]] = []
    for r in doc["running"]:
        note = r["lease"] + (f" · last: {r['reason']}" if r["reason"] else "")
        rows.append(("running", r["job"], r["worker"] or "-", str(r["attempt"]), str(r["token"]),
                     note))
    for r in doc["failed"]:
        rows.append(("failed", r["job"], r["worker"], str(r["attempt"]), str(r["token"]),
                     r["reason"]))
    shown_queue = doc["queued"] if limit is None else doc["queued"][:limit]
    rows += [("queued", j, "", "", "", "") for j in shown_queue]
    done = doc["done"] if limit is None else doc["done"][-limit:]
    rows += [("done", r["job"], r["worker"], str(r["attempt"]), str(r["token"]), "")
             for r in done]
    if rows:
        table = Table(title="jobs", title_justify="left", expand=False)
        for col in ("state", "job", "worker", "attempt", "token", "lease / reason"):
            table.add_column(col, overflow="fold")
        style = {"running": "yellow", "failed": "red", "queued": "cyan", "done": "green"}
        for row in rows:
            table.add_row(*(_cell(x) for x in row), style=style[row[0]])
        console.print(table)
        hidden = (len(doc["queued"]) - len(shown_queue)) + (len(doc["done"]) - len(done))
        if hidden:
            console.print(f"({hidden} more queued or done jobs not shown; use --all or --json)")
    lock = doc["lock"]
    if lock["held"]:
        line = (f"lock: held by [bold]{_cell(lock['holder'])}[/bold] (token {lock['token']}, "
                f"renewal {lock['renewal']})")
    else:
        line = f"lock: free (last token {lock['token']})"
    if lock["changed"] is not None:
        if doc.get("compared_with_last_look"):
            since = f"since this machine's last look {doc['watched_seconds']:g} s ago"
            line += f" · changed {since}" if lock["changed"] else f" · unchanged {since}"
        else:
            line += (" · changed while watched" if lock["changed"]
                     else " · unchanged while watched")
    console.print(line)
    workers = doc["workers"]
    hidden = 0
    if limit is not None:  # workers gone for long drop out of the table (--all keeps them)
        kept = [w for w in workers if not (w.get("gone") and not w["jobs"] and (
            w.get("silent_seconds") or 0) >= GONE_HIDDEN_AFTER)]
        hidden, workers = len(workers) - len(kept), kept
    if workers:
        table = Table(title="workers", title_justify="left")
        for col in ("worker", "running", "beats", "liveness"):
            table.add_column(col, overflow="fold")
        for w in workers:
            state = f"revoked by {w['revoked_by']}" if w["revoked_by"] else (
                "gone" if w.get("gone") else
                "-" if w["renewed"] is None else ("renewed" if w["renewed"] else "unchanged")
            )
            if w.get("past_lease"):
                quiet = w["silent_seconds"] or doc["watched_seconds"]
                state = (f"gone? silent {_duration(quiet)}+, "
                         f"past its {_duration(w['lease_seconds'])} lease")
            elif w.get("silent_seconds") and not w["renewed"]:
                state += f" (silent {_duration(w['silent_seconds'])}+)"
            if w.get("unreadable"):
                state = f"unreadable: {w['unreadable']}"
            seq = "-" if w["seq"] is None else str(w["seq"])
            table.add_row(_cell(w["name"]), _cell(", ".join(w["jobs"]) or "-"), seq,
                          _cell(state))
        console.print(table)
        if doc.get("compared_with_last_look"):
            console.print(
                f"liveness: compared with this machine's last look, {doc['watched_seconds']:g} s "
                "ago (renewed: the worker wrote its record since; unchanged: silent at least "
                "that long)", style="dim", markup=False)
        elif not doc["watched_seconds"]:
            console.print("liveness: run status again (or use --watch S) to see who renews",
                          style="dim", markup=False)
    if hidden:
        console.print(f"{hidden} worker(s) gone for over {_duration(GONE_HIDDEN_AFTER)} not "
                      "shown (--all shows them)", style="dim", markup=False)


def find_log(view: RemoteView, job: str) -> tuple[bytes, str]:
    """The job's ``log.txt`` and where it came from (``main`` or a job branch).

    Done jobs are read from the main branch; others from their job branch:
    the one the ledger names, else the newest job branch of that job (see
    :func:`distribute.follow.locate_log`).

    Raises:
        UsageError: the job is unknown or has no log yet.
    """
    from distribute.follow import UNKNOWN, locate_log

    found = locate_log(view, job)
    if found.data is not None and found.where is not None:
        return found.data, found.where
    if found.state == UNKNOWN:
        raise UsageError(f"job {job!r} is not known to this remote (not queued, running, done "
                         "or failed)")
    where = "running" if found.state == "released" else found.state
    raise UsageError(f"job {job!r} is {where} and has no {LOG_FILE} yet; "
                     f"`distribute logs --follow REMOTE JOB` waits for it")


def break_lock(view: RemoteView) -> tuple[LockState, LockState | None]:
    """``distribute unlock``: :func:`distribute.coordination.break_lock` on ``view``'s remote."""
    return coordination.break_lock(view.transport)


# ---- default local copy -------------------------------------------------------------------
def user_cache_dir() -> Path:
    """The per-user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "distribute"


def default_copy_path(remote: str, worker: str) -> Path:
    """``<user cache dir>/distribute/<remote name>-<hash>/<worker>``.

    The hash is of the URL without its password, so a changed password keeps the copy
    (and no hash of a secret is ever written to disk)."""
    from distribute.credentials import public_url

    remote = public_url(remote)
    digest = hashlib.sha256(remote.encode("utf-8")).hexdigest()[:12]
    tail = remote.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    label = encode_component(tail or "remote")[:40]
    return user_cache_dir() / f"{label}-{digest}" / encode_component(worker)


# ---- worker names of this machine ---------------------------------------------------------------
#: How many workers without --name one machine may run on one remote at a time.
MAX_SLOTS = 256


def _fits_a_name(ch: str) -> bool:
    try:
        check_name(f"x{ch}x", "worker")
    except InvalidName:
        return False
    return True


def machine_name() -> str:
    """This machine's host name as a worker name would hold it (``host`` if it has none).

    A character a name may not hold (see :func:`distribute.core.names.check_name`)
    becomes ``-``; white space at either end is dropped.
    """
    host = "".join(ch if _fits_a_name(ch) else "-" for ch in platform.node()).strip()
    return host or "host"


def slot_worker_name(slot: int) -> str:
    """``<host>-<slot>``: the name of a worker started without ``--name`` in copy slot ``slot``."""
    return check_name(f"{machine_name()}-{slot}", "worker")


def copy_worker_name(path: Path) -> str:
    """``<host>-<8 hex digits>``: the name of a worker on the local copy ``path`` when no
    ``--name`` is given -- the same for the same folder on this machine."""
    where = str(path.expanduser().resolve()).encode("utf-8", "surrogateescape")
    return check_name(f"{machine_name()}-{hashlib.sha256(where).hexdigest()[:8]}", "worker")


# ---- the commands --------------------------------------------------------------------------
def _remote_argument() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.argument("remote", envvar=ENV_REMOTE, metavar="REMOTE")


def _branch_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--branch", default=None, metavar="NAME",
        help="The main branch (default: the remote's default branch).",
    )


@click.group(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute demo                               # see it work, on a temporary remote
  distribute init ./remote.git a b c            # a bare repo with three jobs queued
  distribute work ./remote.git -- python train.py {job}
  distribute status ./remote.git
  distribute add ./remote.git --grid lr=0.1,0.01 --grid seed=0..2
  distribute results ./remote.git --sort loss

REMOTE is a folder (a bare repository) or a git URL; the environment variable
DISTRIBUTE_REMOTE fills it in when no positional argument is given.
Exit codes: 0 ok, 1 error, 2 usage error, 3 a worker's breaker stopped it
(its command kept failing at once), 4 every job a worker ran failed, 128+N
stopped by signal N.""",
)
@click.option("-v", "--verbose", count=True, help="Say more; -v shows tracebacks of errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors.")
@click.version_option(__version__, "-V", "--version", prog_name="distribute")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Run jobs on many machines, coordinated by one git remote."""
    global _VERBOSITY
    _VERBOSITY = -1 if quiet else verbose
    ctx.obj = Output(_VERBOSITY)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute init ./remote.git                   # creates the bare repo if missing
  distribute init ./remote.git --branch main a b # and queues jobs a and b
  distribute init git@github.com:me/runs.git     # an empty repository on a server""",
)
@_remote_argument()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--branch", default="main", show_default=True, help="The main branch.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="First check what the remote allows (see `distribute doctor`).")
@click.pass_context
def init(
    ctx: click.Context, remote: str, jobs: tuple[str, ...], branch: str, check: bool
) -> None:
    """Prepare REMOTE for workers: ledgers, jobs.txt and the lock.

    A local path that does not exist becomes a new bare repository.  What
    exists is kept, so running init again is harmless.  A remote that refuses
    what workers need (atomic pushes, refs under refs/distribute/, forced
    updates there, job branches) is reported with the fix, and nothing is
    written.
    """
    from distribute.remote import init_remote, is_local_path

    out = _output(ctx)
    validate_jobs(jobs)
    check_name(branch, "branch")
    if check and not is_local_path(remote):
        from distribute.doctor import require_ready

        out.info(f"checking what {scrub_url(remote)} allows ...")
        require_ready(resolve_remote(remote))
    if is_local_path(remote):
        path = Path(remote).expanduser()
        if path.is_dir() and not any(path.iterdir()):  # `mkdir remote.git` first is fine
            from distribute.transport.git import init_bare_repo

            init_bare_repo(path, branch, serve_partial_clones=True)
        remote = str(path)
    url = init_remote(remote, branch)
    out.result(f"prepared {scrub_url(url)} (branch {branch})")
    if jobs:
        with open_remote(url, branch) as view:
            result: dict[str, list[str]] = {}
            FencedEdit(view, cli_holder()).apply(queue_edit(jobs, result))
        out.result(f"queued {len(result['added'])} job(s)")


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute doctor git@github.com:me/runs.git
  distribute doctor https://gitlab.example.com/me/runs.git

\b
Each check is a small push of scratch refs (named doctor-<random>), deleted
again: whether the remote answers, takes atomic pushes, takes refs under
refs/distribute/ and forced updates there, and job branches. It also says
whether the remote serves partial clones (advice: without them every new
worker downloads every job's results). Exit 0 when workers can use the
remote, 1 when not; each failure and each advice names its fix.""",
)
@_remote_argument()
@click.pass_context
def doctor(ctx: click.Context, remote: str) -> int:
    """Check what REMOTE allows, by trying it; print a verdict and fixes."""
    from distribute.doctor import diagnose

    out = _output(ctx)
    url = resolve_remote(remote)
    checks = diagnose(url)
    for c in checks:
        detail = f": {c.detail}" if c.detail else ""
        out.result(f"{'ok  ' if c.ok else 'FAIL' if c.required else 'note'}  {c.name}{detail}")
        if not c.ok:
            out.result(f"      fix: {c.fix}")
    failed = [c.name for c in checks if not c.ok and c.required]
    out.result(f"{scrub_url(url)}: " + (f"not ready ({', '.join(failed)})" if failed
                                        else "ready for workers"))
    return 1 if failed else 0


def cached_copies(root: Path) -> list[Path]:
    """The local copies under the cache folder ``root`` (``<remote>-<hash>/<worker>``)."""
    if not root.is_dir():
        return []
    return sorted(p for remote in root.iterdir() if remote.is_dir()
                  for p in remote.iterdir() if (p / ".git").is_dir())


def _size(path: Path) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute clean --dry-run          # what would go, and how much space it takes
  distribute clean --keep-running-jobs

\b
Looks at the local copies `work` keeps in the cache folder (see `work --help`).
A copy a running worker uses (it holds the copy's file lock) is never touched.
A copy whose worker died in the middle of a job holds that job's last files:
--keep-running-jobs keeps such copies for a restart to resume from. The object
store that a remote's copies share (.objects.git) goes with the last of them.""",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--keep-running-jobs", is_flag=True,
              help="Keep copies that were running a job when their worker stopped.")
@click.pass_context
def clean(ctx: click.Context, dry_run: bool, keep_running_jobs: bool) -> None:
    """Remove cached local copies that no worker uses."""
    from distribute.dist import _JOB_MARKER, _LOCK_FILE

    out = _output(ctx)
    freed = removed = kept = 0
    gone: set[Path] = set()
    for copy in cached_copies(user_cache_dir()):
        lock = filelock.FileLock(str(copy / ".git" / _LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            out.info(f"in use: {copy}")
            kept += 1
            continue
        try:
            if keep_running_jobs and (copy / ".git" / _JOB_MARKER).exists():
                out.info(f"kept (a job to resume): {copy}")
                kept += 1
                continue
            size = _size(copy)
            out.result(f"{'would remove' if dry_run else 'removed'} {copy} ({size / 1e6:.1f} MB)")
            if not dry_run:
                shutil.rmtree(copy, ignore_errors=True)
                with contextlib.suppress(OSError):
                    copy.parent.rmdir()  # the remote's folder, once empty
            gone.add(copy)
            freed += size
            removed += 1
        finally:
            lock.release()
    for size in _clean_stores(out, gone, dry_run):
        freed += size
    verb = "would free" if dry_run else "freed"
    out.result(f"{removed} cop{'y' if removed == 1 else 'ies'}, {verb} {freed / 1e6:.1f} MB; "
               f"{kept} kept")


def _clean_stores(out: Output, gone: set[Path], dry_run: bool) -> Iterator[int]:
    """Remove the shared object stores that no cached copy borrows from any more (the
    copies in ``gone`` count as removed); yield the size of each."""
    root = user_cache_dir()
    for store in sorted(root.glob(f"*/{STORE_NAME}")) if root.is_dir() else []:
        size = _drop_unborrowed_store(store, gone, dry_run)
        if size is None:
            continue
        out.result(f"{'would remove' if dry_run else 'removed'} {store} "
                   f"({size / 1e6:.1f} MB, the objects its copies shared)")
        yield size


def _drop_unborrowed_store(store: Path, gone: set[Path], dry_run: bool = False) -> int | None:
    """Remove the shared object store ``store`` if no copy beside it (but those in
    ``gone``) may borrow from it and no clone from it is under way; its size, or
    ``None`` when it stays."""
    if not store.is_dir():
        return None
    lock = store_lock(store)
    try:
        lock.acquire(timeout=0)  # held while a new copy is cloned from it
    except filelock.Timeout:
        return None
    try:
        # under the store's lock no clone from it is under way: a copy there now (even one
        # made again after this clean removed it) borrows from it; a dry run counts the
        # copies it would have removed as gone
        if any((p / ".git").exists() and not (dry_run and p in gone)
               for p in store.parent.iterdir()):
            return None
        size = _size(store)
        if not dry_run:
            shutil.rmtree(store, ignore_errors=True)
        return size
    finally:
        lock.release()


def _assignments(texts: Sequence[str], option: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict, in the order given; a name twice is an error."""
    found: dict[str, str] = {}
    for text in texts:
        key, value = _split_assignment(text, option)
        if key in found:
            raise click.UsageError(f"{option} {key} is given twice")
        found[key] = value
    return found


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.UsageError(f"{option} {text!r}: write NAME=VALUES")
    return key.strip(), value


def sweep_jobs(
    grids: Sequence[str], params: Sequence[str], random_n: int | None, seed: int | None,
    say: Callable[[str], None] = lambda line: None,
) -> list[str]:
    """The jobs of ``add --grid``/``--random``: a random search's points, each crossed
    with the grid (when both are given), else either one.

    Raises:
        click.UsageError: options that do not go together.
        UsageError, InvalidName: a malformed spec or a value no job name can hold.
    """
    from distribute.sweeps import cross, grid, random_search

    if params and random_n is None:
        raise click.UsageError("--param draws values for --random N: give --random too")
    if random_n is not None and not params:
        raise click.UsageError("--random N needs the space to draw from: --param NAME=SPEC")
    if seed is not None and random_n is None:
        raise click.UsageError("--seed is the seed of --random N")
    parts: list[list[str]] = []
    if random_n is not None:
        space = _assignments(params, "--param")
        drawn_seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        parts.append(random_search(random_n, space, drawn_seed))
        if seed is None:
            say(f"random search seed {drawn_seed} (add --seed {drawn_seed} to draw the same "
                "jobs again)")
    if grids:
        parts.append(grid(_assignments(grids, "--grid")))
    if not parts:
        return []
    return parts[0] if len(parts) == 1 else cross(*parts)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute add ./remote.git "lr=0.1 seed=1" "lr=0.01 seed=1"
  distribute add ./remote.git --file jobs-to-run.txt
  seq 1 100 | distribute add ./remote.git --file -
  distribute add ./remote.git -- --job-starting-with-a-dash
  distribute add ./remote.git --grid lr=0.1,0.01,0.001 --grid seed=0..2
  distribute add ./remote.git --random 20 --seed 7 --param lr=loguniform:1e-5:1e-1 \\
      --param layers=int:1:4 --param opt=choice:adam,sgd
  distribute add ./remote.git --grid lr=0.1,0.01 --grid seed=0..4 --dry-run

\b
Sweeps name each job by its parameters, "lr=0.1 seed=0", in the order given.
--grid NAME=VALUES: VALUES is a comma list (kept as written) or an integer range
A..B (both ends included); the first --grid varies slowest. --random N draws N
distinct points with --param NAME=SPEC, SPEC one of uniform:LOW:HIGH,
loguniform:LOW:HIGH, int:LOW:HIGH, choice:A,B,C (or a value list); --seed S
draws the same points again. With both, each drawn point runs with every grid
point (e.g. --grid seed=0..2 for three seeds each). A value may not hold white
space or control characters.""",
)
@_remote_argument()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("-f", "--file", "files", multiple=True, metavar="F",
              help="Read job names from F, one per line ('-': stdin). Repeatable.")
@click.option("--grid", "grids", multiple=True, metavar="NAME=VALUES",
              help="A grid axis: NAME=0.1,0.01 or NAME=0..4. Repeatable.")
@click.option("--random", "random_n", type=click.IntRange(min=1), default=None, metavar="N",
              help="Draw N random points of the --param space.")
@click.option("--param", "params", multiple=True, metavar="NAME=SPEC",
              help="A dimension of --random: loguniform:1e-5:1e-1, uniform:0:1, int:1:4, "
                   "choice:adam,sgd. Repeatable.")
@click.option("--seed", type=int, default=None, metavar="S",
              help="Seed of --random (default: a fresh one, printed).")
@click.option("--dry-run", is_flag=True, help="Print the jobs, one per line; queue nothing.")
@click.option("--wait", default=60.0, show_default=True, metavar="S",
              help="Seconds to wait for a lock that does not change.")
@_branch_option()
@click.pass_context
def add(
    ctx: click.Context, remote: str, jobs: tuple[str, ...], files: tuple[str, ...],
    grids: tuple[str, ...], random_n: int | None, params: tuple[str, ...], seed: int | None,
    dry_run: bool, wait: float, branch: str | None,
) -> None:
    """Queue JOBs at the end of jobs.txt.

    Jobs already queued, running, done or failed are skipped.  Every name is
    checked before anything is written: one invalid name and nothing is queued.
    The edit is made under the remote lock, so it never races a worker taking
    a job from the queue.
    """
    out = _output(ctx)
    names = list(jobs)
    for f in files:
        names += read_job_file(f)
    names += sweep_jobs(grids, params, random_n, seed, out.info)
    if not names:
        raise click.UsageError("no jobs given: pass JOB arguments, --file F, --grid or --random")
    validate_jobs(names)
    if dry_run:
        for name in names:
            out.result(name)
        return
    result: dict[str, list[str]] = {}
    with open_remote(remote, branch) as view:
        FencedEdit(view, cli_holder(), wait).apply(queue_edit(names, result))
    skipped = result.get("skipped", [])
    note = f" ({len(skipped)} already known, skipped)" if skipped else ""
    out.result(f"queued {len(result.get('added', []))} job(s){note}")


class _CommandAfterDashes(click.Command):
    """A command whose arguments after ``--`` are a command line of its own."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["distribute.command"] = args[at + 1:]
            return super().parse_args(ctx, args[:at])
        ctx.meta["distribute.command"] = None
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if "unexpected extra argument" in exc.message:
                raise click.UsageError(
                    f"{exc.message}; put the command to run after `--`", ctx
                ) from None
            raise


def _stop_leftovers(copy: Path, out: Output) -> None:
    """Stop what a killed worker process left running on ``copy`` (see
    :func:`distribute.orphans.reap_leftover_command`).

    Done only while this process holds the copy's file lock, so never to the
    command of a live worker: when another process holds it, nothing is done
    (and opening the worker then fails with ``LocalCopyBusy``).
    """
    from distribute.dist import _LOCK_FILE
    from distribute.orphans import reap_leftover_command

    git_dir = copy / ".git"
    if not git_dir.is_dir():
        return
    lock = filelock.FileLock(str(git_dir / _LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return
    try:
        note = reap_leftover_command(git_dir)
    finally:
        lock.release()
    if note:
        out.info(note)


def _open_worker(
    url: str, copy: Path, name: str, out: Output, *, cached: bool = False, **options: Any
) -> tuple[Worker, bool]:
    """A worker named ``name`` on ``copy`` (cloned if missing), once leftovers are stopped;
    and whether ``copy`` was made just now.  A ``cached`` copy (in the remote's cache
    folder) borrows its objects from the store the remote's cached copies share."""
    from distribute.dist import worker_from_url
    from distribute.remote import is_local_path

    private_folder(copy.parent)
    out.debug(f"worker {name}, local copy {copy}")
    _stop_leftovers(copy, out)
    fresh = not copy.exists()
    # a clone of a path hard-links the remote's objects already: a store would only
    # add a copy of them
    shared = copy.parent / STORE_NAME if cached and not is_local_path(url) else None
    return worker_from_url(url, path=copy, name=name, shared_objects=shared, **options), fresh


def _open_slot_worker(
    url: str, out: Output, hold: contextlib.ExitStack, **options: Any
) -> tuple[Worker, bool]:
    """A worker in the lowest free copy slot of this machine: ``<host>-1``, ``<host>-2``, ...

    A slot is taken by a file lock beside its copy, held (by ``hold``) until
    this process ends, so that two workers starting at once never clone into
    one folder; a copy that a live worker uses (it holds the copy's own file
    lock) is passed over too.
    """
    for slot in range(1, MAX_SLOTS + 1):
        name = slot_worker_name(slot)
        copy = default_copy_path(url, name)
        private_folder(copy.parent)
        claim = filelock.FileLock(str(copy.parent / f".{copy.name}.slot.lock"))
        try:
            claim.acquire(timeout=0)
        except filelock.Timeout:
            continue
        try:
            opened = _open_worker(url, copy, name, out, cached=True, **options)
        except LocalCopyBusy:
            claim.release()
            continue
        except BaseException:
            claim.release()
            raise
        hold.callback(claim.release)
        return opened
    raise UsageError(
        f"all {MAX_SLOTS} worker slots of this machine are in use on this remote; "
        "give the worker a --name"
    )


@cli.command(
    cls=_CommandAfterDashes,
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute work ./remote.git -- python train.py --config {job}
  distribute work ./remote.git --name gpu-1 --timeout 3600 -- ./run.sh {job}
  distribute work ./remote.git --shell -- 'python train.py {job} | tee out.txt'
  DISTRIBUTE_REMOTE=git@host:me/runs.git distribute work -- python train.py {job}
  distribute work ./remote.git -- python train.py --lr {lr} --seed {seed}
  distribute work ./remote.git -- python train.py {args}    # --lr=0.1 --seed=0
  distribute work ./remote.git --wait-for-jobs --idle-exit 3600 -- python train.py {args}
  distribute work ./remote.git --gpus 4 -- python train.py {args}
  distribute work ./remote.git --gpus 0,1,3 -- python train.py {args}

\b
The command gets the job as one argument ({job} is replaced inside each
argument; with --shell it is shell-quoted) and in DISTRIBUTE_JOB, plus
DISTRIBUTE_WORKER, DISTRIBUTE_ATTEMPT and DISTRIBUTE_JOB_DIR (the folder whose
files are committed with the job). A job named by parameters ("lr=0.1 seed=0",
as `add --grid` makes) also fills {lr} and {seed}, and {args} (--lr=0.1
--seed=0: separate arguments when {args} stands alone), and sets
DISTRIBUTE_PARAM_LR, DISTRIBUTE_PARAM_SEED. A job lacking a parameter the
command uses fails that attempt, saying so; {{lr}} is a literal {lr}, and
braces around words that are no job's parameter are left alone. Its output
goes to DISTRIBUTE_JOB_DIR/log.txt, committed every --commit-every seconds.
Exit 0 finishes the job; anything else fails the attempt (it is retried up to
--max-attempts times). A job's next attempt starts with the files its
previous attempt committed (DISTRIBUTE_RESUMED_FROM names that attempt's
branch; --no-resume for a fresh folder), so a job that writes checkpoints can
go on from the last one.

\b
Exit codes: 0 when no job is left (or --idle-exit passed) and some job it
ran did not fail; 4 when every job it ran failed; 3 when the breaker stopped
it; 128+N when signal N stopped it. The breaker: a command that cannot start
or exits non-zero within --breaker-seconds failed at once. Until the command
has once worked on this worker, such an attempt is put back as interrupted
(no attempt used up), and --breaker of them in a row stop the worker, naming
the command and the last error. Afterwards failures at once count as usual,
and --breaker different jobs failing at once in a row stop it.

\b
--wait-for-jobs keeps the worker waiting when the queue is empty: it looks at
the main branch's ref at the idle pace (up to a sixth of --lease, at most
20 s, between looks) and asks for a job once it moved. --idle-exit S stops it
after S seconds without a job; SIGTERM stops it at any time (exit 143).

\b
The local copy defaults to <cache>/distribute/<remote>-<hash>/<name>, where
<cache> is $XDG_CACHE_HOME or ~/.cache, and is kept for the next run. Such
copies of a remote reached by URL share one object store (.objects.git beside
them): a second worker on this machine downloads and stores only what the
first lacks.
Without --name the worker is <host>-1, <host>-2, ...: the lowest slot whose
copy no running worker uses (with --path: <host>-<hash of the path>). So a
worker restarted after a crash gets its old name and copy back and resumes
its own job at once, instead of waiting a lease for it.

\b
SIGINT/SIGTERM reach the command; the attempt then ends as "interrupted"
(it runs again, and does not use up --max-attempts, only the larger
--max-interruptions) and work exits with 128+signal.
The command never outlives work: on Linux it is killed when work dies, and
whatever it left running (e.g. its own children) is stopped when its job
ends or, after a crash, by the next work on the same copy.

\b
--gpus N (GPUs 0..N-1) or --gpus 0,1,3 (those ids; one id alone: --gpus 3,)
starts one worker per GPU, each a slot worker as above (<host>-1, ...) with
CUDA_VISIBLE_DEVICES set to its GPU for every job's command; --slots N starts
N such workers without setting it. The other options apply to each worker
(--max-jobs K: K jobs each). Each worker's commands get {slot} and
DISTRIBUTE_SLOT: 0, 1, ... in the order of the GPUs (0 for a lone worker,
unless --slot says otherwise). Their output is prefixed with [gpu G: worker]
or [slot S: worker]. Ctrl-C and SIGTERM reach every worker; if work itself
is killed, its workers and their commands die with it. Exit code: 128+N when
signal N stopped them; else 1 if any worker ended with an error; else 3 if
any worker's breaker stopped it; else 4 if every job of every worker failed;
else 0.""",
)
@_remote_argument()
@click.option("--path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local copy (a clone this worker owns). Default: see below.")
@click.option("--name", default=None,
              help="Unique worker name (default: <host>-<slot>, stable across restarts; "
                   "see below).")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, metavar="K",
              help="Stop after running K jobs (each attempt counts).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Kill a job's command after S seconds and fail the attempt.")
@click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=120.0,
              show_default=True, metavar="S", help="Lease period of the lock and of jobs.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              metavar="N", help="Failed attempts per job before it is recorded as failed.")
@click.option("--max-interruptions", type=click.IntRange(min=1), default=MAX_INTERRUPTIONS,
              show_default=True, metavar="N",
              help="Interrupted attempts per job (signals, restarts, expired leases) before "
                   "it is recorded as failed.")
@click.option("--max-file-mb", type=click.FloatRange(min=0, min_open=True), default=50.0,
              show_default=True, metavar="MB",
              help="Refuse to commit a file larger than this (git hosts refuse 100 MB).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Start a job's next attempt with the files its last attempt committed.")
@click.option("--all-results", is_flag=True,
              help="Keep every job's folder under updates/ on disk, not only the running "
                   "job's (the others stay on the remote either way).")
@click.option("--shell", is_flag=True, help="Run the command with /bin/sh -c.")
@click.option("--commit-every", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, metavar="S", help="Seconds between commits of the log.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              metavar="S", help="Seconds a stopped command has before it is killed.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait while other workers still run jobs (they may fail and be retried).")
@click.option("--wait-for-jobs", is_flag=True,
              help="When the queue is empty, wait for new jobs instead of exiting.")
@click.option("--idle-exit", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Exit after S seconds without a job (implies --wait-for-jobs).")
@click.option("--breaker", type=click.IntRange(min=0), default=3, show_default=True,
              metavar="N", help="Stop after N failures at once in a row (0: never); see below.")
@click.option("--breaker-seconds", type=click.FloatRange(min=0), default=5.0,
              show_default=True, metavar="S",
              help="A non-zero exit within S seconds of starting is a failure at once.")
@click.option("--gpus", default=None, metavar="N|IDS",
              help="One worker per GPU: N GPUs (0..N-1) or ids 0,1,3; each job's command "
                   "gets CUDA_VISIBLE_DEVICES. See below.")
@click.option("--slots", type=click.IntRange(min=1), default=None, metavar="N",
              help="N workers on this machine from one command (as --gpus, without GPUs).")
@click.option("--slot", type=click.IntRange(min=0), default=0, envvar="DISTRIBUTE_SLOT",
              show_default=True, metavar="S",
              help="This worker's slot number, for {slot} (set by --gpus and --slots).")
@_branch_option()
@click.pass_context
def work(
    ctx: click.Context, remote: str, path: Path | None, name: str | None,
    max_jobs: int | None, timeout: float | None, lease: float, max_attempts: int,
    max_interruptions: int, max_file_mb: float, resume: bool, all_results: bool, shell: bool,
    commit_every: float, grace: float, wait: bool, wait_for_jobs: bool,
    idle_exit: float | None, breaker: int, breaker_seconds: float, gpus: str | None,
    slots: int | None, slot: int, branch: str | None,
) -> int:
    """Take jobs from the jobs.txt queue and run a command for each.

    Put the command after `--`.
    """
    from distribute.runner import JobRunner
    from distribute.sources import QueueJobs

    out = _output(ctx)
    command = ctx.meta.get("distribute.command")
    if not command:
        raise click.UsageError(
            "no command given: put the command to run after `--`, "
            "e.g. distribute work REMOTE -- python train.py {job}"
        )
    if gpus is not None or slots is not None:
        return _work_on_gpus(ctx, gpus, slots, remote, command, out)
    url = resolve_remote(remote)
    wait_for_jobs = wait_for_jobs or idle_exit is not None
    options: dict[str, Any] = {
        "branch": branch, "lease_seconds": lease, "max_attempts": max_attempts,
        "max_interruptions": max_interruptions, "resume": resume,
        # a worker waiting for new jobs waits for running ones in the same loop, where
        # --idle-exit is heeded
        "wait_for_running": wait and not wait_for_jobs,
        "max_file_bytes": int(max_file_mb * 1_000_000),
        "all_results": all_results,
    }
    with contextlib.ExitStack() as hold:
        if name is not None:
            worker_name = check_name(name, "worker")
            copy = path if path is not None else default_copy_path(url, worker_name)
            worker, fresh = _open_worker(url, copy, worker_name, out, cached=path is None,
                                         **options)
        elif path is not None:
            worker, fresh = _open_worker(url, path, copy_worker_name(path), out, **options)
        else:
            worker, fresh = _open_slot_worker(url, out, hold, **options)
        try:
            worker.get_running()  # a remote that is not ready fails here, before any output
        except BaseException:
            worker.close()
            if fresh:  # a clone made just now, of a remote no worker can use yet
                shutil.rmtree(worker.path, ignore_errors=True)
                _drop_unborrowed_store(Path(worker.path).parent / STORE_NAME, set())
            raise
        try:
            out.info(f"worker {worker.name} on {scrub_url(url)}")
            runner = JobRunner(
                worker, command, QueueJobs(), shell=shell, timeout=timeout,
                commit_every=commit_every, max_jobs=max_jobs, grace=grace, report=out.info,
                breaker=breaker, breaker_seconds=breaker_seconds,
                wait_for_jobs=wait_for_jobs, idle_exit=idle_exit,
                echo=_job_echo(out) if out.verbosity >= 0 else None, slot=slot,
            )
            summary = runner.run()
        finally:
            worker.close()
    counts = ", ".join(
        f"{summary.count(s)} {s}" for s in ("done", "retry", "failed", "lost", "interrupted")
        if summary.count(s)
    )
    out.info(f"worker {worker.name}: {counts or 'no jobs run'}")
    if summary.signum:
        out.info(f"stopped by {signal.Signals(summary.signum).name}")
    elif summary.breaker:
        _error(summary.breaker)
    elif summary.all_failed:
        out.info(f"every job this worker ran failed (exit code {summary.exit_code}); "
                 "see `distribute status` and `distribute logs`")
    return summary.exit_code


def _job_echo(out: Output) -> Callable[[str, str], None]:
    """Each line of a job's output on stderr, after the job's name (``-q`` hides them)."""

    def echo(job: str, line: str) -> None:
        out.err.print(f"{job} | {line}", markup=False, highlight=False)

    return echo


def _work_on_gpus(
    ctx: click.Context, spec: str | None, slots: int | None, remote: str,
    command: Sequence[str], out: Output,
) -> int:
    """``work --gpus`` or ``--slots``: one child ``work`` per slot, supervised (see
    :mod:`distribute.gpus`)."""
    from click.core import ParameterSource

    from distribute.gpus import GpuWorkers, parse_gpus

    flag = "--gpus" if spec is not None else "--slots"
    if spec is not None and slots is not None:
        raise click.UsageError("--gpus and --slots both say how many workers to start; "
                               "give one (--gpus for one worker per GPU)")
    for taken in ("name", "path"):
        if ctx.get_parameter_source(taken) not in (None, ParameterSource.DEFAULT):
            raise click.UsageError(
                f"{flag} starts workers in slots of their own "
                f"(<host>-1, <host>-2, ...); it does not go with --{taken}: leave --{taken} "
                "out, or start each `work` by hand"
                + (" with CUDA_VISIBLE_DEVICES set" if spec is not None else "")
            )
    devices: list[str | None]
    if spec is None:
        devices = [None] * (slots or 1)
    else:
        try:
            devices = list(parse_gpus(spec))
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
    url = resolve_remote(remote)
    options: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in (
                None, "gpus", "slots", "slot", "help"):
            continue
        if ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[param.name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            if param.secondary_opts:
                options.append(flag if value else max(param.secondary_opts, key=len))
            elif value:
                options.append(flag)
        elif value is not None:
            options += [flag, str(value)]
    verbosity = ["-q"] if _VERBOSITY < 0 else ["-v"] * _VERBOSITY
    # the URL or an absolute path: never read as an option by the child
    argv = [sys.executable, "-m", "distribute", *verbosity, "work", url, *options, "--",
            *command]
    if spec is not None:
        out.info(f"starting {len(devices)} workers on {scrub_url(url)}, one per GPU: "
                 f"{', '.join(d for d in devices if d is not None)}")
    else:
        out.info(f"starting {len(devices)} workers on {scrub_url(url)}")
    workers = GpuWorkers(devices, argv, _child_env(), sys.stdout, sys.stderr)
    code = workers.run()
    out.info(workers.summary() + f"; exit code {code}")
    return code


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute status ./remote.git
  distribute status ./remote.git --watch 10     # tell live workers from silent ones
  distribute status ./remote.git --json | jq '.counts'

The JSON document has "schema": 1; its keys are described in the module
docstring of distribute.cli (python -m pydoc distribute.cli).""",
)
@_remote_argument()
@click.option("--json", "as_json", is_flag=True, help="Print the schema-1 JSON document.")
@click.option("--watch", type=click.FloatRange(min=0), default=0.0, metavar="S",
              help="Read liveness records twice, S seconds apart, to see who renews.")
@click.option("--all", "show_all", is_flag=True, help="List every queued and done job.")
@_branch_option()
@click.pass_context
def status(
    ctx: click.Context, remote: str, as_json: bool, watch: float, show_all: bool,
    branch: str | None,
) -> None:
    """Show queued, running, done and failed jobs, the lock and the workers.

    \b
    JSON schema 1 (every key always present):
      schema: 1; remote, branch, main (commit id); watched_seconds
      counts: {queued, running, done, failed}
      queued: [job, ...]
      running: [{job, worker|null, token, attempt, reason, branch|null,
                 lease: released|revoked|no-record|unknown|renewed|unchanged}]
      done:   [{job, worker, token, attempt, branch}]
      failed: [{job, worker, token, attempt, reason, branch}]
      lock: {held, holder|null, token, session|null, renewal, changed|null}
      workers: [{name, session|null, seq|null, jobs, revoked_by|null, renewed|null,
                 gone, unreadable|null}]
    """
    from distribute.looks import memory_path

    url = resolve_remote(remote)
    with open_remote(url, branch) as view:
        doc = observe_status(view, url, watch,
                             memory=memory_path(user_cache_dir(), url, view.branch))
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    render_status(doc, _output(ctx).out, None if show_all else 20)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute logs ./remote.git "lr=0.1 seed=1"
  distribute logs ./remote.git my-job | tail -n 20
  distribute logs ./remote.git "lr=0.1 seed=1" --follow
  distribute logs ./remote.git my-job --follow --interval 10 | grep loss

\b
--follow prints the log, then what the job's worker adds to it (it commits
the log every `work --commit-every` seconds), until the job is done (exit 0)
or failed for good (exit 1), or Ctrl-C. A queued job, or a running one whose
log has not been committed yet, is waited for; an attempt that fails and is
retried is followed into the next one. Each look first reads two ref values
only (the main branch and the job's branch); it looks every --interval
seconds, and up to four times that while nothing changes.""",
)
@_remote_argument()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing what is added until the job is done or failed.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=None, metavar="S",
              help="With --follow: seconds between looks at the remote (default 5).")
@_branch_option()
@click.pass_context
def logs(
    ctx: click.Context, remote: str, job: str, follow: bool, interval: float | None,
    branch: str | None,
) -> int:
    """Print a job's log.txt: from the main branch when done, else from its job branch."""
    out = _output(ctx)
    if interval is not None and not follow:
        raise click.UsageError("--interval S sets the pace of --follow: give --follow too")
    check_name(job, "job")
    if follow:
        return _follow_log(out, remote, job, 5.0 if interval is None else interval, branch)
    with open_remote(remote, branch) as view:
        data, where = find_log(view, job)
    out.debug(f"read from {where}")
    _write_out(data)
    return 0


def _write_out(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class _Stopped(Exception):
    """Internal: SIGTERM while following a log (so that the scratch clone is removed)."""


def _follow_log(out: Output, remote: str, job: str, interval: float, branch: str | None) -> int:
    from distribute.follow import DONE, LogWatcher, follow

    def on_term(signum: int, frame: object) -> None:
        raise _Stopped()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with open_remote(remote, branch) as view:
            last = follow(LogWatcher(view, job).look, job, _write_out, out.info,
                          interval=interval)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Stopped:
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if last.state == DONE else 1


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute requeue ./remote.git --failed        # every failed job, attempts reset
  distribute requeue ./remote.git "lr=0.1 seed=1"
  distribute requeue ./remote.git stuck-job --force
  distribute requeue ./remote.git --done "lr=0.1 seed=1"   # run a done job again

\b
--done JOB... runs done jobs again: each leaves done.txt in the same commit
that puts it first in the queue, and is then claimed as a new job (attempt 1,
a new branch). Its folder on the main branch keeps the last run's files, so
the new run starts with them (its log.txt goes on after the old one) and its
finish replaces what it rewrites; until then `results` shows the old files.
The last run's branch stays on the remote.""",
)
@_remote_argument()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--failed", "all_failed", is_flag=True, help="Requeue every failed job.")
@click.option("--done", is_flag=True,
              help="Run the named done jobs again (see below).")
@click.option("--force", is_flag=True,
              help="Also requeue jobs that a worker still holds (only if it is gone).")
@click.option("--wait", default=60.0, show_default=True, metavar="S",
              help="Seconds to wait for a lock that does not change.")
@_branch_option()
@click.pass_context
def requeue(
    ctx: click.Context, remote: str, jobs: tuple[str, ...], all_failed: bool, done: bool,
    force: bool, wait: float, branch: str | None,
) -> None:
    """Run failed jobs again: forget them in the ledgers, put them first in jobs.txt.

    One commit, made under the remote lock.  Attempts start again at 1.
    """
    out = _output(ctx)
    if done and all_failed:
        raise click.UsageError("--done runs named done jobs again; it does not go with "
                               "--failed (run the two commands one after the other)")
    if done and not jobs:
        raise click.UsageError("--done needs the JOB names to run again")
    if bool(jobs) == all_failed:
        raise click.UsageError("give JOB names or --failed (one of the two)")
    validate_jobs(jobs)
    result: dict[str, list[str]] = {}
    with open_remote(remote, branch) as view:
        seen = None
        if force:  # what the operator judged: --force takes those holdings, no later one
            ledger = view.ledger(view.main())
            seen = {e.job: (e.worker, e.token) for e in ledger.running if not e.released}
        FencedEdit(view, cli_holder(), wait).apply(
            requeue_edit(None if all_failed else jobs, force, result, done, seen)
        )
    requeued = result.get("requeued", [])
    skipped = result.get("skipped", [])
    note = f" ({len(skipped)} already queued)" if skipped else ""
    if not requeued and not skipped:
        out.result("no failed jobs to requeue")
    else:
        out.result(f"requeued {len(requeued)} job(s){note}")


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute cancel ./remote.git "lr=0.3 seed=0" "lr=0.3 seed=1"
  distribute cancel ./remote.git --file wrong-jobs.txt
  distribute status ./remote.git --json | jq -r '.queued[]' | grep 'lr=0.3' \\
      | distribute cancel ./remote.git --file -
  distribute cancel ./remote.git -- --job-starting-with-a-dash

\b
A queued job is taken out of jobs.txt (`add` queues it again). A running job,
or one that waits for another attempt, is moved to failed.txt with the reason
"cancelled" (`requeue` runs it again); the worker running it learns it at its
next heartbeat (within a third of its lease), stops the command and goes on
with other jobs; what the job had committed stays on its branch. A done or
failed job has nothing to cancel. One line per job says what was done; the
exit code is 1 when any named job was not cancelled. The edit is made under
the remote lock, like `add`, so no next-job function is disturbed.""",
)
@_remote_argument()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("-f", "--file", "files", multiple=True, metavar="F",
              help="Read job names from F, one per line ('-': stdin). Repeatable.")
@click.option("--wait", default=60.0, show_default=True, metavar="S",
              help="Seconds to wait for a lock that does not change.")
@_branch_option()
@click.pass_context
def cancel(
    ctx: click.Context, remote: str, jobs: tuple[str, ...], files: tuple[str, ...],
    wait: float, branch: str | None,
) -> int:
    """Take jobs out of the queue, or out of the run: no worker runs them (any more)."""
    out = _output(ctx)
    names = list(jobs)
    for f in files:
        names += read_job_file(f)
    if not names:
        raise click.UsageError("no jobs given: pass JOB arguments or --file F")
    validate_jobs(names)
    result: dict[str, list[str]] = {}
    holder = cli_holder()
    with open_remote(remote, branch) as view:
        FencedEdit(view, holder, wait).apply(cancel_edit(names, result, holder))
    for line in result.get("notes", []) + result.get("refused", []):
        out.result(line)
    refused = len(result.get("refused", []))
    if refused:
        _error(f"{refused} of {len(dict.fromkeys(names))} jobs were not cancelled (see above)")
        return 1
    return 0


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Example:
  distribute unlock ./remote.git

A worker that still held the lock finds its next push refused (the token
moved on); jobs it runs are not affected. A lock ref that holds no lock
record (written by something else, or damaged) is replaced by a free lock
whose token is above every token the remote records.""",
)
@_remote_argument()
@_branch_option()
@click.pass_context
def unlock(ctx: click.Context, remote: str, branch: str | None) -> None:
    """Break the remote lock (compare-and-swap to free, next token)."""
    out = _output(ctx)
    with open_remote(remote, branch) as view:
        repaired = view.repair_lock()
        if repaired is not None:
            damaged, state = repaired
            out.result(
                f"the lock ({LOCK_REF} at {damaged[:10]}) held no lock record; replaced it "
                f"with a free lock, next token {state.token + 1} (above every token the "
                "remote records)"
            )
            return
        before, after = break_lock(view)
    if after is None:
        out.result(f"the lock is free already (last token {before.token}); nothing to do")
        return
    out.result(
        f"broke the lock held by {before.holder!r} (token {before.token}, session "
        f"{before.session[:12] or '-'}); it is free now, next token {after.token}"
    )


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute gc ./remote.git --dry-run     # what would go
  distribute gc git@host:me/runs.git
  distribute gc ./remote.git --keep-failed # delete only done jobs' branches

Every finished job's branch is merged into the main branch (its last commit is
a parent of the finish commit), so its ref is only a cost: every ref is
advertised on every fetch and push. Workers delete the branches of the jobs
they finished as they go (a batch every 16 jobs, and when they stop); gc
deletes what is left, for example the branches of a remote filled by an older
version, and the branches of earlier attempts of a done job (a retry merged
them).

\b
The branches of failed jobs (workers archive those of the jobs that failed
for good under them; gc archives what is left, for example from an older
version) and those of a done job that the main branch does not hold (an
attempt before a requeue, an update pushed after a takeover) are archived:
their tips become parents of a commit on refs/distribute/archive/<worker>,
whose file archived.txt lists each branch with its tip, and their refs go.
Nothing they hold is lost, `distribute results` and `distribute logs` still
read them, and a branch is brought back with
`git push origin <tip>:refs/heads/<branch>`. Kept as they are: branches of
running jobs and of jobs waiting for a retry (a retry starts from the last
attempt's branch), of jobs queued again, and of jobs that failed on a merge
conflict (their reason names the branch to merge by hand).""",
)
@_remote_argument()
@click.option("--dry-run", is_flag=True,
              help="Only say how many branches would be deleted and archived.")
@click.option("--keep-failed", is_flag=True,
              help="Archive nothing: keep the branches of failed jobs as they are.")
@_branch_option()
@click.pass_context
def gc(ctx: click.Context, remote: str, dry_run: bool, keep_failed: bool,
       branch: str | None) -> None:
    """Delete the branches of done jobs; archive those of failed jobs."""
    out = _output(ctx)
    with open_remote(remote, branch) as view:
        found = coordination.merged_branches(view.transport, view.branch)
        doomed = ({} if keep_failed
                  else coordination.archivable_branches(view.transport, view.branch, skip=found))
        if not found and not doomed:
            out.result("no branch of a done or failed job is left on the remote; nothing to do")
            return
        if dry_run:
            out.result(f"{len(found)} branch(es) of done jobs would be deleted, "
                       f"{len(doomed)} archived")
            return
        deleted = archived = 0
        if found:
            total = len(found)

            def say(done: int) -> None:
                out.info(f"deleted {done} of {total} branches")

            deleted = coordination.delete_merged_branches(view.transport, found, progress=say)
        if doomed:
            count = len(doomed)

            def said(done: int) -> None:
                out.info(f"archived {done} of {count} branches")

            archived = coordination.archive_branches(view.transport, doomed, progress=said)
    moved = len(found) - deleted + len(doomed) - archived
    out.result(f"deleted {deleted} branch(es) of done jobs, archived {archived} under "
               f"{coordination.ARCHIVE_PREFIX}"
               + (f"; {moved} moved meanwhile and were kept" if moved else ""))


# ---- results ---------------------------------------------------------------------------
def render_results(rows: Sequence[dict[str, Any]], console: Console) -> None:
    """Print result rows as a rich table (wide enough for its columns when not on a
    terminal, so that a file or a pipe gets whole lines)."""
    from distribute.results import cell, columns

    names = columns(rows)
    table = Table(expand=False)
    numeric = {"attempt"}
    for name in names:
        values = [r.get(name) for r in rows if r.get(name) is not None]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool)
                          for v in values):
            numeric.add(name)
    for name in names:
        table.add_column(name, justify="right" if name in numeric else "left",
                         overflow="fold")
    style = {"done": "green", "running": "yellow", "released": "yellow", "failed": "red"}
    for row in rows:
        table.add_row(*(_cell(cell(row.get(n))) for n in names),
                      style=style.get(str(row.get("state")), ""))
    if not console.is_terminal:
        wide = console.options.update(max_width=10_000)
        width = max(80, console.measure(table, options=wide).maximum)
        console = Console(file=console.file, width=width, highlight=False, soft_wrap=True)
    console.print(table)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute results ./remote.git
  distribute results ./remote.git --sort loss --where state=done
  distribute results ./remote.git --sort=-accuracy --where "lr<0.05" --format csv > runs.csv
  distribute results ./remote.git --file train_log.jsonl --format json
  distribute results ./remote.git --plot loss --by lr --out loss-by-lr.png

\b
Each job's FILE (metrics.json by default) is read from its job folder: from the
main branch for done jobs, from the job's own branch (its last update) for
running, released and failed ones. A JSON object; else JSON lines (the last
complete line); a .csv/.tsv file with a header (the last row). Columns: job,
its parameters (the key=value words of its name), state, attempt, worker, then
the metrics. --sort COLUMN sorts numbers as numbers (-COLUMN: descending);
--where takes COLUMN=VALUE, COLUMN<VALUE, COLUMN>VALUE (also !=, <=, >=) and
may be repeated. --plot METRIC writes a PNG of METRIC against --by (default:
the first parameter that varies); it needs matplotlib: pip install
'distribute-jobs[plot]'.""",
)
@_remote_argument()
@click.option("--file", "file_name", default="metrics.json", show_default=True, metavar="NAME",
              help="The file each job wrote in its job folder.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="How to print the rows.")
@click.option("--sort", "sort_key", default=None, metavar="COLUMN",
              help="Sort by COLUMN (-COLUMN: descending; write --sort=-COLUMN).")
@click.option("--where", multiple=True, metavar="EXPR",
              help="Keep rows where EXPR holds: col=value, col<value, col>value. Repeatable.")
@click.option("--plot", "plot_metric", default=None, metavar="METRIC",
              help="Write a PNG of METRIC instead of printing the rows.")
@click.option("--by", default=None, metavar="PARAM", help="The plot's x axis.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Where the plot goes (default: METRIC-by-PARAM.png).")
@_branch_option()
@click.pass_context
def results(
    ctx: click.Context, remote: str, file_name: str, fmt: str, sort_key: str | None,
    where: tuple[str, ...], plot_metric: str | None, by: str | None, out: Path | None,
    branch: str | None,
) -> None:
    """Gather what every done, running and failed job wrote into one table."""
    from distribute.results import (
        check_file,
        collect_from_view,
        filter_rows,
        format_csv,
        format_json,
        plot,
        sort_rows,
    )

    output = _output(ctx)
    if plot_metric is None and (by is not None or out is not None):
        raise click.UsageError("--by and --out go with --plot METRIC")
    check_file(file_name)
    with open_remote(remote, branch) as view:
        rows = collect_from_view(view, file_name)
    rows = filter_rows(rows, where)
    if sort_key:
        rows = sort_rows(rows, sort_key)
    if plot_metric is not None:
        path = plot(rows, plot_metric, by, out)
        output.result(f"wrote {path}")
        return
    if fmt == "csv":
        click.echo(format_csv(rows), nl=False)
    elif fmt == "json":
        click.echo(format_json(rows))
    elif not rows:
        output.result("no job has ended or started yet" if not where else "no row matches")
    else:
        render_results(rows, output.out)


# ---- demo ------------------------------------------------------------------------------
def demo_jobs(n: int) -> list[str]:
    """Job names in the style of a hyperparameter sweep."""
    rates = ["0.1", "0.03", "0.01", "0.003"]
    return [f"mlp lr={rates[i % len(rates)]} seed={i // len(rates)}" for i in range(n)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _done_count(view: RemoteView) -> int:
    main = view.transport.fetch([view.main_ref]).get(view.main_ref)
    if main is None:
        return 0
    return len(view.ledger(main).done)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  distribute demo
  distribute demo --workers 4 --jobs 20""",
)
@click.option("--workers", type=click.IntRange(1, 32), default=3, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 500), default=12, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Fake work per job.")
@click.option("--deadline", type=click.FloatRange(min=1), default=55.0, show_default=True,
              help="Give up after this many seconds.")
@click.pass_context
def demo(ctx: click.Context, workers: int, jobs: int, seconds: float, deadline: float) -> None:
    """Queue jobs on a new local remote and watch worker processes run them.

    The remote (a bare repository) stays in a temporary folder afterwards, so
    that you can look at its history.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from distribute.remote import init_remote

    out = _output(ctx)
    root = Path(tempfile.mkdtemp(prefix="distribute-demo-"))
    remote = root / "remote.git"
    names = demo_jobs(jobs)
    init_remote(str(remote), "main", names)
    (root / "logs").mkdir()
    out.info(f"remote {remote}: {jobs} jobs queued; starting {workers} workers")
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i in range(1, workers + 1):
            log = root / "logs" / f"worker-{i}.txt"
            with open(log, "wb") as sink:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "distribute", "-q", "_demo-worker", str(remote),
                     "--path", str(root / "copies" / f"worker-{i}"), "--name", f"worker-{i}",
                     "--seconds", str(seconds)],
                    stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                    env=_child_env(),
                )
            procs.append((proc, log))
        started = time.monotonic()
        with open_remote(str(remote)) as view, Progress(
            TextColumn("jobs done"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=out.out, disable=out.verbosity < 0,
        ) as progress:
            task = progress.add_task("done", total=jobs)
            while True:
                finished = all(p.poll() is not None for p, _ in procs)
                progress.update(task, completed=_done_count(view))
                if finished:
                    break
                if time.monotonic() - started > deadline:
                    raise DistributeError(
                        f"the demo did not finish within {deadline:.0f} s; worker logs are in "
                        f"{root / 'logs'}"
                    )
                time.sleep(0.2)
            doc = observe_status(view, str(remote))
            from distribute.results import collect_from_view, columns, sort_rows

            rows = collect_from_view(view)
            if "loss" in columns(rows):
                rows = sort_rows(rows, "loss")
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
                if p.poll() is None:
                    p.kill()
                    p.wait()
    broken = [(p, log) for p, log in procs if p.returncode != 0]
    if broken:
        p, log = broken[0]
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise DistributeError(
            f"{len(broken)} demo worker(s) failed (first: exit {p.returncode}: "
            f"{tail[0] if tail else 'no output'}); logs in {root / 'logs'}"
        )
    elapsed = time.monotonic() - started
    if out.verbosity >= 0:
        render_status(doc, out.out)
    where = shlex.quote(str(remote))
    git = f"git --git-dir {where}"
    out.result(
        f"\n{doc['counts']['done']} of {jobs} jobs done by {workers} workers in {elapsed:.1f} s.\n"
        f"The remote is {remote}\n"
        f"  history:       {git} log --oneline --graph main\n"
        f"  lock history:  {git} log --oneline refs/distribute/lock\n"
        f"  a job's files: {git} ls-tree -r --name-only main updates/\n"
        f"  a job's log:   distribute logs {where} {shlex.quote(names[0])}\n"
        f"  status:        distribute status {where}\n"
        f"  results:       distribute results {where} --sort loss\n"
        f"  a plot:        distribute results {where} --plot loss --by lr\n"
        f"Remove it with: rm -rf {shlex.quote(str(root))}"
    )
    if out.verbosity >= 0 and rows:
        out.result("\nResults (each job's metrics.json, best loss first):")
        render_results(rows, out.out)
    if doc["counts"]["done"] != jobs:
        raise DistributeError(f"only {doc['counts']['done']} of {jobs} jobs were done")


@cli.command("_demo-worker", hidden=True, context_settings=_CONTEXT)
@click.argument("remote")
@click.option("--path", required=True)
@click.option("--name", required=True)
@click.option("--seconds", type=float, default=0.2)
def demo_worker(remote: str, path: str, name: str, seconds: float) -> None:
    """One demo worker: the seed README's loop with a fake expensive function."""
    from distribute.dist import worker_from_url
    from distribute.runner import seed_loop

    worker = worker_from_url(remote, path=path, name=name, lease_seconds=10, poll_seconds=0.05)
    try:
        seed_loop(worker, seconds)
    finally:
        worker.close()


# ---- sim ------------------------------------------------------------------------------
@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    epilog="""\b
Examples:
  distribute sim --help
  distribute sim --workers 6 --jobs 60 --lease 1.5 --kill-rate 0.3 --seed 1""",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def sim(ctx: click.Context, args: tuple[str, ...]) -> int:
    """Run the simulator (sim/): many workers, injected faults, a history check.

    Every argument is passed on to the simulator; `distribute sim --help` shows its options.
    """
    import importlib

    sim_main: Callable[[list[str]], Any] | None = None
    # installed, the simulator ships as distribute_sim; in a clone it is the folder sim/
    for package in ("distribute_sim", "sim"):
        try:
            sim_main = importlib.import_module(f"{package}.__main__").main
            break
        except ImportError as exc:
            if exc.name not in (package, f"{package}.__main__"):
                raise
    if sim_main is None:
        raise DistributeError(
            "the simulator is not available: neither distribute_sim (installed with "
            "Distribute) nor sim/ (in a clone of the repository) can be imported"
        )
    if args[:1] in (("-h",), ("--help",)):
        click.echo(ctx.get_help())
        click.echo("")
    try:
        return int(sim_main(list(args)) or 0)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


# ---- entry point ----------------------------------------------------------------------------
def _error(message: str) -> None:
    text = " ".join(scrub_url(message).split("\n"))
    click.echo(f"error: {text}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    global _VERBOSITY
    _VERBOSITY = 0
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="distribute", standalone_mode=False)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _error(exc.format_message() + hint)
        return exc.exit_code
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except DistributeError as exc:
        if _VERBOSITY >= 1:
            traceback.print_exc()
        _error(str(exc))
        return 1
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints one line
        if _VERBOSITY >= 1:
            traceback.print_exc()
        _error(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)")
        return 1
    return rv if isinstance(rv, int) else 0


__all__ = [
    "STATUS_SCHEMA",
    "FencedEdit",
    "break_lock",
    "cli",
    "default_copy_path",
    "find_log",
    "main",
    "observe_status",
    "queue_edit",
    "render_status",
    "requeue_edit",
    "resolve_remote",
    "status_document",
    "validate_jobs",
]
