"""A worker restarted mid-finish completes its earlier life's finish while the others move.

``ProtocolMachine.play_restart`` (rule ``restart_mid_step``) lets a restarted process act
before any other worker moves, and picks its job up again by a claim of its own.  A real
restarted worker does otherwise: the copy records that a finish had begun, and the new
process takes up that very holding (``Coordinator.adopt``: same job, token and attempt,
the job branch's tip as the remote holds it) and completes the finish, while the other
workers go on and its earlier life's liveness record stays silent.  A worker that saw
that record silent for a lease may take the job over in the middle of that finish; its
claim revokes the record value it saw, which names the dead session.  Commit 177fd30
fixed ``Coordinator._own_record``, which counted such a revocation only when it named
the worker's own session: the restarted process's park was written over it, the job
ran twice, and the park was never folded in.  The base machine could not reach this.

:class:`RestartRaceMachine` adds one rule, :meth:`~RestartRaceMachine.restart_while_others_move`:
a job holder is killed inside its finish (just before or just after its push to the
main branch), its new process adopts the holding and finishes it, and between the new
process's steps the others take their natural steps, with time passing, for a step, a
round, or until one of them has taken the job over (after a jump of time past the lease
and margin, or at the pace of their steps).  The new process finishes the way the worker
does: with no look of its own yet, its finish pushes the main branch and parks when that
race is lost (the others move while that push is stalled); after a look that shows other
workers about, it parks at once after one fetch.  Its heartbeat renews its record at its
own steps, or lags behind (a slow host).

The tests run the machine on the real coordinator (no violation, and the job taken over
between the new process's finish fetch and its park at least :data:`MIN_HITS` times; a
longer run is marked ``slow``) and on a coordinator with 177fd30's change undone, which
it must catch inside the new scenario within :data:`WITHIN` examples
(:func:`broken.hunt`: the violation must come after the variant deviated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from broken import Broken, hunt
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test
from protocol_machine import (
    BUDGET,
    EVENTS,
    STEP_SECONDS,
    Claim,
    Fault,
    ProtocolMachine,
    WorkerState,
    machine_settings,
    require,
)

from distribute.coordination import JobHolding, _Lost
from distribute.core.errors import LeaseLost, MergeConflict
from distribute.core.lock import Beat, parse_beat_message
from distribute.core.names import worker_ref
from distribute.transport.base import Oid

#: What the other workers do at a gap between the restarted process's steps: nothing
#: (``none``); one step (``step``); as many steps as there are other workers (``round``);
#: steps until one of them has taken the job over, bounded (``silence``); or the same after
#: real time jumps past the lease and its margin (``jump``).  The first gap comes before
#: the finish's fetch, the second between that fetch and the push or park; an entry listed
#: twice is drawn twice as often: a takeover before the fetch is refused plainly, while one
#: after it is the race the fix is about.
BEFORE_FETCH = ("none", "step", "round", "round", "silence")
AFTER_FETCH = ("none", "step", "round", "silence", "silence", "jump", "jump")
#: The jump of real time, in leases (one of the machine's ``DELAYS``: just past lease + margin).
JUMP = 1.3
#: The event counted when the job was taken over between the restarted process's finish
#: fetch (which found the job still its own) and its park: the state the fix is about.
TAKEN_BEFORE_PARK = "restart-race-taken-before-park"


@dataclass
class Gap(Fault):
    """A stall of the restarted process's finish push, during which the others move as
    ``gap`` says (:meth:`RestartRaceMachine.others_move`), watching ``job``."""

    gap: str = "none"
    job: JobHolding | None = None


class RestartRaceMachine(ProtocolMachine):
    """The protocol machine plus a restart mid-finish that the others race (see the module
    docstring).  A subclass only: the base machine's class body, which seeds its
    derandomized runs, stays as it is."""

    budgets: dict[str, int] = {**BUDGET, "restart-race": 3}

    def __init__(self) -> None:
        super().__init__()
        #: (session, job, token) of every holding a restarted process adopted
        self.adopted: set[tuple[str, str, int]] = set()

    def restart_race_ready(self) -> list[str]:
        """Job holders that can start the story: awake, the job not known lost, someone
        awake to race them, and no fault waiting on their next push."""
        return [name for name in self.job_holders_ready() if self.by_name[name].fault is None]

    @precondition(lambda self: self.budget["restart-race"] > 0 and self.restart_race_ready())
    @rule(data=st.data(), kill=st.sampled_from(("kill-before", "kill-before", "kill-after")),
          look=st.booleans(), beats=st.booleans(),
          gaps=st.tuples(st.sampled_from(BEFORE_FETCH), st.sampled_from(AFTER_FETCH)))
    def restart_while_others_move(self, data: Any, kill: str, look: bool, beats: bool,
                                  gaps: tuple[str, str]) -> None:
        """A job holder is killed inside its finish; its new process adopts the holding and
        finishes it while the other workers move between its steps."""
        self.budget["restart-race"] -= 1
        self.play_restart_race(self.draw_worker(data, self.restart_race_ready()), kill, look,
                               beats, gaps)

    def play_restart_race(self, ws: WorkerState, kill: str, look: bool, beats: bool,
                          gaps: tuple[str, str]) -> None:
        """``ws`` is killed inside its finish's push to the main branch (``kill-before``: the
        push never leaves; ``kill-after``: it landed) and restarts (same name, new session).
        The new process adopts the holding, then, with the others moving at each gap:
        looks first if ``look``, with its heartbeat at each of its steps if ``beats``;
        ``gaps[0]``; the finish's fetch; ``gaps[1]``; the push or the park."""
        held = ws.coord.job
        assert held is not None
        with self.scenario("restart-race-" + kill):
            self.depth += 1  # the others' own stalls wait: they would step this worker
            try:
                if not self.kill_mid_finish(ws, kill):
                    return
                job = self.adopt(ws, held)
                if job is not None:
                    self.finish_adopted(ws, job, look, beats, gaps)
            finally:
                self.depth -= 1

    def kill_mid_finish(self, ws: WorkerState, kill: str) -> bool:
        """Kill ``ws`` inside its finish's push to the main branch; whether it was killed
        (a finish refused before any push kills nothing)."""
        session = ws.session
        ws.fault = Fault(kill, aim="main")
        self.perform(ws, "finish")
        self.recheck()
        if ws.session == session:
            ws.fault = None
            self.count("restart-race-missed")
            return False
        return True

    def adopt(self, ws: WorkerState, held: JobHolding) -> JobHolding | None:
        """The new process takes up the holding its earlier life was finishing, with the
        job branch's tip as the remote holds it (as ``Worker._recover_own_job`` does); the
        model's claim moves to the new session, which now acts for it."""
        tip = self.world.refs().get(held.branch_ref)
        if tip is None:
            self.count("restart-race-no-branch")
            return None
        job = JobHolding(held.job, held.token, held.attempt, held.branch, tip)
        ws.coord.adopt(job)
        claim = self.model.claims.get((job.job, job.token))
        if claim is not None:
            self.model.claims[(job.job, job.token)] = Claim(claim.worker, ws.session,
                                                            claim.commit)
        self.adopted.add((ws.session, job.job, job.token))
        self.count("restart-race-adopted")
        self.say(lambda: f"{ws.name} ({ws.session}) adopts {job.job!r} (token {job.token}) "
                         f"at {tip[:10]}; the ledger says {self.model.state(job.job)}")
        self.recheck()
        return job

    def finish_adopted(self, ws: WorkerState, job: JobHolding, look: bool, beats: bool,
                       gaps: tuple[str, str]) -> None:
        """Complete the adopted finish as ``Coordinator.finish`` does, the others moving at
        ``gaps``: parked at once after one fetch when the new process's look showed other
        workers about, else pushed to the main branch (stalled while the others move) and
        parked if that race is lost.  A finish that ends neither way (a lost race of its
        conflict record, a park whose record kept moving) stays with the worker, whose
        next natural steps finish it."""
        c = ws.coord
        park_first = False
        if look:
            self.beat_if_due(ws, beats)
            self.perform(ws, "observe")
            park_first = c.others_about()
            # the worker looks again before it next asks for the lock (Worker._look): an
            # acquire and a plan on this look would predate the finish, and its own park
            ws.fresh = False
            self.recheck()
        self.others_move(ws, job, gaps[0])
        self.beat_if_due(ws, beats)
        if c.job is not job:
            return
        outcome: Oid | _Lost | str | None
        try:
            if park_first:
                tried = c._finish_try(park_instead=True)
                if tried is _Lost.READY:
                    self.recheck()
                    self.others_move(ws, job, gaps[1])
                    self.beat_if_due(ws, beats)
                    self.note_taken(ws, job)
                    outcome = "parked" if c._park() else None
                else:
                    outcome = tried
            else:
                ws.fault = Gap("pause", aim="main", gap=gaps[1], job=job)
                tried = c._finish_try()
                if tried is _Lost.MAIN:
                    self.count("finish-lost")
                    self.note_taken(ws, job)
                    outcome = "parked" if c._park() else None
                else:
                    outcome = tried
        except LeaseLost:
            require(not self.model.runs(job.job, ws.name, job.token),
                    f"{ws.name!r}: the adopted finish of {job.job!r} was refused though it "
                    "still holds it")
            self.count("restart-race-refused")
            return
        except MergeConflict:
            e = self.model.failed.get(job.job)
            require(e is not None and (e.worker, e.token) == (ws.name, job.token),
                    f"{ws.name!r}: merge conflict, but {job.job!r} is not failed under it")
            self.count("finish-conflict")
            return
        finally:
            if isinstance(ws.fault, Gap):
                ws.fault = None  # its push never came
        self.recheck()
        if outcome is None or outcome in (_Lost.CONFLICT, _Lost.MAIN, _Lost.READY):
            self.count("restart-race-unfinished")
            return
        parked = self.model.parked.get((job.job, job.token))
        e = self.model.done.get(job.job)
        require((e is not None and e.token == job.token) or (
            outcome in ("parked", _Lost.PARKED) and parked is not None and parked[0] == ws.name),
                f"{ws.name!r} believes its adopted finish of {job.job!r} landed ({outcome}); "
                f"the ledger says {self.model.state(job.job)}")
        require(c.job is None, f"{ws.name!r} still holds {job.job!r} after finishing it")
        self.model.believed[(job.job, job.token)] = ws.name
        self.count("restart-race-finished")

    def note_taken(self, ws: WorkerState, job: JobHolding) -> None:
        """Count the state the fix is about: the finish's fetch found the job still the
        adopted holding's, and it has been taken over since, before the park."""
        if not self.model.runs(job.job, ws.name, job.token) and (
                (job.job, job.token) in self.model.taken_over):
            self.count(TAKEN_BEFORE_PARK)
            self.say(lambda: f"{job.job!r} was taken over before the park of {ws.name!r}: "
                             f"{self.model.state(job.job)}")

    def beat_if_due(self, ws: WorkerState, beats: bool) -> None:
        """The restarted process's heartbeat renews its record when due (``beats``), or lags."""
        if beats and self.renewal_due(ws):
            self.perform(ws, "heartbeat")
            self.recheck()

    def others_move(self, ws: WorkerState, job: JobHolding, gap: str) -> None:
        """The other workers' threads take their turns (the machine's scheduler, half a
        second a step) while ``ws``'s main thread is busy in its finish and its heartbeat
        lags: one step, as many as there are other workers, or until ``job`` is no longer
        ``ws``'s (bounded as in ``play_stale_wake``), after a jump of ``JUMP`` leases for
        ``"jump"``."""
        if gap == "none":
            return
        if gap == "jump" and self.budget["time"] > 0:
            self.advance_time(JUMP)
        until_taken = gap in ("silence", "jump")
        limit = int(4 * self.lease / STEP_SECONDS) + 10 * len(self.workers_list)
        steps = {"step": 1, "round": len(self.workers_list) - 1}.get(gap, limit)
        turns = ws.turns
        ws.turns = {thread: float("inf") for thread in turns}  # never the earliest turn
        try:
            for _ in range(steps):
                if until_taken and not self.model.runs(job.job, ws.name, job.token):
                    break
                if self.with_company(ws):
                    self.schedule(None)
                else:
                    self.now += STEP_SECONDS  # no one else is up: time passes all the same
                self.recheck()
        finally:
            others = [o.turns["main"] for o in self.workers_list if o is not ws and o.alive]
            floor = min(others, default=turns["main"])
            ws.turns = {thread: max(turn, floor) for thread, turn in turns.items()}
        if until_taken and (job.job, job.token) not in self.model.landed:
            taken = (job.job, job.token) in self.model.taken_over
            self.count("restart-race-gap-taken" if taken else "restart-race-gap-kept")

    def interlude(self, ws: WorkerState, fault: Fault, ref: str | None = None) -> None:
        """The stall of a :class:`Gap` fault is the others' moves; other faults as before."""
        if isinstance(fault, Gap):
            assert fault.job is not None
            self.others_move(ws, fault.job, fault.gap)
            return
        super().interlude(ws, fault, ref)

    @invariant()
    def beliefs_agree_with_the_remote(self) -> None:
        """As the base machine's (same name: it replaces it), except for a restarted process
        that adopted a finish its earlier life had landed (killed just after the push): it
        believes it runs the job until its finish reads the ledger, as the real worker
        does.  Only that holding is left out, and only while the model lists the job
        done, or failed, under its token."""
        hidden = [(ws, ws.coord.job) for ws in self.live() if self.finished_before(ws)]
        for ws, _ in hidden:
            ws.coord.job = None
        try:
            super().beliefs_agree_with_the_remote()
        finally:
            for ws, job in hidden:
                ws.coord.job = job

    def audit_beat(self, ws: WorkerState, who: str, ref: str, new: Oid) -> None:
        """As the base machine's, except for the same holding as above: its heartbeat may
        renew a live record naming that job before its finish has read the ledger.  Such a
        record is audited as any live one (its ref, its parked finishes, its worker and
        session) but for the job it names."""
        j = ws.coord.job
        beat = parse_beat_message(self.world.message(new))
        if j is None or beat.revoked or beat.jobs != (j.job,) or not self.finished_before(ws):
            super().audit_beat(ws, who, ref, new)
            return
        require(ref == worker_ref(beat.worker), f"{who} wrote {beat} to {ref}")
        self.audit_parked(ws, who, ref, beat)
        require((beat.worker, beat.session) == (ws.name, ws.session),
                f"{who} wrote a live beat for {beat.worker!r} session {beat.session}")
        self.count("restart-race-renewed-finished")

    def finished_before(self, ws: WorkerState) -> bool:
        """Does ``ws`` hold an adopted holding whose finish its earlier life had landed
        (the model lists the job done, or failed, under that holding's token)?"""
        j = ws.coord.job
        if j is None or (ws.session, j.job, j.token) not in self.adopted:
            return False
        kind, e = self.model.state(j.job)
        return kind in ("done", "failed") and e is not None and e.token == j.token


# ---- the tests ------------------------------------------------------------------------

#: Examples and steps of each run: about fifteen seconds on one core.
EXAMPLES, STEPS = 200, 100
#: The least number of times the derandomized run on the real coordinator must reach
#: :data:`TAKEN_BEFORE_PARK`: about a third of the 56 it reached when this was set, so that
#: another draw of examples from the same seed (a new Hypothesis version, a change to the
#: library's source) does not fail it while a starved scenario still does.
MIN_HITS = 18
#: Examples the machine may take to catch the coordinator with the fix undone (it took 19
#: when this was set).
WITHIN = 200


class RevocationOfAnEarlierLifeIgnored(Broken):
    """177fd30 undone: a revoked record counts only when it names this session, so a
    restarted process that adopted its earlier life's job takes a takeover's revocation
    of that life's record for a value of its own, and writes over it."""

    seam = "Coordinator._own_record"

    def _own_record(self) -> tuple[Oid | None, Beat | None]:
        self.reached()
        current, revoked = super()._own_record()
        if revoked is not None and revoked.session != self.session:
            self.deviated()  # the fixed code counts it: it names the job this worker holds
            return current, None
        return current, revoked


def run_counting(machine: type[ProtocolMachine], prefixes: tuple[str, ...], *,
                 derandomized: bool, examples: int = EXAMPLES,
                 steps: int = STEPS) -> dict[str, int]:
    """Run ``machine`` for ``examples`` examples of ``steps`` steps (``derandomized``, or
    as the loaded profile says) and give the events it counted whose names begin with
    one of ``prefixes``."""
    before = dict(EVENTS)
    fixed = {"derandomize": True, "database": None} if derandomized else {}
    run_state_machine_as_test(machine, settings=machine_settings(
        max_examples=examples, stateful_step_count=steps, **fixed))
    return {name: count - before.get(name, 0) for name, count in sorted(EVENTS.items())
            if name.startswith(prefixes) and count > before.get(name, 0)}


def test_restart_races_find_nothing_on_the_real_coordinator():
    counts = run_counting(RestartRaceMachine, ("restart-race",), derandomized=True)
    hits = counts.get(TAKEN_BEFORE_PARK, 0)
    assert hits >= MIN_HITS, (
        f"the job was taken over between an adopted finish's fetch and its park {hits} times "
        f"in {EXAMPLES} derandomized examples, fewer than {MIN_HITS}: the scenario no longer "
        f"reaches the state it exists for (all its counts: {counts})")


def test_restart_races_catch_a_revocation_of_an_earlier_life_taken_as_not_ours():
    catch = hunt("restart race: earlier life", RevocationOfAnEarlierLifeIgnored,
                 RestartRaceMachine, max_examples=WITHIN, stateful_step_count=STEPS)
    assert catch.scenario.startswith("restart-race-"), (
        f"caught, but outside the restart race ({catch.scenario or 'a random step'}): "
        f"{catch.message}")


@pytest.mark.slow
def test_restart_races_find_nothing_on_the_real_coordinator_at_length():
    """Five times the examples, drawn as the loaded profile says (derandomized in ``ci``)."""
    counts = run_counting(RestartRaceMachine, ("restart-race",), derandomized=False,
                          examples=5 * EXAMPLES)
    assert counts.get(TAKEN_BEFORE_PARK, 0) >= MIN_HITS
