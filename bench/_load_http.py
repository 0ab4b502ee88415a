"""A lean HTTP/1.1 client for load generators: POST JSON over kept-alive connections.

httpx spent 5-10 ms of the bench process's CPU per withdrawal at 60-95 withdrawals/s with 64
requests in flight (half a CPU, more than any service it measured): its connection pool
looks at every connection for every request (``httpcore`` ``_assign_requests_to_connections``
and ``is_idle``, 1.7 million calls for 1,000 requests under cProfile). On a 2-core machine a
load generator that heavy takes its CPU from the system it measures.

This client keeps idle connections in a list, writes the request bytes and reads the status
line, the headers and a ``Content-Length`` body. Nothing more: no TLS, no redirects, no
chunked bodies (uvicorn answers JSON with a length), no proxy. For benchmarks only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpError", "LoadClient"]


class HttpError(Exception):
    """A non-2xx answer, or a connection that broke mid-request."""


class LoadClient:
    def __init__(self, base_url: str, max_connections: int) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"plain http://host:port only, not {base_url!r}")
        self._host = url.hostname
        self._port = url.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post_json(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` as JSON; (status, headers with lower-case names, body bytes).
        Raises ``HttpError`` for a status outside 2xx."""
        payload = json.dumps(body).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        async with self._slots:
            status, headers, content = await self._exchange(request)
        if not 200 <= status < 300:
            raise HttpError(f"{status}: {content[:200]!r}")
        return status, headers, content

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = bool(self._idle)
        reader, writer = (
            self._idle.pop() if reused else await asyncio.open_connection(self._host, self._port)
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
