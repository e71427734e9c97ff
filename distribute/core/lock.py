"""The remote lock and the workers' liveness records, and every decision about them.

Theory of operation
-------------------
The lock lives in its own ref, ``refs/distribute/lock``.  Each acquire,
renewal and release is a commit whose message carries a :class:`LockState`;
the ref's history is an audit log of every holding.  Each acquire (or
takeover) increments the fencing ``token``; the token is copied into the
ledger line of every job claimed under it.

A worker's liveness lives in ``refs/distribute/workers/<name>``, written only
by that worker (a :class:`Beat`), except for one move: a worker that takes
over a dead worker's job writes a *revoked* beat there, by compare-and-swap
from the exact stale value it observed.  The dead worker's next renewal then
fails, and it learns it lost its jobs.

Expiry is never judged from timestamps written by another machine: see
:mod:`distribute.core.lease`.  :func:`decide_acquire` takes the observation's
verdict as an argument.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from distribute.core.errors import RemoteStateError
from distribute.core.names import LOCK_REF


@dataclass(frozen=True, slots=True)
class LockState:
    """What one commit of the lock ref says.

    Attributes:
        token: fencing token of the latest holding (0 before the first).
        holder: the holding worker, ``""`` when free.
        session: the holder's process session (tells a restarted worker
            apart from its previous life).
        renewal: counts renewals within one holding.
        nonce: makes every acquire's commit unique, so that two acquires from
            one observed value never write the same commit (a push of a commit
            already on the ref would succeed as "up to date").
        main: on a release, the main branch commit the holder left behind.
            An observer whose fetch shows a free lock but a main branch
            that does not contain this commit has a torn view (the refs were
            read one at a time while a claim landed) and must look again.
        last: on a release (or an unlocked claim), the worker that held the
            lock last, so that the lock's history tells who claimed under each
            token.
    """

    token: int = 0
    holder: str = ""
    session: str = ""
    renewal: int = 0
    nonce: str = ""
    main: str = ""
    last: str = ""

    @property
    def free(self) -> bool:
        return self.holder == ""

    def acquired_by(self, worker: str, session: str, nonce: str = "") -> LockState:
        return LockState(token=self.token + 1, holder=worker, session=session, nonce=nonce)

    def renewed(self) -> LockState:
        return replace(self, renewal=self.renewal + 1)

    def released(self, main: str = "") -> LockState:
        return LockState(token=self.token, main=main, last=self.holder)

    def claimed_unlocked(self, worker: str, main: str, count: int = 1) -> LockState:
        """The free lock after ``worker`` claimed a job with no separate acquire: the
        next token, held for no time at all; ``count`` tokens when the same push claimed
        jobs for other workers too (a hand-off), each under a token of its own."""
        return LockState(token=self.token + count, main=main, last=worker)


@dataclass(frozen=True, slots=True)
class Parked:
    """A finish recorded on its worker's own liveness record instead of the main branch
    (the main branch moved under it): the job ``job``, held under ``token`` in attempt
    ``attempt``, ended with its branch at ``tip``.  Whoever moves the main branch next
    folds it in (see ``Coordinator.folds``); until then the record's commit has ``tip``
    as a parent, so a fetch of the liveness refs brings the results along."""

    job: str
    token: int
    attempt: int
    tip: str


@dataclass(frozen=True, slots=True)
class Beat:
    """What one commit of a worker's liveness ref says.

    Attributes:
        worker: whose ref this is.
        session: the process session that wrote it.
        seq: increases with every renewal by that session.
        jobs: the jobs the worker holds, for people reading the remote.
        revoked_by: set on a revoked beat: the worker that took over.
        token: for a revoked beat, the token of the takeover.
        gone: written by the worker itself when it stops asking for jobs (it
            returned ``None``, was closed, or its process exits): nobody waits
            for it in turn, and no job it still holds waits for its lease.
        finishing: the job whose finish has lost several races in a row: other
            workers claim nothing until it is finished (or its lease expires),
            so that the finish gets its turn (see ``Coordinator.finish``).
        lease: the worker's lease period in seconds (0: not said, as in records of
            older versions): a person reading the remote can tell a worker silent
            for longer than that from one that is merely slow.
        parked: finishes this worker recorded here because the main branch moved
            under them (:class:`Parked`); kept in every record it writes until the
            main branch lists them.
        takes_hand_offs: other workers' claims may claim a job for this one (a
            hand-off), which it takes up at its next look; ``False`` for a worker
            made with ``hand_off=False`` (written only then).
    """

    worker: str
    session: str
    seq: int = 0
    jobs: tuple[str, ...] = ()
    revoked_by: str = ""
    token: int = 0
    gone: bool = False
    finishing: str = ""
    lease: float = 0.0
    parked: tuple[Parked, ...] = ()
    takes_hand_offs: bool = True

    @property
    def revoked(self) -> bool:
        return self.revoked_by != ""

    def next(self, jobs: tuple[str, ...]) -> Beat:
        finishing = self.finishing if self.finishing in jobs else ""
        return Beat(worker=self.worker, session=self.session, seq=self.seq + 1, jobs=jobs,
                    finishing=finishing, lease=self.lease, parked=self.parked,
                    takes_hand_offs=self.takes_hand_offs)

    def revoke(self, by: str, token: int) -> Beat:
        return replace(self, revoked_by=by, token=token, seq=self.seq + 1, gone=False,
                       finishing="")

    @staticmethod
    def revoking(record: Beat | None, worker: str, by: str, token: int,
                 taken: tuple[str, ...] = ()) -> Beat:
        """The record that revokes ``worker``'s liveness (its current ``record``, or
        ``None`` when it has none or it cannot be read): written by whoever takes a job
        from that worker, a worker's takeover or an admin edit.  It names the jobs
        ``taken`` from it besides those the record named: a worker takes up a job handed
        to it without writing its record (unless a renewal is due), and a restarted
        life of that worker, which adopted the job to complete its finish, recognises
        the revocation as its own by the job's name."""
        revoked = (record or Beat(worker=worker, session="")).revoke(by=by, token=token)
        extra = tuple(job for job in taken if job not in revoked.jobs)
        return replace(revoked, jobs=revoked.jobs + extra) if extra else revoked

    def left(self) -> Beat:
        """The worker's last beat: it holds nothing and asks for nothing any more."""
        return replace(self.next(()), gone=True)


def _encode(kind: str, summary: str, payload: dict[str, Any]) -> str:
    body = json.dumps({"kind": kind, "v": 1, **payload}, sort_keys=True, ensure_ascii=True)
    return f"{summary}\n\n{body}\n"


def _decode(message: str, kind: str) -> dict[str, Any]:
    body = message.strip().rsplit("\n\n", 1)[-1]
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RemoteStateError(f"cannot read the {kind} record: {message[:200]!r}") from exc
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise RemoteStateError(f"not a {kind} record: {message[:200]!r}")
    data.pop("kind")
    data.pop("v", None)
    return data


def lock_message(state: LockState) -> str:
    if state.free:
        summary = f"distribute lock: free (last token {state.token})"
    else:
        summary = f"distribute lock: held by {state.holder} (token {state.token})"
    return _encode("lock", summary, asdict(state))


#: How to repair a lock ref that holds no lock record.  ``distribute unlock`` cannot: it
#: moves the lock on from the record it reads.  ``distribute init`` writes a free lock
#: only where there is none, so the ref goes first.
LOCK_REPAIR = (
    "no worker can take the lock until it is repaired: run `distribute unlock REMOTE`, "
    "which replaces it with a free lock whose token is above every token the remote "
    "records, and keeps everything else"
)
_MISSING: Any = object()


def bad_lock(why: str) -> RemoteStateError:
    """The error for a lock ref that does not hold a lock record, with the repair."""
    return RemoteStateError(
        f"{LOCK_REF} on the remote does not hold a lock record ({why}); {LOCK_REPAIR}",
        ref=LOCK_REF,
    )


def _int(data: dict[str, Any], key: str, default: Any = _MISSING) -> int:
    value = data.get(key, default)
    if type(value) is not int or not 0 <= value < 2**63:
        raise RemoteStateError(_wrong(key, value, "a whole number >= 0"))
    return value


def _str(data: dict[str, Any], key: str, default: Any = _MISSING) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RemoteStateError(_wrong(key, value, "text"))
    return value


def _wrong(key: str, value: Any, kind: str) -> str:
    if value is _MISSING:
        return f"it has no {key!r}"
    return f"its {key!r} is {value!r:.80}, not {kind}"


def parse_lock_message(message: str) -> LockState:
    """The lock state a commit message of the lock ref records.

    Raises:
        RemoteStateError: the message is no lock record, or a field of it has the wrong
            type (:func:`bad_lock`: naming the ref and the repair).
    """
    try:
        data = _decode(message, "lock")
        return LockState(
            token=_int(data, "token"),
            holder=_str(data, "holder"),
            session=_str(data, "session"),
            renewal=_int(data, "renewal", 0),
            nonce=_str(data, "nonce", ""),
            main=_str(data, "main", ""),
            last=_str(data, "last", ""),
        )
    except RemoteStateError as exc:
        raise bad_lock(str(exc)) from None


def beat_message(beat: Beat) -> str:
    if beat.revoked:
        summary = f"distribute worker {beat.worker}: revoked by {beat.revoked_by}"
    elif beat.gone:
        summary = f"distribute worker {beat.worker}: gone (seq {beat.seq})"
    else:
        summary = f"distribute worker {beat.worker}: alive (seq {beat.seq})"
    payload = asdict(beat)
    payload["jobs"] = list(beat.jobs)
    if beat.parked:
        payload["parked"] = [[p.job, p.token, p.attempt, p.tip] for p in beat.parked]
    else:
        payload.pop("parked")  # records without parked finishes read as before
    if beat.takes_hand_offs:
        payload.pop("takes_hand_offs")  # so are those of workers that take hand-offs
    return _encode("worker", summary, payload)


def _parked(data: dict[str, Any]) -> tuple[Parked, ...]:
    raw = data.get("parked", [])
    wrong = RemoteStateError(
        f"not a worker record: {_wrong('parked', raw, 'a list of [job, token, attempt, tip]')}"
    )
    if not isinstance(raw, list):
        raise wrong
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 4):
            raise wrong
        job, token, attempt, tip = item
        if not (isinstance(job, str) and isinstance(tip, str) and _is_oid(tip)
                and type(token) is int and type(attempt) is int
                and 0 <= token < 2**63 and 0 < attempt < 2**63):
            raise wrong
        out.append(Parked(job, token, attempt, tip))
    return tuple(out)


def _is_oid(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def parse_beat_message(message: str) -> Beat:
    """The liveness record a commit message of a worker's ref holds.

    Raises:
        RemoteStateError: the message is no liveness record, or a field of it has the
            wrong type.
    """
    data = _decode(message, "worker")
    jobs = data.get("jobs", [])
    if not isinstance(jobs, list) or not all(isinstance(j, str) for j in jobs):
        raise RemoteStateError(f"not a worker record: {_wrong('jobs', jobs, 'a list of names')}")
    gone = data.get("gone", False)
    if not isinstance(gone, bool):
        raise RemoteStateError(f"not a worker record: {_wrong('gone', gone, 'true or false')}")
    lease = data.get("lease", 0.0)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease >= 0:
        raise RemoteStateError(f"not a worker record: {_wrong('lease', lease, 'seconds')}")
    takes = data.get("takes_hand_offs", True)
    if not isinstance(takes, bool):
        raise RemoteStateError(
            f"not a worker record: {_wrong('takes_hand_offs', takes, 'true or false')}")
    try:
        return Beat(
            worker=_str(data, "worker"),
            session=_str(data, "session"),
            seq=_int(data, "seq", 0),
            jobs=tuple(jobs),
            revoked_by=_str(data, "revoked_by", ""),
            token=_int(data, "token", 0),
            gone=gone,
            finishing=_str(data, "finishing", ""),
            lease=float(lease),
            parked=_parked(data),
            takes_hand_offs=takes,
        )
    except RemoteStateError as exc:
        raise RemoteStateError(f"not a worker record: {exc}") from None


@dataclass(frozen=True, slots=True)
class Acquire:
    """Decision: CAS the lock ref from its observed value to ``new``."""

    new: LockState
    takeover: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Decision: someone else validly holds the lock; poll again later."""

    holder: str


AcquireDecision = Acquire | Wait


def decide_acquire(
    observed: LockState, me: str, session: str, holder_expired: bool, nonce: str = ""
) -> AcquireDecision:
    """Decide how to get the lock from what was observed.

    Args:
        observed: the lock state read from the remote.
        me: this worker's name; session: this process's session.
        holder_expired: the observer has seen the lock ref unchanged for the
            lease period plus the margin on its own monotonic clock.

    Returns:
        :class:`Acquire` (a fresh acquire, or a takeover of an expired or
        stale holding -- a restarted worker takes its own old holding at
        once), or :class:`Wait`.
    """
    new = observed.acquired_by(me, session, nonce)
    if observed.free:
        return Acquire(new)
    if observed.holder == me and observed.session != session:
        return Acquire(new, takeover=True)
    if holder_expired:
        return Acquire(new, takeover=True)
    return Wait(observed.holder)


LeaseVerdict = Literal["valid", "renew", "lost"]


def holder_verdict(sent_at: float, now: float, lease: float) -> LeaseVerdict:
    """How the holder itself sees its lease, on its own monotonic clock.

    ``sent_at`` is when the latest successful renewal (or acquire) was *sent*,
    which is no later than when the remote applied it, so the holder's view
    errs on the safe side.  It renews after a third of the lease and stops
    acting for the lease once a full period has passed without a renewal.
    """
    age = now - sent_at
    if age >= lease:
        return "lost"
    if age >= lease / 3:
        return "renew"
    return "valid"
