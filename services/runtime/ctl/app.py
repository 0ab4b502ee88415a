"""The command tree, its configuration, and exit codes: 0 ok, 1 refused or not verified,
2 usage, 3 unreachable (see ``client``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import httpx
import typer
from typer.main import get_command

from services.runtime.ctl import cases, lineage, registry
from services.runtime.ctl.client import (
    DEFAULT_URLS,
    EXIT_OK,
    EXIT_REFUSED,
    URL_ENV,
    Config,
    CtlError,
)
from services.runtime.ctl.output import say

__all__ = ["PROG", "app", "main"]

PROG = "consenttrace"

app = typer.Typer(
    name=PROG,
    help="ConsentTrace for legal and ML teams: deletion cases and their evidence, lineage and"
    " model status, registry findings and the pre-flight eligibility filter. Talks to the"
    " services' HTTP APIs only.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(cases.app, name="cases")
app.add_typer(lineage.app, name="lineage")
app.add_typer(registry.app, name="registry")


def _url(service: str) -> Any:
    return typer.Option(
        f"--{service}-url",
        envvar=URL_ENV[service],
        help=f"The {service} service's base URL.",
        rich_help_panel="Connection",
    )


@app.callback()
def root(
    ctx: typer.Context,
    deletion_url: Annotated[str, _url("deletion")] = DEFAULT_URLS["deletion"],
    lineage_url: Annotated[str, _url("lineage")] = DEFAULT_URLS["lineage"],
    registry_url: Annotated[str, _url("registry")] = DEFAULT_URLS["registry"],
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="CONSENTTRACE_API_KEY",
            help="Your API key, sent as a bearer token (prefer the environment variable:"
            " a flag shows in the process list).",
            show_default=False,
            rich_help_panel="Connection",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            envvar="CONSENTTRACE_TIMEOUT",
            min=0.1,
            help="Seconds to wait for each answer.",
            rich_help_panel="Connection",
        ),
    ] = 30.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="JSON on stdout for every command (for scripts).")
    ] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No spinners or progress bars.")
    ] = False,
) -> None:
    transport = ctx.obj if isinstance(ctx.obj, httpx.BaseTransport) else None
    ctx.obj = Config(
        urls={"deletion": deletion_url, "lineage": lineage_url, "registry": registry_url},
        api_key=api_key or None,
        timeout=timeout,
        json=json_output,
        progress=not (no_progress or json_output),
        transport=transport,
    )


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one command; the exit code. ``transport`` replaces the network (tests)."""
    command = get_command(app)
    try:
        command.main(
            args=list(argv) if argv is not None else None,
            prog_name=PROG,
            obj=transport,
            standalone_mode=True,
        )
    except SystemExit as exc:
        return _exit_code(exc.code)
    except CtlError as exc:
        say(f"error: {exc.message}", "red")
        return exc.exit_code
    return EXIT_OK


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    say(str(code), "red")
    return EXIT_REFUSED
