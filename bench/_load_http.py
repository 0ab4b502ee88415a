"""A lean HTTP/1.1 client for the benchmarks: requests over kept-alive connections.

Two reasons not to use httpx in a benchmark's client:

- as a load generator (``withdrawal_latency.py``, ``consent_intake.py``): its connection
  pool looks at every connection for every request (``httpcore``
  ``_assign_requests_to_connections`` and ``is_idle``, 1.7 million calls for 1,000 requests
  under cProfile). With 64 requests in flight the bench process spent 5-10 ms of CPU per
  withdrawal, half a CPU, more than any service it measured, and could not send faster than
  60-95 withdrawals/s: on two cores it took its CPU from the system under test;
- as a timer (``lineage_graph.py``): its own parsing added 2-10 ms to a body of several MB.

This client keeps idle connections in a list, writes the request bytes and reads the status
line, the headers and a ``Content-Length`` body. Nothing more: no TLS, no redirects, no
chunked bodies (uvicorn answers with a length), no proxy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = ["HttpError", "LoadClient", "Response"]

Response = tuple[int, dict[str, str], bytes]
"""Status, headers (lower-case names), body."""


class HttpError(Exception):
    """A non-2xx answer to ``post_json``, or a connection that broke mid-request."""


class LoadClient:
    def __init__(self, base_url: str, max_connections: int = 1) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"plain http://host:port only, not {base_url!r}")
        self._host = url.hostname
        self._port = url.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        """GET ``path`` with ``params`` as its query, whatever the status."""
        return await self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    async def post_json(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> Response:
        """POST ``body`` as JSON; ``HttpError`` for a status outside 2xx."""
        response = await self.request(
            "POST",
            path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        if not 200 <= response[0] < 300:
            raise HttpError(f"{response[0]}: {response[2][:200]!r}")
        return response

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        async with self._slots:
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> Response:
        reused = bool(self._idle)
        reader, writer = (
            self._idle.pop()
            if reused
            else await asyncio.open_connection(self._host, self._port, limit=2**20)
        )
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            content = await reader.readexactly(int(headers.get("content-length", "0")))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            writer.close()
            if reused:  # the server closed an idle connection (keep-alive timeout): once more
                return await self._exchange(request)
            raise HttpError(f"connection broke: {exc!r}") from exc
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, headers, content

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
            await writer.wait_closed()
