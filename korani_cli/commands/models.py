"""`korani models`: what `--model` accepts, and what a spec resolves to."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from korani_cli.console import korani_command, out_console

app = typer.Typer(help="List model aliases and show what a --model spec resolves to.", no_args_is_help=True)


@app.command("list")
@korani_command
def list_models() -> None:
    """The aliases --model accepts, and the current default."""
    from korani_cli.config import load_settings
    from korani_cli.models import ALIASES

    default = load_settings().model
    table = Table("alias", "what it is", "default", box=None)
    for alias, what in ALIASES.items():
        table.add_row(alias, escape(what), "✓" if alias == default else "")
    out_console().print(table)
    if default not in ALIASES:
        out_console().print(f"default: {escape(default)}")


@app.command("resolve")
@korani_command
def resolve_model(
    spec: Annotated[Optional[str], typer.Argument(help="A --model value; default: the configured model.")] = None,
) -> None:
    """Show which backend and files a --model value means, without loading it."""
    from korani_cli.config import load_settings
    from korani_cli.models import resolve

    settings = load_settings({"model": spec})
    resolved = resolve(settings.model, settings)
    console = out_console()
    for key in ("name", "backend", "source", "base", "base_url"):
        value = getattr(resolved, key)
        if value:
            console.print(f"{key:8} {escape(str(value))}")
