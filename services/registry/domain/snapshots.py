"""Records and dataset versions as ML pipelines register them. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from contracts.base import (
    AwareDatetime,
    CategoryPath,
    Contract,
    DatasetRef,
    Jurisdiction,
    PurposePath,
    SubjectId,
)

__all__ = ["DatasetVersionRegistration", "RecordRegistration"]

_Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RecordRegistration(Contract):
    """One record: where it lives and whose it is. Never its content, only a digest."""

    record_id: _Id
    source_system: _Id
    subject_id: SubjectId
    category: CategoryPath
    jurisdiction: Jurisdiction
    collected_at: AwareDatetime
    content_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class DatasetVersionRegistration(Contract):
    """An immutable snapshot: an OpenLineage dataset version and its member records."""

    dataset: DatasetRef
    purpose: PurposePath
    created_at: AwareDatetime
    training_started_at: AwareDatetime | None = None
    records: Annotated[tuple[RecordRegistration, ...], Field(min_length=1, max_length=100_000)]

    @model_validator(mode="after")
    def _unique_records(self) -> DatasetVersionRegistration:
        keys = {(r.source_system, r.record_id) for r in self.records}
        if len(keys) != len(self.records):
            raise ValueError("records contains the same (source_system, record_id) twice")
        return self

    def time_of_use(self, sealed_at: datetime) -> datetime:
        """When the records were used: the seal time, or a later declared training start."""
        if self.training_started_at and self.training_started_at > sealed_at:
            return self.training_started_at
        return sealed_at
