"""Change one top-level setting in the user's config file and leave the rest of it as it was.

`korani models default NAME` writes `model = "NAME"` here. The file is the
user's: hand-written comments, blank lines, key order, quoting and line ends
stay byte for byte. Only the line that holds the key is replaced (a trailing
comment kept), removed (`--unset`), or a new line is added at the end; every
edit is checked by parsing the result, which must hold exactly the old
settings with only that key changed — a key spelled inside a multi-line
string, or a value spread over lines, makes the edit refuse rather than
guess.

What is never done to it: a file that does not parse, or holds a setting
korani rejects, is refused with the error `korani ask` would give (exit 5)
and left alone; a read-only file is not replaced; a directory, FIFO or device
at its path is not touched. The new text goes to a temporary file beside the
target, is fsynced and renamed over it (a symlink is written through to its
target, and keeps pointing there), so a reader sees the old file or the new
one, never half of either. Two korani processes editing at once take turns
(an advisory lock on the file's directory) and neither edit is lost.

This module knows TOML text and files; which value is worth writing (does
the model resolve?) is the command's business.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from korani_cli import paths
from korani_cli.config import Invalid, _rule, _validate_file, check_value
from korani_cli.errors import ConfigError


@dataclass(frozen=True)
class Edit:
    """What `set_setting` did: the value before and after (None: not in the file), and the
    file written (a symlink's target), or None when nothing needed writing."""

    before: Any
    after: Any
    written: Path | None


def set_setting(key: str, value: Any | None, path: Path | None = None) -> Edit:
    """Set `key` to `value` in the config file (None: remove it); see the module's docstring."""
    path = path or paths.config_file()
    if value is not None:
        try:
            check_value(_rule(key), value)
        except Invalid as exc:
            raise ConfigError(f"'{key}' must be {exc}", f"pass {_rule(key).describe()}") from None
    if not path.parent.is_dir():
        paths.ensure_dir(path.parent)
    with _locked(path.parent):
        target = _target(path)
        text = _read(path, target)
        try:
            current = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid TOML ({exc}); it was left as it is", "fix or delete the file"
            ) from None
        # The other settings must be ones korani accepts (what `korani ask` would refuse is
        # refused here too); the key being set may be the broken one this edit repairs.
        _validate_file({k: v for k, v in current.items() if k != key}, str(path))
        before = current.get(key)
        if before == value and (value is not None or key not in current):
            return Edit(before, value, None)
        expected = {k: v for k, v in current.items() if k != key}
        if value is not None:
            expected[key] = value
        new_text = _edited(text, key, value, expected)
        if new_text is None:
            raise ConfigError(
                f"cannot change '{key}' in {path} without touching the rest of the file (its value spans "
                "lines, or the key appears more than once)",
                f"edit the '{key}' line of {path} by hand",
            )
        _write(path, target, new_text)
        return Edit(before, value, target)


# -- the text ---------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'')
_TAIL = re.compile(r"[ \t]*(#[^\n]*)?$")


def toml_value(value: Any) -> str:
    """`value` as TOML writes it: a basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _edited(text: str, key: str, value: Any | None, expected: dict) -> str | None:
    """`text` with `key` set to `value` (or removed), or None when no edit of one line gives
    exactly `expected`. Each candidate is checked by parsing it."""
    lines = text.splitlines(keepends=True)
    spelled = "|".join(re.escape(k) for k in (key, f'"{key}"', f"'{key}'"))
    line_re = re.compile(rf"^(?P<indent>[ \t]*)(?:{spelled})[ \t]*=[ \t]*(?P<rest>[^\r\n]*)(?P<eol>\r?\n?)$")
    for i, line in enumerate(lines):
        match = line_re.match(line)
        if not match:
            continue
        if value is None:
            candidate = "".join(lines[:i] + lines[i + 1 :])
        else:
            rest = match.group("rest")
            old = _STRING.match(rest)
            tail = _TAIL.match(rest, old.end()) if old else None
            comment = f" {tail.group(1)}" if tail and tail.group(1) else ""
            replaced = f"{match.group('indent')}{key} = {toml_value(value)}{comment}{match.group('eol')}"
            candidate = "".join(lines[:i] + [replaced] + lines[i + 1 :])
        if _parses_to(candidate, expected):
            return candidate
    if value is None:
        return None
    # Not in the file (or only inside a multi-line string): a new line at the end, in the file's line ends.
    newline = "\r\n" if "\r\n" in text else "\n"
    candidate = (
        text + ("" if not text or text.endswith("\n") else newline) + f"{key} = {toml_value(value)}{newline}"
    )
    return candidate if _parses_to(candidate, expected) else None


def _parses_to(text: str, expected: dict) -> bool:
    try:
        return tomllib.loads(text) == expected
    except tomllib.TOMLDecodeError:
        return False


# -- the file ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an advisory lock on `directory` (no lock file is left in the user's config directory)."""
    try:
        import fcntl
    except ImportError:  # no flock here: the rename below still keeps the file whole
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"cannot open {directory} ({exc.strerror})", "check its permissions") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _target(path: Path) -> Path:
    """The file a write to `path` replaces: `path`, or where its symlinks lead."""
    if not path.is_symlink():
        return path
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # a dangling link: the file it names is created
        return Path(os.path.realpath(path))
    except OSError as exc:  # a loop of links
        raise ConfigError(
            f"cannot follow the link {path} ({exc.strerror})", f"fix or remove {path}"
        ) from None


def _read(path: Path, target: Path) -> str:
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})", "check its permissions") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(
            f"{path} is a directory, not a config file", "remove it, or put settings in a TOML file there"
        )
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path} is not a regular file", "replace it with a TOML file, or remove it")
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})", "check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); it was left "
            "as it is",
            "save it as UTF-8, or delete it",
        ) from None


def _write(path: Path, target: Path, text: str) -> None:
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    # The owner's write bit, not os.access: a file its owner made read-only stays so, even for root.
    if target.exists() and not mode & stat.S_IWUSR:
        raise ConfigError(
            f"{path} is read-only; it was left as it is",
            "make it writable (chmod u+w), or choose the model with --model or KORANI_MODEL instead",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot write in {target.parent} ({exc.strerror}); {path} was left as it is",
            "check the directory's permissions, or choose the model with --model or KORANI_MODEL instead",
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write {path} ({exc.strerror}); it was left as it is",
            "free some space, or check its permissions",
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
