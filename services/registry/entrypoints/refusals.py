"""Refusing an NDJSON body: the line errors' shape, and answering only once it is read.

A client that streams a body does not read the answer before it has sent the body; an
answer sent earlier is lost with the connection. So a refused body is read to its end
(up to ``DRAIN_LIMIT``) before the 4xx goes out, and past that the connection is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from starlette.requests import ClientDisconnect

from services.registry.domain.ndjson import LineTooLong
from services.registry.domain.snapshots import LineError

__all__ = ["DRAIN_LIMIT", "after_draining", "line_errors"]

DRAIN_LIMIT = 1 << 30
"""Bytes of a refused body read and discarded before the connection is closed instead."""


async def after_draining(body: AsyncIterator[bytes], response: Response) -> Response:
    """``response``, once the client has sent the rest of ``body``."""
    if not await _drain(body):
        response.headers["Connection"] = "close"
    return response


async def _drain(body: AsyncIterator[bytes]) -> bool:
    """Read and discard the rest of the body; False when it was too long to wait for."""
    seen = 0
    try:
        async for block in body:
            seen += len(block)
            if seen > DRAIN_LIMIT:
                return False
    except (ClientDisconnect, RuntimeError):  # gone, or the stream was already consumed
        pass
    return True


def line_errors(exc: LineError | LineTooLong, chunk: int | None) -> list[dict[str, Any]]:
    """What is wrong, line by line (``LineErrorItem``); ``chunk`` when the body was one."""
    if isinstance(exc, LineTooLong):
        return [
            {
                "loc": ["body", "line", exc.line],
                "msg": f"line {exc.line} is longer than {exc.limit} bytes",
                "type": "line_too_long",
                "line": exc.line,
                "field": None,
                "chunk": chunk,
            }
        ]
    return [
        {
            "loc": ["body", "line", exc.line, *([e.field] if e.field else [])],
            "msg": e.message,
            "type": e.type,
            "line": exc.line,
            "field": e.field,
            "chunk": chunk,
        }
        for e in exc.errors
    ]
