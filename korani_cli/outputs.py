"""How korani writes what it produces without ever losing a user's files.

Three rules, used by every command that writes:
- A file is written to a temporary name beside its target and renamed into
  place (`atomic_write_text`/`atomic_write_bytes`). A symlink is written
  through to its target; a device, FIFO or socket is refused, never replaced.
- An output *directory* is replaced only when korani wrote it: each one holds
  a marker file (`MARKER`) naming the command that made it. `guard_output_dir`
  refuses, with one line, a target that holds anything else, is (or holds, or
  lies inside) one of the run's sources, or is the working directory or one of
  its parents — `--overwrite` means "replace my earlier output", not "rm -rf".
- Temporary siblings (`.NAME.tmp-PID`, `.NAME.old-PID`) left by a killed run
  are removed by the next run once their process is gone (`reap_stale`).

This module decides what may be written and writes it; what goes into the
files is the callers' business.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable

from korani_cli.errors import UsageError

MARKER = ".korani-output.json"


# -- single files ---------------------------------------------------------------------------


def special_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return None


def writable_target(path: Path) -> Path:
    """The regular file a write to `path` should replace: `path` itself, or what
    its symlinks point at. Refuses devices, FIFOs, sockets and directories."""
    path = Path(path).expanduser()
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror})", "choose another file") from None
    kind = special_kind(mode)
    if kind:
        shown = f"{path} (→ {target})" if target != path else str(path)
        raise UsageError(
            f"{shown} is {kind}, not a regular file; refusing to replace it", "choose a file path"
        )
    return target


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file + rename, fsynced).
    Returns the file actually written (a symlink's target)."""
    target = writable_target(path)
    if not target.parent.is_dir():
        raise UsageError(
            f"cannot write {path}: the directory {target.parent} does not exist",
            "create it first or choose another path",
        )
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path} ({exc.strerror})",
            "check the directory's permissions or choose another path",
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(
            f"cannot write {path} ({exc.strerror})", "free some space or choose another path"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def guard_output_file(path: Path, *, overwrite: bool, magic: bytes | None = None) -> Path:
    """Check that `path` may receive a new file. An existing file needs
    `overwrite`; with `magic`, it must also start with those bytes (so
    `--overwrite` never replaces a file of another kind)."""
    target = writable_target(path)
    if target.exists():
        if not overwrite:
            raise UsageError(f"{path} already exists", "pass --overwrite to replace it, or choose another -o")
        if magic is not None:
            with open(target, "rb") as fh:
                head = fh.read(len(magic))
            if head != magic:
                raise UsageError(
                    f"{path} is not a file korani wrote (it does not start with {magic!r}); refusing to "
                    "replace it",
                    "choose another -o, or move the file away yourself",
                )
    return target


# -- output directories ---------------------------------------------------------------------


def write_marker(directory: Path, command: str, **details) -> None:
    """Sign `directory` as korani's output of `command`."""
    from korani_cli import __version__

    record = {
        "tool": "korani",
        "command": command,
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **details,
    }
    atomic_write_text(Path(directory) / MARKER, json.dumps(record, ensure_ascii=False, indent=2) + "\n")


def is_ours(directory: Path, legacy: Iterable[str] = ()) -> bool:
    """Whether `directory` holds korani's marker (or, for output written before
    markers existed, every one of the `legacy` file names)."""
    directory = Path(directory)
    if (directory / MARKER).is_file():
        return True
    legacy = list(legacy)
    return bool(legacy) and all((directory / name).exists() for name in legacy)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def guard_output_dir(
    out: Path,
    *,
    overwrite: bool,
    sources: Iterable[Path] = (),
    legacy: Iterable[str] = (),
    flag: str = "-o",
) -> None:
    """Refuse, with one line, an output directory that korani must not write or replace."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if _within(cwd, resolved):
        what = "the working directory" if resolved == cwd else "a parent of the working directory"
        raise UsageError(
            f"{flag} {out} is {what}; korani would have to replace it",
            f"choose a new directory, e.g. {flag} {out / 'korani-out'}",
        )
    for source in sources:
        src = Path(source).expanduser().resolve()
        if _within(src, resolved):
            what = "is" if src == resolved else "contains"
            raise UsageError(
                f"{flag} {out} {what} the source {source}; writing there would destroy it",
                f"choose an output directory outside {source}",
            )
        if src.is_dir() and _within(resolved, src):
            raise UsageError(
                f"{flag} {out} lies inside the source directory {source}",
                f"choose an output directory outside {source}",
            )
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", f"choose another {flag}")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise UsageError(
            f"cannot read {out} ({exc.strerror})", f"check its permissions or choose another {flag}"
        ) from None
    if empty:
        return
    if not is_ours(out, legacy):
        raise UsageError(
            f"{out} holds files korani did not write; refusing to "
            f"{'replace' if overwrite else 'write into'} it",
            f"choose a new or empty directory for {flag}",
        )
    if not overwrite:
        raise UsageError(f"{out} already exists", f"pass --overwrite to replace it, or choose another {flag}")


def temp_sibling(out: Path, kind: str = "tmp") -> Path:
    """`.NAME.<kind>-PID` beside `out`: where a run builds its output before the rename."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


def temp_dir(out: Path) -> Path:
    """An empty `temp_sibling(out)` directory to build the output in (`replace_dir`
    moves it into place; a run killed before that leaves it to `reap_stale`)."""
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def set_aside(out: Path) -> Path:
    """Move `out` to `.NAME.old-PID` beside it, where `put_back` (or, if this
    process dies, `reap_stale`) finds it again. Returns where it went."""
    old = temp_sibling(out, "old")
    os.replace(out, old)
    return old


def put_back(old: Path, out: Path) -> None:
    """Undo `set_aside`: `out` must be gone again."""
    os.replace(old, out)


def move_file_into_place(done: Path, target: Path) -> None:
    """A finished file written by another program (in a `temp_dir` beside `target`)
    replaces `target` in one rename: a reader sees the old file or the new one."""
    os.replace(done, target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def reap_stale(out: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` siblings of `out` whose process
    is gone (a run killed with SIGKILL leaves them behind). Returns what went."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if kind == "old" and not (out.exists() or out.is_symlink()):
                # Killed between replace_dir's two renames: the old output is
                # the only copy there is. Put it back rather than delete it.
                put_back(path, out)
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` into place at `out`; an old `out` (already judged
    replaceable by `guard_output_dir`) goes only after the new one is in place."""
    old = set_aside(out) if out.exists() else None
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
