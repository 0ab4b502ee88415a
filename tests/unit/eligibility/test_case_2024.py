"""The 2024 case of DESIGN §1, date by date, with ``policies/genai-training-2024.yaml``
(and the stricter ``policies/gdpr-strict.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest

from contracts.events import ConsentEvent, ConsentEvidence
from contracts.policy import PolicyDocument, WithdrawalRequires
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import (
    Reason,
    Use,
    evaluate,
    gpc_withdrawals,
    policy_in_force,
    withdrawal_requirement,
)
from services.eligibility.documents import load_policy

POLICIES = Path(__file__).resolve().parents[3] / "policies"
GENERATIVE = "ai.training.generative"
PUBLIC = "user.content.public"
PRIVATE = "user.content.private"

GRANTED, WITHDRAWN = ConsentState.GRANTED, ConsentState.WITHDRAWN
OPT_IN = ConsentMechanism.EXPLICIT_OPT_IN
OPT_OUT = ConsentMechanism.OPT_OUT
DEFAULT = ConsentMechanism.DEFAULT_SETTING


@pytest.fixture(scope="module")
def genai() -> PolicyDocument:
    return load_policy(POLICIES / "genai-training-2024.yaml")


@pytest.fixture(scope="module")
def strict() -> PolicyDocument:
    return load_policy(POLICIES / "gdpr-strict.yaml")


def day(text: str) -> datetime:
    """``2024-10-01`` → midnight UTC; ``2024-10-01T12:00`` → that time UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Choice:
    """A member's recorded choice, in the table's shorthand."""

    state: ConsentState
    mechanism: ConsentMechanism
    effective: str
    categories: tuple[str, ...] = ("user",)
    purpose: str = "ai.training"


def event(subject: str, jurisdiction: str, choice: Choice) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid5(NAMESPACE_URL, f"{subject}/{choice}"),
        subject_id=subject,
        jurisdiction=jurisdiction,
        purpose=choice.purpose,
        data_categories=choice.categories,
        state=choice.state,
        mechanism=choice.mechanism,
        policy_version="2024.1",
        effective_at=day(choice.effective),
        recorded_at=day(choice.effective),
        source_system="settings",
        evidence=ConsentEvidence(collection_point="settings/data-privacy"),
    )


OPTED_OUT_OCT_15 = Choice(WITHDRAWN, OPT_OUT, "2024-10-15")
PRIVATE_OPT_IN = Choice(GRANTED, OPT_IN, "2024-09-01", (PRIVATE,))
CONTENT_OPT_IN = Choice(GRANTED, OPT_IN, "2024-09-01", ("user.content",))

# (case, jurisdiction, category, used at, choices, eligible, reason, rule)
CASES: list[tuple[str, str, str, str, tuple[Choice, ...], bool, Reason, str | None]] = [
    # United States: default-on from August, disclosed 18 Sept 2024.
    ("us before setting", "US", PUBLIC, "2024-07-15", (), False, Reason.NO_CONSENT, "default-on"),
    (
        "us default before disclosure",
        "US",
        PUBLIC,
        "2024-08-15",
        (),
        False,
        Reason.BASIS_NOT_YET_LAWFUL,
        "default-on",
    ),
    (
        "us default day before disclosure",
        "US",
        PUBLIC,
        "2024-09-17T23:59",
        (),
        False,
        Reason.BASIS_NOT_YET_LAWFUL,
        "default-on",
    ),
    (
        "us default on disclosure day",
        "US",
        PUBLIC,
        "2024-09-18",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    (
        "us default after disclosure",
        "US",
        PUBLIC,
        "2024-10-01",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    (
        "us-ca subdivision reads the US group",
        "US-CA",
        PUBLIC,
        "2024-10-01",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    (
        "us explicit opt-in before disclosure",
        "US",
        PUBLIC,
        "2024-08-15",
        (Choice(GRANTED, OPT_IN, "2024-08-10"),),
        True,
        Reason.CONSENTED,
        "default-on",
    ),
    (
        "us default-setting grant before disclosure",
        "US",
        PUBLIC,
        "2024-08-15",
        (Choice(GRANTED, DEFAULT, "2024-08-01"),),
        False,
        Reason.BASIS_NOT_YET_LAWFUL,
        "default-on",
    ),
    (
        "us opted out, use before",
        "US",
        PUBLIC,
        "2024-10-01",
        (OPTED_OUT_OCT_15,),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    (
        "us opted out, use after",
        "US",
        PUBLIC,
        "2024-11-01",
        (OPTED_OUT_OCT_15,),
        False,
        Reason.WITHDRAWN,
        "default-on",
    ),
    (
        "us opted out then back in",
        "US",
        PUBLIC,
        "2024-12-01",
        (OPTED_OUT_OCT_15, Choice(GRANTED, OPT_IN, "2024-11-15")),
        True,
        Reason.CONSENTED,
        "default-on",
    ),
    (
        "us opt-out for another purpose",
        "US",
        PUBLIC,
        "2024-11-01",
        (Choice(WITHDRAWN, OPT_OUT, "2024-10-15", purpose="ai.training.ranking"),),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    # Private messages: only an explicit opt-in naming them.
    (
        "us private, no opt-in",
        "US",
        PRIVATE,
        "2024-10-01",
        (),
        False,
        Reason.NO_CONSENT,
        "default-on-private-messages",
    ),
    (
        "us private, default-setting grant",
        "US",
        PRIVATE,
        "2024-10-01",
        (Choice(GRANTED, DEFAULT, "2024-08-01"),),
        False,
        Reason.NO_CONSENT,
        "default-on-private-messages",
    ),
    (
        "us private, default-setting grant naming them",
        "US",
        PRIVATE,
        "2024-10-01",
        (Choice(GRANTED, DEFAULT, "2024-08-01", (PRIVATE,)),),
        False,
        Reason.BASIS_NOT_LAWFUL,
        "default-on-private-messages",
    ),
    (
        "us private, explicit opt-in",
        "US",
        PRIVATE,
        "2024-10-01",
        (PRIVATE_OPT_IN,),
        True,
        Reason.CONSENTED,
        "default-on-private-messages",
    ),
    (
        "us private, opt-in for user.content only (exact scope)",
        "US",
        PRIVATE,
        "2024-10-01",
        (CONTENT_OPT_IN,),
        False,
        Reason.NO_CONSENT,
        "default-on-private-messages",
    ),
    (
        "us public, opt-in for user.content (subtree scope)",
        "US",
        PUBLIC,
        "2024-09-05",
        (CONTENT_OPT_IN,),
        True,
        Reason.CONSENTED,
        "default-on",
    ),
    (
        "us private, opt-in then opt-out of all user data",
        "US",
        PRIVATE,
        "2024-11-01",
        (PRIVATE_OPT_IN, OPTED_OUT_OCT_15),
        False,
        Reason.WITHDRAWN,
        "default-on-private-messages",
    ),
    # EU/EEA and Switzerland: exempt, then opt-out from 3 Nov 2025 (private excluded).
    ("de exempt", "DE", PUBLIC, "2024-10-01", (), False, Reason.NO_LAWFUL_BASIS, "eea-ch-exempt"),
    (
        "de exempt even with opt-in",
        "DE",
        PUBLIC,
        "2024-10-01",
        (Choice(GRANTED, OPT_IN, "2024-09-01"),),
        False,
        Reason.NO_LAWFUL_BASIS,
        "eea-ch-exempt",
    ),
    (
        "de day before start",
        "DE",
        PUBLIC,
        "2025-11-02T23:59",
        (),
        False,
        Reason.NO_LAWFUL_BASIS,
        "eea-ch-exempt",
    ),
    (
        "de opt-out model",
        "DE",
        PUBLIC,
        "2025-11-10",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "eea-ch-opt-out",
    ),
    (
        "no (EEA) opt-out model",
        "NO",
        PUBLIC,
        "2025-11-10",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "eea-ch-opt-out",
    ),
    (
        "ch opt-out model",
        "CH",
        PUBLIC,
        "2025-11-10",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "eea-ch-opt-out",
    ),
    (
        "de objected",
        "DE",
        PUBLIC,
        "2025-11-10",
        (Choice(WITHDRAWN, OPT_OUT, "2025-11-04"),),
        False,
        Reason.WITHDRAWN,
        "eea-ch-opt-out",
    ),
    (
        "de private excluded",
        "DE",
        PRIVATE,
        "2025-11-10",
        (),
        False,
        Reason.NO_CONSENT,
        "eea-ch-private-messages",
    ),
    (
        "fr private excluded by exact scope",
        "FR",
        PRIVATE,
        "2025-11-10",
        (Choice(GRANTED, OPT_IN, "2025-11-04", ("user",)),),
        False,
        Reason.NO_CONSENT,
        "eea-ch-private-messages",
    ),
    # United Kingdom: default-on like the US until the suspension of 20 Sept 2024.
    (
        "gb before disclosure",
        "GB",
        PUBLIC,
        "2024-09-10",
        (),
        False,
        Reason.BASIS_NOT_YET_LAWFUL,
        "default-on",
    ),
    (
        "gb between disclosure and suspension",
        "GB",
        PUBLIC,
        "2024-09-19",
        (),
        True,
        Reason.DEFAULT_CONSENT,
        "default-on",
    ),
    (
        "gb suspended",
        "GB",
        PUBLIC,
        "2024-09-25",
        (),
        False,
        Reason.NO_LAWFUL_BASIS,
        "gb-suspended",
    ),
    (
        "gb suspended, private with opt-in",
        "GB",
        PRIVATE,
        "2024-09-25",
        (PRIVATE_OPT_IN,),
        False,
        Reason.NO_LAWFUL_BASIS,
        "gb-suspended",
    ),
    (
        "gb still suspended in 2026",
        "GB",
        PUBLIC,
        "2026-01-01",
        (),
        False,
        Reason.NO_LAWFUL_BASIS,
        "gb-suspended",
    ),
    # Hong Kong and mainland China: exempt at any date.
    *[
        (
            f"{j} exempt {d}",
            j,
            c,
            d,
            (Choice(GRANTED, OPT_IN, "2024-01-01"),),
            False,
            Reason.NO_LAWFUL_BASIS,
            "hk-cn-exempt",
        )
        for j in ("HK", "CN")
        for d in ("2024-08-15", "2024-10-01", "2025-11-10", "2027-01-01")
        for c in (PUBLIC, PRIVATE)
    ],
    # Elsewhere: explicit opt-in only.
    ("in no choice", "IN", PUBLIC, "2024-10-01", (), False, Reason.NO_CONSENT, "rest-of-world"),
    (
        "in opt-in",
        "IN",
        PUBLIC,
        "2024-10-01",
        (Choice(GRANTED, OPT_IN, "2024-09-01"),),
        True,
        Reason.CONSENTED,
        "rest-of-world",
    ),
    (
        "br private, opt-in for user (exact scope)",
        "BR",
        PRIVATE,
        "2024-10-01",
        (Choice(GRANTED, OPT_IN, "2024-09-01"),),
        False,
        Reason.NO_CONSENT,
        "rest-of-world-private-messages",
    ),
]


@pytest.mark.parametrize(
    ("jurisdiction", "category", "used_at", "choices", "eligible", "reason", "rule"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_case_timeline(
    genai: PolicyDocument,
    jurisdiction: str,
    category: str,
    used_at: str,
    choices: tuple[Choice, ...],
    eligible: bool,
    reason: Reason,
    rule: str | None,
) -> None:
    history = [event("member-1", jurisdiction, c) for c in choices]
    use = Use("member-1", jurisdiction, GENERATIVE, category, day(used_at))
    decision = evaluate(history, genai, use)
    assert (decision.eligible, decision.reason, decision.rule_id) == (eligible, reason, rule), (
        decision.explanation
    )
    assert decision.policy_id == "genai-training"
    assert decision.policy_version == "2024.1"
    assert rule is None or rule in decision.explanation


def test_purpose_outside_the_policy_has_no_rule(genai: PolicyDocument) -> None:
    use = Use("member-1", "US", "ai.training.ranking", PUBLIC, day("2024-10-01"))
    decision = evaluate([], genai, use)
    assert (decision.eligible, decision.reason, decision.rule_id) == (False, Reason.NO_RULE, None)


def test_decision_names_the_deciding_event_and_dates(genai: PolicyDocument) -> None:
    out = event("member-1", "US", OPTED_OUT_OCT_15)
    decision = evaluate([out], genai, Use("member-1", "US", GENERATIVE, PUBLIC, day("2024-11-01")))
    assert decision.consent_event_ids == (out.consent_event_id,)
    assert decision.mechanism is OPT_OUT
    assert "2024-10-15T00:00:00Z" in decision.explanation
    assert str(out.consent_event_id) in decision.explanation

    default = evaluate([], genai, Use("member-1", "US", GENERATIVE, PUBLIC, day("2024-08-15")))
    assert default.consent_event_ids == ()
    assert default.mechanism is DEFAULT
    assert "2024-09-18T00:00:00Z" in default.explanation


def test_us_opt_out_is_forward_only(genai: PolicyDocument) -> None:
    out = event("member-1", "US", OPTED_OUT_OCT_15)
    before = Use("member-1", "US", GENERATIVE, PUBLIC, day("2024-10-01"))
    assert evaluate([out], genai, before).eligible
    outcome = withdrawal_requirement(genai, before, out)
    assert outcome is not None
    assert (outcome.requires, outcome.erasure, outcome.rule_id) == (
        WithdrawalRequires.EXCLUDE_FROM_FUTURE,
        False,
        "default-on",
    )
    # The use after the withdrawal is an improper use, not a later withdrawal.
    after = Use("member-1", "US", GENERATIVE, PUBLIC, day("2024-11-01"))
    assert withdrawal_requirement(genai, after, out) is None
    assert evaluate([out], genai, after).reason is Reason.WITHDRAWN


def test_private_message_withdrawal_requires_retraining(genai: PolicyDocument) -> None:
    grant = event("member-1", "US", PRIVATE_OPT_IN)
    out = event("member-1", "US", OPTED_OUT_OCT_15)
    use = Use("member-1", "US", GENERATIVE, PRIVATE, day("2024-10-01"))
    assert evaluate([grant, out], genai, use).reason is Reason.CONSENTED
    outcome = withdrawal_requirement(genai, use, out)
    assert outcome is not None
    assert (outcome.requires, outcome.erasure) == (WithdrawalRequires.RETRAIN, False)


@pytest.mark.parametrize(
    ("jurisdiction", "expected"),
    [
        ("US-CA", [("ai.training", ("user",))]),
        ("US-CO", [("ai.training", ("user",))]),
        ("US-TX", [("ai.training", ("user",))]),
        ("US-NY", []),
        ("US", []),
        ("DE", []),
        ("GB", []),
    ],
)
def test_gpc(genai: PolicyDocument, jurisdiction: str, expected: list[object]) -> None:
    assert gpc_withdrawals(genai, subject_jurisdiction=jurisdiction) == expected


def test_gpc_withdrawal_reaches_generative_training(genai: PolicyDocument) -> None:
    ((purpose, categories),) = gpc_withdrawals(genai, subject_jurisdiction="US-CA")
    gpc = event(
        "member-1",
        "US-CA",
        Choice(WITHDRAWN, ConsentMechanism.GPC_SIGNAL, "2024-10-15", categories, purpose),
    )
    use = Use("member-1", "US-CA", GENERATIVE, PRIVATE, day("2024-11-01"))
    assert evaluate([gpc], genai, use).reason is Reason.WITHDRAWN


# --- the stricter GDPR-style variant -----------------------------------------------------


@pytest.mark.parametrize(
    ("category", "requires"),
    [
        (PUBLIC, WithdrawalRequires.RETRAIN),
        ("user.contact.email", WithdrawalRequires.RETRAIN),
        (PRIVATE, WithdrawalRequires.DESTROY),
        ("user.health_and_medical", WithdrawalRequires.DESTROY),
    ],
)
def test_gdpr_strict_withdrawal_requires_erasure(
    strict: PolicyDocument, category: str, requires: WithdrawalRequires
) -> None:
    grant = event("member-2", "DE", Choice(GRANTED, OPT_IN, "2024-09-01", (category,)))
    out = event("member-2", "DE", Choice(WITHDRAWN, OPT_OUT, "2024-12-01"))
    use = Use("member-2", "DE", GENERATIVE, category, day("2024-10-01"))
    assert evaluate([grant, out], strict, use).reason is Reason.CONSENTED
    outcome = withdrawal_requirement(strict, use, out)
    assert outcome is not None
    assert (outcome.requires, outcome.erasure) == (requires, True)
    assert outcome.policy_id == "gdpr-strict"


def test_gdpr_strict_has_no_default_and_honours_gpc_everywhere(strict: PolicyDocument) -> None:
    use = Use("member-2", "US", GENERATIVE, PUBLIC, day("2024-10-01"))
    assert evaluate([], strict, use).reason is Reason.NO_CONSENT
    assert evaluate(
        [event("member-2", "US", Choice(GRANTED, DEFAULT, "2024-09-01"))], strict, use
    ).reason is (Reason.BASIS_NOT_LAWFUL)
    assert gpc_withdrawals(strict, subject_jurisdiction="DE") == [("ai.training", ("user",))]


# --- re-reading the rules -----------------------------------------------------------------


def test_re_reading_changes_the_past_decision(genai: PolicyDocument) -> None:
    """A later version with the same valid_from ("private messages of premium members were
    never a lawful basis") turns a use that was eligible under the first reading into an
    improper one, as read now; as known before its publication, the old reading holds."""
    rules = tuple(
        rule.model_copy(update={"lawful_bases": ()})
        if rule.id == "default-on-private-messages"
        else rule
        for rule in genai.rules
    )
    re_read = genai.model_copy(update={"version": "2024.2", "rules": rules})
    re_read = PolicyDocument.model_validate(re_read.model_dump())
    versions = [(re_read, day("2025-02-01")), (genai, day("2024-08-01"))]

    history = [event("premium-1", "US", PRIVATE_OPT_IN)]
    use = Use("premium-1", "US", GENERATIVE, PRIVATE, day("2024-10-01"))

    as_read_then = policy_in_force(versions, use.used_at, known_at=day("2024-12-01"))
    as_read_now = policy_in_force(versions, use.used_at)
    assert as_read_then is genai
    assert as_read_now is re_read

    then = evaluate(history, as_read_then, use)
    now = evaluate(history, as_read_now, use)
    assert (then.eligible, then.reason, then.policy_version) == (True, Reason.CONSENTED, "2024.1")
    assert (now.eligible, now.reason, now.policy_version) == (
        False,
        Reason.NO_LAWFUL_BASIS,
        "2024.2",
    )
    # Public posts are untouched by the re-reading.
    public = Use("premium-1", "US", GENERATIVE, PUBLIC, day("2024-10-01"))
    assert evaluate(history, as_read_now, public).reason is Reason.DEFAULT_CONSENT


def test_policy_in_force_before_any_version(genai: PolicyDocument) -> None:
    assert policy_in_force([(genai, day("2024-08-01"))], day("2024-07-01")) is None
    assert policy_in_force([(genai, day("2024-08-01"))], day("2024-10-01")) is genai
    assert (
        policy_in_force([(genai, day("2024-08-01"))], day("2024-10-01"), known_at=day("2024-07-31"))
        is None
    )


def test_event_ids_are_stable() -> None:
    assert isinstance(event("m", "US", OPTED_OUT_OCT_15).consent_event_id, UUID)
    assert event("m", "US", OPTED_OUT_OCT_15) == event("m", "US", OPTED_OUT_OCT_15)
