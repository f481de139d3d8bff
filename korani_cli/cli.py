"""The `korani` command: the root Typer app that joins each domain's commands.

Kept import-light on purpose: `korani --help` must not import torch,
transformers, peft, llama_cpp or sentence_transformers (a test checks), so
commands import heavy code inside their bodies.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from korani_cli import __version__
from korani_cli.commands import ask as ask_command
from korani_cli.commands import chat as chat_command
from korani_cli.commands import data as data_command
from korani_cli.commands import eval as eval_command
from korani_cli.commands import history as history_command
from korani_cli.commands import models as models_command
from korani_cli.commands import search as search_command
from korani_cli.commands import train as train_command
from korani_cli.console import StdoutReader, one_line_parse_errors, settle_stdout
from korani_cli.helpfmt import install as _install_help_format
from korani_cli.runtime import no_unasked_requests, set_debug

_install_help_format()


class KoraniGroup(TyperGroup):
    """The root command keeps the contract outside any one command's body too.

    A parse error (a bad integer, an unknown option, a missing argument) is
    one `error: … — see `… --help`` line and exit 2, not Typer's box; and
    whatever wrote to stdout — help, a table, click or rich — a reader that
    went away (`korani --help | head -c1`) is exit 141 with nothing more said,
    not the libraries' exit 1 or Python's complaint at exit."""

    def main(self, *args, **kwargs):
        reader = StdoutReader()
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            raise SystemExit(settle_stdout(exc.code, reader)) from None
        finally:
            reader.close()

    def make_context(self, *args, **kwargs):
        with one_line_parse_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with one_line_parse_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="korani",
    cls=KoraniGroup,
    help="Korean instruction-tuned chat models: data, training, web-search chat and one-shot answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never leak keys or prompts into a traceback
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"korani {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks (also KORANI_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    local_rank: Annotated[
        Optional[int],
        typer.Option("--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher."),
    ] = None,
) -> None:
    set_debug(debug)
    if local_rank is not None:
        # The deepspeed launcher passes --local_rank=N; transformers reads the environment.
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


app.command("ask")(ask_command.ask)
app.command("search")(search_command.search)
app.command("chat")(chat_command.chat)
app.add_typer(history_command.history_app, name="history")
app.add_typer(models_command.app, name="models")
app.add_typer(data_command.app, name="data")
app.add_typer(train_command.app, name="train")
app.add_typer(eval_command.app, name="eval")


def _terminated(_signum, _frame) -> None:
    # SIGTERM (kill, a scheduler's timeout) cleans up like Ctrl-C: temporary
    # files and directories are removed by the same `finally` blocks.
    raise KeyboardInterrupt


def main() -> None:
    import signal

    # Before any library is imported: they read these settings once, at import.
    no_unasked_requests()
    signal.signal(signal.SIGTERM, _terminated)
    # Only a program whose main module is import-safe may start worker
    # processes (they import it again); korani's own entry points are.
    from korani_cli.search import workers

    workers.enable()
    try:
        app()
    finally:
        # Stop the extraction pool while the interpreter is whole: left to
        # the garbage collector at exit it printed "Exception ignored …".
        workers.shutdown()
