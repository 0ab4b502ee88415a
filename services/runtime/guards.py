"""What every service's HTTP API does with hostile input, before and after its routes run.

- **Body size.** A request body over ``MAX_REQUEST_BODY_BYTES`` (default 32 MiB: a
  100,000-record registration is about 26 MiB) is refused with **413** before it is read
  whole (FastAPI's ``max_body_size``): at once when ``Content-Length`` says so, else as
  soon as the streamed bytes pass the limit. Routes that stream their body line by line
  with limits of their own (the registry's NDJSON uploads) set ``max_body_size`` to
  ``STREAMED_BODY_MAX_BYTES``.
- **Values Postgres cannot store.** Text with a NUL character (``\\u0000``), a lone UTF-16
  surrogate (``\\ud800``), a number out of a column's range, a key too long for its index:
  Postgres (or the driver) refuses them mid-request. That is the caller's input, not the
  server's fault: **422** naming the problem, and the transaction is rolled back.
- **The 422 shape.** FastAPI's request validation answers ``{"detail": [{"loc", "msg",
  ...}]}``; a route's own refusal answers ``{"detail": "<sentence>"}``. The OpenAPI document
  says so for every 422 (both shapes), so clients and schema-driven fuzzers read it right.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "STREAMED_BODY_MAX_BYTES",
    "document_error_shapes",
    "install_input_guards",
]

DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
STREAMED_BODY_MAX_BYTES: Final = 1 << 62
"""For routes that stream their body with limits of their own (``max_body_size=`` on the
route): FastAPI's limit out of the way."""


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


async def _too_large_to_store(request: Request, exc: Exception) -> JSONResponse:
    """Postgres class 54 (program limit exceeded): e.g. a key too long for its index."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JSONResponse({"detail": f"a value in the request is too large: {message[:300]}"}, 422)


def install_input_guards(app: FastAPI) -> None:
    """422 answers for values Postgres cannot store (see the module doc). The body-size
    limit is FastAPI's own ``max_body_size``, set where the app is made."""
    app.add_exception_handler(asyncpg.DataError, _unstorable_value)
    app.add_exception_handler(asyncpg.ProgramLimitExceededError, _too_large_to_store)
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
            shapes = [sentence]
            if validation is not None:
                shapes.insert(0, {"$ref": "#/components/schemas/HTTPValidationError"})
            if "schema" in media and media["schema"] not in shapes:
                shapes.insert(0, copy.deepcopy(media["schema"]))
            media["schema"] = {"anyOf": shapes}
    return schema
