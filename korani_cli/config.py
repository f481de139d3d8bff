"""User settings: defaults < config file < environment < command-line flags.

The config file is TOML at `paths.config_file()` (`$KORANI_HOME/config.toml`
when KORANI_HOME is set), for example::

    model = "demo"
    temperature = 0.7
    openai_base_url = "http://gpu-box:8000/v1"

An unknown key is an error that lists the valid ones: a typo must not be
silently ignored. Environment variables are read when `load_settings` is
called, never at import time.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from korani_cli import paths
from korani_cli.errors import ConfigError, UsageError

DEFAULT_MODEL = "korani-5.8b"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    template: str = "korani"  # "korani" or "model" (the model's own chat template)
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    n_ctx: int = 2048  # context window asked of the llama.cpp backend
    threads: int | None = None  # CPU threads for llama.cpp; None = all cores
    request_timeout: float = 20.0  # seconds: the overall deadline of one network request (see korani_cli/net.py)


# Environment variable → setting. OPENAI_* are honoured because every
# OpenAI-compatible client reads them; KORANI_* win over them.
_ENV = {
    "model": ["KORANI_MODEL"],
    "template": ["KORANI_TEMPLATE"],
    "openai_base_url": ["KORANI_OPENAI_BASE_URL", "OPENAI_BASE_URL"],
    "openai_api_key": ["KORANI_OPENAI_API_KEY", "OPENAI_API_KEY"],
    "threads": ["KORANI_THREADS"],
    "request_timeout": ["KORANI_REQUEST_TIMEOUT"],
}

TEMPLATES = ("korani", "model")


def _coerce(name: str, value: Any, where: str) -> Any:
    field = {f.name: f for f in fields(Settings)}[name]
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if value is None:
            return None
        if "int" in kind and not isinstance(value, bool):
            return int(value)
        if "float" in kind and not isinstance(value, bool):
            return float(value)
        if "str" in kind:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(
        f"{where}: '{name}' must be {kind.replace(' | None', '')}, got {value!r}",
        f"fix the value of '{name}'",
    )


def _validate(values: dict[str, Any], where: str) -> dict[str, Any]:
    valid = [f.name for f in fields(Settings)]
    out = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(
                f"{where}: unknown setting '{key}'",
                f"valid settings are: {', '.join(valid)}",
            )
        out[key] = _coerce(key, value, where)
    if out.get("template") not in (None, *TEMPLATES):
        raise ConfigError(
            f"{where}: template must be one of {', '.join(TEMPLATES)}, got {out['template']!r}",
            "use 'korani' (the KoRani format) or 'model' (the model's own chat template)",
        )
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "fix or delete the file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})", "check its permissions") from None
    return _validate(raw, str(path))


def read_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, names in _ENV.items():
        for name in names:
            if environ.get(name):
                out[key] = environ[name]
                break
    return _validate(out, "environment")


def load_settings(overrides: dict[str, Any] | None = None, *, config_path: Path | None = None) -> Settings:
    """Resolve settings in precedence order; `overrides` are CLI flags (None = not given)."""
    merged: dict[str, Any] = {}
    merged.update(read_config_file(config_path or paths.config_file()))
    merged.update(read_environment())
    try:
        merged.update(_validate({k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    except ConfigError as exc:  # a bad flag is a usage error (exit 2), not a bad config file
        raise UsageError(exc.what, exc.fix) from None
    return dataclasses.replace(Settings(), **merged)
