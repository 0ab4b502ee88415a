"""How policy selectors match uses: dot-hierarchies and jurisdiction selectors. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from contracts.jurisdictions import GROUPS

__all__ = ["covers", "jurisdiction_rank", "matches_any_jurisdiction"]


def covers(parent: str, child: str) -> bool:
    """Dot-hierarchy containment: ``user.content`` covers ``user.content.private``
    (and itself), not ``user.contents``."""
    return child == parent or child.startswith(parent + ".")


def jurisdiction_rank(
    selector: str, jurisdiction: str, groups: Mapping[str, Iterable[str]] | None = None
) -> int | None:
    """How specifically ``selector`` names ``jurisdiction`` (higher is more specific), or
    None when it does not name it: subdivision 3, country 2, group 1, ``*`` 0.

    Groups are the built-in ``EU``/``EEA`` plus those a policy document defines; a group
    member may be a country (covering its subdivisions) or a subdivision.
    """
    country = jurisdiction.split("-", 1)[0]
    if selector == jurisdiction:
        return 3
    if selector == country:
        return 2
    members = (groups or {}).get(selector) or GROUPS.get(selector)
    if members is not None and (jurisdiction in members or country in members):
        return 1
    if selector == "*":
        return 0
    return None


def matches_any_jurisdiction(
    selectors: Iterable[str], jurisdiction: str, groups: Mapping[str, Iterable[str]] | None = None
) -> bool:
    return any(jurisdiction_rank(s, jurisdiction, groups) is not None for s in selectors)
