"""The process every service runs: HTTP API, Kafka consumers and the outbox relay.

``create_app(spec, settings)`` is the one composition root. Nothing connects at import;
on startup the HTTP server answers liveness at once while a background task waits for
Postgres and the broker (with capped backoff), then starts the relay and the consumers.
Readiness turns true only when both answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.topics import Topic
from services.runtime import metrics
from services.runtime.auth import AccessTable, install_access_control
from services.runtime.backoff import backoff_delays
from services.runtime.consumer import EventConsumer, Subscription
from services.runtime.db import connect_pool
from services.runtime.errors import is_transient
from services.runtime.guards import document_error_shapes, install_input_guards
from services.runtime.http import amend_openapi
from services.runtime.outbox import OutboxRelay
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import extract_from_mapping, setup_tracing, tracer
from services.runtime.unit_of_work import UnitOfWork, unit_of_work
from services.runtime.worker import BackgroundWorker, WorkerContext, WorkerSpec

__all__ = ["RuntimeDep", "ServiceRuntime", "ServiceSpec", "create_app", "create_broker"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service itself: its name, migrations, subscriptions and HTTP routes."""

    name: str
    title: str
    description: str
    migrations: Path
    subscriptions: Sequence[Subscription] = ()
    publishes: Sequence[Topic] = ()
    routers: Sequence[APIRouter] = ()
    open_routers: Sequence[APIRouter] = ()
    """Routes that callers prove themselves to by other means than an API key (a signed
    webhook acknowledgement): outside the access table, never behind a key."""
    workers: Sequence[WorkerSpec] = ()
    """Background jobs of the service's own (see ``services.runtime.worker``)."""
    access: AccessTable | None = None
    """Every route's allowed roles (``services/<name>/access.py``, see
    ``services.runtime.auth``). Required while ``AUTH_MODE=api_keys``."""


def create_broker(settings: ServiceSettings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        allow_auto_create_topics=settings.kafka_create_topics,
    )


class ServiceRuntime:
    """Live connections of one service process."""

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.source = f"/consenttrace/{spec.name}"
        self.broker = create_broker(settings)
        self.consumer = EventConsumer(settings, lambda: self.pool, self.source)
        for subscription in spec.subscriptions:
            self.consumer.register(self.broker, subscription)
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._workers: list[BackgroundWorker] = []
        self._starter: asyncio.Task[None] | None = None
        self._startup_error: str | None = None
        self.started = asyncio.Event()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database pool not connected yet")
        return self._pool

    @property
    def database_connected(self) -> bool:
        return self._pool is not None

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work on this service's database (state + outbox in one commit)."""
        return unit_of_work(self.pool, self.source)

    async def start(self) -> None:
        self._starter = asyncio.create_task(self._start(), name="runtime-start")

    async def _start(self) -> None:
        """Postgres, then the producer and the relay, then the consumers (slowest: group joins)."""
        s = self.settings
        self._pool = await connect_pool(s)
        self._producer = await self._retry("kafka producer", self._start_producer)
        self._relay = OutboxRelay(self._pool, self._producer, s)
        await self._relay.start()
        context = WorkerContext(self._pool, self.source, s)
        for worker_spec in self.spec.workers:
            worker = BackgroundWorker(worker_spec, context, s)
            await worker.start()
            self._workers.append(worker)
        await self._retry("kafka consumers", lambda: start_subscribers_together(self.broker))
        # What is alive now (modules, the app, pools) lives as long as the process: out of
        # the garbage collector's full passes, which otherwise walk all of it again and
        # again (a tail on request latency measured in bench/lineage_graph.py).
        gc.collect()
        gc.freeze()
        self.started.set()
        log.info("%s ready", self.spec.name)

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.service_name}-outbox",
            acks="all",
            enable_idempotence=self.settings.kafka_enable_idempotence,
            linger_ms=2,
        )
        try:
            await producer.start()
        except BrokerResponseError as exc:
            await producer.stop()
            if self.settings.kafka_enable_idempotence:
                raise RuntimeError(
                    f"the broker refused the idempotent producer handshake ({exc!r}); Tansu 0.6"
                    " does: set KAFKA_ENABLE_IDEMPOTENCE=false for it (keep it on with Kafka)"
                ) from exc
            raise
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _retry(self, what: str, start: Callable[[], Awaitable[T]]) -> T:
        delays = backoff_delays(
            self.settings.retry_initial_backoff_s, self.settings.retry_max_backoff_s
        )
        while True:
            try:
                result = await start()
            except Exception as exc:
                delay = next(delays)
                self._startup_error = f"{what}: {exc}"
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
            else:
                self._startup_error = None
                return result

    async def stop(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
            await asyncio.gather(self._starter, return_exceptions=True)
        await self.broker.stop()
        for worker in self._workers:
            await worker.stop()
        if self._relay is not None:
            await self._relay.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()

    async def readiness(self) -> dict[str, str]:
        """Checks each dependency; every value must be ``"ok"`` for the service to be ready."""
        checks = {"startup": "ok" if self.started.is_set() else "starting"}
        if self._startup_error:
            checks["startup"] = f"starting: {self._startup_error}"[:300]
        checks["database"] = await _check(self._check_database)
        checks["broker"] = await _check(self._check_broker)
        metrics.READY.set(1 if all(v == "ok" for v in checks.values()) else 0)
        return checks

    async def _check_database(self) -> None:
        await self.pool.fetchval("SELECT 1", timeout=2)

    async def _check_broker(self) -> None:
        if self._producer is None:
            raise RuntimeError("producer not started")
        await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 2)


async def _check(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await probe()
    except Exception as exc:
        return f"error: {exc!r}"[:200]
    return "ok"


async def runtime_dependency(request: Request) -> ServiceRuntime:
    """``runtime_of`` as a dependency. ``async`` although it awaits nothing: FastAPI runs
    a plain ``def`` dependency in a worker thread, a thread hop on every request."""
    return runtime_of(request)


def runtime_of(request: Request) -> ServiceRuntime:
    """The runtime, once its database answers: the API needs no broker (writes go to the outbox)."""
    runtime: ServiceRuntime = request.app.state.runtime
    if not runtime.database_connected:
        raise HTTPException(503, "service is starting: database not reachable yet")
    return runtime


RuntimeDep = Annotated[ServiceRuntime, Depends(runtime_dependency)]

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
"""What a request may meet when Postgres goes away under a running service (refused or
reset connections, a server shutting down or recovering). ``is_transient`` decides."""


async def _unavailable(request: Request, exc: Exception) -> Response:
    """503 with ``Retry-After`` for a transient outage met mid-request, never a 500: the
    request can succeed as it is once the database is back, and clients (the OpenLineage
    HTTP transport, a settings system) retry a 503. Anything else stays a 500."""
    if not is_transient(exc):
        raise exc
    log.warning("%s %s answered 503: %r", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"temporarily unavailable ({type(exc).__name__}): retry shortly"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def start_subscribers_together(broker: KafkaBroker) -> None:
    """``broker.start()``, with every subscriber starting at once.

    A consumer's start returns once its group has joined, and the coordinator holds a new
    group's join for its initial rebalance delay (3 s on Tansu; Kafka's
    ``group.initial.rebalance.delay.ms``, 3 s by default). FastStream starts subscribers one
    after the other: a service with four groups was ready after 12 s, now after 3. On a
    failure the broker is stopped, so that a retry starts from nothing.
    """
    try:
        await broker.connect()
        results = await asyncio.gather(
            *(subscriber.start() for subscriber in broker.subscribers), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for publisher in broker.publishers:
            await publisher.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await broker.stop()
        raise
    broker.running = True


class _TracingMiddleware:
    """A server span per request, continuing any ``traceparent`` the caller sent.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a task and a
    stream per request on the intake path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        with tracer().start_as_current_span(
            f"{method} {path}",
            context=extract_from_mapping(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            ctx = span.get_span_context()
            traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode()

            async def send_with_trace(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"traceparent", traceparent),
                    ]
                await send(message)

            await self.app(scope, receive, send_with_trace)


def _health_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health/live", summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", summary="Broker and database reachable")
    async def ready(request: Request) -> JSONResponse:
        checks = await request.app.state.runtime.readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
        )

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(spec: ServiceSpec, settings: ServiceSettings) -> FastAPI:
    """The service as an ASGI app; connections open in its lifespan, never at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing(spec.name, settings.otel_exporter_otlp_endpoint)
        runtime = ServiceRuntime(spec, settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=spec.title,
        description=spec.description,
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry layer is off: ``_TracingMiddleware`` makes the server
        # span (and answers ``traceparent``), Prometheus has the metrics. With it on, every
        # request also made FastAPI's server span and spans per dependency, endpoint and
        # serialization: a tenth of a single consent request's CPU under cProfile.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # 413 past it (services.runtime.guards); 0 in the setting means no limit.
        max_body_size=settings.max_request_body_bytes or None,
    )
    health = _health_router()
    install_access_control(  # before tracing, so that tracing stays the outermost layer
        app,
        settings,
        service=spec.name,
        routers=spec.routers,
        open_routers=(health, *spec.open_routers),
        table=spec.access,
    )
    install_input_guards(app)
    app.add_middleware(_TracingMiddleware)
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _unavailable)
    app.include_router(health)
    for router in (*spec.routers, *spec.open_routers):
        app.include_router(router)
    _document_errors(app)
    return app


def _document_errors(app: FastAPI) -> None:
    amend_openapi(app, document_error_shapes)
