"""Regression tests for what the hostile-input tests found (tests/integration/test_hostile_*)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from fastapi import HTTPException

from services.runtime.consumer import _tolerant_parser
from services.runtime.errors import UnstorableValue, unstorable
from services.runtime.guards import document_error_shapes
from services.runtime.http import optional_version


@pytest.mark.parametrize(
    ("namespace", "name", "version"),
    [("", "n", "v"), ("ns", "", "v"), ("ns", "n", ""), ("ns", "n" * 2000, "v")],
)
async def test_an_invalid_version_filter_is_a_422_not_a_500(
    namespace: str, name: str, version: str
) -> None:
    # Was: pydantic's ValidationError escaped the dependency, a 500 (found by schemathesis
    # on GET /api/v1/model-flags?namespace=&name=x&version=y).
    with pytest.raises(HTTPException) as refused:
        await optional_version(namespace, name, version)
    assert refused.value.status_code == 422
    assert "not a dataset or model version" in str(refused.value.detail)


def test_values_postgres_refuses_are_permanent_not_retried() -> None:
    nul = asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence")
    too_long = asyncpg.ProgramLimitExceededError("index row requires 11488 bytes")
    for exc in (nul, too_long):
        refused = unstorable(exc)
        assert isinstance(refused, UnstorableValue) and refused.reason == "unstorable_value"
    assert unstorable(asyncpg.ConnectionDoesNotExistError("gone")) is None
    assert unstorable(ValueError("x")) is None


def test_openapi_states_both_422_shapes_and_the_413() -> None:
    schema: dict[str, Any] = {
        "paths": {
            "/x": {
                "post": {
                    "requestBody": {},
                    "responses": {
                        "422": {
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Custom"}
                                }
                            }
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "HTTPValidationError": {
                    "properties": {"detail": {"type": "array", "title": "Detail"}}
                }
            }
        },
    }
    document_error_shapes(schema)
    operation = schema["paths"]["/x"]["post"]
    shapes = operation["responses"]["422"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/Custom"} in shapes
    assert {"$ref": "#/components/schemas/HTTPValidationError"} in shapes
    assert {"$ref": "#/components/schemas/ErrorSentence"} in shapes
    assert "413" in operation["responses"]
    detail = schema["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"]
    assert {"type": "string"}.items() <= detail["anyOf"][1].items()


@dataclass
class Parsed:
    raw_message: Any


async def faststream_like(records: Any) -> Parsed:
    """What FastStream's Kafka parser does first: every header value as UTF-8."""
    for record in records if isinstance(records, tuple) else (records,):
        {k: v.decode() for k, v in record.headers}
    return Parsed(records)


def record(offset: int, headers: list[tuple[str, Any]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=headers,
    )


async def test_a_header_that_is_not_utf8_does_not_lose_the_batch() -> None:
    # Was: FastStream's parser raised on the batch, the handler never saw it, and the
    # records (the valid ones with the bad one) were skipped without a dead letter.
    batch = (
        record(0, [("ce_id", b"\xff\xfe")]),
        record(1, [("ce_id", None)]),
        record(2, [("ce_id", b"fine")]),
    )
    with pytest.raises(UnicodeDecodeError):
        await faststream_like(batch)
    parsed = await _tolerant_parser(batch, faststream_like)  # type: ignore[arg-type]
    assert parsed.raw_message is batch  # the original bytes, for the dead letter
