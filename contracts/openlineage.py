"""The project's own pydantic models of the OpenLineage 2-0-2 core event format.

They mirror `https://openlineage.io/spec/2-0-2/OpenLineage.json`: the same required
fields, the same types and formats (RFC 3339 ``date-time``, RFC 3986 ``uri``, RFC 4122
``uuid``), and, since that schema never sets ``additionalProperties: false``, every
object keeps properties it does not name (``extra="allow"``). Facets are kept as
received (a dict per facet); only the core checks of the spec's ``BaseFacet`` are
applied to them (``_producer`` and ``_schemaURL`` URIs, ``_deleted`` a boolean on job
and dataset facets).

Python attributes are snake_case, the wire names are the spec's camelCase aliases.
``parse_openlineage_event`` is the entry point for wire data: it applies the spec's
top-level ``oneOf`` (exactly one of RunEvent, DatasetEvent, JobEvent must match) and
accepts wire names only. ``model_dump(mode="json", by_alias=True, exclude_none=True)``
gives back what was received, including the original text of ``eventTime`` and
``runId``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self, TypeAlias
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

__all__ = [
    "MODEL_DATASET_TYPE",
    "SPEC_URL",
    "AmbiguousOpenLineageEventError",
    "BaseEvent",
    "Dataset",
    "DatasetEvent",
    "EventType",
    "InputDataset",
    "Job",
    "JobEvent",
    "OpenLineageEvent",
    "OutputDataset",
    "Run",
    "RunEvent",
    "StaticDataset",
    "is_rfc3339_date_time",
    "is_rfc3986_uri",
    "is_rfc4122_uuid",
    "parse_openlineage_event",
]

SPEC_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
"""The ``$id`` of the schema these models mirror; ``schemaURL`` values point into it."""

MODEL_DATASET_TYPE = "MODEL"
"""The ``datasetType`` facet value that marks a dataset as a model."""


# --- formats -------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<offset>Z|(?P<sign>[+-])(?P<offset_hour>[0-9]{2}):(?P<offset_minute>[0-9]{2}))",
    re.IGNORECASE,
)


def _parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 ``date-time`` (section 5.6) as an aware datetime, or None.

    ``T`` and ``Z`` may be lower case (RFC 3339, 5.6 note). Leap seconds (``:60``) are
    refused: Python cannot represent them, and the jsonschema checker refuses them too.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    offset = timedelta(0)
    if match["sign"]:
        offset_hour, offset_minute = int(match["offset_hour"]), int(match["offset_minute"])
        if offset_hour > 23 or offset_minute > 59:
            return None
        offset = timedelta(hours=offset_hour, minutes=offset_minute)
        offset = -offset if match["sign"] == "-" else offset
    try:
        return datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            int((match["fraction"] or "")[:6].ljust(6, "0")),
            tzinfo=timezone(offset),
        )
    except ValueError:  # month 13, February 30, hour 24, second 60, year 0, ...
        return None


def is_rfc3339_date_time(value: str) -> bool:
    """Whether ``value`` is an RFC 3339 ``date-time`` (the spec's ``eventTime`` format)."""
    return _parse_rfc3339(value) is not None


# RFC 3986, appendix A, transcribed from the ABNF.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT_ENCODED = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT_ENCODED})"
_H16 = r"[0-9A-Fa-f]{1,4}"
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
_IP_LITERAL = rf"\[(?:{_IPV6}|v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT_ENCODED})*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT_ENCODED})*"
_AUTHORITY = rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_IPV4}|{_REG_NAME})(?::[0-9]*)?"
_HIER_PART = (
    rf"(?://{_AUTHORITY}(?:/{_PCHAR}*)*"  # "//" authority path-abempty
    rf"|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?"  # path-absolute
    rf"|{_PCHAR}+(?:/{_PCHAR}*)*"  # path-rootless
    r"|)"  # path-empty
)
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+\-.]*:{_HIER_PART}(?:\?{_QUERY})?(?:#{_QUERY})?")

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def is_rfc3986_uri(value: str) -> bool:
    """Whether ``value`` is an absolute RFC 3986 ``URI`` (the spec's ``uri`` format)."""
    return _URI.fullmatch(value) is not None


def is_rfc4122_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in the RFC 4122 string form (8-4-4-4-12 hex digits)."""
    return _UUID.fullmatch(value) is not None


def _uri(value: str) -> str:
    if not is_rfc3986_uri(value):
        raise ValueError("must be an absolute URI (RFC 3986)")
    return value


def _event_time(value: object) -> object:
    if isinstance(value, datetime):  # built in Python; AwareDatetime checks the zone
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    parsed = _parse_rfc3339(value)
    if parsed is None:
        raise ValueError("must be an RFC 3339 date-time with a time zone offset")
    return parsed


def _run_id(value: object) -> object:
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str) or not is_rfc4122_uuid(value):
        raise ValueError("must be a UUID string (8-4-4-4-12 hex digits)")
    return UUID(value)


def _not_null(value: object) -> object:
    """Optional spec properties may be absent, never ``null``."""
    if value is None:
        raise ValueError("may be omitted but not null")
    return value


_NotNull = BeforeValidator(_not_null)

_Uri = Annotated[
    StrictStr, AfterValidator(_uri), WithJsonSchema({"type": "string", "format": "uri"})
]
_EventTime = Annotated[AwareDatetime, BeforeValidator(_event_time)]
_RunId = Annotated[UUID, BeforeValidator(_run_id)]


# --- facets --------------------------------------------------------------------------


def _check_facets(facets: dict[str, dict[str, Any]], *, deletable: bool) -> None:
    """The spec's ``BaseFacet`` rules (and ``_deleted`` for job and dataset facets)."""
    for key, facet in facets.items():
        for attribute in ("_producer", "_schemaURL"):
            if attribute not in facet:
                raise ValueError(f"facet {key!r} lacks the required {attribute!r}")
            value = facet[attribute]
            if not isinstance(value, str) or not is_rfc3986_uri(value):
                raise ValueError(f"facet {key!r}: {attribute!r} must be an absolute URI")
        if deletable and "_deleted" in facet and not isinstance(facet["_deleted"], bool):
            raise ValueError(f"facet {key!r}: '_deleted' must be a boolean")


def _base_facets(facets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    _check_facets(facets, deletable=False)
    return facets


def _deletable_facets(facets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    _check_facets(facets, deletable=True)
    return facets


_BaseFacets = Annotated[dict[str, dict[str, Any]], AfterValidator(_base_facets)]
"""Run, input-dataset and output-dataset facets: ``BaseFacet`` objects by name."""
_DeletableFacets = Annotated[dict[str, dict[str, Any]], AfterValidator(_deletable_facets)]
"""Job and dataset facets: ``BaseFacet`` objects by name, with an optional ``_deleted``."""


# --- models --------------------------------------------------------------------------


def _same(parsed: object, value: object) -> bool:
    if isinstance(parsed, datetime) and isinstance(value, datetime):
        return parsed == value and parsed.utcoffset() == value.utcoffset()
    return parsed == value


def _absent_not_null(schema: dict[str, Any]) -> None:
    """In the JSON Schema, an optional property may be absent but not null, as in the spec.

    ``_NotNull`` enforces that at validation; a validator leaves no trace in the generated
    schema, so the schema is corrected here for non-Python producers that validate with it.
    """
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf")
        if name in required or not options:
            continue
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == len(options):
            continue
        prop.pop("anyOf")
        prop.pop("default", None)
        if len(kept) == 1:
            prop.update(kept[0])
        else:
            prop["anyOf"] = kept


class _WireModel(BaseModel):
    """Frozen, keeps unknown properties, camelCase on the wire, dumps what it received."""

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        populate_by_name=True,
        serialize_by_alias=True,
        json_schema_extra=_absent_not_null,
    )

    # Fields whose canonical Python value may print differently from the received text
    # (``Z`` vs ``+00:00``, upper-case hex): field name -> parser of that text.
    _WIRE_TEXT_FIELDS: ClassVar[Mapping[str, Callable[[str], object]]] = {}
    _wire_text: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_wire_text(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        model = handler(data)
        if cls._WIRE_TEXT_FIELDS and isinstance(data, Mapping):
            for name in cls._WIRE_TEXT_FIELDS:
                alias = cls.model_fields[name].alias or name
                text = data.get(alias, data.get(name))
                if isinstance(text, str):
                    model._wire_text[name] = text
        return model

    @model_serializer(mode="wrap")
    def _serialize(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if info.mode_is_json():
            for name, text in self._wire_text.items():
                key = type(self).model_fields[name].alias or name
                key = key if key in data else name
                parsed = self._WIRE_TEXT_FIELDS[name](text)
                if key in data and _same(parsed, getattr(self, name)):
                    data[key] = text
        if info.exclude_none and self.__pydantic_extra__:
            # ``exclude_none`` is meant for our optional fields; an unknown property
            # received as null is data and is given back.
            excluded = info.exclude if isinstance(info.exclude, Mapping | set) else ()
            included = info.include
            for key, value in self.__pydantic_extra__.items():
                wanted = key not in excluded and (included is None or key in included)
                if value is None and wanted and key not in data:
                    data[key] = None
        return data


class Run(_WireModel):
    """The run an event is about (``Run``): its ``runId`` and run facets."""

    _WIRE_TEXT_FIELDS = {"run_id": UUID}

    run_id: _RunId = Field(alias="runId")
    facets: Annotated[_BaseFacets | None, _NotNull] = None


class Job(_WireModel):
    """A job (``Job``): ``namespace`` and ``name`` identify it; job facets."""

    namespace: StrictStr
    name: StrictStr
    facets: Annotated[_DeletableFacets | None, _NotNull] = None


class Dataset(_WireModel):
    """A dataset (``Dataset``): ``namespace`` and ``name`` identify it; dataset facets."""

    namespace: StrictStr
    name: StrictStr
    facets: Annotated[_DeletableFacets | None, _NotNull] = None

    def _facet_value(self, facet: str, key: str) -> str | None:
        value = (self.facets or {}).get(facet, {}).get(key)
        return value if isinstance(value, str) else None

    @property
    def version(self) -> str | None:
        """``datasetVersion`` of the ``version`` facet (DatasetVersionDatasetFacet), if any."""
        return self._facet_value("version", "datasetVersion")

    @property
    def dataset_type(self) -> str | None:
        """``datasetType`` of the ``datasetType`` facet (DatasetTypeDatasetFacet), if any."""
        return self._facet_value("datasetType", "datasetType")

    @property
    def is_model(self) -> bool:
        """Whether this dataset is a model: its ``datasetType`` is exactly ``MODEL``."""
        return self.dataset_type == MODEL_DATASET_TYPE


class InputDataset(Dataset):
    """A dataset a run or job reads (``InputDataset``), with its ``inputFacets``."""

    input_facets: Annotated[_BaseFacets | None, _NotNull] = Field(default=None, alias="inputFacets")


class OutputDataset(Dataset):
    """A dataset a run or job writes (``OutputDataset``), with its ``outputFacets``."""

    output_facets: Annotated[_BaseFacets | None, _NotNull] = Field(
        default=None, alias="outputFacets"
    )


class StaticDataset(Dataset):
    """The dataset of a DatasetEvent (``StaticDataset``): a plain Dataset."""


class EventType(StrEnum):
    """A RunEvent's ``eventType``: the transition of the run's state."""

    START = "START"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ABORT = "ABORT"
    FAIL = "FAIL"
    OTHER = "OTHER"


class BaseEvent(_WireModel):
    """What every event carries (``BaseEvent``): time, producer URI and schema URL."""

    _WIRE_TEXT_FIELDS = {"event_time": _parse_rfc3339}

    event_time: _EventTime = Field(alias="eventTime")
    producer: _Uri
    schema_url: _Uri = Field(alias="schemaURL")


class RunEvent(BaseEvent):
    """A run's state change (``RunEvent``): run, job, and the datasets it reads and writes.

    ``eventType`` is optional in 2-0-2.
    """

    event_type: Annotated[EventType | None, _NotNull] = Field(default=None, alias="eventType")
    run: Run
    job: Job
    inputs: Annotated[list[InputDataset] | None, _NotNull] = None
    outputs: Annotated[list[OutputDataset] | None, _NotNull] = None


class DatasetEvent(BaseEvent):
    """Static metadata about a dataset (``DatasetEvent``); never both ``job`` and ``run``."""

    dataset: StaticDataset

    @model_validator(mode="before")
    @classmethod
    def _not_job_and_run(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "job" in data and "run" in data:
            raise ValueError("a DatasetEvent must not carry both 'job' and 'run'")
        return data


class JobEvent(BaseEvent):
    """Static metadata about a job (``JobEvent``): job and datasets; never a ``run``."""

    job: Job
    inputs: Annotated[list[InputDataset] | None, _NotNull] = None
    outputs: Annotated[list[OutputDataset] | None, _NotNull] = None

    @model_validator(mode="before")
    @classmethod
    def _no_run(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "run" in data:
            raise ValueError("a JobEvent must not carry a 'run'")
        return data


OpenLineageEvent: TypeAlias = RunEvent | DatasetEvent | JobEvent
"""Any OpenLineage 2-0-2 event."""


class AmbiguousOpenLineageEventError(ValueError):
    """The data is both a valid DatasetEvent and a valid JobEvent; the spec's ``oneOf``
    requires exactly one kind to match."""


_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_KINDS: tuple[type[RunEvent], type[DatasetEvent], type[JobEvent]] = (
    RunEvent,
    DatasetEvent,
    JobEvent,
)


def parse_openlineage_event(data: Mapping[str, Any] | bytes | bytearray | str) -> OpenLineageEvent:
    """Parse wire data (a JSON object, or its text) into the one event kind it matches.

    Only the spec's camelCase names are read. Raises ``pydantic.ValidationError`` when no
    kind matches (the error of the kind the data looks like: ``run`` present means
    RunEvent, else ``dataset`` means DatasetEvent, else ``job`` means JobEvent), and
    ``AmbiguousOpenLineageEventError`` when more than one does. Both are ValueErrors.
    """
    payload: object = (
        _JSON_OBJECT.validate_json(data) if isinstance(data, bytes | bytearray | str) else data
    )
    matches: list[OpenLineageEvent] = []
    errors: dict[type[BaseEvent], ValidationError] = {}
    for kind in _KINDS:
        try:
            matches.append(kind.model_validate(payload, by_alias=True, by_name=False))
        except ValidationError as error:
            errors[kind] = error
    if len(matches) == 1:
        return matches[0]
    if matches:
        kinds = " and ".join(type(match).__name__ for match in matches)
        raise AmbiguousOpenLineageEventError(
            f"the event is a valid {kinds}; OpenLineage 2-0-2 requires exactly one kind"
        )
    likely: type[BaseEvent] = RunEvent
    if isinstance(payload, Mapping) and "run" not in payload:
        likely = DatasetEvent if "dataset" in payload else JobEvent if "job" in payload else likely
    raise errors[likely]
