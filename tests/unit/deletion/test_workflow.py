"""The deletion case state machine (services.deletion.domain.workflow): the happy path,
each refusal, and invariants over any sequence of commands by any actors (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import CaseState
from services.deletion.domain.workflow import (
    TERMINAL_STATES,
    CaseStatus,
    Command,
    TransitionRefused,
    transition,
)

REQUESTER = "legal:ann"
APPROVER = "legal:bob"
HAPPY = [
    (Command.START_SCOPING, REQUESTER, CaseState.SCOPING),
    (Command.SUBMIT_SCOPE, REQUESTER, CaseState.AWAITING_APPROVAL),
    (Command.APPROVE, APPROVER, CaseState.APPROVED),
    (Command.START_EXECUTION, "system", CaseState.EXECUTING),
    (Command.START_VERIFICATION, "system", CaseState.VERIFYING),
    (Command.COMPLETE, "system", CaseState.COMPLETED),
]


def new_case() -> CaseStatus:
    return CaseStatus(state=CaseState.RECEIVED, requester=REQUESTER)


def run(status: CaseStatus, *steps: tuple[Command, str]) -> CaseStatus:
    for command, actor in steps:
        status = transition(status, command, actor=actor, reason="because").after
    return status


def at(state: CaseState) -> CaseStatus:
    """A case driven along the happy path to ``state``."""
    status = new_case()
    for command, actor, reached in HAPPY:
        if status.state is state:
            return status
        status = run(status, (command, actor))
        assert status.state is reached
    assert status.state is state
    return status


def test_the_happy_path_reaches_completed_and_audits_each_step() -> None:
    status = new_case()
    for command, actor, expected in HAPPY:
        step = transition(status, command, actor=actor, reason="ok")
        assert (step.before, step.command, step.actor) == (status, command, actor)
        status = step.after
        assert status.state is expected
    assert status.approved_by == APPROVER and status.irreversible_started


def test_the_requester_cannot_approve_their_own_case() -> None:
    with pytest.raises(TransitionRefused, match="four eyes"):
        transition(at(CaseState.AWAITING_APPROVAL), Command.APPROVE, actor=REQUESTER)


def test_nothing_runs_while_held_and_a_release_returns_where_it_was() -> None:
    approved = at(CaseState.APPROVED)
    held = run(approved, (Command.HOLD, "legal:counsel"))
    assert held.state is CaseState.ON_HOLD
    with pytest.raises(TransitionRefused, match="on hold"):
        transition(held, Command.START_EXECUTION, actor="system")
    with pytest.raises(TransitionRefused, match="reason"):
        transition(approved, Command.HOLD, actor="legal:counsel", reason=" ")
    assert run(held, (Command.RELEASE, "legal:counsel")) == approved


def test_cancel_only_before_irreversible_work() -> None:
    for state in (CaseState.RECEIVED, CaseState.AWAITING_APPROVAL, CaseState.APPROVED):
        assert run(at(state), (Command.CANCEL, REQUESTER)).state is CaseState.CANCELED
    with pytest.raises(TransitionRefused, match="irreversible"):
        transition(at(CaseState.EXECUTING), Command.CANCEL, actor=REQUESTER, reason="stop")
    held = run(at(CaseState.EXECUTING), (Command.HOLD, "legal:counsel"))
    with pytest.raises(TransitionRefused, match="irreversible"):
        transition(held, Command.CANCEL, actor=REQUESTER, reason="stop")


def test_a_failed_step_resumes_where_it_failed_even_after_a_hold() -> None:
    executing = at(CaseState.EXECUTING)
    failed = run(executing, (Command.FAIL, "system"))
    assert (failed.state, failed.failed_step) == (CaseState.FAILED, CaseState.EXECUTING)
    held = run(failed, (Command.HOLD, "legal:counsel"))
    released = run(held, (Command.RELEASE, "legal:counsel"))
    assert released == failed
    assert run(released, (Command.RESUME, "ops:eve")) == executing


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_never_change(terminal: CaseState) -> None:
    status = CaseStatus(state=terminal, requester=REQUESTER)
    for command in Command:
        with pytest.raises(TransitionRefused, match="nothing can change it"):
            transition(status, command, actor=APPROVER, reason="r")


def test_rejection_only_before_approval() -> None:
    assert run(at(CaseState.SCOPING), (Command.REJECT, APPROVER)).state is CaseState.REJECTED
    with pytest.raises(TransitionRefused, match="after its approval"):
        transition(at(CaseState.APPROVED), Command.REJECT, actor=APPROVER, reason="no")


ACTORS = st.sampled_from([REQUESTER, APPROVER, "system", "legal:counsel"])
STEPS = st.lists(
    st.tuples(st.sampled_from(list(Command)), ACTORS, st.sampled_from(["", "why"])),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(steps=STEPS)
def test_invariants_hold_for_any_sequence_of_commands(
    steps: list[tuple[Command, str, str]],
) -> None:
    status = new_case()
    for command, actor, reason in steps:
        try:
            step = transition(status, command, actor=actor, reason=reason)
        except TransitionRefused as refused:
            assert str(refused), "a refusal always says why"
            continue
        before, after = step.before, step.after
        assert before.state not in TERMINAL_STATES
        # Approval (and anything after it) always rests on someone other than the requester.
        if after.state in (CaseState.APPROVED, CaseState.EXECUTING, CaseState.VERIFYING):
            assert after.approved_by not in (None, after.requester)
        # Nothing irreversible starts on hold, and nothing undoes irreversibility.
        if not before.irreversible_started and after.irreversible_started:
            assert before.state is CaseState.APPROVED and command is Command.START_EXECUTION
        assert after.irreversible_started >= before.irreversible_started
        assert not (after.state is CaseState.CANCELED and before.irreversible_started)
        if before.state is CaseState.ON_HOLD:
            assert command in (Command.RELEASE, Command.CANCEL, Command.REJECT)
        if command is Command.RESUME:
            assert after.state is before.failed_step
        if after.state is CaseState.COMPLETED:
            assert before.state is CaseState.VERIFYING
        status = after
