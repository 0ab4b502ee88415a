"""``python -m services.<name> {serve,migrate}`` for every service."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

import uvicorn

from services.runtime.host import ServiceSpec, create_app
from services.runtime.migrate import upgrade
from services.runtime.settings import ServiceSettings

__all__ = ["main", "settings_for", "tune_collector"]


def settings_for(spec: ServiceSpec) -> ServiceSettings:
    """Environment settings, with the service's own name unless SERVICE_NAME overrides it."""
    if "SERVICE_NAME" in os.environ:
        return ServiceSettings()
    return ServiceSettings(service_name=spec.name)


def tune_collector(young_threshold: int) -> None:
    """Fewer young collections (``GC_YOUNG_THRESHOLD``), and the start-up heap (modules,
    models, schemas) frozen out of every later scan."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


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
    app = create_app(spec, settings)
    tune_collector(settings.gc_young_threshold)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=int(settings.http_keep_alive_s),
    )
    return 0
