"""The backend registry: which class loads a model for each backend name.

Every backend is reached through this one table, the built-in ones included
(as simonw/llm registers its own models through the hook its plugins use):
a name maps to "module:Class", and the module is imported only when a model
of that backend is loaded, so `korani --help` never imports torch or
llama_cpp. `register` adds a backend under a new name; the tests register
their scripted double this way, and `models.resolve` sends `--model
NAME:SOURCE` to a registered backend that is not built in.

What it leaves to others: turning `--model` into a `ModelSpec` (models.py),
and everything a backend does once its class is found.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Protocol, Union

from korani_cli.backends import Backend, ModelSpec, Notify
from korani_cli.errors import ModelLoadError

if TYPE_CHECKING:
    from korani_cli.config import Settings


class Loader(Protocol):
    """What a registered backend provides: a backend class's `load` classmethod, or any object with one."""

    def load(self, spec: ModelSpec, settings: Settings, notify: Notify) -> Backend: ...


Target = Union[str, Loader]  # "module:Class", imported when first needed, or the loader itself

BUILTIN: dict[str, str] = {
    "hf": "korani_cli.backends.hf:HFBackend",
    "llamacpp": "korani_cli.backends.llamacpp:LlamaCppBackend",
    "openai": "korani_cli.backends.openai:OpenAIBackend",
}
_registered: dict[str, Target] = dict(BUILTIN)
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # usable before the ':' of `--model NAME:SOURCE`


def register(name: str, target: Target) -> None:
    """Make `name` a backend loaded by `target`. A name already taken is refused: a
    second registration must not silently replace a backend (a built-in one least of all)."""
    if not _NAME.match(name):
        raise ValueError(f"a backend name is lower-case letters, digits, '-' or '_', got {name!r}")
    if name in _registered:
        raise ValueError(f"a backend named {name!r} is already registered")
    if isinstance(target, str):
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"a backend target is 'module:Class', got {target!r}")
    elif not callable(getattr(target, "load", None)):
        raise ValueError(f"a backend target has a load(spec, settings, notify) method, got {target!r}")
    _registered[name] = target


def unregister(name: str) -> None:
    """Remove a backend `register` added (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"the built-in backend {name!r} cannot be removed")
    _registered.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered backend name, the built-in ones first."""
    return tuple(_registered)


def is_added(name: str) -> bool:
    """Whether `name` is a backend `register` added (not a built-in one)."""
    return name in _registered and name not in BUILTIN


def loader(name: str) -> Loader:
    """The loader of backend `name`, importing its module now if it is given as "module:Class"."""
    target = _registered.get(name)
    if target is None:
        raise ModelLoadError(
            f"no backend named {name!r} (known: {', '.join(_registered)})",
            "use one of those, or register the backend before loading",
        )
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"cannot import the {name} backend ({target}: {exc})", "reinstall korani, or fix the registration"
        ) from None
