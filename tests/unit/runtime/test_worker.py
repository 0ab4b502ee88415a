"""Background workers: a listener connection that died under a Postgres restart is replaced
without a failed round (seen in the fault scenario as ``worker … failed (InterfaceError(
'cannot call Connection.is_closed(): connection has been released back to the pool'))``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from services.runtime.settings import ServiceSettings
from services.runtime.worker import BackgroundWorker, WorkerContext, WorkerSpec


class Listener:
    def __init__(self, detached: bool = False) -> None:
        self.detached = detached
        self.channels: list[str] = []

    def is_closed(self) -> bool:
        if self.detached:
            raise asyncpg.InterfaceError(
                "cannot call Connection.is_closed(): connection has been released back to the pool"
            )
        return False

    async def add_listener(self, channel: str, callback: object) -> None:
        self.channels.append(channel)

    async def remove_listener(self, channel: str, callback: object) -> None:
        if self.detached:
            raise asyncpg.InterfaceError("released back to the pool")


class Pool:
    def __init__(self) -> None:
        self.acquired: list[Listener] = []
        self.released: list[Listener] = []

    async def acquire(self, **_: object) -> Listener:
        listener = Listener()
        self.acquired.append(listener)
        return listener

    async def release(self, listener: Listener) -> None:
        self.released.append(listener)


async def test_a_detached_listener_is_replaced_without_a_failed_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = Pool()
    rounds: list[int] = []

    async def step(_: WorkerContext) -> bool:
        rounds.append(1)
        return False

    settings = ServiceSettings(outbox_poll_interval_s=60)
    context = WorkerContext(pool, "/test", settings)  # type: ignore[arg-type]
    worker = BackgroundWorker(WorkerSpec("w", step, channel="work"), context, settings)
    dead: Any = Listener(detached=True)
    worker._listener = dead  # what a Postgres restart leaves behind
    with caplog.at_level(logging.WARNING, logger="services.runtime.worker"):
        await worker.start()
        for _ in range(100):
            if rounds:
                break
            await asyncio.sleep(0.01)
        await worker.stop()
    assert rounds, "the step ran"
    assert [r.message for r in caplog.records] == [], "no failed round"
    assert pool.acquired and pool.acquired[0].channels == ["work"], "a new listener"
    assert dead in pool.released
