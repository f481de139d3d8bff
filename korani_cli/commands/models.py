"""`korani models`: what `--model` accepts, what a spec resolves to, and
`korani models pull` (a quantised GGUF of korani-5.8b for CPUs; see korani_cli/pull.py).

`BackendOpt` is the `--backend` option that ask and chat share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from korani_cli.console import err_console, korani_command, out_console

app = typer.Typer(
    help="List model aliases and pulled models, pull korani-5.8b as a GGUF for CPUs, show what a --model "
    "spec resolves to.",
    no_args_is_help=True,
)

BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        help="For korani-5.8b: auto (the GGUF from `korani models pull` when there is no CUDA GPU, "
        "else transformers), hf (always transformers) or llamacpp (always the pulled GGUF); "
        "other models have one form. "
        "[default: the config file's backend, else auto]",
    ),
]


@app.command("list")
@korani_command
def list_models() -> None:
    """The aliases --model accepts, and the current default."""
    from korani_cli.config import load_settings
    from korani_cli.models import ALIASES
    from korani_cli.pull import pulled

    default = load_settings().model
    table = Table("alias", "what it is", "default", box=None)
    for alias, what in ALIASES.items():
        table.add_row(alias, escape(what), "✓" if alias == default else "")
    out_console().print(table)
    if default not in ALIASES:
        out_console().print(f"default: {escape(default)}")
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
        f"verified: {record.tokenizer_probes} Korean probes tokenised as the HF tokenizer does; "
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
