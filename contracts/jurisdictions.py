"""Jurisdiction groups a policy document may name (part of the policy contract)."""

from __future__ import annotations

__all__ = ["EU", "EU_EEA", "GROUPS", "in_group"]

EU = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)
EU_EEA = EU | {"IS", "LI", "NO"}
GROUPS: dict[str, frozenset[str]] = {"EU": EU, "EEA": EU_EEA}


def in_group(group: str, jurisdiction: str) -> bool:
    """``US-CA`` is in ``US``'s groups through its country part."""
    return jurisdiction.split("-", 1)[0] in GROUPS.get(group, frozenset())
