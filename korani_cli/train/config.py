"""The training recipe as a typed value: defaults < YAML file < `key=value` overrides.

Each field's `help` is the documentation (`korani train --help-config` prints
it). An unknown key — in the file or on the command line — is an error that
lists the valid ones; a value of the wrong type is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from korani_cli.errors import ConfigError, UsageError


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    base_model: str = _f("EleutherAI/polyglot-ko-5.8b", "Base model: hub id or local directory.")
    data: str = _f("data/korani", "Directory written by `korani data prepare` (train/valid/test.jsonl).")
    output: str = _f("runs/korani", "Output directory: adapter, tokenizer, checkpoints, logs, metadata.")
    max_length: int = _f(256, "Longest tokenised conversation; longer ones are truncated.")
    load_in_4bit: bool = _f(True, "Load the base in 4-bit (bitsandbytes) — QLoRA.")
    bnb_4bit_quant_type: str = _f("nf4", "4-bit quantisation type: nf4 or fp4.")
    bnb_4bit_use_double_quant: bool = _f(True, "Quantise the quantisation constants too.")
    bnb_4bit_compute_dtype: str = _f("bfloat16", "Compute dtype of 4-bit layers (float32 on CPU regardless).")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha.")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    lora_target_modules: list = _f(["query_key_value"], "Modules that get LoRA adapters.")
    num_train_epochs: float = _f(1.0, "Epochs over the train split.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use epochs).")
    per_device_train_batch_size: int = _f(16, "Micro-batch size per device.")
    per_device_eval_batch_size: int = _f(16, "Eval batch size per device.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule.")
    warmup_ratio: float = _f(0.06, "Share of steps spent warming up.")
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.99, "Adam beta2.")
    weight_decay: float = _f(0.0, "Weight decay.")
    optim: str = _f("paged_adamw_8bit", "Optimizer (transformers name); adamw_torch on CPU, where paged 8-bit needs CUDA.")
    bf16: bool = _f(True, "bf16 mixed precision on GPU (always fp32 on CPU).")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    packing: bool = _f(True, "Pack conversations into full rows; samples never attend to each other (varlen flash attention, else a block-diagonal mask). false: length-grouped batches.")
    eval_steps: int = _f(200, "Evaluate on the valid split every N steps.")
    save_steps: int = _f(200, "Checkpoint every N steps.")
    save_total_limit: int = _f(3, "Keep the last K checkpoints.")
    logging_steps: int = _f(10, "Log every N steps (JSONL + TensorBoard).")
    seed: int = _f(42, "Seed for data order and initialisation.")
    deepspeed: str | None = _f(None, "DeepSpeed config: zero2, zero3, zero2_offload, zero3_offload, or a JSON path.")
    health_prompts: int = _f(16, "Held-out prompts for the after-training EOS/repetition check (0 to skip).")
    health_max_new_tokens: int = _f(128, "Token limit for each health-check generation.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, where: str) -> Any:
    hint = _hints()[key]
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
    elif base is bool and isinstance(value, bool):
        return value
    elif base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    elif base in (list, typing.List) and isinstance(value, (list, str)):
        return [value] if isinstance(value, str) else list(value)
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{where}: '{key}' must be {name}, got {value!r}", f"fix the value of '{key}'")


def _check_keys(values: dict, where: str) -> None:
    valid = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'", f"valid keys are: {', '.join(valid)}")


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"cannot read the override {item!r}", "write overrides as key=value, e.g. max_length=512")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_config(path: Path | None, overrides: dict | None = None) -> TrainConfig:
    import yaml

    values: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", "pass a YAML recipe such as configs/korani-5.8b.yaml") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of key: value", "see configs/korani-5.8b.yaml")
        _check_keys(loaded, str(path))
        values.update({k: _coerce(k, v, str(path)) for k, v in loaded.items()})
    overrides = overrides or {}
    _check_keys(overrides, "command line")
    values.update({k: _coerce(k, v, "command line") for k, v in overrides.items()})
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: Path) -> None:
    import yaml

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


def describe() -> str:
    """The recipe keys with their defaults and help, for `--help-config`."""
    lines = []
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} = {json.dumps(default)}\n    {f.metadata['help']}")
    return "\n".join(lines)
