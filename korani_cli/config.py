"""User settings: defaults < config file < environment < command-line flags.

The config file is TOML at `paths.config_file()` (`$KORANI_HOME/config.toml`
when KORANI_HOME is set), for example::

    model = "demo"
    temperature = 0.7
    openai_base_url = "http://gpu-box:8000/v1"

An unknown key is an error that lists the valid ones: a typo must not be
silently ignored. Every value of a `Settings` field, whether it comes from the
file, the environment or a flag, passes the same `RULES` (type, range, finite;
a bool is not a number): a bad flag is a usage error (exit 2), a bad file or
environment value a config error (exit 5). Environment variables are read
when `load_settings` is called, never at import time.

Not every KORANI_* variable is a setting. Three belong to the search stage
alone, have no config-file key and are read and checked where they are used,
with the same error shape (exit 5, the variable named): KORANI_SEARXNG_URL
(`search.providers`: an http(s) URL with a host and a valid port, no spaces),
KORANI_SEARCH_DEADLINE (`search.pipeline.search_deadline`: a finite number of
seconds above 0) and KORANI_EXTRACT_WORKERS (`search.workers`); the on/off
switches (KORANI_LOG) are read by `env_switch`.

An API key is a secret: its rule (`Rule.secret`) wants printable ASCII with no
whitespace — what an HTTP header can carry; a stray `\r` from a Windows file
or a non-ASCII letter is refused when the key is read, naming the variable or
file and never the value, and no message or repr ever shows it.

Each alias (`ALIAS_DEFAULTS`) brings the generation settings it answers best
with — its template, temperature, top_p and answer length — which sit just
above the built-in defaults: a value the user set anywhere (file, environment,
flag) wins over the alias's. `explain_settings` says where each value came from.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from korani_cli import paths
from korani_cli.errors import ConfigError, UsageError, excerpt

DEFAULT_MODEL = "korani-5.8b"


@dataclass(frozen=True)
class GenerationDefaults:
    """How a model is prompted and sampled unless the user says otherwise: the built-in
    values, and each alias's own (`ALIAS_DEFAULTS`; see the module's docstring)."""

    template: str = "korani"  # "korani" or "model" (the model's own chat template)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256


BUILT_IN_GENERATION = GenerationDefaults()
ALIAS_DEFAULTS = {
    "korani-5.8b": GenerationDefaults(),
    # A base model: fluent Korean needs some temperature (greedy loops: "경북대, 경북대, …").
    "demo": GenerationDefaults(),
    # A 135M chat model answers best in its own chat template, and only near-greedy: at 0.7 it
    # answered "What is 12 times 10?" wrongly three times in three, at 0.2 right half the time,
    # greedy always ("12 times 10 is 120.", README's quick start).
    "demo-chat": GenerationDefaults(template="model", temperature=0.0),
}
BUILT_IN = "built-in default"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    template: str = BUILT_IN_GENERATION.template  # an alias's own default may differ: see explain_settings
    max_new_tokens: int = BUILT_IN_GENERATION.max_new_tokens
    temperature: float = BUILT_IN_GENERATION.temperature
    top_p: float = BUILT_IN_GENERATION.top_p
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    n_ctx: int = 2048  # context window asked of the llama.cpp backend
    threads: int | None = None  # CPU threads for llama.cpp; None = the cores free at each answer
    request_timeout: float = (
        20.0  # seconds: the overall deadline of one network request (see korani_cli/net.py)
    )
    # korani-5.8b: auto (a pulled GGUF when there is no CUDA GPU), hf or llamacpp; see models.resolve.
    backend: str = "auto"
    # No environment variable: an exported KORANI_BACKEND=hf would make every other --model a usage error.
    # Seconds a search waits for more result pages once the first one is in (search/fetch.py);
    # pages still loading then are skipped as "late". Measured by bench/rag.py on a latency tail.
    soft_deadline: float = 1.0


# Environment variable → setting. OPENAI_* are honoured because every
# OpenAI-compatible client reads them; KORANI_* win over them.
_ENV = {
    "model": ["KORANI_MODEL"],
    "template": ["KORANI_TEMPLATE"],
    "openai_base_url": ["KORANI_OPENAI_BASE_URL", "OPENAI_BASE_URL"],
    "openai_api_key": ["KORANI_OPENAI_API_KEY", "OPENAI_API_KEY"],
    "threads": ["KORANI_THREADS"],
    "request_timeout": ["KORANI_REQUEST_TIMEOUT"],
    "soft_deadline": ["KORANI_SOFT_DEADLINE"],
}

TEMPLATES = ("korani", "model")
BACKENDS = ("auto", "hf", "llamacpp")


# -- validation: one set of rules for the config file, the environment and the flags ----------


def thread_cap() -> int:
    """The most CPU threads korani will ask of llama.cpp: far more than any
    useful value, far fewer than the 100,000 that abort it with std::bad_alloc."""
    return max(256, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Rule:
    """What a value must be: its kind, an inclusive range, or a list of choices."""

    kind: type  # int, float or str
    low: float | None = None
    high: float | Callable[[], float] | None = None
    choices: tuple[str, ...] = ()
    url: bool = False  # an http(s) URL with a host
    secret: bool = False  # an API key: printable ASCII, no whitespace; its value is never shown

    def upper(self) -> float | None:
        return self.high() if callable(self.high) else self.high

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.url:
            return "an http:// or https:// URL with a host"
        if self.secret:
            return "printable ASCII with no spaces or line breaks"
        if self.kind is str:
            return "non-empty text" if self.low else "text"
        noun = "a whole number" if self.kind is int else "a finite number"
        low, high = self.low, self.upper()
        if low is not None and high is not None:
            return f"{noun} from {_number(low)} to {_number(high)}"
        if low is not None:
            return f"{noun} of at least {_number(low)}"
        return noun


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


MAX_NEW_TOKENS_CAP = 1_000_000
N_CTX_CAP = 1 << 20  # beyond any model's context; larger asks llama.cpp for terabytes
RULES: dict[str, Rule] = {
    "model": Rule(str, low=1),  # for text, `low` is the shortest length
    "template": Rule(str, choices=TEMPLATES),
    "max_new_tokens": Rule(int, 1, MAX_NEW_TOKENS_CAP),
    "temperature": Rule(float, 0.0, 100.0),
    "top_p": Rule(float, 0.0, 1.0),
    "openai_base_url": Rule(str, url=True),
    "openai_api_key": Rule(str, secret=True),
    "n_ctx": Rule(int, 16, N_CTX_CAP),
    "threads": Rule(int, 1, thread_cap),
    "request_timeout": Rule(float, 0.1, 3600.0),  # seconds; see korani_cli/net.py
    "backend": Rule(str, choices=BACKENDS),
    "soft_deadline": Rule(float, 0.0, 3600.0),  # seconds; 0: answer from the pages in with the first
}
SEED = Rule(int, 0, 2**32 - 1)  # what every backend accepts (llama.cpp takes a uint32)
CONTEXT_TOKENS = Rule(int, 64, 10**6)  # the sources' share of a RAG prompt (--context-tokens)
# Flags that are no setting (nothing in the file or environment sets them), checked the same way.
TOP_K = Rule(int, 1, 20)  # passages given to the model (--top-k)
LIMIT = Rule(int, 1)  # eval: the first N items (--limit)
CONCURRENCY = Rule(int, 1, 256)  # eval: requests in flight (--concurrency)
FRACTION = Rule(float, 0.0, 1.0)  # eval rag: --unanswerable


class Invalid(ValueError):
    """A value that breaks its Rule; the message says what it must be."""


def _rule(name: str) -> Rule:
    if name in RULES:
        return RULES[name]
    # A setting without its own rule is checked by its declared type.
    field = {f.name: f for f in fields(Settings)}[name]
    kind = str(field.type)
    return Rule(int if "int" in kind else float if "float" in kind else str)


def check_value(rule: Rule, value: Any, *, text: bool = False) -> Any:
    """`value` as `rule` wants it, or Invalid. `text` values (environment) are parsed;
    typed ones (TOML, flags) must already have the right type — a bool is not a number."""
    import math

    if rule.kind is str:
        if not isinstance(value, str):
            raise Invalid(rule.describe())
        if rule.low is not None and len(value.strip()) < rule.low:
            raise Invalid(rule.describe())
        if rule.choices and value not in rule.choices:
            raise Invalid(rule.describe())
        if rule.secret and not all("!" <= ch <= "~" for ch in value):
            # An HTTP header carries printable ASCII only: anything else would be refused (or
            # quoted back whole) by the HTTP library at the first request.
            raise Invalid(rule.describe())
        if rule.url:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(value.strip())
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
                _ = parts.port  # reading it raises ValueError on a bad port
            except ValueError:
                ok = False
            if not ok:
                raise Invalid(rule.describe())
        return value
    if text and isinstance(value, str):
        try:
            value = int(value.strip()) if rule.kind is int else float(value.strip())
        except ValueError:
            raise Invalid(rule.describe()) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(rule.describe())
    if rule.kind is int and not isinstance(value, int):
        raise Invalid(rule.describe())
    value = rule.kind(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(rule.describe())
    high = rule.upper()
    if (rule.low is not None and value < rule.low) or (high is not None and value > high):
        raise Invalid(rule.describe())
    return value


def _shown(value: Any) -> str:
    # Bounded without building the whole repr: a config value can be a 10,000-item array.
    return excerpt(value, 60)


def _got(rule: Rule, value: Any) -> str:
    """How an error quotes the value it refused: never a secret's."""
    return "; its value is not shown" if rule.secret else f", got {_shown(value)}"


def check_flag(option: str, value: Any, rule: Rule) -> Any:
    """A command-line value against its rule: a bad one is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return check_value(rule, value)
    except Invalid as exc:
        raise UsageError(
            f"{option} must be {exc}{_got(rule, value)}", f"pass {option} {rule.describe()}"
        ) from None


def _check_names(values: dict[str, Any], where: str) -> None:
    valid = [f.name for f in fields(Settings)]
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}: unknown setting '{key}'", f"valid settings are: {', '.join(valid)}")


def _validate_file(values: dict[str, Any], where: str) -> dict[str, Any]:
    _check_names(values, where)
    out = {}
    for key, value in values.items():
        try:
            out[key] = check_value(_rule(key), value)
        except Invalid as exc:
            raise ConfigError(
                f"{where}: '{key}' must be {exc}{_got(_rule(key), value)}", f"fix '{key}' in {where}"
            ) from None
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory, not a config file", "remove it, or put settings in a TOML file there"
        )
    if not path.is_file():  # a FIFO would block the read forever, a device could be anything
        raise ConfigError(f"{path} is not a regular file", "replace it with a TOML file, or remove it")
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "fix or delete the file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
            "save it as UTF-8, or delete it",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})", "check its permissions") from None
    except RecursionError:
        # tomllib reads arrays recursively: [[[[… thousands deep is no setting korani has.
        raise ConfigError(
            f"{path} is nested too deeply to be korani's config (every setting is one value)",
            "fix or delete the file",
        ) from None
    except ValueError as exc:
        # tomllib converts digits with int(): over 4,300 digits Python refuses.
        if "integer string conversion" not in str(exc):
            raise
        raise ConfigError(
            f"{path} holds an integer of more than {sys.get_int_max_str_digits():,} digits",
            "fix or delete the file",
        ) from None
    return _validate_file(raw, str(path))


def read_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    return {key: value for key, (value, _name) in _environment(environ).items()}


def _environment(environ: dict[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """setting → (value, the variable it came from)."""
    environ = os.environ if environ is None else environ
    out: dict[str, tuple[Any, str]] = {}
    for key, names in _ENV.items():
        for name in names:
            if environ.get(name):
                try:
                    out[key] = (check_value(_rule(key), environ[name], text=True), name)
                except Invalid as exc:
                    raise ConfigError(
                        f"{name} must be {exc}{_got(_rule(key), environ[name])}",
                        f"set {name} to {_rule(key).describe()}, or unset it",
                    ) from None
                break
    return out


def load_settings(overrides: dict[str, Any] | None = None, *, config_path: Path | None = None) -> Settings:
    """Resolve settings in precedence order; `overrides` are CLI flags (None = not given).

    Every value passes the same `RULES` wherever it comes from: a bad flag is a
    usage error (exit 2), a bad file or environment value a config error (exit 5)."""
    return explain_settings(overrides, config_path=config_path)[0]


def explain_settings(
    overrides: dict[str, Any] | None = None, *, config_path: Path | None = None
) -> tuple[Settings, dict[str, str]]:
    """`load_settings`, and where each value came from: the flag (`--temperature`), the
    environment variable (`KORANI_MODEL`), `config file PATH`, `ALIAS's default` or BUILT_IN.

    Precedence: built-in < the alias's defaults < config file < environment < flags."""
    path = config_path or paths.config_file()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in read_config_file(path).items():
        merged[key], origin[key] = value, f"config file {path}"
    for key, (value, name) in _environment().items():
        merged[key], origin[key] = value, name
    for key, value in (overrides or {}).items():
        if value is not None:
            flag = "--" + key.replace("_", "-")
            merged[key], origin[key] = check_flag(flag, value, _rule(key)), flag
    alias = str(merged.get("model", DEFAULT_MODEL)).strip()
    if alias in ALIAS_DEFAULTS:
        for key, value in dataclasses.asdict(ALIAS_DEFAULTS[alias]).items():
            if key not in merged:  # nobody chose it: the alias's own (demo-chat: its chat template, greedy)
                merged[key], origin[key] = value, f"{alias}'s default"
    settings = dataclasses.replace(Settings(), **merged)
    for f in fields(Settings):
        origin.setdefault(f.name, BUILT_IN)
    return settings, origin


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def env_switch(name: str, default: bool = True) -> bool:
    """An on/off environment variable (KORANI_LOG=0), read now; unset or empty is `default`,
    and anything but 1/0, true/false, yes/no, on/off is a config error (exit 5)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _ON:
        return True
    if raw.lower() in _OFF:
        return False
    raise ConfigError(
        f"{name} must be 0 or 1, got {_shown(raw)}", f"set {name}=0 (off) or {name}=1 (on), or unset it"
    )
