"""What the consent HTTP API accepts and answers (its OpenAPI at ``/docs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from contracts.base import AwareDatetime, CategoryPath, Jurisdiction, PurposePath, SubjectId
from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState
from contracts.policy import PolicyDocument
from services.consent.domain.ledger import ConsentInForce
from services.consent.domain.model import BATCH_LIMIT, ConsentChange
from services.runtime.http import QueryTime

__all__ = [
    "BatchError",
    "BatchErrorDetail",
    "ConsentBatchRequest",
    "ConsentBatchResponse",
    "ConsentChangeRequest",
    "ConsentInForceResponse",
    "ConsentStateResponse",
    "ErrorResponse",
    "GpcEvidence",
    "GpcRequest",
    "GpcResponse",
    "PolicyVersionResponse",
    "QueryTime",
    "RecordedConsent",
    "SubjectExportResponse",
]

_SUBJECT = "member-45f68517b9"
_EVENT_ID = "3f0c1a52-8c9e-5d4b-a1f2-6e7d8c9b0a11"
_NOTICE = "sha256:" + "9f2b" * 16

_CHANGE_EXAMPLE: dict[str, Any] = {
    "subject_id": _SUBJECT,
    "jurisdiction": "US-CA",
    "purpose": "ai.training.generative",
    "data_categories": ["user.content.public", "user.content.private"],
    "state": "withdrawn",
    "mechanism": "opt_out",
    "policy_version": "ai-training:2024-09-18",
    "effective_at": "2024-09-20T08:15:00Z",
    "source_system": "settings",
    "evidence": {
        "collection_point": "settings/data-for-generative-ai",
        "notice_text_hash": _NOTICE,
        "channel": "web",
    },
    "erasure_requested": False,
}
_EVENT_EXAMPLE: dict[str, Any] = {
    "consent_event_id": _EVENT_ID,
    **_CHANGE_EXAMPLE,
    "recorded_at": "2024-09-20T08:15:02.412Z",
}
_GPC_EVENT_EXAMPLE: dict[str, Any] = {
    **_EVENT_EXAMPLE,
    "consent_event_id": "a4b7e0c2-1d3f-5a6b-8c9d-0e1f2a3b4c5d",
    "purpose": "marketing.advertising.sharing",
    "data_categories": ["user"],
    "mechanism": "gpc_signal",
    "policy_version": "ai-training:2024-09-18",
    "evidence": {
        "collection_point": "Sec-GPC header",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "channel": "gpc",
        "notice_text_hash": None,
    },
}


class ErrorResponse(BaseModel):
    """An error, said precisely."""

    detail: str = Field(
        examples=["Idempotency-Key 'req-1' was already used for a different change"]
    )


class ConsentChangeRequest(BaseModel):
    """A consent change as a settings system or consent banner reports it.

    ``purpose`` and every ``data_categories`` entry must be known terms
    (``contracts/taxonomy.py``); ``effective_at`` may be at most 5 minutes ahead of the
    service's clock.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CHANGE_EXAMPLE]})

    subject_id: SubjectId
    jurisdiction: Jurisdiction
    purpose: PurposePath
    data_categories: Annotated[list[CategoryPath], Field(min_length=1, max_length=64)]
    state: ConsentState
    mechanism: ConsentMechanism
    policy_version: Annotated[str, Field(min_length=1, max_length=256)]
    effective_at: AwareDatetime
    source_system: Annotated[str, Field(min_length=1, max_length=256)]
    evidence: ConsentEvidence
    erasure_requested: bool = False

    def to_change(self) -> ConsentChange:
        return ConsentChange(
            subject_id=self.subject_id,
            jurisdiction=self.jurisdiction,
            purpose=self.purpose,
            data_categories=tuple(self.data_categories),
            state=self.state,
            mechanism=self.mechanism,
            policy_version=self.policy_version,
            effective_at=self.effective_at,
            source_system=self.source_system,
            evidence=self.evidence,
            erasure_requested=self.erasure_requested,
        )


class RecordedConsent(ConsentEvent):
    """The recorded fact, plus the withdrawals a ``Sec-GPC: 1`` header added (if any)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_EVENT_EXAMPLE, "gpc_withdrawals": [_GPC_EVENT_EXAMPLE]}]
        }
    )

    gpc_withdrawals: tuple[ConsentEvent, ...] = ()


class ConsentBatchRequest(BaseModel):
    """Up to 1,000 changes recorded all together or not at all.

    Items are validated one by one, so that a 422 can name every failing index.
    """

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"changes": [_CHANGE_EXAMPLE]}]}
    )

    changes: Annotated[
        list[Any],
        WithJsonSchema(
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ConsentChangeRequest"},
                "minItems": 1,
                "maxItems": BATCH_LIMIT,
            }
        ),
    ]


class ConsentBatchResponse(BaseModel):
    idempotency_key: str | None
    replayed: bool = Field(description="True when this was a retry of a batch already recorded")
    count: int
    events: list[ConsentEvent]


class BatchError(BaseModel):
    index: int = Field(description="Position of the change in `changes` (0-based)")
    reason: str


class BatchErrorDetail(BaseModel):
    message: str
    errors: list[BatchError]


class BatchErrorResponse(BaseModel):
    """Some changes are invalid: each is named, and nothing was recorded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": {
                        "message": "2 of 3 changes are invalid; nothing was recorded",
                        "errors": [
                            {
                                "index": 0,
                                "reason": "unknown data category 'user.contents'; known under"
                                " 'user': user.account, … (did you mean 'user.content'?)",
                            },
                            {"index": 2, "reason": "jurisdiction: Field required"},
                        ],
                    }
                }
            ]
        }
    )

    detail: BatchErrorDetail


class GpcEvidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_agent: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="The User-Agent of the browser that sent the signal"
    )
    collection_point: Annotated[str, StringConstraints(min_length=1, max_length=256)] = (
        "Sec-GPC header"
    )


class GpcRequest(BaseModel):
    """A Global Privacy Control signal seen for the subject; the request must carry
    ``Sec-GPC: 1`` itself."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jurisdiction": "US-CA",
                    "source_system": "web-edge",
                    "evidence": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"},
                }
            ]
        },
    )

    jurisdiction: Jurisdiction
    source_system: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    evidence: GpcEvidence
    effective_at: AwareDatetime | None = Field(
        default=None, description="When the signal was seen; default: now"
    )


class GpcResponse(BaseModel):
    subject_id: str
    jurisdiction: str
    covered: bool = Field(description="Whether any policy in force gives GPC effect here")
    message: str
    policies: list[str] = Field(description="The policy versions (`policy_id:version`) applied")
    replayed: bool
    withdrawals: list[ConsentEvent]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject_id": _SUBJECT,
                    "jurisdiction": "US-CA",
                    "covered": True,
                    "message": "GPC withdrew 1 (purpose, categories) pair in US-CA",
                    "policies": ["ai-training:2024-09-18"],
                    "replayed": False,
                    "withdrawals": [_GPC_EVENT_EXAMPLE],
                },
                {
                    "subject_id": _SUBJECT,
                    "jurisdiction": "DE",
                    "covered": False,
                    "message": "no policy in force gives a GPC signal effect in DE;"
                    " nothing was recorded",
                    "policies": [],
                    "replayed": False,
                    "withdrawals": [],
                },
            ]
        }
    )


class ConsentInForceResponse(BaseModel):
    """The consent in force for one (purpose, data category)."""

    purpose: str
    data_category: str
    state: ConsentState
    mechanism: ConsentMechanism
    effective_at: datetime
    recorded_at: datetime
    decided_by: ConsentEvent
    superseded: list[UUID] = Field(description="Earlier relevant events it overrides, oldest first")
    explanation: str

    @classmethod
    def of(cls, entry: ConsentInForce) -> ConsentInForceResponse:
        return cls(
            purpose=entry.purpose,
            data_category=entry.data_category,
            state=entry.state,
            mechanism=entry.decided_by.mechanism,
            effective_at=entry.decided_by.effective_at,
            recorded_at=entry.decided_by.recorded_at,
            decided_by=entry.decided_by,
            superseded=list(entry.superseded),
            explanation=entry.explanation,
        )


class ConsentStateResponse(BaseModel):
    subject_id: str
    valid_at: datetime
    known_at: datetime
    consents: list[ConsentInForceResponse]


class PolicyVersionResponse(BaseModel):
    policy_id: str
    version: str
    valid_from: datetime
    published_at: datetime
    document: PolicyDocument


class SubjectExportResponse(BaseModel):
    """Everything the ledger holds about a subject, for legal."""

    subject_id: str
    generated_at: datetime
    jurisdictions: list[str]
    events: list[ConsentEvent] = Field(description="Every ledger event, in valid-time order")
    state: list[ConsentInForceResponse] = Field(description="The consent in force now")
    policy_versions: list[PolicyVersionResponse] = Field(
        description="The stored policy versions the events name"
    )
    unresolved_policy_versions: list[str] = Field(
        description="Policy versions the events name that this service holds no document for"
    )
