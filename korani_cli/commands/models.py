"""`korani models`: what `--model` accepts, what a spec resolves to, and
`korani models pull` (a quantised GGUF of korani-5.8b for CPUs; see korani_cli/pull.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from korani_cli.commands.options import BackendOpt
from korani_cli.console import err_console, korani_command, notice, out_console
from korani_cli.errors import UsageError
from korani_cli.untrusted import clean_line

app = typer.Typer(
    help="List model aliases and pulled models, set the default model, pull korani-5.8b as a GGUF for "
    "CPUs, show what a --model spec resolves to.",
    no_args_is_help=True,
)


@app.command("list")
@korani_command
def list_models() -> None:
    """The aliases --model accepts, the current default model and where it is set, and the pulled GGUFs."""
    from korani_cli.config import explain_settings
    from korani_cli.models import ALIASES
    from korani_cli.pull import pulled

    settings, origin = explain_settings()
    default = settings.model
    table = Table("alias", "what it is", "default", box=None)
    for alias, what in ALIASES.items():
        table.add_row(alias, escape(what), "✓" if alias == default else "")
    out_console().print(table)
    out_console().print(
        f"default: {escape(clean_line(default))} ({escape(_origin(origin['model']))}; "
        "korani models default NAME changes it)",
        highlight=False,
        soft_wrap=True,
    )
    found = pulled()
    if not found:
        out_console().print(
            "pulled: none (korani models pull korani-5.8b makes a 4-bit GGUF for CPUs)", highlight=False
        )
        return
    table = Table("pulled", "quant", "size", "sha256", "file", box=None)
    for item in found:
        table.add_row(
            item.alias, item.quant, _size(item.size), item.provenance.sha256[:12], escape(str(item.path))
        )
    out_console().print(table)


@app.command("default")
@korani_command
def default_model(
    name: Annotated[
        Optional[str],
        typer.Argument(
            help="The model to use when --model is not given: an alias (korani-5.8b, demo, demo-chat), a "
            ".gguf file, a model directory, a hub id or openai:MODEL@URL. Without it: show the default "
            "and where it is set.",
            show_default=False,
        ),
    ] = None,
    unset: Annotated[
        bool,
        typer.Option("--unset", help="Remove the default from the config file: back to korani-5.8b."),
    ] = False,
) -> None:
    """Show or set the default model, as `llm models default` does. It is kept as `model` in the
    config file; the rest of the file (comments, other settings) is left exactly as it was.

    KORANI_MODEL and --model still win over it. A NAME that does not resolve is refused (exit 2);
    a config file that cannot be parsed, is read-only or is not a file is left alone (exit 5)."""
    from korani_cli import paths
    from korani_cli.config import DEFAULT_MODEL, explain_settings
    from korani_cli.config_edit import set_setting

    if name is not None and unset:
        raise UsageError("pass a model or --unset, not both", "korani models default NAME, or --unset")
    if name is None and not unset:
        settings, origin = explain_settings()
        out_console().print(
            escape(clean_line(settings.model)), highlight=False, soft_wrap=True
        )  # alone, for $(…)
        notice(f"{_origin(origin['model'])}; korani models default NAME changes it")
        return
    stored = None if unset else _default_candidate(name or "")
    edit = set_setting("model", stored)
    path = paths.config_file()
    console = err_console()
    if stored is None:
        said = f"removed model = {edit.before!r} from {path}" if edit.written else f"{path} sets none"
        console.print(f"default model: {DEFAULT_MODEL} (built-in); {escape(said)}", highlight=False)
    elif edit.written:
        console.print(
            f"default model: {escape(clean_line(stored))} (saved in {escape(str(path))})", highlight=False
        )
    else:
        console.print(
            f"default model: {escape(clean_line(stored))} (already so in {escape(str(path))})",
            highlight=False,
        )
    from_env = os.environ.get("KORANI_MODEL", "").strip()
    if from_env:
        notice(f"KORANI_MODEL={from_env} is set, and wins over the config file; unset it to use the default")


def _origin(origin: str) -> str:
    """Where the default model is set, in words."""
    if origin.startswith("config file "):
        return f"set in {origin}"
    if origin.startswith("KORANI_"):
        return f"set by {origin}, which wins over the config file"
    return "korani's built-in default"


def _default_candidate(name: str) -> str:
    """`name` as the config file should keep it, if it resolves to a model: an alias or id as
    typed, a local file or directory as an absolute path (so it means the same from any directory)."""
    import dataclasses

    from korani_cli.config import load_settings
    from korani_cli.errors import ModelLoadError
    from korani_cli.models import ALIASES, resolve

    name = name.strip()
    fix = (
        f"pass an alias ({', '.join(ALIASES)}), a .gguf file, a model directory, a hub id (org/name) or "
        "openai:MODEL@URL"
    )
    if not name:
        raise UsageError("the model name is empty", fix)
    if name in ALIASES:
        return name
    # The configured --backend chooses between korani-5.8b's forms; it must not refuse another model here.
    settings = dataclasses.replace(load_settings(), backend="auto")
    try:
        spec = resolve(name, settings)
    except (ModelLoadError, UsageError) as exc:
        raise UsageError(f"{name!r} cannot be the default model: {exc.what}", fix) from None
    local = Path(name).expanduser()
    if spec.backend in ("hf", "llamacpp") and local.exists():
        return str(local.resolve())
    return name


@app.command("pull")
@korani_command
def pull_model(
    alias: Annotated[str, typer.Argument(help="The model to pull: korani-5.8b.")],
    quant: Annotated[
        str, typer.Option("--quant", help="q4_k_m (about 4 GB for 5.8B), q5_k_m, q8_0 or f16.")
    ] = "q4_k_m",
    source: Annotated[
        Optional[Path],
        typer.Option(
            "--from",
            help="Take the adapter and base from this directory (DIR/ChaeMs/KoRani-5.8b, "
            "DIR/EleutherAI/polyglot-ko-5.8b) instead of the Hub. [default: the Hub]",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Make it again even when this quant is already pulled.")
    ] = False,
) -> None:
    """Download korani-5.8b (adapter and base), merge in float16, convert and quantise with llama.cpp,
    verify, and keep it in korani's cache; then `--model korani-5.8b` uses it on machines without CUDA.

    An interrupted pull leaves nothing that is used; run it again and the files already downloaded \
are kept."""
    from korani_cli.pull import pull

    console = err_console()
    with console.status("준비 중…", spinner="dots") as status:

        def step(message: str) -> None:
            console.print(f"[dim]•[/dim] {escape(message)}", highlight=False)
            status.update(escape(message) + "…")

        made, new = pull(alias, quant, source_dir=source, force=force, on_step=step)
    record = made.provenance
    if not new:
        console.print(
            f"{alias} {made.quant} is already pulled: {made.path} ({_size(made.size)}); --force makes it "
            "again",
            highlight=False,
        )
        return
    ratio = f", {made.size / record.f16_size:.2f}× f16" if record.f16_size else ""
    console.print(
        f"pulled {alias} {made.quant} → {made.path} ({_size(made.size)}{ratio}), sha256 {record.sha256}",
        highlight=False,
    )
    console.print(
        f"verified: {record.tokenizer_probes} probes (Korean, jamo, full-width, spaces, emoji, hanja, "
        f"U+0CF1, EOS text) tokenised as the HF tokenizer does; "
        f"greedy answer to {record.verify_question!r}: {record.verify_answer.strip()[:80]!r}",
        highlight=False,
    )


@app.command("resolve")
@korani_command
def resolve_model(
    spec: Annotated[
        Optional[str], typer.Argument(help="A --model value; default: the configured model.")
    ] = None,
    backend: BackendOpt = None,
) -> None:
    """Show which backend and files a --model value means, without loading it, and the generation
    settings it would run with (template, temperature, top_p, max_new_tokens) with where each comes
    from: a flag, an environment variable, the config file, the alias's own default or korani's."""
    from korani_cli.config import explain_settings
    from korani_cli.models import resolve

    settings, origin = explain_settings({"model": spec, "backend": backend})
    resolved = resolve(settings.model, settings)
    console = out_console()
    for key in ("name", "backend", "source", "base", "base_url", "notice"):
        value = getattr(resolved, key)
        if value:
            console.print(f"{key:14} {escape(str(value))}", highlight=False, soft_wrap=True)
    for key in GENERATION_KEYS:
        value = f"{getattr(settings, key):g}" if key == "temperature" else str(getattr(settings, key))
        console.print(f"{key:14} {value:8} ({escape(origin[key])})", highlight=False, soft_wrap=True)


GENERATION_KEYS = ("template", "temperature", "top_p", "max_new_tokens")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
