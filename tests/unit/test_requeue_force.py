"""``requeue --force`` takes only the holdings the operator judged gone.

Job ``j`` is held by a dead process of worker ``w`` (token 5), and the operator runs
``requeue --force j``.  While the command waits for the lock, the restarted ``w`` (which
holds the lock, token 6) retries ``j`` under token 6 and releases the lock.  The edit used
to take ``j`` from that live holding too, and another worker would then run it beside
``w``.  (Found by an admin-operations extension of the protocol state machine.)
"""

from __future__ import annotations

import pytest

from distribute.core.errors import UsageError
from distribute.core.ledger import DONE, FAILED, RUNNING, Ledger
from distribute.core.lock import LockState, lock_message
from distribute.core.names import LOCK_REF
from distribute.fenced import FencedEdit, requeue_edit
from distribute.remote import RemoteView
from distribute.sources import JOBS_FILE
from distribute.transport.memory import MemoryRemote

MAIN_REF = "refs/heads/main"


class Copy:
    """Stands in for the scratch clone a RemoteView reads through."""

    def __init__(self, transport):
        self._transport = transport

    def transport(self):
        return self._transport

    def default_branch(self):
        return "main"


def scene(retry_while_waiting: bool):
    remote = MemoryRemote()
    setup = remote.transport("setup")
    empty = Ledger.from_files({RUNNING: b"", DONE: b"", FAILED: b""})
    dead = empty.claim("j", "w", 5)
    main = setup.write_commit(parents=[], message="j runs under token 5",
                              changes={**dead.to_files(), JOBS_FILE: b""})
    held = LockState(token=5).acquired_by("w", "w#new", "n")
    lock = setup.write_commit(parents=[], message=lock_message(held))
    remote.set_ref(MAIN_REF, main)
    remote.set_ref(LOCK_REF, lock)

    def sleep(seconds: float) -> None:
        if remote.refs[LOCK_REF] != lock:
            return
        if retry_while_waiting:  # the restarted worker takes its job back meanwhile
            retried = dead.retry("j", "w", 6, interrupted=True)
            new = setup.write_commit(parents=[main], base=main, message="w retries j",
                                     changes=retried.changed_files(dead))
            free = setup.write_commit(parents=[lock], message=lock_message(held.released(new)))
            remote.set_ref(MAIN_REF, new)
        else:
            free = setup.write_commit(parents=[lock], message=lock_message(held.released(main)))
        remote.set_ref(LOCK_REF, free)

    now = [0.0]

    def clock() -> float:
        now[0] += 0.5
        return now[0]

    view = RemoteView(Copy(remote.transport("admin")), "main")
    return view, sleep, clock


def test_a_holding_made_while_the_command_waited_is_not_taken():
    view, sleep, clock = scene(retry_while_waiting=True)
    seen = {"j": ("w", 5)}  # what the operator judged gone
    with pytest.raises(UsageError, match=r"held by worker 'w' under token 6 now"):
        FencedEdit(view, "cli", 60.0, sleep=sleep, clock=clock).apply(
            requeue_edit(["j"], True, {}, seen=seen))
    after = view.ledger(view.main()).running_entry("j")
    assert after is not None and (after.worker, after.token) == ("w", 6)


def test_the_holding_the_operator_saw_is_taken():
    view, sleep, clock = scene(retry_while_waiting=False)
    result: dict[str, list[str]] = {}
    FencedEdit(view, "cli", 60.0, sleep=sleep, clock=clock).apply(
        requeue_edit(["j"], True, result, seen={"j": ("w", 5)}))
    assert result["requeued"] == ["j"]
    assert view.ledger(view.main()).running_entry("j") is None
