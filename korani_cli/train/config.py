"""The training recipe as a typed value: defaults < YAML file < `key=value` overrides.

Each field's `help` is the documentation (`korani train keys` prints it). An
unknown key — in the file or on the command line — is an error that lists the
valid ones; a value of the wrong type is an error naming the key; a value out
of its range (`lora_r: 0`, a NaN learning rate, an unknown optimiser) is an
error naming the key, the range and where the value came from. All of these
are configuration errors (exit 5) wherever the value was written: a recipe
value is a recipe value, in the file or after `key=value`. Only a malformed
`key=value` itself is a usage error (exit 2).

`validate` is the one check of a recipe; `load_config` runs it, and so does
the training run itself before `--smoke` replaces anything, so a recipe that
cannot train never gets a smoke run that looks like a pass.

What YAML allows beyond key: value is bounded before anything looks at a
value: a key written twice, an empty recipe, a value that expands (through
aliases, `&a`/`*a`) to more than `MAX_VALUES` items or nests deeper than
`MAX_DEPTH` are configuration errors, and every error quotes a value through
`errors.excerpt`, never whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from korani_cli import modelref
from korani_cli.errors import ConfigError, UsageError, excerpt


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    base_model: str = _f(
        "EleutherAI/polyglot-ko-5.8b",
        "Base model: hub id, local directory, or a .gguf file (dequantised; needs the gguf package).",
    )
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
    optim: str = _f(
        "paged_adamw_8bit", "Optimizer (transformers name); adamw_torch on CPU, where paged 8-bit needs CUDA."
    )
    bf16: bool = _f(True, "bf16 mixed precision on GPU (always fp32 on CPU).")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    packing: bool = _f(
        True,
        "Pack conversations into full rows; samples never attend to each other (varlen flash attention, else "
        "a block-diagonal mask). false: length-grouped batches.",
    )
    eval_steps: int = _f(200, "Evaluate on the valid split every N steps.")
    save_steps: int = _f(200, "Checkpoint every N steps.")
    save_total_limit: int = _f(3, "Keep the last K checkpoints.")
    logging_steps: int = _f(10, "Log every N steps (JSONL + TensorBoard).")
    seed: int = _f(42, "Seed for data order and initialisation.")
    deepspeed: str | None = _f(
        None, "DeepSpeed config: zero2, zero3, zero2_offload, zero3_offload, or a JSON path."
    )
    dist_timeout: int = _f(
        1800,
        "Seconds a process of a multi-process run (torchrun, accelerate launch, deepspeed) waits for the "
        "others at a collective before it fails; a dead process ends the job at once, this bounds a hung "
        "one.",
    )
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
    base = (
        args[0]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args
        else hint
    )
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
    elif base is bool and isinstance(value, bool):
        return value
    elif base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif base is float and isinstance(value, str) and _float_text(value) is not None:
        # YAML 1.1 reads 1e-4 (no dot) as a string; it is a number to anyone writing it.
        return _float_text(value)
    elif base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    elif base in (list, typing.List) and isinstance(value, (list, str)):
        return [value] if isinstance(value, str) else list(value)
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{where}: '{key}' must be {name}, got {excerpt(value)}", f"fix the value of '{key}'")


def _float_text(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_keys(values: dict, where: str) -> None:
    valid = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {excerpt(key)}", f"valid keys are: {', '.join(valid)}")


# A real recipe has ~45 keys and one short list; these bound what YAML's aliases and
# nesting can make of a small file (nine lines of `&a [*z, *z, …]` expand to 9**9 items).
MAX_VALUES = 10_000  # items under one key, each use of an alias counted again
MAX_DEPTH = 8  # levels of lists and mappings under one key


class _KeyTwice(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _TooBig(Exception):
    pass


def _yaml_loader():
    """PyYAML's SafeLoader, refusing a mapping key written twice (it keeps the last silently).
    Keys merged in with `<<: *base` may be overridden: that is what a merge is for."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise _KeyTwice(key, seen[key], line)
                    seen[key] = line
            return super().construct_mapping(node, deep)

    return RecipeLoader


def _load_yaml(text: str):
    """`text` as YAML, with the recipe loader; RecursionError (thousands of `[`) is the caller's."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


def _check_size(key: str, value, where: str) -> None:
    """Refuse a value that expands beyond MAX_VALUES items or nests beyond MAX_DEPTH, before
    anything (a check, an error message, asdict) walks it. Visits at most MAX_VALUES + 1 items,
    so the check itself is cheap even for a value that holds itself."""
    budget = MAX_VALUES

    def walk(item, depth: int) -> None:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise _TooBig(f"expands to more than {MAX_VALUES:,} items")
        if depth > MAX_DEPTH:
            raise _TooBig(f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for k, v in item.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(item, (list, tuple, set)):
            for v in item:
                walk(v, depth + 1)

    try:
        walk(value, 0)
    except _TooBig as exc:
        raise ConfigError(
            f"{where}: the value of {excerpt(key)} {exc}",
            f"write {excerpt(key)} out plainly, without aliases (*name repeats all that &name holds): "
            "a recipe value is a number, a name or a short list of names",
        ) from None


def _unreadable(exc: ValueError) -> str:
    """What PyYAML's own conversions (int(), date()) refused, in a few words."""
    if "integer string conversion" in str(exc):
        return f"an integer of more than {sys.get_int_max_str_digits():,} digits"
    return f"a value YAML cannot convert ({excerpt(str(exc), 60)})"


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"cannot read the override {excerpt(item)}",
                "write overrides as key=value, e.g. max_length=512",
            )
        try:
            out[key.strip()] = _load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
        except _KeyTwice as twice:
            raise ConfigError(
                f"command line: {key.strip()}= names the key {excerpt(twice.key)} twice",
                "write each key once",
            ) from None
        except RecursionError:
            raise ConfigError(
                f"command line: the value of {excerpt(key.strip())} is nested too deeply for a recipe",
                f"fix the value of {excerpt(key.strip())}",
            ) from None
        except ValueError as exc:
            raise ConfigError(
                f"command line: the value of {excerpt(key.strip())} is {_unreadable(exc)}",
                f"fix the value of {excerpt(key.strip())}",
            ) from None
    return out


def _read_recipe(path: Path) -> dict:
    import yaml

    from korani_cli.train.presets import presets_hint, resolve_recipe

    hint = "pass a YAML recipe file or a shipped preset name (korani train init writes one out)"
    path = resolve_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no recipe file {path}", presets_hint()) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a recipe file", hint) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file (invalid UTF-8 at byte {exc.start})", hint) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.strerror})", "check the path and its permissions"
        ) from None
    try:
        loaded = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the file") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a recipe", hint) from None
    except _KeyTwice as twice:
        raise ConfigError(
            f"{path}: the key {excerpt(twice.key)} is set twice (lines {twice.first} and {twice.again}); "
            "YAML would silently keep the last",
            "delete the one you do not mean",
        ) from None
    except ValueError as exc:
        # PyYAML converts with int() and date(): over 4,300 digits, or a 13th month, they refuse.
        raise ConfigError(f"{path} holds {_unreadable(exc)}", "fix the file") from None
    if loaded is None:
        # An empty file (or `~`) would train a 5.8B model for hours on the defaults: more likely a
        # truncated or wrong file than a wish.
        raise ConfigError(
            f"{path} is empty: it sets no recipe key",
            "write the recipe's key: value lines (korani train init writes the korani-5.8b preset out), "
            "or pass the preset name korani-5.8b",
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path} must hold a mapping of key: value, not a {type(loaded).__name__}",
            "see the shipped preset: korani train init",
        )
    return loaded


def load_config(path: Path | None, overrides: dict | None = None) -> TrainConfig:
    values: dict = {}
    origin: dict[str, str] = {}
    if path is not None:
        loaded = _read_recipe(path)
        for key, value in loaded.items():
            _check_size(key, value, str(path))
        _check_keys(loaded, str(path))
        values.update({k: _coerce(k, v, str(path)) for k, v in loaded.items()})
        origin.update(dict.fromkeys(loaded, str(path)))
    overrides = overrides or {}
    for key, value in overrides.items():
        _check_size(key, value, "command line")
    _check_keys(overrides, "command line")
    values.update({k: _coerce(k, v, "command line") for k, v in overrides.items()})
    origin.update(dict.fromkeys(overrides, "command line"))
    config = TrainConfig(**values)
    validate(config, origin)
    return config


# -- ranges --------------------------------------------------------------------------------

# The names transformers accepts for `optim` and `lr_scheduler_type`
# (OptimizerNames and SchedulerType in transformers 5). Kept here so a typo is
# refused before torch is even imported; tests/test_hostile_train.py checks
# these tuples against the installed transformers, so they cannot drift.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_radam",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "stable_adamw",
)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("float32", "float16", "bfloat16")
_BIG = 2**31 - 1  # beyond this an int recipe value is a typo, and libraries overflow on it


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v <= _BIG), f"a whole number from {low} to {_BIG}"


def _one_of(names: tuple[str, ...], what: str | None = None) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in names), (what or "one of") + " " + ", ".join(names)


def _path_like(value: str) -> bool:
    return bool(value.strip()) and modelref.problem(value) is None


_POSITIVE_FLOAT = (lambda v: math.isfinite(v) and v > 0), "a finite number above 0"
_UNIT_INTERVAL = (lambda v: math.isfinite(v) and 0 <= v < 1), "a number from 0 up to (not including) 1"

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # A name no path or hub id can be (5,000 characters) is refused here, not by an OSError later.
    "base_model": (_path_like, "a hub id, a local directory or a .gguf file"),
    "data": (_path_like, "a directory written by `korani data prepare`"),
    "output": (_path_like, "a directory path"),
    "max_length": _int_at_least(1),
    "bnb_4bit_quant_type": _one_of(QUANT_TYPES),
    "bnb_4bit_compute_dtype": _one_of(DTYPES),
    "lora_r": _int_at_least(1),
    "lora_alpha": _int_at_least(1),
    "lora_dropout": _UNIT_INTERVAL,
    "lora_target_modules": (
        (lambda v: bool(v) and all(isinstance(m, str) and m.strip() for m in v)),
        "a non-empty list of module names, e.g. [query_key_value]",
    ),
    "num_train_epochs": _POSITIVE_FLOAT,
    "max_steps": (
        (lambda v: v == -1 or 1 <= v <= _BIG),
        f"-1 (use num_train_epochs) or a whole number from 1 to {_BIG}",
    ),
    "per_device_train_batch_size": _int_at_least(1),
    "per_device_eval_batch_size": _int_at_least(1),
    "gradient_accumulation_steps": _int_at_least(1),
    "learning_rate": _POSITIVE_FLOAT,
    "lr_scheduler_type": _one_of(SCHEDULERS, "a transformers scheduler:"),
    # The run passes warmup_ratio on as a ratio only while it is below 1; 1 or more would mean steps.
    "warmup_ratio": _UNIT_INTERVAL,
    "adam_beta1": _UNIT_INTERVAL,
    "adam_beta2": _UNIT_INTERVAL,
    "weight_decay": ((lambda v: math.isfinite(v) and v >= 0), "a finite number ≥ 0"),
    "optim": _one_of(OPTIMIZERS, "a transformers optimizer:"),
    "eval_steps": _int_at_least(1),
    "save_steps": _int_at_least(1),
    "save_total_limit": _int_at_least(1),
    "logging_steps": _int_at_least(1),
    "seed": ((lambda v: 0 <= v < 2**32), "a whole number from 0 to 4294967295"),
    "deepspeed": (
        (lambda v: v is None or bool(v.strip())),
        "zero2, zero3, zero2_offload, zero3_offload or a JSON path",
    ),
    "dist_timeout": _int_at_least(10),
    "health_prompts": _int_at_least(0),
    "health_max_new_tokens": _int_at_least(1),
}


def validate(config: TrainConfig, origin: dict[str, str] | None = None) -> None:
    """Refuse a recipe value outside its range. `origin` says where each key
    was written (a file path, "command line"), for the message."""
    origin = origin or {}
    for f in fields(TrainConfig):
        rule = _RULES.get(f.name)
        if rule is None:
            continue
        check, requirement = rule
        value = getattr(config, f.name)
        if not check(value):
            where = origin.get(f.name, "recipe")
            fix = f"fix the value of '{f.name}'"
            if isinstance(value, str) and len(value) <= 100:  # a near-miss of a name is short
                import difflib

                close = difflib.get_close_matches(value, requirement.replace(",", " ").split(), n=1)
                fix += f" (did you mean {close[0]}?)" if close else ""
            shown = repr(modelref.shorten(value)) if isinstance(value, str) else excerpt(value)
            raise ConfigError(f"{where}: '{f.name}' is {shown}; it must be {requirement}", fix)


def save_config(config: TrainConfig, path: Path) -> None:
    import yaml

    from korani_cli.outputs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


def describe() -> str:
    """The recipe keys with their defaults and help, for `korani train keys`."""
    lines = []
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} = {json.dumps(default)}\n    {f.metadata['help']}")
    return "\n".join(lines)
