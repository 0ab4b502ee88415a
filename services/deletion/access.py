"""Who may call each route of the deletion API, and who may give each workflow command
(enforced by the runtime, services.runtime.auth, and for commands by the actions route).

- Legal requesters open cases and drive them; legal approvers approve or reject them. Four
  eyes: with auth on, the actor is the authenticated principal, so the approver is a
  different key from the requester (the state machine refuses the requester's own approval).
- ``platform_admin`` reads every case and its evidence and runs the execution steps
  (start, verify, complete, fail, resume), but never approves or rejects a case, opens one
  or extends its deadline: those are legal decisions.
- ML teams do not read cases: what a model must undergo is on lineage's model status.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.deletion.domain.workflow import Command
from services.runtime.auth import AccessTable, Role, allow

__all__ = ["ACCESS", "COMMAND_ROLES"]

REQUESTER, APPROVER, ADMIN = Role.LEGAL_REQUESTER, Role.LEGAL_APPROVER, Role.PLATFORM_ADMIN
LEGAL = frozenset({REQUESTER, APPROVER})

COMMAND_ROLES: Mapping[Command, frozenset[Role]] = {
    Command.START_SCOPING: frozenset({REQUESTER}),
    Command.SUBMIT_SCOPE: frozenset({REQUESTER}),
    Command.RESCOPE: LEGAL,
    Command.APPROVE: frozenset({APPROVER}),
    Command.REJECT: frozenset({APPROVER}),
    Command.START_EXECUTION: frozenset({REQUESTER, ADMIN}),
    Command.START_VERIFICATION: frozenset({REQUESTER, ADMIN}),
    Command.COMPLETE: frozenset({REQUESTER, ADMIN}),
    Command.FAIL: frozenset({REQUESTER, ADMIN}),
    Command.RESUME: frozenset({REQUESTER, ADMIN}),
    Command.HOLD: LEGAL,
    Command.RELEASE: LEGAL,
    Command.CANCEL: LEGAL,
}
"""Per command, the roles that may give it (checked once the body names the command)."""


def _commands_note() -> str:
    by_roles: dict[frozenset[Role], list[str]] = {}
    for command, roles in COMMAND_ROLES.items():
        by_roles.setdefault(roles, []).append(f"`{command.value}`")
    return (
        "Per command: "
        + "; ".join(
            f"{', '.join(commands)}: {', '.join(f'`{r}`' for r in sorted(roles))}"
            for roles, commands in by_roles.items()
        )
        + "."
    )


_READ = allow(LEGAL, ADMIN)

ACCESS: AccessTable = {
    ("POST", "/api/v1/cases"): allow(REQUESTER),
    ("GET", "/api/v1/cases"): _READ,
    ("GET", "/api/v1/cases/{case_id}"): _READ,
    ("POST", "/api/v1/cases/{case_id}/actions"): allow(
        *COMMAND_ROLES.values(), note=_commands_note()
    ),
    ("POST", "/api/v1/cases/{case_id}/extension"): allow(LEGAL),
    ("GET", "/api/v1/cases/{case_id}/evidence"): _READ,
    ("GET", "/api/v1/cases/{case_id}/evidence/bundle"): _READ,
    ("POST", "/api/v1/cases/{case_id}/scope"): allow(COMMAND_ROLES[Command.SUBMIT_SCOPE]),
    ("GET", "/api/v1/cases/{case_id}/execution"): _READ,
    ("PUT", "/api/v1/webhook-systems/{system}"): allow(ADMIN),
    ("GET", "/api/v1/webhook-systems"): allow(ADMIN),
    # POST /api/v1/task-acknowledgements is an open route (ServiceSpec.open_routers):
    # webhook systems sign it with their shared secret instead of an API key.
}
