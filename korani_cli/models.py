"""Model specs → which backend loads what.

A spec is what the user types after `--model`:
  - an alias: `korani-5.8b` (default), `demo`, `demo-chat`;
  - `openai:<model>@<base-url>` (base URL may also come from settings);
  - a `.gguf` file → llamacpp;
  - a local directory (a full model, or a PEFT adapter whose
    adapter_config.json names its base) → hf;
  - anything else shaped like `org/name` → a Hugging Face Hub id → hf;
  - `NAME:SOURCE` where NAME is a backend added with
    `korani_cli.backends.registry.register` (the tests' `scripted` one).

`korani-5.8b` has two forms: the adapter on its base through transformers,
and the 4-bit GGUF `korani models pull` makes (korani_cli/pull.py). Without a
CUDA GPU a pulled GGUF is used, and the spec carries a notice saying so;
`--backend hf` / `llamacpp` (setting `backend`) picks one form outright.

`resolve` is cheap (no heavy imports, no network; torch only to confirm a GPU
the driver reports when a pulled GGUF could be used instead); `load_backend`
finds the spec's backend in the registry, which imports its module then.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from korani_cli import modelref
from korani_cli.backends import OFFLINE_FIX, Backend, ModelSpec, Notify, registry
from korani_cli.config import RULES, Invalid, Settings, check_value
from korani_cli.errors import ModelLoadError, UsageError
from korani_cli.pull import REFERENCE_ADAPTER, REFERENCE_BASE

ALIASES = {
    "korani-5.8b": f"adapter {REFERENCE_ADAPTER} on {REFERENCE_BASE} (hf backend)",
    "demo": "gemma-3-270m Q4_K_M from PyPI (llamacpp backend, offline, a base model)",
    "demo-chat": "SmolLM2-135M-Instruct Q4_1 from PyPI (llamacpp backend, offline)",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_adapter_base(directory: Path) -> str | None:
    config = directory / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        loaded = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config} ({exc})", "fix or re-save the adapter") from None
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{config} is not a JSON object", "fix or re-save the adapter")
    base = loaded.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ModelLoadError(
            f"{config} does not name its base model (base_model_name_or_path)",
            "add it, or pass the merged model directory instead",
        )
    modelref.check_base(base, str(config))
    return base


def resolve(spec: str, settings: Settings) -> ModelSpec:
    try:
        return _resolve(spec, settings)
    except OSError as exc:  # probing the spec as a path: a name too long, a loop of links, no permission
        shown = spec.strip()[:60] + ("…" if len(spec.strip()) > 60 else "")
        raise ModelLoadError(
            f"cannot use {shown!r} as a model path ({exc.strerror or exc})", OFFLINE_FIX
        ) from None


def _resolve(spec: str, settings: Settings) -> ModelSpec:
    spec = spec.strip()
    if not spec:
        raise UsageError("--model is empty", f"pass an alias ({', '.join(ALIASES)}), a path or a hub id")
    if spec == "korani-5.8b":
        return _reference(spec, settings.backend)
    resolved = _resolve_other(spec, settings)
    if settings.backend not in ("auto", resolved.backend):
        raise UsageError(
            f"--backend {settings.backend} cannot load {spec!r}, a {resolved.backend} model",
            "leave --backend out (it chooses between the forms of korani-5.8b) or pass another --model",
        )
    return resolved


def _resolve_other(spec: str, settings: Settings) -> ModelSpec:
    if spec == "demo":
        from korani_cli.demo_models import demo_gguf

        try:
            return ModelSpec(spec, "llamacpp", str(demo_gguf()))
        except OSError as exc:  # the cache directory cannot be created (read-only home)
            raise ModelLoadError(
                f"cannot assemble the demo model in korani's cache ({exc.strerror}: {exc.filename})",
                "set KORANI_HOME to a writable directory",
            ) from None
    if spec == "demo-chat":
        from korani_cli.demo_models import demo_chat_gguf

        return ModelSpec(spec, "llamacpp", str(demo_chat_gguf()))
    if spec.startswith("openai:"):
        model, _, url = spec[len("openai:") :].partition("@")
        base_url = url or settings.openai_base_url
        if not base_url:
            raise UsageError(
                f"no server URL for {spec!r}",
                "write --model openai:MODEL@http://HOST:PORT/v1 or set KORANI_OPENAI_BASE_URL",
            )
        try:
            check_value(RULES["openai_base_url"], base_url)
        except Invalid as exc:
            raise UsageError(
                f"the server URL of {spec!r} must be {exc}, got {base_url!r}",
                "write --model openai:MODEL@http://HOST:PORT/v1",
            ) from None
        return ModelSpec(
            spec,
            "openai",
            model,
            base_url=base_url,
            api_key=settings.openai_api_key,
            notice=remote_notice(base_url),
        )
    name, sep, source = spec.partition(":")
    if sep and registry.is_added(name):
        return ModelSpec(spec, name, source)
    return _resolve_path(spec, settings)


def remote_notice(base_url: str) -> str | None:
    """The line said before korani connects to an OpenAI-compatible server that is not on this
    machine (a private address the user typed is their choice, but it should not be a surprise);
    None for loopback. Only scheme, host and port are shown: a URL's user:password stays out."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        address = None  # a name: where it leads is the resolver's business, and not known to be here
    if address is not None:
        mapped = getattr(address, "ipv4_mapped", None)
        if address.is_loopback or (mapped is not None and mapped.is_loopback):
            return None
    shown = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"connecting to {parts.scheme}://{shown}{port} (not this machine): your messages go to that server"


def cuda_available() -> bool:
    """Whether transformers would run on a CUDA GPU here. Cheap when the answer is
    no (CUDA_VISIBLE_DEVICES hides every GPU, or no NVIDIA driver is installed);
    a driver that is present is confirmed by torch, which the hf path needs anyway."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if "torch" not in sys.modules:
        import ctypes.util

        if not Path("/proc/driver/nvidia/version").exists() and ctypes.util.find_library("cuda") is None:
            return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _reference(spec: str, backend: str) -> ModelSpec:
    """korani-5.8b: the pulled GGUF on a machine without CUDA (or with --backend llamacpp), else the
    adapter."""
    hf = ModelSpec(spec, "hf", REFERENCE_ADAPTER, base=REFERENCE_BASE)
    if backend == "hf":
        return hf
    from korani_cli.pull import newest_pulled

    pulled = newest_pulled(spec)
    if backend == "llamacpp":
        if pulled is None:
            raise ModelLoadError(
                f"{spec} has not been pulled as a GGUF file",
                f"run `korani models pull {spec}` first, or use --backend hf",
            )
        return ModelSpec(
            spec,
            "llamacpp",
            str(pulled.path),
            notice=f"using the pulled {pulled.quant} GGUF of {spec} ({pulled.path})",
        )
    if pulled is None or cuda_available():
        return hf
    return ModelSpec(
        spec,
        "llamacpp",
        str(pulled.path),
        notice=f"no CUDA GPU: using the pulled {pulled.quant} GGUF of {spec} ({pulled.path}); --backend hf "
        "for transformers",
    )


def _resolve_path(spec: str, settings: Settings) -> ModelSpec:
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory, not a GGUF file", "pass the .gguf file itself")
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}", "check the path")
        return ModelSpec(spec, "llamacpp", str(path.resolve()))
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise ModelLoadError(
                f"{path} holds no model (neither config.json nor adapter_config.json)",
                "pass a model directory (as korani train or merge write them), a .gguf file or a hub id",
            )
        return ModelSpec(spec, "hf", str(path.resolve()), base=_read_adapter_base(path))
    if path.exists():
        raise ModelLoadError(
            f"{path} is neither a .gguf file nor a model directory",
            "pass a .gguf file, a directory with config.json or adapter_config.json, or a hub id",
        )
    looks_like_path = spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
    # `runs/x` beside an existing ./runs is a local path that is missing, not a hub id.
    looks_like_path = looks_like_path or Path(spec.split("/", 1)[0]).expanduser().is_dir()
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"no such model file or directory: {spec} (the path does not exist{_nearby(path)})", OFFLINE_FIX
        )
    return ModelSpec(spec, "hf", spec)


def _nearby(path: Path) -> str:
    """What the missing path's directory does hold, to spot a typo."""
    parent = path.parent
    try:
        if str(parent) in ("", ".") or not parent.is_dir():
            return ""
        names = sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in parent.iterdir()
            if p.is_dir() or p.suffix.lower() == ".gguf"
        )
    except OSError:
        return ""
    if not names:
        return f"; {parent}/ holds no model"
    return f"; {parent}/ holds: {', '.join(names[:6])}{', …' if len(names) > 6 else ''}"


def load_backend(spec: ModelSpec, settings: Settings, notify: Notify = lambda _msg: None) -> Backend:
    """Load the model behind `spec` with its registered backend; raises ModelLoadError with the way
    forward."""
    loader = registry.loader(spec.backend)  # before the notice: an unknown backend has nothing to announce
    if spec.notice:
        notify(spec.notice)
    return loader.load(spec, settings, notify)
