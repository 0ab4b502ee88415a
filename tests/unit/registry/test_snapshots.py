"""Snapshot registration, the pure parts: the time-of-use rule, NDJSON framing and the
line-by-line validation of records (which must accept exactly what ``RecordRegistration``
accepts)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.registry.adapters import snapshots
from services.registry.adapters.snapshots import staging_table_for
from services.registry.domain.ndjson import LineTooLong, NdjsonFramer
from services.registry.domain.snapshots import (
    DatasetVersionHeader,
    DatasetVersionRegistration,
    LineError,
    RecordRegistration,
    parse_header_line,
    parse_record_lines,
    record_row,
    time_of_use,
)
from services.registry.service.registration import (
    BackfillNotSupported,
    open_upload,
    open_upload_with_id,
)
from services.runtime.unit_of_work import UnitOfWork

SEALED = datetime(2024, 9, 1, 12, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def valid(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "record_id": "msg-1",
        "source_system": "inbox",
        "subject_id": "member-45f68517b9",
        "category": "user.content.private",
        "jurisdiction": "US",
        "collected_at": "2024-08-01T12:00:00Z",
        "content_digest": DIGEST,
    }
    body.update(overrides)
    return body


def line(body: dict[str, Any] | str) -> bytes:
    return (body if isinstance(body, str) else json.dumps(body)).encode()


# --- time of use -----------------------------------------------------------------------


def test_time_of_use_is_the_seal_unless_training_starts_later() -> None:
    later = SEALED + timedelta(days=3)
    assert time_of_use(SEALED, None) == SEALED
    assert time_of_use(SEALED, later) == later
    assert time_of_use(SEALED, SEALED) == SEALED
    # A training start before the seal cannot be: the snapshot did not exist yet.
    assert time_of_use(SEALED, SEALED - timedelta(days=3)) == SEALED


@given(st.datetimes(timezones=st.just(UTC)), st.none() | st.datetimes(timezones=st.just(UTC)))
def test_time_of_use_is_never_before_the_seal(sealed: datetime, start: datetime | None) -> None:
    used = time_of_use(sealed, start)
    assert used >= sealed and used in (sealed, start)


def test_a_backfill_is_used_when_it_says_even_before_its_seal() -> None:
    earlier = SEALED - timedelta(days=400)
    assert time_of_use(SEALED, earlier, backfill=True) == earlier
    assert time_of_use(SEALED, SEALED + timedelta(days=1), backfill=True) > SEALED
    header = {
        "dataset": {"namespace": "s3://lake", "name": "posts", "version": "2024-08-20"},
        "purpose": "ai.training.generative",
        "created_at": "2024-08-20T00:00:00Z",
        "backfill": True,
    }
    with pytest.raises(ValidationError, match="backfill must declare training_started_at"):
        DatasetVersionHeader.model_validate(header)
    parsed = DatasetVersionHeader.model_validate(
        header | {"training_started_at": earlier.isoformat()}
    )
    assert parsed.time_of_use(SEALED) == earlier


async def test_a_chunked_upload_refuses_a_backfill_it_could_not_keep() -> None:
    header = DatasetVersionHeader.model_validate(
        {
            "dataset": {"namespace": "s3://lake", "name": "posts", "version": "2024-08-20"},
            "purpose": "ai.training.generative",
            "created_at": "2024-08-20T00:00:00Z",
            "training_started_at": "2024-08-20T06:00:00Z",
            "backfill": True,
        }
    )
    never_used = cast(UnitOfWork, object())  # refused before any database work
    with pytest.raises(BackfillNotSupported, match="not by chunked uploads"):
        await open_upload(never_used, header, now=SEALED)
    with pytest.raises(BackfillNotSupported):
        await open_upload_with_id(never_used, header, uuid.uuid4(), now=SEALED)


def test_header_and_registration_apply_the_same_rule() -> None:
    later = SEALED + timedelta(hours=1)
    header = DatasetVersionHeader.model_validate(
        {
            "dataset": {"namespace": "s3://training", "name": "chat", "version": "v1"},
            "purpose": "ai.training",
            "created_at": "2024-08-31T00:00:00Z",
            "training_started_at": later.isoformat(),
        }
    )
    registration = DatasetVersionRegistration.model_validate(
        {**header.model_dump(mode="json"), "records": [valid()]}
    )
    assert header.time_of_use(SEALED) == registration.time_of_use(SEALED) == later
    assert registration.header() == header


# --- record lines ----------------------------------------------------------------------


def test_valid_lines_become_rows_numbered_by_line() -> None:
    lines = [line(valid(record_id="a")), b"", b"  \r", line(valid(record_id="b")) + b"\r"]
    rows = parse_record_lines(lines, 10, chunk=3)
    assert [(r[0], r[1], r[3]) for r in rows] == [(3, 10, "a"), (3, 13, "b")]
    _, _, source, _, subject, category, jurisdiction, collected, digest = rows[0]
    assert (source, subject, category, jurisdiction, digest) == (
        "inbox",
        "member-45f68517b9",
        "user.content.private",
        "US",
        DIGEST,
    )
    assert collected == datetime(2024, 8, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        (valid(subject_id="has spaces"), "subject_id", "string_pattern_mismatch"),
        (valid(category="User.Content"), "category", "string_pattern_mismatch"),
        (valid(jurisdiction="usa"), "jurisdiction", "string_pattern_mismatch"),
        (valid(collected_at="2024-08-01T12:00:00"), "collected_at", "timezone_aware"),
        (valid(collected_at="yesterday"), "collected_at", "datetime_from_date_parsing"),
        (valid(content_digest="md5:00"), "content_digest", "string_pattern_mismatch"),
        (valid(record_id=""), "record_id", "string_too_short"),
        (valid(record_id=7), "record_id", "string_type"),
        (valid(record_id="nul\x00inside"), "record_id", "string_pattern_mismatch"),
        (valid(extra="x"), "extra", "extra_forbidden"),
        ({k: v for k, v in valid().items() if k != "source_system"}, "source_system", "missing"),
        ("{not json", None, "json_invalid"),
        ('["a", "list"]', None, "dict_type"),
        ("null", None, "dict_type"),
    ],
)
def test_a_bad_line_names_its_number_and_field(
    body: dict[str, Any] | str, field: str | None, kind: str
) -> None:
    lines = [line(valid(record_id="ok-1")), line(valid(record_id="ok-2")), line(body)]
    with pytest.raises(LineError) as caught:
        parse_record_lines(lines, 41, chunk=0)
    assert caught.value.line == 43
    assert (caught.value.errors[0].field, caught.value.errors[0].type) == (field, kind)
    assert f"line 43: {'field ' + repr(field) if field else 'the line'}" in str(caught.value)


def test_every_error_of_the_first_bad_line_is_reported() -> None:
    lines = [line(valid(subject_id="x y", content_digest="nope")), line("{bad")]
    with pytest.raises(LineError) as caught:
        parse_record_lines(lines, 1, chunk=0)
    assert caught.value.line == 1
    assert {e.field for e in caught.value.errors} == {"subject_id", "content_digest"}


_FIELD_VALUES: dict[str, list[Any]] = {
    "record_id": ["msg-1", "", "x" * 256, "x" * 257, 5, None, "ünïcødé ✓", "a\x00b"],
    "source_system": ["inbox", "", "a/b", 1.5, ["x"]],
    "subject_id": ["member-1", "a b", "a@b.c", "x" * 129, "", 12],
    "category": ["user", "user.content.private", "User", "user..x", "user.", "1user", None],
    "jurisdiction": ["US", "US-CA", "us", "USA", "GB-ENG", "DE-1234"],
    "collected_at": [
        "2024-08-01T12:00:00Z",
        "2024-08-01T12:00:00+02:00",
        "2024-08-01T12:00:00",
        "2024-08-01",
        "2024-13-01T00:00:00Z",
        1722513600,
        "not a time",
        None,
    ],
    "content_digest": [DIGEST, "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "sha1:00", ""],
}


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {k: st.sampled_from(v) for k, v in _FIELD_VALUES.items()},
    ),
    st.sets(st.sampled_from(sorted(_FIELD_VALUES))),
    st.booleans(),
)
def test_line_validation_accepts_exactly_what_the_contract_accepts(
    fields: dict[str, Any], dropped: set[str], extra: bool
) -> None:
    body = {k: v for k, v in fields.items() if k not in dropped}
    if extra:
        body["unexpected"] = True
    raw = line(body)
    try:
        model = RecordRegistration.model_validate_json(raw)
    except ValidationError:
        model = None
    try:
        rows = parse_record_lines([raw], 1, chunk=0)
    except LineError:
        rows = None
    if model is None:
        assert rows is None, body
    else:
        assert rows == [record_row(model, 0, 1)], body


def test_header_line() -> None:
    header = {
        "dataset": {"namespace": "s3://training", "name": "chat/messages", "version": "v1"},
        "purpose": "ai.training.generative",
        "created_at": "2024-09-01T00:00:00Z",
    }
    assert parse_header_line(line(header)).dataset.name == "chat/messages"
    with pytest.raises(LineError) as caught:
        parse_header_line(line({**header, "dataset": {**header["dataset"], "version": ""}}))
    assert (caught.value.line, caught.value.errors[0].field) == (1, "dataset.version")
    with pytest.raises(LineError) as caught:
        parse_header_line(line(valid()))  # a record where the header belongs
    assert caught.value.line == 1
    with pytest.raises(LineError) as caught:  # Postgres cannot store NUL
        parse_header_line(line({**header, "dataset": {**header["dataset"], "name": "a\x00"}}))
    assert "dataset.name contains NUL" in caught.value.errors[0].message


# --- framing ---------------------------------------------------------------------------


def frame(data: bytes, cuts: list[int], **kwargs: Any) -> list[tuple[int, bytes]]:
    framer = NdjsonFramer(**kwargs)
    out: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        first, lines = framer.feed(data[start:cut])
        out += [(first + i, x) for i, x in enumerate(lines)]
        start = cut
    first, lines = framer.finish()
    out += [(first + i, x) for i, x in enumerate(lines)]
    return out


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_framing_does_not_depend_on_where_blocks_are_cut(
    lines: list[bytes], terminated: bool, cuts: list[int]
) -> None:
    data = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    cuts = [c for c in cuts if c <= len(data)]
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert frame(data, cuts) == list(enumerate(expected, start=1))


def test_a_long_line_is_refused_with_its_number_before_it_ends() -> None:
    framer = NdjsonFramer(max_line_bytes=10, first_line=5)
    assert framer.feed(b"short\nalso short\n") == (5, [b"short", b"also short"])
    with pytest.raises(LineTooLong) as caught:
        framer.feed(b"x" * 11)  # not even terminated yet
    assert caught.value.line == 7
    with pytest.raises(LineTooLong) as caught:
        NdjsonFramer(max_line_bytes=10).feed(b"ok\n" + b"y" * 11 + b"\nok\n")
    assert caught.value.line == 2
    assert "line 2 is longer than 10 bytes" in str(caught.value)


# --- staging names and sizes (the adapter's pure parts) --------------------------------


def test_staging_and_key_tables_are_named_from_the_upload_only() -> None:
    upload_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    table = staging_table_for(upload_id)
    assert snapshots._staging(table) == f"registry_staging.upload_{upload_id.hex}"
    assert snapshots._pks(table) == f"registry_staging.upload_{upload_id.hex}_pks"
    for bad in ("upload_x; DROP TABLE records", "records", f"upload_{upload_id.hex}_pks"):
        with pytest.raises(ValueError):
            snapshots._pks(bad)


def test_a_chunk_sorts_in_memory_within_bounds() -> None:
    assert snapshots._sort_mem(10) == "16MB"
    assert snapshots._sort_mem(100_000) == "24MB"  # 100,000 staged rows sort in 20 MB
    assert snapshots._sort_mem(1_000_000) == "244MB"
    assert snapshots._sort_mem(50_000_000) == snapshots.SEAL_WORK_MEM == "256MB"
