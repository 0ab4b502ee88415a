"""HTTP building blocks shared by the services' APIs."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import AfterValidator, BeforeValidator, ValidationError

from contracts.base import DatasetRef

__all__ = ["QueryTime", "VersionFilter", "amend_openapi", "optional_version"]


async def optional_version(
    namespace: str | None = None, name: str | None = None, version: str | None = None
) -> DatasetRef | None:
    """An OpenLineage dataset/model version named in the query string, or none at all
    (``async``, so that FastAPI does not run it in a worker thread)."""
    if namespace is None and name is None and version is None:
        return None
    if namespace is None or name is None or version is None:
        raise HTTPException(422, "give namespace, name and version together, or none of them")
    try:
        return DatasetRef(namespace=namespace, name=name, version=version)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise HTTPException(422, f"not a dataset or model version: {problems}") from None


VersionFilter = Annotated[DatasetRef | None, Depends(optional_version)]
"""Query parameters ``namespace``, ``name``, ``version``: all three or none."""


_LOST_PLUS = re.compile(r"^(\d{4}-\d{2}-\d{2}T[\d:.]+) (\d{2}:?\d{2})$")


def _restore_plus(value: object) -> object:
    """An unencoded ``+`` in a query string arrives as a space: put it back."""
    if isinstance(value, str) and (m := _LOST_PLUS.match(value)):
        return f"{m[1]}+{m[2]}"
    return value


def _require_offset(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"timestamp {value.isoformat()} has no UTC offset, so it names no instant;"
            f" send e.g. {value.isoformat()}Z or {value.isoformat()}%2B02:00"
        )
    return value


QueryTime = Annotated[datetime, BeforeValidator(_restore_plus), AfterValidator(_require_offset)]
"""A timestamp in a query string: an offset is required (``Z``, or ``+`` written ``%2B``)."""


def amend_openapi(app: FastAPI, amend: Callable[[dict[str, Any]], object]) -> None:
    """Have ``amend`` edit the app's OpenAPI document once, when it is first generated
    (FastAPI caches it); amendments stack in the order they are installed."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = generate()
        if not done:
            amend(schema)
            done = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
