"""``python -m services.<name> {serve,migrate}`` for every service."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from services.runtime.host import ServiceSpec, create_app
from services.runtime.migrate import upgrade
from services.runtime.settings import ServiceSettings

__all__ = ["main", "settings_for"]


def settings_for(spec: ServiceSpec) -> ServiceSettings:
    """Environment settings, with the service's own name unless SERVICE_NAME overrides it."""
    if "SERVICE_NAME" in os.environ:
        return ServiceSettings()
    return ServiceSettings(service_name=spec.name)


def main(spec: ServiceSpec, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{spec.name}", description=spec.title)
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = settings_for(spec)
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {spec.name} %(name)s: %(message)s",
    )
    if args.command == "migrate":
        upgrade(spec.migrations, settings.dsn)
        logging.getLogger(__name__).info("%s: migrations at head", spec.name)
        return 0
    uvicorn.run(
        create_app(spec, settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=int(settings.http_keep_alive_s),
    )
    return 0
