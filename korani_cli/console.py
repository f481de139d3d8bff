"""The CLI's two consoles and the error boundary every command runs inside.

stdout is for what a script consumes (answers, --json); everything else —
spinners, notices, errors — goes to stderr. `korani_command` turns a
`KoraniError` into the one line `error: <what> — <how to fix>` and its exit
code; unexpected exceptions get a traceback only with --debug/KORANI_DEBUG=1.
Only printing lives here: the process-wide policy it follows (the debug flag,
quiet libraries) is korani_cli/runtime.py's.
"""

from __future__ import annotations

import contextlib
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


def out_console(highlight: bool = False) -> Console:
    """The console for what a user reads on stdout (chat answers, tables). A reader
    that went away raises BrokenPipeError, which `korani_command` turns into 141."""
    return _Console(highlight=highlight)


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


# -- outside any command's body: parse errors and the reader of stdout ----------------------


def usage_error_line(exc) -> str:
    """A click/Typer parse error (bad integer, unknown option, missing argument) as korani's
    one line: click's own words for what was wrong, and the command's --help as the fix."""
    what = " ".join(exc.format_message().split()).rstrip(".")
    if what[:1].isupper() and what[1:2].islower():
        what = what[0].lower() + what[1:]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "korani"
    return KoraniError(what, f"see `{path} --help`").one_line()


def _click_errors() -> tuple:
    """(ClickException, NoArgsIsHelpError) of the click this Typer parses with: its own
    copy (`typer._click`, newer Typers) or click itself; () where the second is missing."""
    import typer.core

    click = getattr(typer.core, "_click", None) or getattr(typer.core, "click")
    return click.exceptions.ClickException, getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def one_line_parse_errors():
    """Where click would draw its error box (a parse error) or exit 1 on a closed stdout."""
    click_exception, no_args_is_help = _click_errors()
    try:
        yield
    except no_args_is_help:
        raise  # `korani data` alone: the help is the answer, as Typer prints it
    except click_exception as exc:
        print_error(usage_error_line(exc))
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None


class StdoutReader:
    """Whether the reader of stdout went away, asked of the pipe itself.

    Libraries each report a closed pipe their own way: click exits 1, rich's
    consoles (Typer's help among them) point stdout at /dev/null and exit 1,
    and Python complains at exit when its last flush fails. A duplicate of
    stdout's descriptor, taken before anything is written, still names the
    pipe afterwards, and on Linux a pipe nobody reads polls as POLLERR."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.dup(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real descriptor (a test's capture)
            self.fd = None

    def gone(self) -> bool:
        import select

        if self.fd is None or not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def settle_stdout(code, reader: StdoutReader):
    """The exit code once what is left of stdout is flushed: 141 when its reader went
    away before korani finished writing (a library's exit 1, or a failed last flush),
    with stdout pointed at /dev/null so the interpreter's own flush stays quiet."""
    broken = False
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        broken = True
    except (OSError, ValueError, AttributeError):
        pass
    if broken or (code == EXIT_INTERNAL and reader.gone()):
        _silence_stdout()
        return EXIT_BROKEN_PIPE if code in (None, 0, EXIT_INTERNAL) else code
    return code


class WordWrap:
    """Streamed text wrapped at word boundaries for a terminal `width` cells wide (Hangul takes two),
    as chat's rich rendering wraps it: the terminal's own wrap cuts words, and footnote markers, in
    two (`[2` / `]`). A marker is part of the word it ends (`창제했습니다[1].`), so it never splits.
    The last word of a chunk waits for the space or line end after it; `finish` writes what is left.
    A word wider than the terminal is written whole and the terminal folds it."""

    def __init__(self, write, width: int):
        self.write, self.width = write, max(width, 1)
        self.col, self.word, self.spaces = 0, "", ""

    def feed(self, chunk: str) -> None:
        for ch in chunk:
            if ch == "\n":
                self._place()
                self.write("\n")
                self.col, self.spaces = 0, ""
            elif ch.isspace():
                self._place()
                self.spaces += " " if ch == "\t" else ch
            else:
                self.word += ch

    def finish(self) -> None:
        self._place()
        self.spaces = ""

    def _place(self) -> None:
        if not self.word:
            return
        from rich.cells import cell_len

        gap, wide = cell_len(self.spaces), cell_len(self.word)
        if self.col and self.col + gap + wide > self.width:
            self.write("\n")
            self.col = 0
        elif self.spaces:
            self.write(self.spaces)
            self.col += gap
        self.write(self.word)
        self.col = (self.col + wide) % self.width if self.col + wide > self.width else self.col + wide
        self.word, self.spaces = "", ""
