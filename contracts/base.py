"""Base model and shared value types for every contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "AwareDatetime",
    "CategoryPath",
    "Contract",
    "DatasetRef",
    "Jurisdiction",
    "ModelRef",
    "PurposePath",
    "SubjectId",
]


class Contract(BaseModel):
    """Frozen, strict-shaped base: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


def _require_tz(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset (e.g. 2024-09-18T00:00:00Z)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_require_tz)]
"""A timestamp with an explicit offset: naive times are ambiguous in an audit."""

SubjectId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@\-]+$"),
]
"""Opaque pseudonymous subject key (never an e-mail address in clear)."""

Jurisdiction = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")]
"""ISO 3166-1 alpha-2 country code, optionally with an ISO 3166-2 subdivision (US-CA)."""

_DOTTED = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
PurposePath = Annotated[str, StringConstraints(max_length=200, pattern=_DOTTED)]
"""Dot-hierarchical purpose, e.g. ``ai.training.generative``."""
CategoryPath = Annotated[str, StringConstraints(max_length=200, pattern=_DOTTED)]
"""Dot-hierarchical data category (fideslang-aligned), e.g. ``user.content.private``."""

_NAME = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class DatasetRef(Contract):
    """A dataset version named the OpenLineage way: namespace + name, plus version."""

    namespace: _NAME
    name: _NAME
    version: Annotated[str, StringConstraints(min_length=1, max_length=256)]

    @property
    def key(self) -> str:
        """Kafka key and graph node id: ``dataset:{namespace}:{name}#{version}``."""
        return f"dataset:{self.namespace}:{self.name}#{self.version}"


class ModelRef(DatasetRef):
    """A model version: an OpenLineage dataset with ``datasetType: MODEL``."""

    @property
    def key(self) -> str:
        return f"model:{self.namespace}:{self.name}#{self.version}"


Count = Annotated[int, Field(ge=0)]
