"""Background workers: a service's own jobs, worked off beside its consumers.

A worker repeats one ``step`` (which returns whether it did any work) until there is
nothing left, then sleeps until a ``NOTIFY`` on its channel or the poll interval. Jobs
live in the service's database, claimed with ``FOR UPDATE SKIP LOCKED`` by the step, so
any number of replicas can run the same worker. A transient failure (database or broker
gone) is retried with capped backoff; what a step does with its own permanent failures
(park the job, record the error) is the step's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.runtime.backoff import backoff_delays
from services.runtime.errors import is_transient
from services.runtime.settings import ServiceSettings

__all__ = ["BackgroundWorker", "WorkerContext", "WorkerSpec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    """What a step gets: the pool, the service's event source, its settings, the
    transient test."""

    pool: asyncpg.Pool
    source: str
    settings: ServiceSettings
    is_transient: Callable[[BaseException], bool] = is_transient


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    step: Callable[[WorkerContext], Awaitable[bool]]
    channel: str | None = None
    """A ``NOTIFY`` channel that means "there is work"; polling alone when None."""


class BackgroundWorker:
    def __init__(self, spec: WorkerSpec, context: WorkerContext, settings: ServiceSettings) -> None:
        self._spec = spec
        self._context = context
        self._settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: PoolConnectionProxy[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker-{self._spec.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        s = self._settings
        delays = backoff_delays(s.retry_initial_backoff_s, s.retry_max_backoff_s)
        while True:
            try:
                await self._ensure_listener()
                self._wake.clear()  # before draining: a NOTIFY from now on wakes the next round
                while await self._spec.step(self._context):
                    pass
                delays = backoff_delays(s.retry_initial_backoff_s, s.retry_max_backoff_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                log.warning("worker %s failed (%r); retrying in %.2fs", self._spec.name, exc, delay)
                await self._close_listener()
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.outbox_poll_interval_s)

    async def _ensure_listener(self) -> None:
        if self._spec.channel is None:
            return
        if self._listener is not None and _alive(self._listener):
            return
        await self._close_listener()
        self._listener = await self._context.pool.acquire(timeout=5)
        await self._listener.add_listener(self._spec.channel, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _close_listener(self) -> None:
        if self._listener is not None and self._spec.channel is not None:
            listener, self._listener = self._listener, None
            try:
                await listener.remove_listener(self._spec.channel, self._on_notify)
            except Exception:
                log.debug("listener connection already gone")
            await self._context.pool.release(listener)


def _alive(listener: PoolConnectionProxy[Any]) -> bool:
    """Whether the listening connection still stands. When Postgres goes away, asyncpg
    returns the dead connection to the pool and detaches our proxy, whose every call then
    raises ``InterfaceError``: that is a dead listener to replace, not a failed round."""
    try:
        return not listener.is_closed()
    except asyncpg.InterfaceError:
        return False
