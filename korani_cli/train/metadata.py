"""korani_metadata.json: what one finished training run did, as a typed value.

The run builds a `TrainMetadata` and writes it (`write`); the closing lines of
`korani train` and the model card read its fields, never dict keys. `read`
turns a file back into the value and refuses, with one line, a file that is
not one korani wrote: broken JSON, a missing field, a value of the wrong type.
Fields added after the first version have defaults, so older runs still read.

What this module does not know: how the figures were measured (`run.py`,
`health.py`) or how they are shown (`commands/train.py`, `card.py`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from korani_cli.errors import ModelLoadError
from korani_cli.outputs import atomic_write_text
from korani_cli.train.health import Health

FILENAME = "korani_metadata.json"


class MetadataError(ModelLoadError):
    """A korani_metadata.json that korani cannot read (exit 3, like any unreadable model directory)."""


@dataclass(frozen=True)
class DataInfo:
    dir: str  # the prepared data directory, resolved
    fingerprint: str | None  # stats.json's fingerprint of the sources; None without stats.json
    conversations: dict[str, int]  # per split: train, valid, test


@dataclass(frozen=True)
class EvalLoss:
    step: int
    eval_loss: float


@dataclass(frozen=True)
class DeviceInfo:
    cuda: bool
    bf16: bool
    optim: str
    notices: list[str] = field(default_factory=list)  # what the device plan changed, and why


@dataclass(frozen=True)
class TrainMetadata:
    korani_version: str
    base_model: str  # as trained (a --smoke run's tiny stand-in)
    smoke: bool
    data: DataInfo
    steps: int
    max_steps: int
    train_loss_first: float | None
    train_loss_last: float | None
    train_loss_mean: float | None = None
    eval_losses: list[EvalLoss] = field(default_factory=list)
    eval_skipped: str | None = None  # why there is no eval loss; None when there is one
    health: Health | None = None
    health_skipped: str | None = None  # why there is no health check; None when it ran
    device: DeviceInfo = field(default_factory=lambda: DeviceInfo(False, False, "?"))
    deepspeed: str | None = None
    quantization: str | None = None  # the 4-bit type; None for a full-precision base
    resumed_from: str | None = None  # the checkpoint --resume continued
    train_seconds: float = 0.0
    pad_token: str | None = None
    eos_token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: object, where: str = FILENAME) -> TrainMetadata:
        """The value a `to_json` dict (read back from JSON) describes; MetadataError for anything else."""
        return _build(cls, value, where, "")

    def write(self, output: Path) -> Path:
        """Write OUTPUT/korani_metadata.json atomically; returns its path."""
        path = Path(output) / FILENAME
        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n")
        return path

    @classmethod
    def read(cls, output: Path) -> TrainMetadata:
        """OUTPUT/korani_metadata.json (or that file itself) of a finished run."""
        path = Path(output)
        if path.is_dir():
            path = path / FILENAME
        fix = "pass the --output directory of a finished `korani train` run"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MetadataError(
                f"{path} does not exist (the run did not finish, or is not a korani train run)", fix
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MetadataError(
                f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})", fix
            ) from None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise MetadataError(f"{path} is not JSON ({exc})", fix) from None
        return cls.from_json(value, str(path))


def _build(cls: type, value: object, where: str, path: str):
    if not isinstance(value, dict):
        raise _wrong(where, path, f"an object ({cls.__name__})", value)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, f in known.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MetadataError(
                    f"{where}: '{_join(path, name)}' is missing; korani did not write this file",
                    "pass the --output directory of a finished `korani train` run",
                )
            continue
        values[name] = _convert(value[name], hints[name], where, _join(path, name))
    return cls(**values)


def _convert(value: object, hint: Any, where: str, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, path)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise _wrong(where, path, "a list", value)
        return (
            [_convert(v, args[0], where, f"{path}[{i}]") for i, v in enumerate(value)]
            if args
            else list(value)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, path, "an object", value)
        return {str(k): _convert(v, args[1], where, _join(path, str(k))) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # JSON writes 2.0 as 2.0, but a hand-made file may hold 2; NaN and Infinity are floats too.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise _wrong(where, path, _KINDS.get(hint, f"a {getattr(hint, '__name__', hint)}"), value)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _wrong(where: str, path: str, expected: str, value: object) -> MetadataError:
    shown = (
        json.dumps(value, ensure_ascii=False) if not isinstance(value, (dict, list)) else type(value).__name__
    )
    what = (
        f"'{path}' should be {expected}, not {shown[:60]}"
        if path
        else f"it holds {shown[:60]}, not {expected}"
    )
    return MetadataError(
        f"{where}: {what}; korani did not write this file (or it was edited)",
        "pass the --output directory of a finished `korani train` run",
    )
