"""A run directory, and the loop that fills it — one item at a time or C at once.

Layout of RUN_DIR:
  .korani-output.json  korani's marker (outputs.MARKER): the command and the settings
  items.jsonl          one JSON line per finished item, appended, flushed and fsynced
  summary.json         written (atomically) when the run ends, is interrupted, or fails

A rerun with the same directory resumes: items already in items.jsonl are
skipped. The settings must match (the item limit and the concurrency may
change); a last line cut short by a killed process is dropped. A directory
korani did not write, or wrote for another command, is refused. While a run
uses its directory it holds an flock on it: a second run on the same directory
is refused with the first one's PID (in `.korani-pid`); the kernel drops the
lock when the process ends, however it ends, so a kill -9 blocks nothing.

`evaluate` runs a work function over the items still to do, in this thread or
in C daemon threads (an OpenAI-compatible server answers many requests at
once), and appends each result as it arrives. An item whose request fails (a
GenerationError: HTTP 500, a reset, an unusable answer) is tried again after a
growing pause (`Retry`); one that fails every try is left out of items.jsonl,
so a rerun tries it again, and the others go on. The run ends with exit 4 when
any item failed, and stops early when many fail in a row (the server is down,
not flaky). Ctrl-C leaves every finished item on disk. The loop knows nothing
about what an item is.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from korani_cli.errors import GenerationError, KoraniError, UsageError, excerpt
from korani_cli.eval import EvalDataError, ItemsFailed
from korani_cli.outputs import MARKER, atomic_write_text, guard_output_dir, is_ours, write_marker

ITEMS = "items.jsonl"
SUMMARY = "summary.json"
PID = ".korani-pid"  # the PID of the run holding the directory's lock, for the refusal message
# Settings that may differ between the sessions of one run.
RESUMABLE_CHANGES = ("limit", "concurrency")


class RunConfig:
    """What the configs of `eval rag` and `eval chat` share: their settings as
    stored in summary.json, and the generation parameters (streamed, so time to
    first token is measured). Subclasses are frozen dataclasses with the fields."""

    def settings(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def params(self):
        from korani_cli.backends import GenerationParams

        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stream=True,
        )


def read_marker(path: Path) -> dict:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalDataError(
            f"cannot read {path / MARKER} ({exc.strerror})", "check the run directory's permissions"
        ) from None
    except (ValueError, RecursionError):
        raise EvalDataError(
            f"{path / MARKER} is not JSON", "choose another -o; korani cannot tell what wrote this directory"
        ) from None
    if not isinstance(marker, dict):
        raise EvalDataError(f"{path / MARKER} is not korani's marker", "choose another -o")
    return marker


@dataclass
class RunDir:
    path: Path
    command: str
    settings: dict
    done: dict = field(default_factory=dict)  # item id → its record, as read back or written
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _held: int | None = None  # the directory's descriptor while this run holds its flock

    @classmethod
    def open(cls, path: Path, command: str, settings: dict, *, overwrite: bool = False) -> "RunDir":
        """Create `path` for a new run, or reopen it to resume one with the same settings.
        The directory stays locked against other runs until `close` or the end of the process."""
        path = Path(path).expanduser()
        # A directory another run is using may not be signed yet: ask the lock before judging it.
        held = _lock_dir(path) if path.is_dir() and not path.is_symlink() else None
        try:
            # Refuses the working directory, its parents and directories holding others' files.
            guard_output_dir(path, overwrite=True)
            if held is None:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise UsageError(f"cannot write {path} ({exc.strerror})", "choose another -o") from None
                held = _lock_dir(path)
            run = cls._open_locked(path, command, settings, overwrite)
        except BaseException:
            if held is not None:
                os.close(held)
            raise
        run._held = held
        try:
            atomic_write_text(path / PID, f"{os.getpid()}\n")
        except KoraniError:
            pass  # only the refusal message of a second run would miss it
        return run

    def close(self) -> None:
        """Let other runs use the directory (the end of the process does the same)."""
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def _open_locked(cls, path: Path, command: str, settings: dict, overwrite: bool) -> "RunDir":
        fresh = not any(p.name != PID for p in path.iterdir())
        if not fresh:
            marker = read_marker(path)
            if marker.get("command") != command:
                raise UsageError(
                    f"{path} holds the output of `korani {marker.get('command')}`, not of `korani {command}`",
                    "choose another -o",
                )
            if overwrite:
                for name in (ITEMS, SUMMARY):
                    (path / name).unlink(missing_ok=True)
                fresh = True
            else:
                _check_same(path, marker.get("settings") or {}, settings)
        if fresh:
            write_marker(path, command, settings=settings)
        run = cls(path, command, settings)
        run.done = run._read_items()
        return run

    def _read_items(self) -> dict:
        items = self.path / ITEMS
        data = _items_bytes(items)
        if data and not data.endswith(b"\n"):
            # A process killed mid-line: that item never finished; it runs again.
            cut = data.rfind(b"\n") + 1
            with open(items, "r+b") as fh:
                fh.truncate(cut)
        return _parse_items(items, data)

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path / ITEMS, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.done[str(record["id"])] = record

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")


def read_items(path: Path) -> dict:
    """A run directory's finished items (id → record), read without changing anything: a last
    line cut short by a killed run is left out, as a resume would drop it."""
    return _parse_items(path / ITEMS, _items_bytes(path / ITEMS))


def _items_bytes(items: Path) -> bytes:
    if not items.exists():
        return b""
    try:
        return items.read_bytes()
    except OSError as exc:
        raise EvalDataError(f"cannot read {items} ({exc.strerror})", "check its permissions") from None


def _parse_items(items: Path, data: bytes) -> dict:
    done = {}
    data = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        try:
            record = json.loads(line)
            done[str(record["id"])] = record
        except (ValueError, KeyError, TypeError, RecursionError):
            # RecursionError: [[[[… thousands deep, which no line korani writes is.
            raise EvalDataError(
                f"{items} line {number} is not an item korani wrote",
                "move the directory away and start again, or pass --overwrite",
            ) from None
    return done


def _lock_dir(path: Path) -> int:
    """An open descriptor of `path` holding an exclusive flock on it; refuses a directory another
    run holds. flock, not a lock file: the kernel releases it when the holder dies, even by SIGKILL."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock, as before
        return os.open(os.devnull, os.O_RDONLY)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot open {path} ({exc.strerror})", "choose another -o") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            pid = (path / PID).read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        who = f"another korani run (PID {pid})" if pid.isdigit() else "another korani run"
        raise UsageError(
            f"{path} is in use by {who}",
            "wait for it to finish, or choose another -o (two runs in one directory would mix their items)",
        ) from None
    return fd


def _check_same(path: Path, before: dict, now: dict) -> None:
    changed = [
        k
        for k in sorted(set(before) | set(now))
        if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
    ]
    if changed:
        shown = ", ".join(
            f"{k}: {excerpt(before.get(k), 60)} then, {excerpt(now.get(k), 60)} now" for k in changed[:3]
        )
        raise UsageError(
            f"{path} is a run with other settings ({shown})",
            "rerun with the same settings to resume, pass --overwrite to start it again, "
            "or choose another -o",
        )


@dataclass(frozen=True)
class Retry:
    """How `evaluate` tries an item again whose request failed: up to `attempts` tries in all,
    pausing first_delay, then twice that, and so on up to max_delay, each pause scaled by
    0.5–1.0 at random so C workers do not come back at the server in step. After `give_up`
    items in a row failed every try, the run stops: the server is down, not flaky.
    `sleep` and `jitter` are the clock and the dice, for tests."""

    attempts: int = 4
    first_delay: float = 0.5
    max_delay: float = 8.0
    give_up: int = 8
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def pause(self, failures: int) -> float:
        """The pause after the `failures`-th failed try of an item."""
        return min(self.max_delay, self.first_delay * 2 ** (failures - 1)) * (0.5 + 0.5 * self.jitter())


ONCE = Retry(attempts=1)  # no second try: a local model that failed will fail the same way again


@dataclass(frozen=True)
class _Failed:
    error: GenerationError
    tries: int


def evaluate(
    todo: Sequence,
    work: Callable,
    run: RunDir,
    *,
    concurrency: int = 1,
    on_item: Callable[[dict], None] = lambda record: None,
    retry: Retry = Retry(),
) -> None:
    """work(item) → record, for every item of `todo`; each record is appended to the run as it arrives.

    A GenerationError is tried again as `retry` says; items that fail every try are left out,
    and ItemsFailed (exit 4) is raised once the rest are done — or at once after
    `retry.give_up` failed items in a row. Any other exception stops the run; records that
    had already arrived are kept either way."""
    stop = threading.Event()

    def attempt(item):
        tries = 0
        while True:
            try:
                return work(item)
            except GenerationError as exc:
                tries += 1
                last = exc
            if tries >= retry.attempts or stop.is_set():
                return _Failed(last, tries)
            retry.sleep(retry.pause(tries))
            if stop.is_set():
                return _Failed(last, tries)

    failed: list[_Failed] = []
    in_a_row = 0

    def take(result) -> None:
        nonlocal in_a_row
        if isinstance(result, _Failed):
            failed.append(result)
            in_a_row += 1
            if in_a_row >= retry.give_up:
                stop.set()
                raise _GiveUp(in_a_row)
            return
        in_a_row = 0
        run.append(result)
        on_item(result)

    try:
        if concurrency <= 1 or len(todo) <= 1:
            for item in todo:
                take(attempt(item))
        else:
            _in_threads(todo, attempt, take, concurrency, stop)
    except _GiveUp as give_up:
        # Said once the records still arriving are written, so that "kept N" is what is on disk.
        raise _failure(run, failed, len(todo), in_a_row=give_up.in_a_row) from None
    if failed:
        raise _failure(run, failed, len(todo))


class _GiveUp(Exception):
    def __init__(self, in_a_row: int):
        super().__init__(in_a_row)
        self.in_a_row = in_a_row


def _in_threads(todo: Sequence, attempt: Callable, take: Callable, concurrency: int, stop) -> None:
    tasks: queue.Queue = queue.Queue()
    for item in todo:
        tasks.put(item)
    results: queue.Queue = queue.Queue()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((attempt(item), None))
            except BaseException as exc:  # handed to the main thread, which raises it
                results.put((None, exc))
                return

    # Daemon threads: Ctrl-C must not wait for requests still in flight.
    threads = [
        threading.Thread(target=worker, name=f"korani-eval-{i}", daemon=True)
        for i in range(min(concurrency, len(todo)))
    ]
    for thread in threads:
        thread.start()
    taken = 0
    try:
        while taken < len(todo):
            try:
                result, exc = results.get(timeout=0.2)
            except queue.Empty:
                continue
            taken += 1
            if exc is not None:
                raise exc
            take(result)
    finally:
        stop.set()
        # Records that arrived while the main thread was stopping (Ctrl-C, another item's
        # error) are finished work: keep them.
        while True:
            try:
                result, exc = results.get_nowait()
            except queue.Empty:
                break
            if exc is None and not isinstance(result, _Failed):
                try:
                    take(result)
                except BaseException:
                    break


def _failure(run: RunDir, failed: list, planned: int, *, in_a_row: int = 0) -> ItemsFailed:
    """The one line of a run that lost items: how many, the last error, what was kept, what next."""
    error, tries = failed[-1].error, failed[-1].tries
    cause = error.what if len(error.what) <= 160 else error.what[:159] + "…"
    kept = f"kept {len(run.done)} finished item{'' if len(run.done) == 1 else 's'} in {run.path}"
    if in_a_row:
        return ItemsFailed(
            f"stopped after {in_a_row} items in a row failed, each after {tries} "
            f"tr{'y' if tries == 1 else 'ies'} (last: {cause})",
            f"{error.fix + '; ' if error.fix else ''}{kept}; rerun with the same -o to go on",
        )
    return ItemsFailed(
        f"{len(failed)} of {planned} items failed, each after {tries} tr{'y' if tries == 1 else 'ies'} "
        f"(last: {cause})",
        f"{kept}; rerun with the same -o to try the failed ones again",
    )


def provenance() -> dict:
    """korani's version and, when it runs from a git checkout, the commit."""
    from korani_cli import __version__

    commit = None
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
            commit = out.stdout.strip() or None if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"korani_version": __version__, "git_commit": commit}


def ratio(count: int, of: int) -> dict:
    """A measure with its counts: {value, count, of}; value is None when there is nothing to count."""
    return {"value": count / of if of else None, "count": count, "of": of}


def spread(values: Sequence[float]) -> dict:
    from korani_cli.eval.metrics import mean, percentile

    values = [v for v in values if v is not None]
    return {
        "mean": mean(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "n": len(values),
    }


def is_run_dir(path: Path) -> bool:
    return is_ours(path)
