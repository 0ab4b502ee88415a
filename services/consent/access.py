"""Who may call each route of the consent API (enforced by the runtime: services.runtime.auth).

- Intake (consent changes, batches, GPC signals) comes from the settings system the
  platform team runs: its key holds ``platform_admin``. The issue's five roles have no
  narrower one for a feeding system; a dedicated intake role would be the next step.
- A subject's consent, history and export are personal data that legal needs for its
  cases: legal roles and ``platform_admin``; ML teams ask the registry and lineage instead.
- Publishing a policy version re-reads the rules, possibly for the past: a legal decision
  (``legal_approver``) or the platform's administration. Policies are readable by everyone.
"""

from __future__ import annotations

from services.runtime.auth import AccessTable, Role, allow

__all__ = ["ACCESS"]

ADMIN = Role.PLATFORM_ADMIN
LEGAL = {Role.LEGAL_REQUESTER, Role.LEGAL_APPROVER}
EVERYONE = set(Role)

_INTAKE = allow(ADMIN, note="The settings system feeding consent holds a `platform_admin` key.")
_SUBJECT = allow(LEGAL, ADMIN)

ACCESS: AccessTable = {
    ("POST", "/api/v1/consent-events"): _INTAKE,
    ("POST", "/api/v1/consent-events/batch"): _INTAKE,
    ("POST", "/api/v1/subjects/{subject_id}/gpc"): _INTAKE,
    ("GET", "/api/v1/subjects/{subject_id}/consent"): _SUBJECT,
    ("GET", "/api/v1/subjects/{subject_id}/consent-events"): _SUBJECT,
    ("GET", "/api/v1/subjects/{subject_id}/export"): _SUBJECT,
    ("POST", "/api/v1/policies"): allow(Role.LEGAL_APPROVER, ADMIN),
    ("GET", "/api/v1/policies"): allow(EVERYONE),
}
