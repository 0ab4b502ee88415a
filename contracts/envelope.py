"""CloudEvents 1.0 in Kafka binary content mode.

The event attributes travel as ``ce_*`` headers and the body is the bare JSON of the
event model (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md).
``ce_schemaversion`` is our extension attribute: the body's schema version, so a
consumer can refuse a body it does not understand instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import uuid4

from pydantic import StringConstraints, ValidationError

from contracts.base import AwareDatetime, Contract

__all__ = [
    "CONTENT_TYPE",
    "SCHEMA_VERSION",
    "Envelope",
    "EnvelopeError",
    "Headers",
]

SCHEMA_VERSION = "1"
CONTENT_TYPE: Literal["application/json"] = "application/json"
Headers = list[tuple[str, bytes]]

_Attr = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class EnvelopeError(ValueError):
    """The ``ce_*`` headers are missing or malformed."""


class Envelope(Contract):
    """The CloudEvents context attributes of one event."""

    id: _Attr
    type: _Attr
    source: _Attr
    time: AwareDatetime
    specversion: Literal["1.0"] = "1.0"
    subject: _Attr | None = None
    schemaversion: _Attr = SCHEMA_VERSION
    datacontenttype: Literal["application/json"] = CONTENT_TYPE

    @classmethod
    def new(
        cls, *, type: str, source: str, subject: str | None = None, id: str | None = None
    ) -> Envelope:
        """A fresh envelope at the current time, with ``id`` or else a random one."""
        return cls(
            id=id if id is not None else str(uuid4()),
            type=type,
            source=source,
            subject=subject,
            time=datetime.now(UTC),
        )

    def to_headers(self) -> Headers:
        headers: Headers = [
            ("ce_specversion", self.specversion.encode()),
            ("ce_id", self.id.encode()),
            ("ce_type", self.type.encode()),
            ("ce_source", self.source.encode()),
            ("ce_time", self.time.isoformat().encode()),
            ("ce_schemaversion", self.schemaversion.encode()),
            ("content-type", self.datacontenttype.encode()),
        ]
        if self.subject is not None:
            headers.append(("ce_subject", self.subject.encode()))
        return headers

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]]) -> Envelope:
        """Read the attributes back; the first occurrence of a header wins. Headers of
        attributes this model does not know (other ``ce_*`` extensions) are ignored."""
        found: dict[str, str] = {}
        for name, raw in headers:
            key = _ATTRIBUTE_OF_HEADER.get(name)
            if key is None or raw is None or key in found:
                continue
            try:
                found[key] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EnvelopeError(f"header {name!r} is not UTF-8") from exc
        if missing := [a for a in _REQUIRED if a not in found]:
            raise EnvelopeError(
                "missing CloudEvents headers: " + ", ".join(f"ce_{a}" for a in missing)
            )
        try:
            return cls.model_validate(found)
        except ValidationError as exc:
            raise EnvelopeError(f"invalid CloudEvents headers: {exc}") from exc


_ATTRIBUTE_OF_HEADER = {
    ("content-type" if name == "datacontenttype" else f"ce_{name}"): name
    for name in Envelope.model_fields
}
"""Header name → attribute, for the attributes the model knows: one dict lookup a header
(a consumer reads eight or nine per event, thousands of events a second)."""
_REQUIRED = ("id", "type", "source", "time", "specversion")
