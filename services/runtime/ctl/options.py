"""Options every command shares, and the configuration the root command builds."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from services.runtime.ctl.client import Config, Ref, parse_ref

__all__ = ["JsonOpt", "ModelArg", "RefOpt", "config_of"]

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the API's answer as JSON (for scripts).")
]
ModelArg = Annotated[
    Ref,
    typer.Argument(
        parser=parse_ref,
        metavar="MODEL",
        help="NAMESPACE:NAME#VERSION (a `model:` prefix is accepted).",
        show_default=False,
    ),
]
RefOpt = Annotated[
    Ref | None,
    typer.Option(
        "--dataset",
        parser=parse_ref,
        metavar="NAMESPACE:NAME#VERSION",
        help="A dataset version.",
        show_default=False,
    ),
]


def config_of(ctx: typer.Context, json_flag: bool = False) -> Config:
    """The root command's configuration; ``--json`` given here or there."""
    config = ctx.find_object(Config)
    if config is None:  # a sub-app invoked on its own (tests): the defaults
        config = Config()
    if json_flag and not config.json:
        config = dataclasses.replace(config, json=True, progress=False)
    return config
