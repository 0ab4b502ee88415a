"""The words consent events and policies share: consent states and mechanisms."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ConsentMechanism", "ConsentState"]


class ConsentState(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class ConsentMechanism(StrEnum):
    """How the state was obtained; the policy decides which count as a lawful basis."""

    EXPLICIT_OPT_IN = "explicit_opt_in"
    OPT_OUT = "opt_out"
    DEFAULT_SETTING = "default_setting"
    GPC_SIGNAL = "gpc_signal"
    CONTRACT_RESTRICTION = "contract_restriction"
    ERASURE_REQUEST = "erasure_request"
