"""HTTP to the services' public APIs, and every way a call can go wrong, as exit codes.

- A 4xx (and a 500) is a refusal: ``Refused`` carries the API's ``detail`` as a readable
  message (validation errors one per line, the roles a 403 allows, the records a registry
  refusal names) and exits 1.
- No connection, a timeout, or a 502/503/504 (the service or one it depends on cannot
  answer): ``Unreachable``, exit 3.
- The key is sent as ``Authorization: Bearer <key>`` and never printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

__all__ = [
    "DEFAULT_URLS",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SERVICES",
    "URL_ENV",
    "Api",
    "Config",
    "CtlError",
    "NotVerified",
    "Ref",
    "Refused",
    "Unreachable",
    "UsageProblem",
    "parse_ref",
    "refusal_message",
    "stored_body",
]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

SERVICES: Final = ("registry", "lineage", "deletion")
DEFAULT_URLS: Final[Mapping[str, str]] = {
    # The embedded dev stack's ports (services.runtime.devstack.DEFAULT_PORTS; a unit test
    # keeps them equal without importing the dev stack on every command).
    "registry": "http://127.0.0.1:8002",
    "lineage": "http://127.0.0.1:8003",
    "deletion": "http://127.0.0.1:8004",
}
URL_ENV: Final[Mapping[str, str]] = {s: f"CONSENTTRACE_{s.upper()}_URL" for s in SERVICES}
USER_AGENT: Final = "consenttrace-cli/0.1.0"
_UNAVAILABLE: Final = frozenset({502, 503, 504})
_SHOWN_ITEMS: Final = 10


class CtlError(Exception):
    """A failure to report to the user in one message, with the process's exit code."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refused(CtlError):
    """The API answered with an error status."""

    def __init__(self, service: str, status: int, body: Any) -> None:
        super().__init__(refusal_message(service, status, body))
        self.service, self.status, self.body = service, status, body
        if status in _UNAVAILABLE:
            self.exit_code = EXIT_UNREACHABLE


class Unreachable(CtlError):
    exit_code = EXIT_UNREACHABLE


class NotVerified(CtlError):
    """An evidence bundle failed verification."""


class UsageProblem(CtlError):
    """Arguments that parse but do not make sense together."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Ref:
    """A dataset or model version: ``NAMESPACE:NAME#VERSION``."""

    namespace: str
    name: str
    version: str

    def params(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version}

    def node_id(self, kind: str) -> str:
        return f"{kind}:{self.namespace}:{self.name}#{self.version}"


def parse_ref(text: str) -> Ref:
    """``[dataset:|model:]NAMESPACE:NAME#VERSION``; the namespace may hold ``:`` (``s3://b``),
    the name may not. Raises ``ValueError`` (a usage error on the command line)."""
    body = text.strip()
    for prefix in ("dataset:", "model:"):
        body = body.removeprefix(prefix)
    head, hashed, version = body.rpartition("#")
    namespace, colon, name = head.rpartition(":")
    if not (hashed and colon and namespace and name and version) or name.startswith("//"):
        raise ValueError(f"{text!r} is not NAMESPACE:NAME#VERSION (e.g. s3://lake:messages#v1)")
    return Ref(namespace, name, version)


def refusal_message(service: str, status: int, body: Any) -> str:
    """What the API said, for a person: its ``detail`` and whatever names the culprits."""
    try:
        phrase = httpx.codes(status).get_reason_phrase(status)
    except ValueError:
        phrase = ""
    head = f"{service} answered {status}" + (f" {phrase}" if phrase else "")
    lines: list[str] = []
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors
        lines += [_validation_line(e) for e in detail[:_SHOWN_ITEMS]]
        if len(detail) > _SHOWN_ITEMS:
            lines.append(f"… and {len(detail) - _SHOWN_ITEMS} more")
    elif detail not in (None, ""):
        lines.append(str(detail) if isinstance(detail, str) else _compact(detail))
    if isinstance(body, dict):
        if roles := body.get("roles_allowed"):
            lines.append(f"roles allowed: {', '.join(map(str, roles))}")
        for key in ("records", "chunks", "line", "field"):
            if (value := body.get(key)) is not None:
                lines.append(f"{key}: {_compact(value)}")
    if status == 401:
        lines.append("send an API key: --api-key or CONSENTTRACE_API_KEY")
    return head + (": " + "\n  ".join(lines) if lines else "")


def stored_body(row: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An event body the API returns stored (``{"finding": …, "trace_id": …}``), whether
    as an object or as JSON text."""
    value = row.get(key, row)
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else {}


def _validation_line(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    loc = " → ".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
    message = str(error.get("msg", error))
    return f"{loc}: {message}" if loc else message


def _compact(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= 500 else text[:499] + "…"


@dataclass(frozen=True)
class Config:
    """Where the services are, the key, and how to answer."""

    urls: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_URLS))
    api_key: str | None = None
    timeout: float = 30.0
    json: bool = False
    progress: bool = True
    transport: httpx.BaseTransport | None = None
    """Tests answer with ``httpx.MockTransport``; None is the network."""

    def api(self, service: str) -> Api:
        return Api(self, service)


class Api:
    """One service's API (a context manager; one connection pool per command)."""

    def __init__(self, config: Config, service: str) -> None:
        self.service = service
        self.base_url = config.urls[service].rstrip("/")
        headers = {"User-Agent": USER_AGENT}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._timeout = config.timeout
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=config.timeout,
            transport=config.transport,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.call("GET", path, params=params)

    def post(
        self, path: str, body: Any, *, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """The status (201 and 200 mean different things) and the JSON answer."""
        with self.stream("POST", path, json_body=body, headers=headers) as response:
            response.read()
            return response.status_code, _json(response)

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        with self.stream(method, path, params=params) as response:
            response.read()
            return _json(response)

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        transfer_timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """The response, its body not read yet; an error status raises ``Refused``.
        ``transfer_timeout``: a longer wait for each read and write of a big body."""
        slow = max(transfer_timeout or 0.0, self._timeout)
        timeout = httpx.Timeout(self._timeout, read=slow, write=slow)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            with self._client.stream(
                method,
                path,
                params=query,
                json=json_body,
                content=content,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.is_error:
                    response.read()
                    raise Refused(self.service, response.status_code, _body(response))
                yield response
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"{self.service} at {self.base_url} did not answer in time ({_why(exc)})"
            ) from None
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach {self.service} at {self.base_url} ({_why(exc)}); is it running?"
                f" (--{self.service}-url or {URL_ENV.get(self.service, 'its URL')})"
            ) from None


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        text = response.text.strip()
        return {"detail": text[:500]} if text else None


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise CtlError(
            f"the answer of {response.request.method} {response.request.url.path} is not JSON"
        ) from None
