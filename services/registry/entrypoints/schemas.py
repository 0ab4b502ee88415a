"""What the registry's registration API answers (its OpenAPI at ``/docs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from contracts.base import DatasetRef
from services.runtime.http import QueryTime

__all__ = [
    "ChunkInfo",
    "ChunkReceiptResponse",
    "DatasetVersionResponse",
    "ErrorResponse",
    "LineErrorItem",
    "LineErrorResponse",
    "QueryTime",
    "RecordKey",
    "SubjectCategory",
    "SubjectDatasetVersion",
    "UploadResponse",
]

NDJSON_EXAMPLE = (
    '{"record_id":"msg-1","source_system":"inbox","subject_id":"member-45f68517b9",'
    '"category":"user.content.private","jurisdiction":"US",'
    '"collected_at":"2024-08-01T12:00:00Z","content_digest":"sha256:' + "0" * 64 + '"}\n'
)


class DatasetVersionResponse(BaseModel):
    """A sealed dataset version."""

    dataset: DatasetRef
    purpose: str
    created_at: datetime
    training_started_at: datetime | None
    sealed_at: datetime = Field(
        description="When registration committed: from then on it is visible"
    )
    used_at: datetime = Field(
        description="Time of use of its records: the seal time, or a later declared training start"
    )
    record_count: int
    upload_id: UUID | None = Field(None, description="The chunked upload it was sealed from")


class ChunkInfo(BaseModel):
    chunk: int
    records: int
    received_at: datetime


class UploadResponse(BaseModel):
    """A chunked upload: open (chunks being staged) or sealed."""

    upload_id: UUID
    state: Literal["open", "sealed"]
    dataset: DatasetRef
    purpose: str
    created_at: datetime
    training_started_at: datetime | None
    opened_at: datetime
    sealed_at: datetime | None
    records: int = Field(description="Records staged, over every chunk")
    chunks: list[ChunkInfo]
    expires_at: datetime | None = Field(
        default=None,
        description="An open upload expires at this time unless a chunk arrives first"
        " (`UPLOAD_IDLE_TIMEOUT_S` after the last one; its staged rows are then dropped and"
        " its name freed). None once sealed, and for a registration over Kafka.",
    )


class ChunkReceiptResponse(BaseModel):
    upload_id: UUID
    chunk: int
    records: int = Field(description="Records staged from this chunk")
    replaced: bool = Field(description="True when it replaced a chunk of the same number")


class RecordKey(BaseModel):
    source_system: str
    record_id: str


class SubjectCategory(BaseModel):
    category: str
    records: int = Field(description="The subject's records of this category in the version")
    sample: list[RecordKey] = Field(description="Some of them (a bounded sample)")


class SubjectDatasetVersion(DatasetVersionResponse):
    """A sealed dataset version holding records of the subject asked about."""

    subject_records: int
    categories: list[SubjectCategory]


class ErrorResponse(BaseModel):
    """An error, said precisely; ``records`` or ``chunks`` name what it is about."""

    detail: str
    records: list[dict[str, Any]] | None = None
    chunks: list[dict[str, Any]] | None = None


class LineErrorItem(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "line", 17, "subject_id"]])
    msg: str
    type: str
    line: int = Field(description="1-based line number in the body (the header is line 1)")
    field: str | None = Field(description="The field at fault; null when the whole line is")
    chunk: int | None = None


class LineErrorResponse(BaseModel):
    """A line that is not a valid record: nothing of the body was kept."""

    detail: list[LineErrorItem]
