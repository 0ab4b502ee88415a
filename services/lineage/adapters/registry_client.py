"""The registry's read API, as lineage calls it over HTTP (never on the event path).

Reads only: a dataset version's composition and the what-if of a withdrawal. The base URL
is the ``REGISTRY_URL`` setting, the key lineage presents ``SERVICE_API_KEY`` (role
``ml_reader``). Without a URL, or when the registry does not answer, answers with a server
error, or refuses lineage's key, calls raise ``RegistryUnavailable``, which the API turns
into a 503 saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from contracts.base import DatasetRef
from services.runtime.auth import service_headers
from services.runtime.settings import ServiceSettings

__all__ = ["RegistryClient", "RegistryRejected", "RegistryUnavailable"]

DEFAULT_TIMEOUT_S = 30.0
CONCURRENCY = 8
"""Composition requests in flight at once for one caller."""


class RegistryUnavailable(Exception):
    """No registry configured, or it cannot answer now (503)."""


class RegistryRejected(Exception):
    """The registry refused the request itself (4xx other than 404): passed on as is."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"registry answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RegistryClient:
    """``async with RegistryClient(url) as registry: …``; one connection pool per use."""

    def __init__(
        self,
        base_url: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise RegistryUnavailable(
                "the registry's URL is not configured: set REGISTRY_URL for the lineage"
                " service (e.g. http://127.0.0.1:8002)"
            )
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=dict(headers or {}),
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RegistryClient:
        """``REGISTRY_URL``, with ``SERVICE_API_KEY`` as the bearer key when set."""
        return cls(settings.registry_url, headers=service_headers(settings))

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def composition(self, dataset: DatasetRef) -> dict[str, Any] | None:
        """The version's composition; None when the registry holds no sealed version of
        that name (lineage may know datasets the registry never registered)."""
        return await self._get(
            "/api/v1/dataset-version/composition",
            {"namespace": dataset.namespace, "name": dataset.name, "version": dataset.version},
        )

    async def compositions(self, datasets: Sequence[DatasetRef]) -> list[dict[str, Any] | None]:
        """Compositions of many versions, a few requests at a time, in input order."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(dataset: DatasetRef) -> dict[str, Any] | None:
            async with gate:
                return await self.composition(dataset)

        return list(await asyncio.gather(*(one(d) for d in datasets)))

    async def what_if_withdrawal(self, body: Mapping[str, Any]) -> dict[str, Any]:
        answer = await self._send("POST", "/api/v1/what-if/withdrawal", json=dict(body))
        if answer is None:
            raise RegistryUnavailable(f"the registry at {self.base_url} answered 404 to what-if")
        return answer

    async def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        return await self._send("GET", path, params=dict(params))

    async def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"the registry at {self.base_url} cannot be reached:"
                f" {type(exc).__name__}: {exc or 'no answer'}"
            ) from exc
        if response.status_code == 404:
            if _detail(response) == "Not Found":  # FastAPI's answer for an unknown route
                raise RegistryUnavailable(
                    f"the registry at {self.base_url} has no {method} {path} endpoint"
                    " (an older registry?)"
                )
            return None
        if response.status_code in (401, 403):
            raise RegistryUnavailable(
                f"the registry at {self.base_url} refused lineage's key"
                f" ({response.status_code}: {_detail(response)}); set SERVICE_API_KEY to a key"
                " with role ml_reader"
            )
        if response.status_code >= 500:
            raise RegistryUnavailable(
                f"the registry at {self.base_url} answered {response.status_code}:"
                f" {response.text[:300]}"
            )
        if response.status_code >= 400:
            raise RegistryRejected(response.status_code, _detail(response))
        answer: dict[str, Any] = response.json()
        return answer


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail", body) if isinstance(body, dict) else body
