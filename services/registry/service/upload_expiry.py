"""Expiring chunked uploads left idle: a pipeline that died mid-upload would otherwise hold
its staging table (up to 50M rows of disk) and its dataset version's name for ever.

The registry's worker looks for an idle upload at most every ``min(60 s, timeout / 4)``
and abandons every one it finds, each in its own transaction (``expire_idle_upload``).
Any number of replicas may run it: the upload row is claimed with ``SKIP LOCKED``, and an
upload a chunk or the seal is working on holds that row, so it is never taken from under
them. When it finds none, it forgets the notes of uploads that expired more than 30 days
ago (``EXPIRY_NOTE_RETENTION``): a client that comes back later gets 404, not 410.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from prometheus_client import Counter

from services.registry.service.registration import expire_idle_upload, forget_old_expiries
from services.runtime.unit_of_work import unit_of_work
from services.runtime.worker import WorkerContext, WorkerSpec

__all__ = ["UPLOAD_EXPIRY_WORKER", "expire_next_upload"]

log = logging.getLogger(__name__)

MAX_CHECK_INTERVAL_S = 60.0
EXPIRED = Counter(
    "consenttrace_registry_uploads_expired",
    "Chunked uploads abandoned after UPLOAD_IDLE_TIMEOUT_S without a chunk.",
)

_next_check = 0.0
"""``time.monotonic()`` before which no new look is taken (after one that found nothing)."""


async def expire_next_upload(ctx: WorkerContext) -> bool:
    """Expire one idle upload; False when none is (or it is not time to look yet)."""
    global _next_check
    if time.monotonic() < _next_check:
        return False
    timeout = ctx.settings.upload_idle_timeout_s
    async with unit_of_work(ctx.pool, ctx.source) as uow:
        expired = await expire_idle_upload(uow, timedelta(seconds=timeout))
        if expired is None:
            await forget_old_expiries(uow)
    if expired is None:
        _next_check = time.monotonic() + min(MAX_CHECK_INTERVAL_S, timeout / 4)
        return False
    EXPIRED.inc()
    log.warning(
        "upload %s for %s/%s@%s expired: idle since %s (UPLOAD_IDLE_TIMEOUT_S=%g);"
        " %d chunk(s), %d staged records dropped",
        expired["upload_id"],
        expired["namespace"],
        expired["name"],
        expired["version"],
        expired["touched_at"].isoformat(),
        timeout,
        expired["chunks"],
        expired["records"],
    )
    return True


UPLOAD_EXPIRY_WORKER = WorkerSpec(name="upload-expiry", step=expire_next_upload)
