"""A throwaway PostgreSQL cluster of our own, which a fault test may restart at will.

The shared server (127.0.0.1:5432) serves everyone on the machine and must never be
restarted by a test. This cluster lives in a temporary directory, on a free port, and is
started with the Debian binaries (``/usr/lib/postgresql/<major>/bin``). Postgres refuses to
run as root, so when we are root the cluster belongs to the ``postgres`` system user and
every command runs through ``runuser -u postgres``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from services.runtime import embedded

__all__ = ["PrivatePostgres", "postgres_bin_dir", "unavailable_reason"]

_SEARCH = ("/usr/lib/postgresql",)


def postgres_bin_dir() -> Path | None:
    """The newest ``bin`` directory holding ``initdb`` and ``pg_ctl``, or None."""
    candidates: list[Path] = []
    for root in _SEARCH:
        base = Path(root)
        if base.is_dir():
            candidates += [
                d / "bin"
                for d in base.iterdir()
                if (d / "bin" / "initdb").exists() and (d / "bin" / "pg_ctl").exists()
            ]
    if not candidates:
        found = shutil.which("initdb")
        return Path(found).parent if found and shutil.which("pg_ctl") else None

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    return max(candidates, key=major)


def _run_as() -> str | None:
    """The user to run the cluster as: None for ourselves, ``postgres`` when we are root."""
    return "postgres" if os.geteuid() == 0 else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be started here, or None when it can."""
    if postgres_bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or PATH"
    if _run_as() is not None:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to own a private cluster"
        if shutil.which("runuser") is None:
            return "running as root and 'runuser' is missing"
    return None


class PrivatePostgres:
    """``start()``, ``restart()`` (immediate: a crash, then recovery), ``stop()``; trust auth."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or embedded.free_port()
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(unavailable_reason() or "no PostgreSQL binaries")
        self._bin = bin_dir
        self._user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="ct-private-pg-"))
        if self._user is not None:
            user = pwd.getpwnam(self._user)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"

    @property
    def url(self) -> str:
        """Server URL (database ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        return [*prefix, *args]

    def _pg_ctl(self, *args: str, timeout: float = 120) -> None:
        # fsync=off only spares the disk: an immediate restart kills the server, not the
        # machine, so the OS still holds every WAL write. synchronous_commit stays on: with it
        # off, a commit acknowledged just before the crash is lost (seen in this scenario).
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=200"
        )
        subprocess.run(
            self._cmd(
                str(self._bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                *args,
            ),
            check=True,
            capture_output=True,
            timeout=timeout + 10,
        )

    def start(self) -> PrivatePostgres:
        subprocess.run(
            self._cmd(
                str(self._bin / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m immediate``: every backend dies at once, no checkpoint; the
        server replays its WAL on the way up, as after a crash."""
        self._pg_ctl("-m", "immediate", "restart")

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg_ctl("-m", "immediate", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
