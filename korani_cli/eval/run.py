"""A run directory, and the loop that fills it — one item at a time or C at once.

Layout of RUN_DIR:
  .korani-output.json  korani's marker (outputs.MARKER): the command and the settings
  items.jsonl          one JSON line per finished item, appended, flushed and fsynced
  summary.json         written (atomically) when the run ends, is interrupted, or fails

A rerun with the same directory resumes: items already in items.jsonl are
skipped. The settings must match (the item limit and the concurrency may
change); a last line cut short by a killed process is dropped. A directory
korani did not write, or wrote for another command, is refused.

`evaluate` runs a work function over the items still to do, in this thread or
in C daemon threads (an OpenAI-compatible server answers many requests at
once), and appends each result as it arrives. Ctrl-C leaves every finished
item on disk. The loop knows nothing about what an item is.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from korani_cli.errors import UsageError
from korani_cli.eval import EvalDataError
from korani_cli.outputs import MARKER, atomic_write_text, guard_output_dir, is_ours, write_marker

ITEMS = "items.jsonl"
SUMMARY = "summary.json"
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
    except ValueError:
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

    @classmethod
    def open(cls, path: Path, command: str, settings: dict, *, overwrite: bool = False) -> "RunDir":
        """Create `path` for a new run, or reopen it to resume one with the same settings."""
        path = Path(path).expanduser()
        # Refuses the working directory, its parents and directories holding others' files.
        guard_output_dir(path, overwrite=True)
        fresh = not path.exists() or not any(path.iterdir())
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
        try:
            path.mkdir(parents=True, exist_ok=True)
            if fresh:
                write_marker(path, command, settings=settings)
        except OSError as exc:
            raise UsageError(f"cannot write {path} ({exc.strerror})", "choose another -o") from None
        run = cls(path, command, settings)
        run.done = run._read_items()
        return run

    def _read_items(self) -> dict:
        items = self.path / ITEMS
        if not items.exists():
            return {}
        try:
            data = items.read_bytes()
        except OSError as exc:
            raise EvalDataError(f"cannot read {items} ({exc.strerror})", "check its permissions") from None
        if data and not data.endswith(b"\n"):
            # A process killed mid-line: that item never finished; it runs again.
            cut = data.rfind(b"\n") + 1
            with open(items, "r+b") as fh:
                fh.truncate(cut)
            data = data[:cut]
        done = {}
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            try:
                record = json.loads(line)
                done[str(record["id"])] = record
            except (ValueError, KeyError, TypeError):
                raise EvalDataError(
                    f"{items} line {number} is not an item korani wrote",
                    "move the directory away and start again, or pass --overwrite",
                ) from None
        return done

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path / ITEMS, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.done[str(record["id"])] = record

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")


def _check_same(path: Path, before: dict, now: dict) -> None:
    changed = [
        k
        for k in sorted(set(before) | set(now))
        if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
    ]
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed[:3])
        raise UsageError(
            f"{path} is a run with other settings ({shown})",
            "rerun with the same settings to resume, pass --overwrite to start it again, "
            "or choose another -o",
        )


def evaluate(
    todo: Sequence,
    work: Callable,
    run: RunDir,
    *,
    concurrency: int = 1,
    on_item: Callable[[dict], None] = lambda record: None,
) -> None:
    """work(item) → record, for every item of `todo`; each record is appended to the run as it arrives."""
    if concurrency <= 1 or len(todo) <= 1:
        for item in todo:
            record = work(item)
            run.append(record)
            on_item(record)
        return
    tasks: queue.Queue = queue.Queue()
    for item in todo:
        tasks.put(item)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((work(item), None))
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
    try:
        for _ in range(len(todo)):
            while True:
                try:
                    record, exc = results.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
            run.append(record)
            on_item(record)
    finally:
        stop.set()


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
