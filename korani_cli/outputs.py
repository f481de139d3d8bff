"""How korani writes what it produces without ever losing a user's files.

Four rules, used by every command that writes:
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
- A file the user names (`/저장 FILE`, `history export -o`, `train init -o`,
  `export-gguf -o`) never replaces an existing file unless asked
  (`guard_output_file`, `save_user_file`), and is never one of korani's own
  files, however the path is spelled (`korani_own`): its config file, the
  history database and everything else in its data directory and cache, or a
  file inside a directory korani marked as its output (`--overwrite` would
  later delete it with the run).

This module decides what may be written and writes it; what goes into the
files is the callers' business.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from korani_cli import paths
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


def atomic_write_bytes(path: Path, data: bytes, *, replace: bool = True) -> Path:
    """Write `data` to `path` atomically (temporary file + rename, fsynced).
    Returns the file actually written (a symlink's target). With `replace=False`
    a file that appeared at the target meanwhile is left alone (a UsageError):
    the finished file is linked into place, which fails rather than replaces."""
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
        if replace:
            os.replace(tmp, target)
        else:
            _place_new(Path(tmp), target, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(
            f"cannot write {path} ({exc.strerror})", "free some space or choose another path"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _place_new(tmp: Path, target: Path, shown: Path) -> None:
    """Move the finished `tmp` to `target` only if nothing is there: a link fails on an
    existing name where a rename would replace it. File systems without hard links
    fall back to a check and a rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExists(shown) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if target.exists() or target.is_symlink():
            raise FileExists(shown) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def atomic_write_text(path: Path, text: str, *, replace: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


class FileExists(UsageError):
    """A file the user named is there already, and replacing it was not asked for."""

    def __init__(self, path: Path, fix: str | None = None):
        super().__init__(
            f"{path} already exists", fix or "pass --overwrite to replace it, or choose another -o"
        )
        self.path = path


# -- korani's own files: never a place to write what a user names -------------------------------


def _places() -> list[tuple[Path, str]]:
    """korani's own directories, with how to name what lies in them."""
    return [(paths.data_dir(), "korani's data directory"), (paths.cache_dir(), "korani's cache")]


_KNOWN = {  # files korani keeps in those places, by name, for a message that says what is at stake
    "history.sqlite": "korani's history database",
    "history.sqlite-wal": "korani's history database (its write-ahead log)",
    "history.sqlite-shm": "korani's history database (its shared memory)",
    "history.sqlite-journal": "korani's history database (its journal)",
    "chat_input_history": "korani chat's input history",
    "search.sqlite": "korani's search cache",
}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class Own:
    """One of korani's own files: what it is, and the place a user's file must stay out of."""

    what: str
    place: Path


def _linked_own_file(st: os.stat_result, files: list[tuple[Path, str]]) -> Own | None:
    """What a file with more than one name is, when another of its names is one of korani's files."""
    wanted = (st.st_dev, st.st_ino)
    for file, what in files:
        if _identity(file) == wanted:
            return Own(f"a hard link to {what} ({file})", file)
    for root, what in _places():
        for folder, _dirs, names in os.walk(root):
            for name in names:
                if _identity(Path(folder) / name) == wanted:
                    known = _KNOWN.get(name, f"a file in {what}")
                    return Own(f"a hard link to {known} ({Path(folder) / name})", root)
    return None


def korani_own(path: Path, also: Iterable[tuple[Path, str]] = ()) -> Own | None:
    """Which of korani's own files `path` is, or None when it is none of them.

    korani's own: its config file; everything in its data directory (the history
    database, eval runs) and its cache (models, the search cache); anything inside
    a directory that holds korani's output marker (a run that `--overwrite` may
    delete whole); and `also` — (file, description) pairs a caller adds, such as a
    chat's history file kept elsewhere. The spelling of `path` does not matter:
    symlinks and `..` are resolved, directories are compared by device and inode
    (a bind mount, a case-insensitive name), and a hard link is found by its inode."""
    files = [(paths.config_file(), "korani's config file"), *((Path(f), what) for f, what in also)]
    real = Path(os.path.realpath(Path(path).expanduser()))
    mine = _identity(real)
    for file, what in files:
        if real == Path(os.path.realpath(file)):
            return Own(what, file)
    places = {_identity(root): (root, what) for root, what in _places()}
    places.pop(None, None)
    for folder in real.parents:
        ident = _identity(folder)
        if ident is None:
            continue
        if ident in places:
            root, what = places[ident]
            if folder == real.parent and real.name in _KNOWN:
                return Own(_KNOWN[real.name], root)
            return Own(f"inside {what}", root)
        if (folder / MARKER).is_file():
            return Own("inside an output directory korani wrote (its --overwrite deletes it whole)", folder)
    if mine is not None:
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return _linked_own_file(st, files)
    return None


def guard_output_file(
    path: Path,
    *,
    overwrite: bool,
    magic: bytes | None = None,
    replace_fix: str | None = None,
    also: Iterable[tuple[Path, str]] = (),
) -> Path:
    """Check that `path`, a file the user named, may receive a new file; returns the
    file to write (a symlink's target). Never one of korani's own files (`korani_own`);
    an existing file needs `overwrite` (`replace_fix` says how to ask for it); with
    `magic`, it must also start with those bytes (so `--overwrite` never replaces a
    file of another kind)."""
    target = writable_target(path)
    own = korani_own(path, also)
    if own:
        raise UsageError(
            f"{path} is {own.what}; korani never writes over its own files",
            f"choose a path outside {own.place}" if own.place.is_dir() else "choose another path",
        )
    if target.exists():
        if not overwrite:
            raise FileExists(path, replace_fix)
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


def save_user_file(
    path: Path,
    text: str,
    *,
    overwrite: bool,
    replace_fix: str | None = None,
    also: Iterable[tuple[Path, str]] = (),
) -> Path:
    """`guard_output_file`, then the text written atomically; without `overwrite` a file
    that appears in between is not replaced either. Returns the file written."""
    guard_output_file(path, overwrite=overwrite, replace_fix=replace_fix, also=also)
    try:
        return atomic_write_text(path, text, replace=overwrite)
    except FileExists:
        raise FileExists(path, replace_fix) from None


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


def marker_command(directory: Path) -> str | None:
    """The command named by the marker in `directory` ("data prepare", "train", …);
    None when there is no marker korani can read."""
    try:
        record = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    command = record.get("command") if isinstance(record, dict) else None
    return command if isinstance(command, str) else None


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
