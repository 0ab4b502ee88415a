"""The purposes and data categories ConsentTrace knows (DESIGN §3).

Both are dot-hierarchies: a term covers itself and every term below it (``user.content``
covers ``user.content.private``; see ``services.eligibility.matching.covers``). The lists are
closed on purpose: a consent recorded for a misspelt category (``user.contents``) would
match nothing and protect nobody, so intake refuses terms that are not listed here.

**Data categories** follow fideslang's ``user`` tree (fideslang 2.x, CC BY 4.0) where it has
a term, and keep its names: ``user.content.private`` is fideslang's "private content"
(private messages such as InMail), ``user.behavior.browsing_history`` its browsing history.
This is a subset: the categories a consent setting can reasonably name. Fideslang's
``system.*`` categories (data about systems, not people) are out of scope: consent is a
person's.

**Purposes** are ConsentTrace's own (fideslang's data uses are flatter and have no
AI-training tree): ``ai.training.generative`` is training a generative model,
``ai.training.ranking`` a ranking/recommendation model, and so on.

Adding a term is a code change reviewed like any contract change; removing one would make
recorded events unreadable under the new list, so terms are never removed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "DATA_CATEGORIES",
    "PURPOSES",
    "category_error",
    "is_known_category",
    "is_known_purpose",
    "purpose_error",
]

PURPOSES: Mapping[str, str] = MappingProxyType(
    {
        "ai": "Building or running machine-learning systems",
        "ai.training": "Training machine-learning models",
        "ai.training.generative": "Training generative models (text, image, code)",
        "ai.training.ranking": "Training ranking and recommendation models",
        "ai.training.moderation": "Training trust-and-safety / moderation classifiers",
        "ai.evaluation": "Evaluating and benchmarking models",
        "ai.inference": "Using the data as model input at inference time (e.g. retrieval)",
        "analytics": "Measuring how the product is used",
        "analytics.product": "Product analytics",
        "analytics.reporting": "Aggregate business reporting",
        "marketing": "Marketing",
        "marketing.advertising": "Advertising",
        "marketing.advertising.personalized": "Personalized (targeted) advertising",
        "marketing.advertising.sharing": "Sale or sharing of data for cross-context advertising",
        "marketing.communications": "Marketing messages",
        "marketing.communications.email": "Marketing e-mail",
        "personalization": "Personalizing the product for the subject",
        "personalization.content": "Personalizing feeds and content",
        "research": "Research",
        "essential": "What the service cannot run without",
        "essential.service": "Providing the service the subject asked for",
        "essential.security": "Security and fraud prevention",
        "essential.legal": "Legal obligations",
    }
)
"""Every known purpose and what it means."""

DATA_CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        "user": "Any data about the subject",
        "user.account": "Account data",
        "user.account.settings": "Account settings",
        "user.account.username": "Username",
        "user.behavior": "Behavioral data",
        "user.behavior.browsing_history": "Browsing history",
        "user.behavior.media_consumption": "Media consumption",
        "user.behavior.purchase_history": "Purchase history",
        "user.behavior.search_history": "Search history",
        "user.biometric": "Biometric data",
        "user.contact": "Contact data",
        "user.contact.address": "Postal address",
        "user.contact.email": "E-mail address",
        "user.contact.phone_number": "Phone number",
        "user.content": "Content the subject created",
        "user.content.private": "Private content (private messages, e.g. InMail)",
        "user.content.private.premium": (
            "Private messages of paying (premium) members, confidential by their contract"
            " (e.g. InMail of subscribers); not a fideslang term"
        ),
        "user.content.public": "Public content (posts, comments, profile text)",
        "user.content.self_image": "Images of the subject",
        "user.demographic": "Demographic data",
        "user.demographic.age_range": "Age range",
        "user.demographic.date_of_birth": "Date of birth",
        "user.demographic.gender": "Gender",
        "user.demographic.language": "Language",
        "user.device": "Device data",
        "user.device.cookie_id": "Cookie identifiers",
        "user.device.device_id": "Device identifiers",
        "user.device.ip_address": "IP address",
        "user.financial": "Financial data",
        "user.financial.bank_account": "Bank account",
        "user.financial.credit_card": "Payment card",
        "user.government_id": "Government identifiers",
        "user.health_and_medical": "Health and medical data",
        "user.location": "Location",
        "user.location.imprecise": "Imprecise location (city, region)",
        "user.location.precise": "Precise location (GPS)",
        "user.name": "Name",
        "user.social": "Social graph (connections, follows)",
        "user.unique_id": "Unique identifiers",
        "user.workplace": "Workplace and job data",
    }
)
"""Every known data category (a fideslang-aligned subset of ``user.*``) and its meaning."""


def is_known_purpose(purpose: str) -> bool:
    return purpose in PURPOSES


def is_known_category(category: str) -> bool:
    return category in DATA_CATEGORIES


def purpose_error(purpose: str) -> str | None:
    """Why ``purpose`` is refused, precisely, or None when it is known."""
    return _unknown("purpose", purpose, PURPOSES)


def category_error(category: str) -> str | None:
    """Why ``category`` is refused, precisely, or None when it is known.

    ``category_error("user.foo")`` → ``"unknown data category 'user.foo'; known under
    'user': user.account, user.behavior, …"``.
    """
    return _unknown("data category", category, DATA_CATEGORIES)


def _unknown(kind: str, term: str, known: Mapping[str, str]) -> str | None:
    if term in known:
        return None
    parts = term.split(".")
    parent = next(
        (".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if ".".join(parts[:n]) in known),
        None,
    )
    depth = parent.count(".") + 2 if parent else 1
    siblings = sorted(
        t
        for t in known
        if t.count(".") + 1 == depth and (parent is None or t.startswith(parent + "."))
    )
    if parent and not siblings:
        message = f"unknown {kind} '{term}'; '{parent}' has no narrower terms: use '{parent}'"
    else:
        where = f"known under '{parent}'" if parent else "known top-level terms"
        message = f"unknown {kind} '{term}'; {where}: {', '.join(siblings)}"
    close = difflib.get_close_matches(term, list(known), n=1, cutoff=0.8)
    if close and close[0] != parent:
        message += f" (did you mean '{close[0]}'?)"
    return message
