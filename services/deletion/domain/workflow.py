"""The deletion case state machine. Pure: a case's status and a command in, the next status
(and what to audit) out, or a refusal saying why.

```
received ─► scoping ─► awaiting_approval ─► approved ─► executing ─► verifying ─► completed
   │           │  ▲            │               │            │            │
   │           │  └─ rescope ──┘               │            │            │
   └───────────┴───── rejected / canceled ◄────┘ (canceled: only before irreversible work)
any open state ─► on_hold ─► (release) back where it was; nothing irreversible while held
scoping / executing / verifying ─► failed ─► (resume) back to the failed step, never from scratch
```

Four eyes: the approver is never the requester. Execution is the first irreversible step:
once it has started, a case can no longer be canceled (only held, failed, or completed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from contracts.events import CaseState

__all__ = [
    "OPEN_STATES",
    "TERMINAL_STATES",
    "CaseStatus",
    "Command",
    "Step",
    "TransitionRefused",
    "transition",
]

TERMINAL_STATES = frozenset({CaseState.COMPLETED, CaseState.REJECTED, CaseState.CANCELED})
OPEN_STATES = frozenset(CaseState) - TERMINAL_STATES
_RESUMABLE = frozenset({CaseState.SCOPING, CaseState.EXECUTING, CaseState.VERIFYING})
_BEFORE_APPROVAL = frozenset({CaseState.RECEIVED, CaseState.SCOPING, CaseState.AWAITING_APPROVAL})


class Command(StrEnum):
    START_SCOPING = "start_scoping"
    SUBMIT_SCOPE = "submit_scope"
    """Scope resolved and frozen: ask for approval."""
    RESCOPE = "rescope"
    APPROVE = "approve"
    REJECT = "reject"
    START_EXECUTION = "start_execution"
    """Tasks go out: the first irreversible step."""
    START_VERIFICATION = "start_verification"
    """Every task acknowledged: check the targets are gone or marked."""
    COMPLETE = "complete"
    FAIL = "fail"
    RESUME = "resume"
    HOLD = "hold"
    RELEASE = "release"
    CANCEL = "cancel"


class TransitionRefused(ValueError):
    """The command is not allowed now; the message says why, for the person who asked."""


@dataclass(frozen=True, slots=True)
class CaseStatus:
    """What the state machine needs to know of a case."""

    state: CaseState
    requester: str
    held_from: CaseState | None = None
    """On hold: the state a release returns to."""
    failed_step: CaseState | None = None
    """Failed (or held while failed): the step a resume returns to."""
    irreversible_started: bool = False
    approved_by: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """An accepted transition, as it is audited."""

    before: CaseStatus
    after: CaseStatus
    command: Command
    actor: str
    reason: str


def transition(status: CaseStatus, command: Command, *, actor: str, reason: str = "") -> Step:
    """Apply ``command`` by ``actor``; raises ``TransitionRefused`` with the reason otherwise."""
    if not actor.strip():
        raise TransitionRefused("every transition needs an actor")
    state = status.state
    if state in TERMINAL_STATES:
        raise TransitionRefused(f"the case is {state.value}: nothing can change it any more")
    after = _next(status, command, actor=actor, reason=reason)
    return Step(status, after, command, actor, reason)


def _next(status: CaseStatus, command: Command, *, actor: str, reason: str) -> CaseStatus:
    state = status.state
    held = state is CaseState.ON_HOLD

    def refuse(why: str) -> TransitionRefused:
        return TransitionRefused(f"cannot {command.value.replace('_', ' ')} a case {why}")

    def to(target: CaseState, **changes: Any) -> CaseStatus:
        return replace(status, state=target, **changes)

    match command:
        case Command.HOLD:
            if held:
                raise refuse("already on hold")
            if not reason.strip():
                raise refuse("without a reason (a legal hold names its matter)")
            return to(CaseState.ON_HOLD, held_from=state)
        case Command.RELEASE:
            if not held or status.held_from is None:
                raise refuse("that is not on hold")
            return to(status.held_from, held_from=None)
        case Command.CANCEL:
            if status.irreversible_started:
                raise refuse("once execution has started: irreversible work has been done")
            if not reason.strip():
                raise refuse("without a reason")
            return to(CaseState.CANCELED, held_from=None)
        case Command.REJECT:
            if (status.held_from if held else state) not in _BEFORE_APPROVAL:
                raise refuse("after its approval (cancel it, or let it fail)")
            if not reason.strip():
                raise refuse("without a reason")
            return to(CaseState.REJECTED, held_from=None)
    if held:
        raise refuse("on hold: release it first")
    match command, state:
        case Command.START_SCOPING, CaseState.RECEIVED:
            return to(CaseState.SCOPING)
        case Command.SUBMIT_SCOPE, CaseState.SCOPING:
            return to(CaseState.AWAITING_APPROVAL)
        case Command.RESCOPE, CaseState.AWAITING_APPROVAL:
            return to(CaseState.SCOPING)
        case Command.APPROVE, CaseState.AWAITING_APPROVAL:
            if actor == status.requester:
                raise refuse(f"as its requester ({actor}): approval needs someone else (four eyes)")
            return to(CaseState.APPROVED, approved_by=actor)
        case Command.START_EXECUTION, CaseState.APPROVED:
            return to(CaseState.EXECUTING, irreversible_started=True)
        case Command.START_VERIFICATION, CaseState.EXECUTING:
            return to(CaseState.VERIFYING)
        case Command.COMPLETE, CaseState.VERIFYING:
            return to(CaseState.COMPLETED)
        case Command.FAIL, _ if state in _RESUMABLE:
            if not reason.strip():
                raise refuse("failed without saying what failed")
            return to(CaseState.FAILED, failed_step=state)
        case Command.RESUME, CaseState.FAILED:
            if status.failed_step is None:
                raise refuse("with no failed step to resume")
            return to(status.failed_step, failed_step=None)
    raise refuse(f"in state {state.value}")
