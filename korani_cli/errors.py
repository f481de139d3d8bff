"""Errors a user can cause, each with the fix, and the exit code the CLI gives it.

The CLI prints a `KoraniError` as one line, `error: <what> — <how to fix>`, and
exits with its `exit_code`. Anything else is a bug and shows a traceback only
with `--debug` / `KORANI_DEBUG=1`.

Exit codes (documented in README.md):
  0  success
  1  unexpected internal error (a bug: please report it with --debug output)
  2  usage error: bad option, argument or input
  3  model could not be loaded
  4  generation failed after the model loaded
  5  configuration file or environment value is invalid
  6  data: a source is missing or unreadable, a bad record under --strict,
     or nothing left to write
  7  search: no provider returned results, or no result page could be read
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_MODEL_LOAD = 3
EXIT_GENERATION = 4
EXIT_CONFIG = 5
EXIT_DATA = 6
EXIT_NO_SOURCES = 7
EXIT_INTERRUPTED = 130


class KoraniError(Exception):
    """Base of every error meant for a user: what went wrong, and how to fix it."""

    exit_code = EXIT_INTERNAL
    # True when another process already printed this failure (the first process of a
    # launched training job): the CLI exits with the code and prints nothing.
    quiet = False

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def one_line(self) -> str:
        text = f"error: {self.what}"
        if self.fix:
            text += f" — {self.fix}"
        # One line, always: model and server messages can carry newlines.
        return " ".join(text.split())


def excerpt(value, limit: int = 80) -> str:
    """`value` as an error message may quote it: its repr, at most `limit` characters.

    Never builds the whole repr first: a YAML alias bomb is a nine-item list that
    expands to hundreds of millions of strings, and a recursive alias is a list
    that holds itself. reprlib stops at a few items per level and a few levels."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = short.maxfrozenset = 4
    short.maxstring = short.maxother = short.maxlong = max(limit, 8)
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UsageError(KoraniError):
    exit_code = EXIT_USAGE


class ModelLoadError(KoraniError):
    exit_code = EXIT_MODEL_LOAD


class GenerationError(KoraniError):
    exit_code = EXIT_GENERATION


class ConfigError(KoraniError):
    exit_code = EXIT_CONFIG
