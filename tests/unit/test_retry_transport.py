"""The one retry loop for transport errors (workers and the Optuna journal use it)."""

from __future__ import annotations

import random

import pytest

from distribute.backoff import Backoff, retry_transport
from distribute.core.errors import OutcomeUnknown, TransportError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def run(step, clock: Clock, seconds: float = 10.0):
    return retry_transport(step, seconds=seconds, backoff=Backoff(0.5, 2.0, random.Random(1)),
                           clock=lambda: clock.now, sleep=clock.sleep, failed="reading x")


def test_transport_errors_are_retried_until_the_step_succeeds():
    clock = Clock()
    answers = iter([TransportError("down"), TransportError("down"), "ok"])

    def step():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert run(step, clock) == "ok"
    assert len(clock.slept) == 2 and all(0 < s <= 2.0 for s in clock.slept)


def test_it_gives_up_after_its_seconds_naming_what_failed_without_secrets():
    clock = Clock()

    def step():
        raise TransportError("cannot reach https://me:hunter2@example.com/r.git")

    with pytest.raises(TransportError, match=r"^reading x for 10 s: ") as caught:
        run(step, clock)
    assert "hunter2" not in str(caught.value)
    assert 10.0 <= clock.now <= 12.0  # the last wait is at most one backoff cap past


def test_an_unknown_outcome_is_never_retried():
    clock = Clock()
    calls = []

    def step():
        calls.append(1)
        raise OutcomeUnknown("the answer was lost")

    with pytest.raises(OutcomeUnknown):
        run(step, clock)
    assert calls == [1] and clock.slept == []


def test_failures_count_from_the_last_answer_of_the_remote():
    """A step that kept losing races (the remote answered) for longer than the retry
    window and then met one transient error is retried: the remote was reachable."""
    clock = Clock()
    answers = [0]
    calls = []

    def step():
        calls.append(clock.now)
        if len(calls) == 1:
            clock.now += 25.0  # 25 s of refused pushes: answers from the remote
            answers[0] += 40
            raise TransportError("one transient error")
        if len(calls) == 2:
            clock.now += 25.0
            answers[0] += 40
            raise TransportError("another, much later")
        return "landed"

    result = retry_transport(step, seconds=10.0, backoff=Backoff(0.5, 2.0, random.Random(1)),
                             clock=lambda: clock.now, sleep=clock.sleep, failed="finishing",
                             answered=lambda: answers[0])
    assert result == "landed" and len(calls) == 3


def test_without_answers_the_window_still_closes():
    clock = Clock()

    def step():
        clock.now += 4.0  # a slow failure, with no answer from the remote
        raise TransportError("connection timed out")

    with pytest.raises(TransportError, match="finishing for 10 s"):
        retry_transport(step, seconds=10.0, backoff=Backoff(0.5, 2.0, random.Random(1)),
                        clock=lambda: clock.now, sleep=clock.sleep, failed="finishing",
                        answered=lambda: 0)


def test_answers_to_another_thread_do_not_keep_a_failing_step_alive():
    """Found in review: a step that failed the same way every time (an object missing
    from the local copy) was retried for ever, because the worker's heartbeat, answered
    in its own thread, kept restarting the window.  Only this thread's answers count."""
    import threading

    from distribute.coordination import Coordinator, prepare_remote
    from distribute.transport.memory import MemoryRemote

    remote = MemoryRemote()
    prepare_remote(remote.transport("init"), "main", {"jobs.txt": b"j\n"})
    clock = Clock()
    c = Coordinator(remote.transport("w"), worker="w", session="s", branch="main", lease=30,
                    margin=5, max_attempts=2, clock=lambda: clock.now)
    tries = []

    def step():
        tries.append(1)
        assert len(tries) < 200, "retried for ever"
        beat = threading.Thread(target=c.renew_beat)  # the heartbeat, answered
        beat.start()
        beat.join()
        raise TransportError("object 3b6b is not in the local repository")

    before = c.stats.answers
    with pytest.raises(TransportError, match="for 10 s"):
        retry_transport(step, seconds=10.0, backoff=Backoff(0.5, 2.0, random.Random(1)),
                        clock=lambda: clock.now, sleep=clock.sleep, failed="pushing",
                        answered=c.answers_here)
    assert c.stats.answers > before and c.answers_here() == 0
