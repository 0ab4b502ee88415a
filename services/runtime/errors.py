"""Errors the runtime tells apart, because each is handled differently.

Exception
├── PermanentError          the message can never succeed: dead-letter it
│   ├── ContractViolation   the bytes or headers break the contract
│   └── UnstorableValue     Postgres refuses a value of it (NUL in text, a key too long…)
└── (transient, see is_transient) database/broker unreachable: retry forever
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError

__all__ = [
    "ContractViolation",
    "PermanentError",
    "UnstorableValue",
    "is_transient",
    "unstorable",
]


class PermanentError(Exception):
    """Processing this message can never succeed; it goes to the dead-letter topic."""

    reason = "rejected"


class ContractViolation(PermanentError):
    """The message does not parse or violates its contract."""

    reason = "contract_violation"


class UnstorableValue(PermanentError):
    """Postgres refused a value the message carries: the same bytes fail every time."""

    reason = "unstorable_value"


def unstorable(exc: BaseException) -> UnstorableValue | None:
    """An :class:`UnstorableValue` for a Postgres data exception (class 22: ``\\u0000`` in
    text, a number out of range…) or program limit (class 54: a key too long for its
    index); None for anything else."""
    if isinstance(exc, asyncpg.DataError | asyncpg.ProgramLimitExceededError):
        return UnstorableValue(f"{type(exc).__name__}: {exc}")
    return None


_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "53300",  # too_many_connections
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
}


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed: the infrastructure, not the message, failed."""
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # Client-side errors are mostly our bugs (a wrong argument count must not be retried
        # forever); only a lost or closed connection is the network's.
        return (
            isinstance(exc, asyncpg.ConnectionDoesNotExistError) or "connection" in str(exc).lower()
        )
    if isinstance(exc, OSError | asyncio.TimeoutError | KafkaConnectionError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
