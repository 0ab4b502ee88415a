"""contracts.openlineage accepts exactly what the official OpenLineage 2-0-2 JSON Schema accepts.

The oracle is the schema published by OpenLineage (``/work/shared/openlineage/spec``, or
``$OPENLINEAGE_SPEC_DIR``) checked by ``jsonschema``'s Draft 2020-12 validator with format
assertion on (``date-time`` needs ``rfc3339-validator``, ``uri`` needs
``rfc3986-validator``; ``uuid`` is built in). Every sample, hand-written or generated, is
checked three ways: the whole event (the schema's top-level ``oneOf``) against
``parse_openlineage_event``, each of RunEvent / DatasetEvent / JobEvent against the model
of that name, and, when valid, the dump against the input (round trip).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from contracts.openlineage import (
    SPEC_URL,
    AmbiguousOpenLineageEventError,
    BaseEvent,
    DatasetEvent,
    EventType,
    Job,
    JobEvent,
    Run,
    RunEvent,
    parse_openlineage_event,
)

Json = Any
Path_ = tuple[str | int, ...]

KINDS: tuple[type[BaseEvent], ...] = (RunEvent, DatasetEvent, JobEvent)
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


# --- the official schema ----------------------------------------------------------------


def _spec_dir() -> Path:
    """$OPENLINEAGE_SPEC_DIR, else ``shared/`` beside the checkout, else the workplace's copy."""
    configured = os.environ.get("OPENLINEAGE_SPEC_DIR")
    if configured:
        return Path(configured)
    candidates = [
        Path(__file__).resolve().parents[4] / "shared" / "openlineage" / "spec",
        Path("/work/shared/openlineage/spec"),
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


@functools.cache
def _spec_file(name: str) -> dict[str, Any]:
    path = _spec_dir() / name
    if not path.is_file():
        pytest.fail(
            f"OpenLineage spec file {path} not found: the official 2-0-2 schema is expected in "
            "shared/openlineage/spec beside the repository, or in $OPENLINEAGE_SPEC_DIR",
            pytrace=False,
        )
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator(kind: str | None = None) -> Draft202012Validator:
    """The whole schema, or (``kind``) the schema with its ``oneOf`` narrowed to one kind."""
    schema = _spec_file("OpenLineage.json")
    if kind is not None:
        schema = {**schema, "oneOf": [{"$ref": f"#/$defs/{kind}"}]}
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


def _model_accepts(kind: type[BaseEvent], sample: Json) -> bool:
    try:
        kind.model_validate(sample, by_alias=True, by_name=False)
    except ValidationError:
        return False
    return True


def _assert_agree(sample: Json, expected: bool | None = None) -> None:
    """Schema and models agree on ``sample``, kind by kind; valid samples round-trip."""
    official = _validator().is_valid(sample)
    if expected is not None:
        errors = [e.message for e in _validator().iter_errors(sample)]
        assert official is expected, f"the official schema says {official}: {errors}"
    schema_kinds = {kind.__name__: _validator(kind.__name__).is_valid(sample) for kind in KINDS}
    model_kinds = {kind.__name__: _model_accepts(kind, sample) for kind in KINDS}
    assert model_kinds == schema_kinds, sample
    try:
        event = parse_openlineage_event(sample)
    except ValueError as error:
        assert not official, f"model rejects a valid event: {error}"
        return
    assert official, f"model accepts an invalid event as {type(event).__name__}"
    assert schema_kinds[type(event).__name__]
    assert event.model_dump(mode="json", by_alias=True, exclude_none=True) == sample
    assert json.loads(event.model_dump_json(by_alias=True, exclude_none=True)) == sample
    again = parse_openlineage_event(json.dumps(sample).encode())
    assert again.model_dump(mode="json", exclude_none=True) == sample


# --- samples ------------------------------------------------------------------------------

PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.24.2/client/python"
RUN_ID = "0190f2b0-7c1e-7d2a-9b3c-4d5e6f708192"
PARENT_RUN_ID = "0190f2a1-11aa-7b2c-8d3e-9f4051627384"


def _schema_url(kind: str) -> str:
    return f"{SPEC_URL}#/$defs/{kind}"


def _facet(name: str, spec_version: str = "1-0-1", /, **fields: Json) -> dict[str, Json]:
    """A facet as the openlineage-python client writes it."""
    return {
        "_producer": PRODUCER,
        "_schemaURL": f"https://openlineage.io/spec/facets/{spec_version}/{name}.json#/$defs/{name}",
        **fields,
    }


def _training_input() -> dict[str, Json]:
    return {
        "namespace": "s3://acme-training",
        "name": "snapshots/support-posts",
        "facets": {
            "schema": _facet(
                "SchemaDatasetFacet",
                "1-1-1",
                fields=[
                    {"name": "record_id", "type": "string"},
                    {"name": "text", "type": "string", "description": "post body"},
                ],
            ),
            "dataSource": _facet(
                "DatasourceDatasetFacet", name="s3://acme-training", uri="s3://acme-training"
            ),
            "version": _facet("DatasetVersionDatasetFacet", datasetVersion="2024-11-05.1"),
        },
        "inputFacets": {
            "inputStatistics": _facet(
                "InputStatisticsInputDatasetFacet", "1-0-0", rowCount=120000, size=5_242_880
            )
        },
    }


def _base_model_input() -> dict[str, Json]:
    return {
        "namespace": "mlflow://models",
        "name": "acme-llm-base",
        "facets": {
            "datasetType": _facet("DatasetTypeDatasetFacet", datasetType="MODEL"),
            "version": _facet("DatasetVersionDatasetFacet", datasetVersion="3"),
        },
    }


def _model_output(version: str = "7") -> dict[str, Json]:
    return {
        "namespace": "mlflow://models",
        "name": "acme-llm-support",
        "facets": {
            "datasetType": _facet("DatasetTypeDatasetFacet", datasetType="MODEL"),
            "version": _facet("DatasetVersionDatasetFacet", datasetVersion=version),
        },
        "outputFacets": {
            "outputStatistics": _facet(
                "OutputStatisticsOutputDatasetFacet", "1-0-2", rowCount=1, size=1_400_000_000
            )
        },
    }


def _job() -> dict[str, Json]:
    return {
        "namespace": "ml-pipelines",
        "name": "support_llm.fine_tune",
        "facets": {
            "jobType": _facet(
                "JobTypeJobFacet",
                "2-0-3",
                processingType="BATCH",
                integration="PYTORCH",
                jobType="TRAINING",
            ),
            "sourceCodeLocation": _facet(
                "SourceCodeLocationJobFacet",
                type="git",
                url="https://github.com/acme/ml-pipelines",
                version="9f2c1e4",
            ),
        },
    }


def start_event() -> dict[str, Json]:
    """A fine-tune run's START: snapshot and base model in, model out, parent run."""
    return {
        "eventTime": "2024-11-05T09:30:00.123456+00:00",
        "producer": PRODUCER,
        "schemaURL": _schema_url("RunEvent"),
        "eventType": "START",
        "run": {
            "runId": RUN_ID,
            "facets": {
                "parent": _facet(
                    "ParentRunFacet",
                    "1-1-0",
                    run={"runId": PARENT_RUN_ID},
                    job={"namespace": "airflow", "name": "support_llm_dag"},
                ),
                "nominalTime": _facet(
                    "NominalTimeRunFacet", nominalStartTime="2024-11-05T09:00:00Z"
                ),
                "processing_engine": _facet(
                    "ProcessingEngineRunFacet",
                    "1-1-1",
                    version="2.5.1",
                    name="pytorch",
                    openlineageAdapterVersion="1.24.2",
                ),
            },
        },
        "job": _job(),
        "inputs": [_training_input(), _base_model_input()],
        "outputs": [_model_output()],
    }


def complete_event() -> dict[str, Json]:
    """The same run's COMPLETE."""
    return {
        "eventTime": "2024-11-05T11:02:13.5Z",
        "producer": PRODUCER,
        "schemaURL": _schema_url("RunEvent"),
        "eventType": "COMPLETE",
        "run": {"runId": RUN_ID, "facets": {}},
        "job": {"namespace": "ml-pipelines", "name": "support_llm.fine_tune"},
        "inputs": [_training_input(), _base_model_input()],
        "outputs": [_model_output()],
    }


def dataset_event() -> dict[str, Json]:
    return {
        "eventTime": "2024-11-05T12:00:00Z",
        "producer": PRODUCER,
        "schemaURL": _schema_url("DatasetEvent"),
        "dataset": {
            "namespace": "s3://acme-training",
            "name": "snapshots/support-posts",
            "facets": {
                "lifecycleStateChange": _facet(
                    "LifecycleStateChangeDatasetFacet", lifecycleStateChange="DROP"
                )
            },
        },
    }


def job_event() -> dict[str, Json]:
    return {
        "eventTime": "2024-11-05T08:00:00-05:00",
        "producer": PRODUCER,
        "schemaURL": _schema_url("JobEvent"),
        "job": _job(),
        "inputs": [_training_input()],
        "outputs": [_model_output()],
    }


def _set(sample: Json, path: Path_, value: Json) -> Json:
    out = copy.deepcopy(sample)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def _drop(sample: Json, path: Path_) -> Json:
    out = copy.deepcopy(sample)
    node = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


def _valid(name: str, sample: Json) -> Any:
    return pytest.param(sample, True, id=f"valid:{name}")


def _invalid(name: str, sample: Json) -> Any:
    return pytest.param(sample, False, id=f"invalid:{name}")


S, C, D, J = start_event(), complete_event(), dataset_event(), job_event()
MINIMAL_RUN = {
    "eventTime": "2024-11-05T09:30:00Z",
    "producer": "urn:acme:pipelines",
    "schemaURL": _schema_url("RunEvent"),
    "run": {"runId": RUN_ID},
    "job": {"namespace": "", "name": ""},
}

RUN_REQUIRED: list[Path_] = [
    ("eventTime",),
    ("producer",),
    ("schemaURL",),
    ("job",),
    ("run", "runId"),
    ("job", "namespace"),
    ("job", "name"),
    ("inputs", 0, "namespace"),
    ("inputs", 0, "name"),
    ("outputs", 0, "namespace"),
    ("outputs", 0, "name"),
    ("run", "facets", "parent", "_producer"),
    ("job", "facets", "jobType", "_schemaURL"),
    ("inputs", 0, "facets", "schema", "_producer"),
    ("inputs", 0, "inputFacets", "inputStatistics", "_schemaURL"),
    ("outputs", 0, "outputFacets", "outputStatistics", "_producer"),
]
DATASET_REQUIRED: list[Path_] = [
    ("eventTime",),
    ("producer",),
    ("schemaURL",),
    ("dataset",),
    ("dataset", "namespace"),
    ("dataset", "name"),
    ("dataset", "facets", "lifecycleStateChange", "_producer"),
]
JOB_REQUIRED: list[Path_] = [
    ("eventTime",),
    ("producer",),
    ("schemaURL",),
    ("job",),
    ("job", "name"),
    ("inputs", 0, "name"),
]


def _label(path: Path_) -> str:
    return ".".join(str(step) for step in path)


CASES = [
    # realistic events
    _valid("start", S),
    _valid("complete", C),
    _valid("dataset_event", D),
    _valid("job_event", J),
    _valid("minimal_run_event_empty_names_urn_producer", MINIMAL_RUN),
    *[_valid(f"event_type_{t.value}", _set(C, ("eventType",), t.value)) for t in EventType],
    # optional or open in 2-0-2
    _valid("event_type_is_optional", _drop(S, ("eventType",))),
    _valid("empty_inputs_outputs_facets", {**MINIMAL_RUN, "inputs": [], "outputs": []}),
    _valid("extra_top_level_field", {**S, "x-acme-trace": {"id": 1}}),
    _valid("extra_null_fields_everywhere", _set({**S, "note": None}, ("run", "note"), None)),
    _valid("extra_fields_in_run_job_dataset", _set(_set(S, ("run", "x"), 1), ("job", "y"), [])),
    _valid("snake_case_names_are_extras", {**S, "event_time": 5, "schema_url": None}),
    _valid("facet_without_payload", _set(C, ("run", "facets", "f"), _facet("F"))),
    _valid("job_facet_deleted_flag", _set(S, ("job", "facets", "jobType", "_deleted"), True)),
    _valid(
        "run_facet_deleted_not_constrained", _set(S, ("run", "facets", "parent", "_deleted"), 3)
    ),
    _valid("output_facets_on_input_is_extra", _set(S, ("inputs", 0, "outputFacets"), 7)),
    # date-time, uuid and uri forms the formats allow
    _valid("date_time_lower_case_t_z", _set(C, ("eventTime",), "2024-11-05t11:02:13z")),
    _valid("date_time_negative_zero_offset", _set(C, ("eventTime",), "2024-11-05T11:02:13-00:00")),
    _valid(
        "date_time_nine_fraction_digits", _set(C, ("eventTime",), "2024-11-05T11:02:13.123456789Z")
    ),
    _valid("date_time_extreme_offset", _set(C, ("eventTime",), "0001-01-01T00:00:00+23:59")),
    _valid("date_time_leap_day", _set(C, ("eventTime",), "2024-02-29T00:00:00Z")),
    _valid("uuid_upper_case", _set(C, ("run", "runId"), RUN_ID.upper())),
    _valid(
        "uri_ipv6_port_query_fragment", _set(C, ("producer",), "http://[2001:db8::7]:8080/a?b=c#d")
    ),
    _valid("uri_ipv4_in_ipv6", _set(C, ("producer",), "http://[::ffff:192.0.2.1]/")),
    _valid("uri_ipvfuture", _set(C, ("producer",), "http://[v1.fe:80]/")),
    _valid("uri_percent_encoding_userinfo", _set(C, ("producer",), "ftp://u%20r:p@h/%7Ex")),
    _valid("uri_scheme_only", _set(C, ("producer",), "x:")),
    # the oneOf corners
    _valid("start_without_run_is_a_job_event", _drop(S, ("run",))),
    _valid("job_event_with_any_event_type", {**J, "eventType": "BOGUS"}),
    _valid("dataset_event_with_run_but_no_job", {**D, "run": "anything"}),
    _valid("dataset_event_with_job_but_no_run_and_bad_job", {**D, "job": 5}),
    _valid("run_event_with_extra_dataset", {**S, "dataset": D["dataset"]}),
    _valid("job_event_with_invalid_dataset_extra", {**J, "dataset": {"name": 1}}),
    _invalid("dataset_and_job_events_at_once", {**J, "dataset": D["dataset"]}),
    _invalid("dataset_event_with_job_and_bad_run", {**D, "job": J["job"], "run": "not-a-run"}),
    _invalid("job_event_with_null_run", {**J, "run": None}),
    _invalid("neither_run_job_nor_dataset", _drop(_drop(S, ("run",)), ("job",))),
    # required fields
    *[_invalid(f"run_event_without_{_label(p)}", _drop(S, p)) for p in RUN_REQUIRED],
    *[_invalid(f"dataset_event_without_{_label(p)}", _drop(D, p)) for p in DATASET_REQUIRED],
    *[_invalid(f"job_event_without_{_label(p)}", _drop(J, p)) for p in JOB_REQUIRED],
    # eventType
    _invalid("event_type_unknown", _set(S, ("eventType",), "DONE")),
    _invalid("event_type_lower_case", _set(S, ("eventType",), "start")),
    _invalid("event_type_null", _set(S, ("eventType",), None)),
    _invalid("event_type_number", _set(S, ("eventType",), 1)),
    # runId
    *[
        _invalid(f"run_id_{name}", _set(S, ("run", "runId"), value))
        for name, value in [
            ("text", "not-a-uuid"),
            ("no_hyphens", RUN_ID.replace("-", "")),
            ("urn", f"urn:uuid:{RUN_ID}"),
            ("braces", f"{{{RUN_ID}}}"),
            ("too_short", RUN_ID[:-1]),
            ("non_hex", RUN_ID[:-1] + "g"),
            ("number", 42),
            ("null", None),
        ]
    ],
    # eventTime
    *[
        _invalid(f"event_time_{name}", _set(S, ("eventTime",), value))
        for name, value in [
            ("without_timezone", "2024-11-05T09:30:00"),
            ("without_timezone_fraction", "2024-11-05T09:30:00.123456"),
            ("date_only", "2024-11-05"),
            ("space_separator", "2024-11-05 09:30:00Z"),
            ("compact_offset", "2024-11-05T09:30:00+0000"),
            ("hour_only_offset", "2024-11-05T09:30:00+01"),
            ("february_30", "2024-02-30T00:00:00Z"),
            ("hour_24", "2024-11-05T24:00:00Z"),
            ("leap_second", "2016-12-31T23:59:60Z"),
            ("offset_24", "2024-11-05T09:30:00+24:00"),
            ("year_zero", "0000-01-01T00:00:00Z"),
            ("no_seconds", "2024-11-05T09:30Z"),
            ("empty_fraction", "2024-11-05T09:30:00.Z"),
            ("epoch_seconds", 1730799000),
            ("epoch_seconds_text", "1730799000"),
            ("non_ascii_digit", "2024-11-05T09:30:0\u0663Z"),
            ("null", None),
        ]
    ],
    # URIs
    *[
        _invalid(f"{field}_{name}", _set(S, path, value))
        for field, path in [
            ("producer", ("producer",)),
            ("schema_url", ("schemaURL",)),
            ("facet_producer", ("inputs", 0, "facets", "schema", "_producer")),
            ("facet_schema_url", ("outputs", 0, "outputFacets", "outputStatistics", "_schemaURL")),
        ]
        for name, value in [
            ("words", "not a uri"),
            ("relative", "/spec/OpenLineage.json"),
            ("empty", ""),
            ("bad_percent", "https://example.com/%zz"),
            ("space", "https://example.com/a b"),
            ("bad_ipv6", "http://[::1/"),
            ("non_ascii", "https://example.com/\u00e9"),
            ("number", 1),
        ]
    ],
    # wrong types and nulls
    _invalid("top_level_array", [S]),
    _invalid("inputs_object", _set(S, ("inputs",), {"0": S["inputs"][0]})),
    _invalid("inputs_null", _set(S, ("inputs",), None)),
    _invalid("outputs_item_string", _set(S, ("outputs", 0), "model")),
    _invalid("run_string", _set(S, ("run",), RUN_ID)),
    _invalid("job_name_number", _set(S, ("job", "name"), 1)),
    _invalid("dataset_namespace_null", _set(D, ("dataset", "namespace"), None)),
    _invalid("run_facets_list", _set(S, ("run", "facets"), [])),
    _invalid("run_facets_null", _set(S, ("run", "facets"), None)),
    _invalid("job_facets_null", _set(S, ("job", "facets"), None)),
    _invalid("input_facets_null", _set(S, ("inputs", 0, "inputFacets"), None)),
    _invalid("facet_string", _set(S, ("job", "facets", "jobType"), "BATCH")),
    _invalid("facet_null", _set(S, ("run", "facets", "parent"), None)),
    _invalid("job_facet_deleted_string", _set(S, ("job", "facets", "jobType", "_deleted"), "yes")),
    _invalid(
        "dataset_facet_deleted_number",
        _set(D, ("dataset", "facets", "lifecycleStateChange", "_deleted"), 1),
    ),
]


@pytest.mark.parametrize(("sample", "expected"), CASES)
def test_model_agrees_with_official_schema(sample: Json, expected: bool) -> None:
    _assert_agree(sample, expected)


# Where the jsonschema format checkers are laxer than the RFCs the spec names, the model
# follows the RFCs. Each row: the official validator accepts, the model refuses, and why.
_DOLLAR = "the checker's regex ends with $, which also matches before a final newline"
_INT_16 = "the uuid checker uses uuid.UUID, which reads hex with int(text, 16)"
CHECKER_LAXITY = [
    pytest.param(_set(S, ("eventTime",), "2024-11-05T09:30:00Z\n"), _DOLLAR, id="date_time_nl"),
    pytest.param(_set(S, ("producer",), "https://example.com/\n"), _DOLLAR, id="uri_nl"),
    pytest.param(
        _set(S, ("producer",), "http://[::1.2.3.004]/"),
        "rfc3986-validator allows leading zeros in an IPv4 octet inside an IPv6 literal",
        id="uri_ipv4_leading_zero",
    ),
    *[
        pytest.param(_set(S, ("run", "runId"), value), _INT_16, id=f"uuid_{name}")
        for name, value in [
            ("plus_sign", "+" + RUN_ID[1:]),
            ("leading_space", " " + RUN_ID[1:]),
            ("underscore", RUN_ID[0] + "_" + RUN_ID[2:]),
            ("fifth_hyphen", RUN_ID[:28] + "-" + RUN_ID[28:]),
        ]
    ],
]


@pytest.mark.parametrize(("sample", "reason"), CHECKER_LAXITY)
def test_model_follows_rfcs_where_format_checkers_are_lax(sample: Json, reason: str) -> None:
    assert _validator().is_valid(sample), f"the checker is no longer lax here ({reason})"
    with pytest.raises(ValidationError):
        parse_openlineage_event(sample)


# --- format checking is real ----------------------------------------------------------------


def test_official_schema_is_draft_2020_12_and_format_checking_is_on() -> None:
    schema = _spec_file("OpenLineage.json")
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SPEC_URL
    missing = {"date-time", "uri", "uuid"} - set(FORMAT_CHECKER.checkers)
    assert not missing, (
        f"jsonschema cannot check formats {sorted(missing)}: install the dev extra "
        "(rfc3339-validator for date-time, rfc3986-validator for uri)"
    )
    for path, value in [
        (("eventTime",), "2024-11-05T09:30:00"),
        (("producer",), "not a uri"),
        (("run", "runId"), "not-a-uuid"),
    ]:
        assert not _validator().is_valid(_set(S, path, value)), path


# --- generated events -----------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=8)
_KEYS = (
    st.sampled_from(
        ["x-acme", "event_time", "run_id", "schema_url", "input_facets", "_deleted", "_producer"]
    )
    | _TEXT
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=6,
)


def _mutate_one_char(text: str, alphabet: str) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(0, len(text) - 1), st.sampled_from(alphabet)).map(
        lambda change: text[: change[0]] + change[1] + text[change[0] + 1 :]
    )


@st.composite
def _date_times(draw: st.DrawFn) -> str:
    date = draw(st.dates()).isoformat()
    time = (
        f"{draw(st.integers(0, 23)):02}:{draw(st.integers(0, 59)):02}:{draw(st.integers(0, 59)):02}"
    )
    fraction = draw(st.sampled_from(["", ".0", ".5", ".123", ".123456", ".1234567891"]))
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    sign = "-" if minutes < 0 else "+"
    offset = f"{sign}{abs(minutes) // 60:02}:{abs(minutes) % 60:02}"
    offset = draw(st.sampled_from([offset, "Z", "z"])) if minutes == 0 else offset
    return f"{date}{draw(st.sampled_from('Tt'))}{time}{fraction}{offset}"


_UUIDS = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
_URIS = st.sampled_from(
    [
        PRODUCER,
        _schema_url("RunEvent"),
        "urn:acme:producer",
        "s3://bucket/key",
        "http://[::1]:8080/",
        "mailto:a@b.c",
        "file:///tmp/x",
    ]
) | st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https", "git+ssh"]),
    st.from_regex(r"[a-z0-9.-]{0,12}", fullmatch=True),
    st.from_regex(r"([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2})*", fullmatch=True),
)
_FORMAT_NOISE = (
    _date_times().flatmap(lambda t: _mutate_one_char(t, "0123456789TtZz:+-. x"))
    | _UUIDS.flatmap(lambda u: _mutate_one_char(u, "0123456789abcdefABCDEFgG-:{}x"))
    | _URIS.flatmap(lambda u: _mutate_one_char(u, "aZ09:/?#[]@!$&'()*+,;=%-._~ {}|\\^`<>\""))
    | st.text(alphabet="aZ09:/?#[]@!$&'()*+,;=%-._~ {}|\\^`<>\"", max_size=16)
)


def _merged(extra: dict[str, Json], known: dict[str, Json]) -> dict[str, Json]:
    return {**extra, **known}


def _facets(deletable: bool) -> st.SearchStrategy[dict[str, Json]]:
    facet = st.fixed_dictionaries(
        {"_producer": _URIS, "_schemaURL": _URIS},
        optional={"_deleted": st.booleans()} if deletable else {},
    )
    payload = st.dictionaries(_KEYS.filter(lambda key: key != "_deleted"), _JSON, max_size=3)
    facet = facet.flatmap(lambda base: payload.map(lambda extra: _merged(extra, base)))
    return st.dictionaries(_TEXT, facet, max_size=3)


def _obj(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Json]]:
    """An object with the given properties, plus sometimes unknown ones."""
    known = set(required) | set(optional)
    extras = st.dictionaries(_KEYS.filter(lambda k: k not in known), _JSON, max_size=2)
    return st.tuples(st.fixed_dictionaries(required, optional=optional), extras).map(
        lambda parts: _merged(parts[1], parts[0])
    )


def _dataset(io_facets: str | None) -> st.SearchStrategy[dict[str, Json]]:
    optional: dict[str, Any] = {"facets": _facets(deletable=True)}
    if io_facets:
        optional[io_facets] = _facets(deletable=False)
    return _obj({"namespace": _TEXT, "name": _TEXT}, optional)


_BASE = {"eventTime": _date_times(), "producer": _URIS, "schemaURL": _URIS}
_JOB = _obj({"namespace": _TEXT, "name": _TEXT}, {"facets": _facets(deletable=True)})
_RUN = _obj({"runId": _UUIDS}, {"facets": _facets(deletable=False)})
_IO = {
    "inputs": st.lists(_dataset("inputFacets"), max_size=2),
    "outputs": st.lists(_dataset("outputFacets"), max_size=2),
}
_EVENTS = (
    _obj({**_BASE, "run": _RUN, "job": _JOB}, {"eventType": st.sampled_from(EventType), **_IO})
    | _obj({**_BASE, "dataset": _dataset(None)}, {})
    | _obj({**_BASE, "job": _JOB}, _IO)
).map(lambda event: json.loads(json.dumps(event)))  # EventType members to plain strings


def _paths(node: Json, prefix: Path_ = ()) -> list[Path_]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


_REPLACEMENTS = (
    _JSON
    | _FORMAT_NOISE
    | st.sampled_from(["START", "start", "DONE", "", RUN_ID])
    | _JOB
    | _RUN
    | _dataset(None)
)


@st.composite
def _mutated_events(draw: st.DrawFn) -> Json:
    event = draw(_EVENTS)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(event)))
        target: Json = event
        for step in path:
            target = target[step]
        operation = draw(st.sampled_from(["drop", "replace", "add"]))
        if operation == "drop" and path:
            event = _drop(event, path)
        elif operation == "add" and isinstance(target, dict):
            key = draw(_KEYS | st.sampled_from(["run", "job", "dataset", "runId", "eventTime"]))
            event = _set(event, (*path, key), draw(_REPLACEMENTS))
        elif path:
            event = _set(event, path, draw(_REPLACEMENTS))
    return event


_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_EVENTS)
def test_generated_valid_events_agree_and_round_trip(event: Json) -> None:
    _assert_agree(event, expected=True)


@_SETTINGS
@given(_mutated_events())
def test_generated_mutated_events_agree(event: Json) -> None:
    _assert_agree(event)


@_SETTINGS
@given(
    st.sampled_from([("eventTime",), ("producer",), ("schemaURL",), ("run", "runId")]),
    _FORMAT_NOISE | _date_times() | _URIS | _UUIDS,
)
def test_generated_format_values_agree(path: Path_, value: str) -> None:
    _assert_agree(_set(S, path, value))


# --- the models themselves --------------------------------------------------------------------


def test_parse_returns_the_kind_the_spec_names() -> None:
    assert type(parse_openlineage_event(S)) is RunEvent
    assert type(parse_openlineage_event(json.dumps(D))) is DatasetEvent
    assert type(parse_openlineage_event(json.dumps(J).encode())) is JobEvent


def test_parse_refuses_ambiguous_and_malformed_input() -> None:
    with pytest.raises(AmbiguousOpenLineageEventError):
        parse_openlineage_event({**J, "dataset": D["dataset"]})
    with pytest.raises(ValidationError):
        parse_openlineage_event(b"{not json")
    with pytest.raises(ValidationError) as caught:
        parse_openlineage_event(_drop(S, ("job",)))
    assert caught.value.title == "RunEvent"


def test_typed_access_to_a_training_run() -> None:
    event = parse_openlineage_event(S)
    assert isinstance(event, RunEvent)
    assert event.event_type is EventType.START
    assert str(event.run.run_id) == RUN_ID
    assert event.event_time.utcoffset() is not None
    assert event.schema_url == _schema_url("RunEvent")
    snapshot, base_model = event.inputs or []
    (model,) = event.outputs or []
    assert (snapshot.version, snapshot.dataset_type, snapshot.is_model) == (
        "2024-11-05.1",
        None,
        False,
    )
    assert (base_model.version, base_model.is_model) == ("3", True)
    assert (model.version, model.dataset_type, model.is_model) == ("7", "MODEL", True)
    assert model.output_facets is not None and "outputStatistics" in model.output_facets
    assert event.run.facets is not None
    assert event.run.facets["parent"]["run"]["runId"] == PARENT_RUN_ID


@pytest.mark.parametrize(
    ("facet_file", "facet_key", "field"),
    [
        ("DatasetVersionDatasetFacet", "version", "datasetVersion"),
        ("DatasetTypeDatasetFacet", "datasetType", "datasetType"),
    ],
)
def test_dataset_accessors_use_the_facet_specs_keys(
    facet_file: str, facet_key: str, field: str
) -> None:
    spec = _spec_file(f"facets/{facet_file}.json")
    assert spec["properties"][facet_key]["$ref"] == f"#/$defs/{facet_file}"
    (own,) = [part for part in spec["$defs"][facet_file]["allOf"] if "properties" in part]
    assert field in own["properties"] and field in own["required"]


def test_models_are_frozen_and_built_by_python_name() -> None:
    event = RunEvent(
        event_time=parse_openlineage_event(C).event_time,
        producer=PRODUCER,
        schema_url=_schema_url("RunEvent"),
        event_type=EventType.COMPLETE,
        run=Run(run_id=RUN_ID),
        job=Job(namespace="ml-pipelines", name="support_llm.fine_tune"),
    )
    assert event.model_dump(mode="json", exclude_none=True) == {
        "eventTime": "2024-11-05T11:02:13.500000Z",
        "producer": PRODUCER,
        "schemaURL": _schema_url("RunEvent"),
        "eventType": "COMPLETE",
        "run": {"runId": RUN_ID},
        "job": {"namespace": "ml-pipelines", "name": "support_llm.fine_tune"},
    }
    with pytest.raises(ValidationError):
        event.producer = "urn:other"  # type: ignore[misc]
    changed = event.model_copy(update={"event_time": event.event_time.replace(year=2025)})
    assert changed.model_dump(mode="json")["eventTime"].startswith("2025-")
