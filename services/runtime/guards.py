"""What every service's HTTP API does with hostile input, before and after its routes run.

- **Body size.** A request body over ``MAX_REQUEST_BODY_BYTES`` (default 32 MiB: a
  100,000-record registration is about 26 MiB) is refused with **413** before it is read
  whole: at once when ``Content-Length`` says so, else as soon as the streamed bytes pass
  the limit. Routes that stream their body line by line with their own limits (the
  registry's NDJSON uploads) are exempt.
- **Values Postgres cannot store.** Text with a NUL character (``\\u0000``), a lone UTF-16
  surrogate (``\\ud800``), a number out of a column's range: Postgres (or the driver) refuses
  them mid-request. That is the caller's input, not the server's fault: **422** naming the
  problem, and the transaction is rolled back.
- **The 422 shape.** FastAPI's request validation answers ``{"detail": [{"loc", "msg",
  ...}]}``; a route's own refusal answers ``{"detail": "<sentence>"}``. The OpenAPI document
  says so for every 422 (both shapes), so clients and schema-driven fuzzers read it right.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BodySizeLimit",
    "document_error_shapes",
    "install_input_guards",
]

DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (MAX_REQUEST_BODY_BYTES)"


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (see the module doc)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: Sequence[BaseRoute]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = tuple(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0 or self._is_exempt(scope):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _answer(send, 400, "Content-Length is not a number")
                    return
                if declared > limit:
                    await _answer(send, 413, _too_large(limit))
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body parsing: FastAPI re-raises an
                    # HTTPException as it is, and the exception middleware answers it.
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counting_receive, send)

    def _is_exempt(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self.exempt)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    """Postgres class 22 (data exception): the request's data, never a server fault."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JSONResponse(
        {"detail": f"a value in the request cannot be stored: {message[:300]}"}, 422
    )


async def _not_unicode(request: Request, exc: Exception) -> JSONResponse:
    """A lone surrogate (``\\ud800``…) decoded from JSON is a str Python cannot encode."""
    return JSONResponse(
        {
            "detail": "text holds a lone UTF-16 surrogate (U+D800 to U+DFFF), which is not"
            " a Unicode character: send valid Unicode"
        },
        422,
    )


def install_input_guards(
    app: FastAPI, *, max_body_bytes: int, streamed_routes: Sequence[BaseRoute]
) -> None:
    """The body-size limit and the 422 answers for unstorable values (module doc)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt=streamed_routes)
    app.add_exception_handler(asyncpg.DataError, _unstorable_value)
    app.add_exception_handler(UnicodeEncodeError, _not_unicode)


_DETAIL_SENTENCE: Final = {"type": "string", "description": "What is wrong, in a sentence"}


def document_error_shapes(schema: dict[str, Any]) -> dict[str, Any]:
    """State both 422 shapes, the validation list and the route's own sentence, for
    every operation; and the 413 of the body-size limit on every operation with a body."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    validation = components.get("HTTPValidationError")
    if validation is not None:
        detail = validation["properties"]["detail"]
        if "anyOf" not in detail:
            validation["properties"]["detail"] = {
                "anyOf": [{k: v for k, v in detail.items() if k != "title"}, _DETAIL_SENTENCE],
                "title": "Detail",
            }
    components.setdefault(
        "ErrorSentence",
        {
            "type": "object",
            "properties": {"detail": _DETAIL_SENTENCE},
            "required": ["detail"],
            "title": "ErrorSentence",
        },
    )
    sentence = {"$ref": "#/components/schemas/ErrorSentence"}
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete", "patch"}:
                continue
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault(
                    "413",
                    {
                        "description": "The body is larger than MAX_REQUEST_BODY_BYTES",
                        "content": {"application/json": {"schema": sentence}},
                    },
                )
            documented = responses.get("422")
            if documented is None:
                continue
            content = documented.setdefault("content", {})
            media = content.setdefault("application/json", {})
            shapes = [{"$ref": "#/components/schemas/HTTPValidationError"}, sentence]
            if "schema" in media and media["schema"] not in shapes:
                shapes.insert(0, copy.deepcopy(media["schema"]))
            media["schema"] = {"anyOf": shapes}
    return schema
