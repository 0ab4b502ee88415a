"""Records and dataset versions as ML pipelines register them. Pure.

Two ways in: one JSON document (``DatasetVersionRegistration``, up to 100,000 records) or
a stream of NDJSON lines, one ``RecordRegistration`` per line (``parse_record_lines``),
behind a ``DatasetVersionHeader``. Both end in the same seal (see the service layer), so
both obey the same rules: records are immutable, and the time of use is ``time_of_use``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime as _CoreAwareDatetime
from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from contracts.base import (
    AwareDatetime,
    CategoryPath,
    Contract,
    DatasetRef,
    Jurisdiction,
    PurposePath,
    SubjectId,
)
from contracts.registration import ContentDigest, RecordId, RecordRegistration

__all__ = [
    "RECORD_FIELDS",
    "DatasetVersionHeader",
    "DatasetVersionRegistration",
    "FieldError",
    "LineError",
    "RecordRegistration",
    "RecordRow",
    "parse_header_line",
    "parse_record_lines",
    "record_row",
    "time_of_use",
]


def time_of_use(
    sealed_at: datetime, training_started_at: datetime | None, *, backfill: bool = False
) -> datetime:
    """When a dataset version's records were used: its seal time, or a later declared
    training start. A training start *before* the seal cannot be: the snapshot did not
    exist yet, so the seal time stands (records cannot be used before they are sealed) —
    except for a **backfill**, a snapshot taken and trained on before it was registered
    here (importing history): its declared training start is its time of use."""
    if training_started_at is not None and (backfill or training_started_at > sealed_at):
        return training_started_at
    return sealed_at


class DatasetVersionHeader(Contract):
    """What names and dates a dataset version, without its records (an upload's header)."""

    dataset: DatasetRef
    purpose: PurposePath
    created_at: AwareDatetime
    training_started_at: AwareDatetime | None = None
    backfill: bool = False
    """The snapshot was taken and trained on before it was registered (history import):
    ``training_started_at`` (required then) is its time of use even before the seal.
    Accepted by the one-document form and the stream, not by chunked uploads."""

    @model_validator(mode="after")
    def _storable_names(self) -> DatasetVersionHeader:
        for part in ("namespace", "name", "version"):
            if "\x00" in getattr(self.dataset, part):
                raise ValueError(f"dataset.{part} contains NUL (U+0000)")
        if self.backfill and self.training_started_at is None:
            raise ValueError("a backfill must declare training_started_at (its time of use)")
        return self

    def time_of_use(self, sealed_at: datetime) -> datetime:
        return time_of_use(sealed_at, self.training_started_at, backfill=self.backfill)


class DatasetVersionRegistration(DatasetVersionHeader):
    """An immutable snapshot: an OpenLineage dataset version and its member records."""

    records: Annotated[tuple[RecordRegistration, ...], Field(min_length=1, max_length=100_000)]

    @model_validator(mode="after")
    def _unique_records(self) -> DatasetVersionRegistration:
        keys = {(r.source_system, r.record_id) for r in self.records}
        if len(keys) != len(self.records):
            raise ValueError("records contains the same (source_system, record_id) twice")
        return self

    def header(self) -> DatasetVersionHeader:
        return DatasetVersionHeader(
            dataset=self.dataset,
            purpose=self.purpose,
            created_at=self.created_at,
            training_started_at=self.training_started_at,
            backfill=self.backfill,
        )


# --- NDJSON lines ----------------------------------------------------------------------

RECORD_FIELDS = (
    "source_system",
    "record_id",
    "subject_id",
    "category",
    "jurisdiction",
    "collected_at",
    "content_digest",
)
"""The order of a ``RecordRow``'s fields (and of the staging table's columns)."""

RecordRow = tuple[int, int, str, str, str, str, str, datetime, str]
"""``(chunk, line, *RECORD_FIELDS)``: one validated record and where it came from."""


@with_config(ConfigDict(extra="forbid"))
class _RecordLine(TypedDict):
    """``RecordRegistration``'s fields and constraints, validated without building a model.

    Same types as ``RecordRegistration`` except ``collected_at``: pydantic's own
    ``AwareDatetime`` enforces the offset inside pydantic-core, where the contract's runs a
    Python validator per record. They accept and reject the same input
    (tests/unit/registry/test_snapshots.py); at a million lines this is a third faster.
    """

    record_id: RecordId
    source_system: RecordId
    subject_id: SubjectId
    category: CategoryPath
    jurisdiction: Jurisdiction
    collected_at: _CoreAwareDatetime
    content_digest: ContentDigest


_validate_record_line = TypeAdapter(_RecordLine).validator.validate_json  # no wrapper: per line
_record_values = operator.itemgetter(*RECORD_FIELDS)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str | None
    """The JSON field at fault, ``None`` when the line as a whole is (bad JSON, not an object)."""
    message: str
    type: str


class LineError(ValueError):
    """A line that is not a valid record (or header): its number and what is wrong with it."""

    def __init__(self, line: int, errors: Sequence[FieldError]) -> None:
        self.line = line
        self.errors = tuple(errors)
        first = self.errors[0]
        where = f"field {first.field!r}" if first.field else "the line"
        super().__init__(f"line {line}: {where}: {first.message}")

    @classmethod
    def from_validation(cls, line: int, exc: ValidationError) -> LineError:
        return cls(
            line,
            [
                FieldError(
                    field=".".join(str(p) for p in error["loc"]) or None,
                    message=error["msg"],
                    type=error["type"],
                )
                for error in exc.errors(include_url=False, include_input=False)
            ],
        )


def parse_record_lines(lines: Sequence[bytes], first_line: int, chunk: int) -> list[RecordRow]:
    """Validate NDJSON lines numbered from ``first_line``; blank lines are skipped.

    Raises ``LineError`` for the first line that is not a ``RecordRegistration``.
    """
    rows: list[RecordRow] = []
    append = rows.append
    number = first_line
    for line in lines:
        try:
            append((chunk, number, *_record_values(_validate_record_line(line))))
        except ValidationError as exc:
            if line.strip():
                raise LineError.from_validation(number, exc) from None
        number += 1
    return rows


def parse_header_line(line: bytes, number: int = 1) -> DatasetVersionHeader:
    """The first line of a one-shot stream: the dataset version it registers."""
    try:
        return DatasetVersionHeader.model_validate_json(line)
    except ValidationError as exc:
        raise LineError.from_validation(number, exc) from None


def record_row(record: RecordRegistration, chunk: int, line: int) -> RecordRow:
    """A record of a JSON registration, as the stream parser would have produced it."""
    values: dict[str, Any] = record.model_dump()
    return (chunk, line, *_record_values(values))
