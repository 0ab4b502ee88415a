"""The registry's and lineage's read APIs, as deletion calls them over HTTP: scoping (from
the request that asks for it) and verification (from a background worker). Never on the
event path.

Base URLs are the ``REGISTRY_URL`` and ``LINEAGE_URL`` settings; the key presented is
``SERVICE_API_KEY`` (a key with role ``ml_reader`` reads both). A missing URL, a service
that cannot be reached, answers with a server error, refuses the key or lacks the endpoint
raises ``ServiceUnavailable`` (the case fails at scoping with it, or verification tries
again later); another refusal (4xx) raises ``ServiceRejected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from contracts.base import DatasetRef, ModelRef
from services.runtime.auth import service_headers
from services.runtime.settings import ServiceSettings

__all__ = [
    "CATEGORY_RECORDS_PATH",
    "ServiceRejected",
    "ServiceUnavailable",
    "ServicesClient",
]

DEFAULT_TIMEOUT_S = 30.0
CONCURRENCY = 8
CATEGORY_RECORDS_PATH = "/api/v1/dataset-versions/holding"
"""The registry read a category purge needs (registry: ``entrypoints/composition_http.py``):
``GET …?category=C&…[&jurisdiction=J…][&collected_from=T][&collected_until=T]`` → the
sealed versions holding such records, ``[{"dataset", "records", "subjects"}]``."""


class ServiceUnavailable(Exception):
    """A service is not configured, cannot be reached, or cannot answer this now."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.detail = detail


class ServiceRejected(Exception):
    """The service refused the request itself (4xx other than 404)."""

    def __init__(self, service: str, status_code: int, detail: Any) -> None:
        super().__init__(f"{service} answered {status_code}: {detail}")
        self.service = service
        self.status_code = status_code


class _Api:
    def __init__(
        self,
        service: str,
        setting: str,
        base_url: str | None,
        headers: Mapping[str, str],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.service = service
        self.setting = setting
        self.base_url = base_url.rstrip("/") if base_url else None
        self._client = (
            httpx.AsyncClient(
                base_url=self.base_url, headers=dict(headers), timeout=timeout, transport=transport
            )
            if self.base_url
            else None
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def get(self, path: str, params: Any) -> Any | None:
        """The JSON answer; None on a 404 that names a missing resource."""
        if self._client is None:
            raise ServiceUnavailable(
                self.service, f"its URL is not configured: set {self.setting} for deletion"
            )
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                self.service,
                f"{self.base_url} cannot be reached: {type(exc).__name__}: {exc or 'no answer'}",
            ) from exc
        if response.status_code == 404:
            if _detail(response) == "Not Found":  # FastAPI's answer for an unknown route
                raise ServiceUnavailable(
                    self.service, f"{self.base_url} has no GET {path} endpoint"
                )
            return None
        if response.status_code in (401, 403):
            raise ServiceUnavailable(
                self.service,
                f"{self.base_url} refused deletion's key ({response.status_code}:"
                f" {_detail(response)}); set SERVICE_API_KEY to a key with role ml_reader",
            )
        if response.status_code >= 500:
            raise ServiceUnavailable(
                self.service,
                f"{self.base_url} answered {response.status_code}: {response.text[:300]}",
            )
        if response.status_code >= 400:
            raise ServiceRejected(self.service, response.status_code, _detail(response))
        return response.json()


class ServicesClient:
    """``async with ServicesClient.from_settings(settings) as services: …``"""

    def __init__(
        self,
        registry_url: str | None,
        lineage_url: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        h = dict(headers or {})
        self.registry = _Api("registry", "REGISTRY_URL", registry_url, h, timeout, transport)
        self.lineage = _Api("lineage", "LINEAGE_URL", lineage_url, h, timeout, transport)
        self._gate = asyncio.Semaphore(CONCURRENCY)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ServicesClient:
        return cls(settings.registry_url, settings.lineage_url, headers=service_headers(settings))

    async def __aenter__(self) -> ServicesClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.registry.close()
        await self.lineage.close()

    async def _bounded(self, api: _Api, path: str, params: Any) -> Any | None:
        async with self._gate:
            return await api.get(path, params)

    # --- registry -----------------------------------------------------------------------

    async def subject_versions(
        self, subject_id: str, category: str | None = None
    ) -> list[dict[str, Any]]:
        """Sealed versions holding the subject's records (of ``category`` and below)."""
        params = {"subject_id": subject_id, **({"category": category} if category else {})}
        answer = await self._bounded(self.registry, "/api/v1/dataset-versions", params)
        return list(answer or [])

    async def subjects_versions(
        self, subjects: Sequence[str], categories: Sequence[str] = ()
    ) -> dict[str, list[dict[str, Any]]]:
        """``subject_versions`` of each subject (per category when given), concatenated."""
        wanted: list[str | None] = [*categories] if categories else [None]
        pairs = [(s, c) for s in subjects for c in wanted]
        answers = await asyncio.gather(*(self.subject_versions(s, c) for s, c in pairs))
        merged: dict[str, list[dict[str, Any]]] = {s: [] for s in subjects}
        for (subject, _), answer in zip(pairs, answers, strict=True):
            merged[subject].extend(answer)
        return merged

    async def dataset_version(self, dataset: DatasetRef) -> dict[str, Any] | None:
        """One sealed version (with its ``record_count``); None when there is none."""
        answer = await self._bounded(self.registry, "/api/v1/dataset-version", _ref_params(dataset))
        return dict(answer) if answer is not None else None

    async def versions_holding(self, selector: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Sealed versions holding records of the categories (jurisdictions, window)."""
        params: list[tuple[str, str]] = [("category", c) for c in selector.get("categories", ())]
        params += [("jurisdiction", j) for j in selector.get("jurisdictions", ()) or ()]
        for name in ("collected_from", "collected_until"):
            if selector.get(name):
                params.append((name, str(selector[name])))
        answer = await self._bounded(self.registry, CATEGORY_RECORDS_PATH, params)
        return list(answer or [])

    # --- lineage ------------------------------------------------------------------------

    async def downstream(self, node_id: str, depth: int) -> dict[str, Any] | None:
        """The lineage graph downstream of ``node_id``; None when lineage does not know it."""
        answer = await self._bounded(
            self.lineage,
            "/api/v1/lineage/graph",
            {"nodeId": node_id, "depth": str(depth), "direction": "downstream"},
        )
        return dict(answer) if answer is not None else None

    async def model_status(self, model: ModelRef) -> dict[str, Any] | None:
        """The model's status; None when lineage never saw it in a run."""
        answer = await self._bounded(self.lineage, "/api/v1/model-status", _ref_params(model))
        return dict(answer) if answer is not None else None


def _ref_params(ref: DatasetRef) -> dict[str, str]:
    return {"namespace": ref.namespace, "name": ref.name, "version": ref.version}


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail", body) if isinstance(body, dict) else body
