"""The CLI's two consoles and the error boundary every command runs inside.

stdout is for what a script consumes (answers, --json); everything else —
spinners, notices, errors — goes to stderr. `korani_command` turns a
`KoraniError` into the one line `error: <what> — <how to fix>` and its exit
code; unexpected exceptions get a traceback only with --debug/KORANI_DEBUG=1.
Only printing lives here: the process-wide policy it follows (the debug flag,
quiet libraries) is korani_cli/runtime.py's.
"""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from korani_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, KoraniError
from korani_cli.runtime import debug_enabled
from korani_cli.untrusted import clean_line

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit(1), which the README keeps for bugs; korani_command stops quietly instead.
        raise BrokenPipeError


def out_console() -> Console:
    """The console for what a user reads on stdout (chat answers, tables)."""
    return _Console(highlight=False)


def err_console() -> Console:
    # Built per call: tests swap sys.stderr, and Console binds its file early.
    return _Console(file=sys.stderr, highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    # Notices and errors quote servers, pages and files: strip their control characters.
    err_console().print(f"[dim]note:[/dim] {escape(clean_line(message))}")


def print_error(message: str) -> None:
    err_console().print(f"[bold red]error:[/bold red] {escape(clean_line(message).removeprefix('error: '))}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def korani_command(func):
    """Decorator for command functions: the error boundary described above."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KoraniError as exc:
            if debug_enabled():
                raise
            if not exc.quiet:
                print_error(exc.one_line())
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader of stdout went away (`korani history list | head -1`): stop
            # quietly, as a tool killed by SIGPIPE would, once cleanup has run.
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except Exception as exc:
            if debug_enabled():
                raise
            print_error(
                f"internal error ({exc.__class__.__name__}: {exc}) — "
                "rerun with --debug for the traceback and report it"
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper
