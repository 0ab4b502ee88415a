"""The embedded development stack: ``python -m services.runtime.devstack {up,down,status,logs}``.

``up [--fresh]``
    Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set, else a Tansu broker started detached (port 9092
    when free, else a free port). Postgres: the server of ``DATABASE_URL`` (its database part is
    ignored) when set, else 127.0.0.1:5432, else an embedded PostgreSQL from ``pgserver`` when
    installed (data in ``.dev/pgdata``). Then it creates the databases ``consenttrace_<service>``,
    runs ``python -m services.<service> migrate`` for each service, starts each with ``serve``
    (detached, own process group, log in ``.dev/logs/<service>.log``), waits for
    ``GET /health/ready``, writes ``.dev/stack.json`` and prints the URLs. On any failure it
    prints the relevant log tail and stops what it started. ``--fresh`` drops the four
    databases first.
``down``
    Stops everything recorded in ``.dev/stack.json`` (SIGTERM, SIGKILL after a timeout); idempotent.
``status``
    Shows whether each recorded process is alive and ready; exit code 1 when something is not.
``logs [NAME] [-n N] [-f]``
    Prints (or follows) the tail of the logs.

Tests reuse :func:`service_env`, :func:`start_service`, :func:`run_migrate` and
:func:`wait_ready`.
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from services.runtime import auth, embedded
from services.runtime.embedded import EmbeddedError

#: The four services, in start order.
SERVICES: tuple[str, ...] = ("consent", "registry", "lineage", "deletion")
#: Development HTTP ports.
DEFAULT_PORTS: dict[str, int] = {
    "consent": 8001,
    "registry": 8002,
    "lineage": 8003,
    "deletion": 8004,
}
#: Port for the embedded broker when it is free.
DEFAULT_KAFKA_PORT = 9092
READY_PATH = "/health/ready"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEV_DIR = REPO_ROOT / ".dev"


class StackError(RuntimeError):
    """``up`` failed; the message carries the log tail that explains why."""


# ------------------------------------------------------------------------- reusable helpers


def database_name(name: str) -> str:
    """The database of service ``name``: ``consenttrace_<name>``."""
    return f"consenttrace_{name}"


def service_env(
    name: str,
    bootstrap: str,
    server_url: str,
    port: int,
    *,
    enable_idempotence: bool = False,
    log_level: str | None = None,
) -> dict[str, str]:
    """The environment variables a service process needs (to be laid over ``os.environ``).

    ``server_url`` is a Postgres server URL; the service gets its own database
    ``consenttrace_<name>`` on it. ``enable_idempotence`` must stay False for Tansu.
    """
    return {
        "DATABASE_URL": embedded.database_url_for(server_url, database_name(name)),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if enable_idempotence else "false",
        "HTTP_PORT": str(port),
        "LOG_LEVEL": (log_level or os.environ.get("LOG_LEVEL") or "INFO").upper(),
        "SERVICE_NAME": name,  # a SERVICE_NAME in the caller's env must not rename all four
        "PYTHONUNBUFFERED": "1",
        # Reads between services (never on the event path): lineage and deletion ask the
        # registry and lineage over HTTP.
        "REGISTRY_URL": f"http://127.0.0.1:{DEFAULT_PORTS['registry']}",
        "LINEAGE_URL": f"http://127.0.0.1:{DEFAULT_PORTS['lineage']}",
    }


def _python_env(env_overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(env_overrides)
    # `python -m services.<name>` must find this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def _append_header(log_path: Path, text: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n===== {datetime.now(UTC).isoformat(timespec='seconds')} {text} =====\n")


def run_migrate(
    name: str, env_overrides: Mapping[str, str], log_dir: Path, timeout: float = 180.0
) -> None:
    """Run ``python -m services.<name> migrate`` to completion, output appended to its log.

    Raises :class:`StackError` with the log tail when it fails or times out.
    """
    log_path = Path(log_dir) / f"{name}.log"
    _append_header(log_path, f"{name} migrate")
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", f"services.{name}", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_python_env(env_overrides),
                cwd=REPO_ROOT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"{name} migrate did not finish within {timeout}s; {log_path}:\n"
                + embedded.log_tail(log_path)
            ) from None
    if proc.returncode != 0:
        raise StackError(
            f"{name} migrate failed (exit {proc.returncode}); {log_path}:\n"
            + embedded.log_tail(log_path)
        )


def start_service(
    name: str, env_overrides: Mapping[str, str], port: int, log_dir: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m services.<name> serve`` detached, in its own process group.

    Output (stdout and stderr) is appended to ``<log_dir>/<name>.log``. ``HTTP_PORT`` is set to
    ``port`` whatever ``env_overrides`` says. The process is not stopped when the caller exits:
    use :func:`stop_process` (or ``Popen.terminate``) for that.
    """
    log_path = Path(log_dir) / f"{name}.log"
    _append_header(log_path, f"{name} serve on port {port}")
    env = _python_env(env_overrides)
    env["HTTP_PORT"] = str(port)
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def ready_url(port: int, host: str = "127.0.0.1") -> str:
    """The readiness URL of a service listening on ``port``."""
    return f"http://{host}:{port}{READY_PATH}"


def is_ready(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET url`` answers 200 within ``timeout`` seconds."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    url: str,
    timeout: float = 60.0,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``GET url`` until it answers 200; raise :class:`TimeoutError` otherwise.

    With ``proc``, fail at once (:class:`StackError`) when the process exits; with ``log_path``,
    error messages carry the log tail.
    """
    deadline = time.monotonic() + timeout

    def tail() -> str:
        return "\n" + embedded.log_tail(log_path) if log_path else ""

    while True:
        if is_ready(url, timeout=min(2.0, max(0.2, deadline - time.monotonic()))):
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"process exited with code {proc.returncode} before {url}{tail()}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready within {timeout}s{tail()}")
        time.sleep(0.2)


async def wait_ready_async(url: str, within: float = 60.0) -> None:
    """Async :func:`wait_ready` (without process checks) for use inside event loops."""
    import asyncio

    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{url} not ready within {within}s")
            await asyncio.sleep(0.2)


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when ``pid`` runs and (on Linux, when ``marker`` is given) its command line holds
    ``marker`` -- so a recycled pid is not mistaken for ours."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own zombie
            return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if marker and cmdline.exists():
        try:
            return marker in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
    return True


def stop_processes(
    targets: Sequence[tuple[int | None, str | None]], *, timeout: float = 10.0
) -> list[int]:
    """SIGTERM the process group of each ``(pid, marker)`` at once, SIGKILL what remains after
    ``timeout`` s; return the pids that were running.

    A pid that is gone or (see :func:`pid_alive`) no longer the process ``marker`` describes is
    left alone.
    """
    running = [(pid, marker) for pid, marker in targets if pid and pid_alive(pid, marker)]
    for pid, _ in running:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid, marker) for pid, marker in running):
        if time.monotonic() >= deadline:
            for pid, marker in running:
                if pid_alive(pid, marker):
                    _signal(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.1)
    return [pid for pid, _ in running]


def stop_process(pid: int | None, *, marker: str | None = None, timeout: float = 10.0) -> bool:
    """:func:`stop_processes` for one process; True when it was running."""
    return bool(stop_processes([(pid, marker)], timeout=timeout))


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# -------------------------------------------------------------------------------- stack file


def stack_file(dev_dir: Path) -> Path:
    """Where ``up`` records what it started."""
    return dev_dir / "stack.json"


def load_stack(dev_dir: Path) -> dict[str, Any] | None:
    """The recorded stack, or None when nothing is recorded."""
    path = stack_file(dev_dir)
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def save_stack(dev_dir: Path, stack: Mapping[str, Any]) -> None:
    """Write the stack record atomically."""
    path = stack_file(dev_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stack, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _stack_alive(stack: Mapping[str, Any]) -> list[str]:
    alive = [
        name
        for name, svc in stack.get("services", {}).items()
        if pid_alive(svc.get("pid"), svc.get("marker"))
    ]
    for part in ("kafka", "postgres"):
        info = stack.get(part, {})
        if info.get("embedded") and pid_alive(info.get("pid"), info.get("marker")):
            alive.append(part)
    return alive


# ------------------------------------------------------------------------------ commands


def _resolve_kafka(log_dir: Path, stack: dict[str, Any]) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if bootstrap:
        idempotence = embedded.env_flag(os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True)
        if not embedded.run_sync(embedded.kafka_reachable(bootstrap, within=10.0)):
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} gives no Kafka metadata")
        stack["kafka"] = {
            "embedded": False,
            "bootstrap_servers": bootstrap,
            "enable_idempotence": idempotence,
        }
        return
    port = None if embedded.port_open("127.0.0.1", DEFAULT_KAFKA_PORT) else DEFAULT_KAFKA_PORT
    log_path = log_dir / "tansu.log"
    broker = embedded.TansuBroker(port, log_path=log_path)
    broker.start()
    stack["kafka"] = {
        "embedded": True,
        "bootstrap_servers": broker.bootstrap_servers,
        "enable_idempotence": False,
        "pid": broker.pid,
        "marker": "tansu",
        "log": str(log_path),
    }


def _resolve_postgres(dev_dir: Path, stack: dict[str, Any]) -> None:
    explicit = os.environ.get("DATABASE_URL", "").strip()
    if explicit:
        if not embedded.postgres_reachable(explicit, timeout=5.0):
            raise StackError(f"DATABASE_URL={explicit} does not answer (is PostgreSQL running?)")
        stack["postgres"] = {"embedded": False, "server_url": explicit}
        return
    if embedded.postgres_reachable(embedded.DEFAULT_SERVER_URL):
        stack["postgres"] = {"embedded": False, "server_url": embedded.DEFAULT_SERVER_URL}
        return
    print("No PostgreSQL at 127.0.0.1:5432; starting an embedded one (pgserver) ...")
    pg = embedded.start_pgserver(dev_dir / "pgdata")
    stack["postgres"] = {
        "embedded": True,
        "server_url": pg.server_url,
        "pid": pg.pid,
        "marker": "postgres",
        "data_dir": str(pg.data_dir),
    }


def _resolve_auth(dev_dir: Path, stack: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per service, the auth variables it gets. Off unless ``AUTH_MODE=api_keys`` is set
    (the walkthrough and local curl need no keys); then the keys of ``API_KEYS_FILE`` /
    ``API_KEYS`` when set, else one development key per role in ``.dev/auth/``."""
    mode = os.environ.get("AUTH_MODE", "").strip() or "off"
    if mode == "off":
        stack["auth"] = {"mode": "off"}
        return {n: {"AUTH_MODE": "off"} for n in SERVICES}
    if mode != "api_keys":
        raise StackError(f"AUTH_MODE={mode}: use api_keys or off")
    if os.environ.get("API_KEYS_FILE") or os.environ.get("API_KEYS"):
        stack["auth"] = {"mode": mode, "keys_file": os.environ.get("API_KEYS_FILE")}
        return {n: {"AUTH_MODE": mode} for n in SERVICES}
    keys = auth.write_dev_keys(dev_dir / "auth")
    stack["auth"] = {
        "mode": mode,
        "keys_file": str(keys.keys_file),
        "plain_keys_file": str(keys.plain_file),
    }
    envs = {n: {"AUTH_MODE": mode, "API_KEYS_FILE": str(keys.keys_file)} for n in SERVICES}
    for reader in ("lineage", "deletion"):  # their reads of the registry and lineage
        envs[reader]["SERVICE_API_KEY"] = keys.service_key
    return envs


def up(
    dev_dir: Path,
    *,
    timeout: float = 90.0,
    services: Sequence[str] = SERVICES,
    fresh: bool = False,
) -> int:
    """Bring the stack up (see the module docstring); returns the exit code. ``fresh``
    drops the services' databases first (what ``make demo`` does: its figures then owe
    nothing to an earlier run)."""
    existing = load_stack(dev_dir)
    if existing is not None and _stack_alive(existing):
        print(f"The stack is already running ({stack_file(dev_dir)}); `down` stops it.")
        return status(dev_dir)
    log_dir = dev_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old_log in log_dir.glob("*.log"):  # keep one previous run, start readable logs afresh
        old_log.replace(old_log.with_suffix(".log.prev"))
    busy = [n for n in services if embedded.port_open("127.0.0.1", DEFAULT_PORTS[n])]
    if busy:
        ports = ", ".join(f"{n}:{DEFAULT_PORTS[n]}" for n in busy)
        print(f"Ports already in use ({ports}): stop what listens there first.")
        return 1
    stack: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dev_dir": str(dev_dir),
        "services": {},
    }
    try:
        _resolve_kafka(log_dir, stack)
        save_stack(dev_dir, stack)
        _resolve_postgres(dev_dir, stack)
        save_stack(dev_dir, stack)
        server_url: str = stack["postgres"]["server_url"]
        bootstrap: str = stack["kafka"]["bootstrap_servers"]
        idempotence: bool = stack["kafka"]["enable_idempotence"]
        if fresh:
            print("dropping the services' databases (--fresh) ...")
            embedded.drop_databases_sync(server_url, [database_name(n) for n in services])
        embedded.create_databases_sync(server_url, [database_name(n) for n in services])
        auth_envs = _resolve_auth(dev_dir, stack)
        envs = {
            n: service_env(
                n, bootstrap, server_url, DEFAULT_PORTS[n], enable_idempotence=idempotence
            )
            | auth_envs[n]
            for n in services
        }
        for name in services:
            print(f"migrate {name} ...")
            run_migrate(name, envs[name], log_dir)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name in services:
            port = DEFAULT_PORTS[name]
            procs[name] = start_service(name, envs[name], port, log_dir)
            stack["services"][name] = {
                "pid": procs[name].pid,
                "marker": f"services.{name}",
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "ready_url": ready_url(port),
                "database_url": envs[name]["DATABASE_URL"],
                "log": str(log_dir / f"{name}.log"),
            }
            save_stack(dev_dir, stack)
        deadline = time.monotonic() + timeout
        for name, proc in procs.items():
            wait_ready(
                ready_url(DEFAULT_PORTS[name]),
                max(1.0, deadline - time.monotonic()),
                proc=proc,
                log_path=log_dir / f"{name}.log",
            )
    except KeyboardInterrupt:
        print("Interrupted: stopping what was started ...", file=sys.stderr)
        save_stack(dev_dir, stack)
        down(dev_dir, quiet=True)
        return 130
    except Exception as err:  # anything: report it, then leave nothing running
        kind = "" if isinstance(err, StackError | EmbeddedError) else f"{type(err).__name__}: "
        print(f"devstack up failed: {kind}{err}", file=sys.stderr)
        print("Stopping what was started ...", file=sys.stderr)
        save_stack(dev_dir, stack)
        down(dev_dir, quiet=True)
        return 1
    save_stack(dev_dir, stack)
    _print_table(stack)
    return 0


def _print_table(stack: Mapping[str, Any]) -> None:
    kafka, pg = stack["kafka"], stack["postgres"]
    rows = [
        ("kafka", kafka["bootstrap_servers"], "embedded Tansu" if kafka["embedded"] else ""),
        ("postgres", pg["server_url"], "embedded pgserver" if pg["embedded"] else ""),
    ]
    rows += [(n, s["url"], s["log"]) for n, s in stack["services"].items()]
    width = max(len(r[1]) for r in rows)
    for name, url, note in rows:
        print(f"{name:<10} {url:<{width}}  {note}")
    access = stack.get("auth", {})
    if access.get("plain_keys_file"):
        print(f"{'auth':<10} API keys, one per role: {access['plain_keys_file']}")
        print(f"{'':<10} curl -H 'Authorization: Bearer <key>' …/api/v1/…")
    elif access.get("mode") == "api_keys":
        print(f"{'auth':<10} API keys from {access.get('keys_file') or 'API_KEYS'}")
    else:
        print(f"{'auth':<10} off (AUTH_MODE=api_keys make dev: one key per role)")


def down(dev_dir: Path, *, quiet: bool = False, timeout: float = 10.0) -> int:
    """Stop everything recorded in ``stack.json`` (services, then broker, then Postgres)."""
    stack = load_stack(dev_dir)
    if stack is None:
        if not quiet:
            print("Nothing recorded: the stack is down.")
        return 0
    services = stack.get("services", {})
    stopped = stop_processes(
        [(svc.get("pid"), svc.get("marker")) for svc in services.values()], timeout=timeout
    )
    for name, svc in services.items():
        if svc.get("pid") in stopped and not quiet:
            print(f"stopped {name} (pid {svc['pid']})")
    kafka = stack.get("kafka", {})
    if kafka.get("embedded"):
        was_running = stop_process(kafka.get("pid"), marker=kafka.get("marker"), timeout=timeout)
        if was_running and not quiet:
            print(f"stopped kafka (pid {kafka['pid']})")
    pg = stack.get("postgres", {})
    if pg.get("embedded") and pid_alive(pg.get("pid"), pg.get("marker")):
        embedded.stop_postmaster(pg["pid"], timeout=30.0)  # SIGINT: fast shutdown
        if not quiet:
            print(f"stopped postgres (pid {pg['pid']})")
    stack_file(dev_dir).unlink(missing_ok=True)
    return 0


def status(dev_dir: Path) -> int:
    """Print each recorded component as alive/ready; 0 when all are, else 1."""
    stack = load_stack(dev_dir)
    if stack is None:
        print("Nothing recorded: the stack is down.")
        return 1
    ok = True
    kafka, pg = stack.get("kafka", {}), stack.get("postgres", {})
    bootstrap = kafka.get("bootstrap_servers", "")
    kafka_ready = embedded.run_sync(embedded.kafka_reachable(bootstrap, within=3.0))
    kafka_alive = (
        pid_alive(kafka.get("pid"), kafka.get("marker")) if kafka.get("embedded") else None
    )
    pg_ready = embedded.postgres_reachable(pg.get("server_url", ""))
    pg_alive = pid_alive(pg.get("pid"), pg.get("marker")) if pg.get("embedded") else None
    rows: list[tuple[str, bool | None, bool, str]] = [
        ("kafka", kafka_alive, kafka_ready, bootstrap),
        ("postgres", pg_alive, pg_ready, pg.get("server_url", "")),
    ]
    for name, svc in stack.get("services", {}).items():
        svc_alive = pid_alive(svc.get("pid"), svc.get("marker"))
        rows.append((name, svc_alive, svc_alive and is_ready(svc["ready_url"]), svc["url"]))
    print(f"{'component':<10} {'alive':<9} {'ready':<6} url")
    for name, alive, ready, url in rows:
        shown = "external" if alive is None else ("yes" if alive else "NO")
        print(f"{name:<10} {shown:<9} {'yes' if ready else 'NO':<6} {url}")
        ok = ok and ready and alive is not False
    return 0 if ok else 1


def logs(dev_dir: Path, name: str | None, lines: int, follow: bool) -> int:
    """Print the last ``lines`` lines of one log (or of all), optionally following them."""
    log_dir = dev_dir / "logs"
    paths = [log_dir / f"{name}.log"] if name else sorted(log_dir.glob("*.log"))
    if not paths or not all(p.exists() for p in paths):
        print(f"No logs in {log_dir}" + (f" for {name}" if name else ""))
        return 1
    for path in paths:
        if len(paths) > 1:
            print(f"==> {path} <==")
        print(embedded.log_tail(path, lines))
    if not follow:
        return 0
    offsets = {p: p.stat().st_size for p in paths}
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for path in paths:
                size = path.stat().st_size if path.exists() else 0
                if size < offsets[path]:
                    offsets[path] = 0
                if size > offsets[path]:
                    with open(path, "rb") as fh:
                        fh.seek(offsets[path])
                        chunk = fh.read().decode("utf-8", errors="replace")
                    offsets[path] = size
                    prefix = f"[{path.stem}] " if len(paths) > 1 else ""
                    for line in chunk.splitlines():
                        print(prefix + line, flush=True)
            time.sleep(0.3)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m services.runtime.devstack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dev-dir", type=Path, default=DEFAULT_DEV_DIR, help="state and logs")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start broker, Postgres, migrations and the four services")
    p_up.add_argument("--timeout", type=float, default=90.0, help="seconds to become ready")
    p_up.add_argument(
        "--fresh", action="store_true", help="drop the services' databases first (empty state)"
    )
    sub.add_parser("down", help="stop everything that `up` recorded")
    sub.add_parser("status", help="show what runs and answers")
    p_logs = sub.add_parser("logs", help="show the logs")
    p_logs.add_argument("name", nargs="?", choices=[*SERVICES, "tansu"])
    p_logs.add_argument("-n", "--lines", type=int, default=40)
    p_logs.add_argument("-f", "--follow", action="store_true")
    args = parser.parse_args(argv)
    dev_dir: Path = args.dev_dir.resolve()
    if args.command == "up":
        return up(dev_dir, timeout=args.timeout, fresh=args.fresh)
    if args.command == "down":
        return down(dev_dir)
    if args.command == "status":
        return status(dev_dir)
    return logs(dev_dir, args.name, args.lines, args.follow)


if __name__ == "__main__":
    sys.exit(main())
