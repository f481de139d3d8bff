"""`korani train RECIPE ...`, `korani train init`, `korani train merge`, `korani train export-gguf`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from korani_cli.console import err_console, korani_command, notice


class TrainGroup(TyperGroup):
    """`korani train CONFIG` means `korani train run CONFIG`; `--resume` takes an optional value."""

    def parse_args(self, ctx, args):
        args = list(args)
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args.insert(0, "run")
        if "--resume" in args:
            i = args.index("--resume")
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or not _names_checkpoint(following):
                args.insert(i + 1, "last")
        return super().parse_args(ctx, args)


def _names_checkpoint(arg: str) -> bool:
    """Whether the word after `--resume` is its CKPT value rather than the next
    argument: any path but a recipe (so that the run can say when it is no
    checkpoint), never an option or a key=value override."""
    if arg.startswith("-") or "=" in arg:
        return False
    path = Path(arg)
    if path.is_dir():
        return True
    from korani_cli.train.presets import preset_path

    return path.suffix.lower() not in (".yaml", ".yml") and preset_path(arg) is None


app = typer.Typer(
    cls=TrainGroup,
    help="QLoRA + DeepSpeed instruction tuning on the KoRani format.\n\nTrain: korani train RECIPE "
    "\\[--data DIR] \\[--output DIR] \\[--deepspeed NAME] \\[--resume \\[CKPT]] \\[--smoke] "
    "\\[key=value ...] (options: korani train run --help). RECIPE is a YAML file or a shipped preset "
    "name (korani-5.8b); korani train init writes a preset out for editing.",
    no_args_is_help=True,
)


class RichReporter:
    """rich progress on stderr: step, loss, eval loss."""

    def __init__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console(),
            transient=False,
        )
        self.task = None
        self.losses = {}

    def notice(self, message):
        if self.task is not None:
            self.progress.console.print(f"[dim]note:[/dim] {message}", markup=True, highlight=False)
        else:
            notice(message)

    def start(self, total_steps, first_step):
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, losses="")

    def step(self, step, logs):
        if "loss" in logs:
            self.losses["loss"] = logs["loss"]
        if "eval_loss" in logs:
            self.losses["eval"] = logs["eval_loss"]
        text = "  ".join(f"{k} {v:.4f}" for k, v in self.losses.items())
        if self.task is not None:
            self.progress.update(self.task, completed=step, losses=text)

    def finish(self):
        if self.task is not None:
            self.progress.stop()


@app.command("run")
@korani_command
def run_command(
    config: Annotated[
        Path,
        typer.Argument(
            help="A recipe YAML file, or the name of a shipped preset (korani-5.8b).", metavar="RECIPE"
        ),
    ],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="key=value overrides of recipe keys (see `korani train keys`).", show_default=False
        ),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data", help="Prepared data directory (overrides `data`). [default: the recipe's `data`]"
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Output directory (overrides `output`). [default: the recipe's `output`]"
        ),
    ] = None,
    deepspeed: Annotated[
        Optional[str],
        typer.Option(
            "--deepspeed",
            help="zero2, zero3, zero2_offload, zero3_offload or a JSON path. [default: the recipe's "
            "`deepspeed`, else none]",
        ),
    ] = None,
    resume: Annotated[
        Optional[str],
        typer.Option(
            "--resume",
            help="Continue from the last checkpoint in the output directory, or from CKPT. [default: start "
            "fresh]",
            metavar="[CKPT]",
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="A tiny random model of the same family, ~20 CPU steps: catch data/config mistakes in a "
            "minute.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in an output directory that holds an earlier korani train run (never other "
            "files).",
        ),
    ] = False,
) -> None:
    """Train a LoRA adapter (`korani train RECIPE` is short for `korani train run RECIPE`): \
korani train RECIPE [--data DIR] [--output DIR] [--deepspeed NAME] [--resume [CKPT]] [--smoke] \
[key=value ...]"""
    from korani_cli.errors import KoraniError
    from korani_cli.train.config import load_config, parse_overrides
    from korani_cli.train.dist import Ranks, recipe_failed_everywhere
    from korani_cli.train.run import run

    try:
        values = parse_overrides(overrides or [])
        for key, value in (("data", data), ("output", output), ("deepspeed", deepspeed)):
            if value is not None:
                values[key] = str(value)
        recipe = load_config(config, values)
    except KoraniError as exc:
        # Under a launcher every process reads the same recipe and fails the same way; the first one says so.
        ranks = Ranks.from_env()
        exc.quiet = not ranks.main
        if ranks.launched:
            recipe_failed_everywhere(ranks, exc)
        raise
    reporter = RichReporter()
    metadata = run(recipe, smoke=smoke, resume=resume, overwrite=overwrite, reporter=reporter)
    if metadata is None:
        return  # another process of a launched job reports
    _summary(metadata, recipe.output, smoke)


def _summary(metadata, out, smoke: bool) -> None:
    """What a finished run printed: steps and losses, the stopping health check, where it all is."""
    from korani_cli.train.health import EOS_WARNING

    console = err_console()
    first, last = metadata.train_loss_first, metadata.train_loss_last
    console.print(
        f"trained {metadata.steps} steps in {metadata.train_seconds} s; train loss {first:.4f} → {last:.4f}"
        if first is not None and last is not None
        else f"trained {metadata.steps} steps"
    )
    if metadata.eval_losses:
        console.print(
            f"eval loss {metadata.eval_losses[-1].eval_loss:.4f} (step {metadata.eval_losses[-1].step})"
        )
    elif metadata.eval_skipped:
        console.print(f"eval loss: skipped — {escape(metadata.eval_skipped)}", highlight=False)
    health = metadata.health
    if health:
        style = "bold red" if health.stops_too_rarely else "green"
        console.print(
            f"health: [{style}]{health.eos_share:.0%}[/{style}] of {health.prompts} held-out answers "
            f"({health.split or 'held-out'} split) ended with EOS; repetition {health.repetition:.3f}"
        )
        if health.stops_too_rarely:
            console.print(
                f"[bold red]WARNING: {EOS_WARNING} of answers end with EOS "
                "— the model may not have learned to stop"
                + (
                    f" (expected for a {metadata.steps}-step --smoke run)"
                    if smoke
                    else "; train longer or check the data"
                )
                + "[/bold red]"
            )
    elif metadata.health_skipped:
        console.print(f"health check: skipped — {escape(metadata.health_skipped)}", highlight=False)
    console.print(
        f"adapter, tokenizer, README.md (model card), korani_train.yaml and korani_metadata.json in {out}"
    )
    console.print(f'try it: korani ask --model {out} "질문"')


@app.command("init")
@korani_command
def init_command(
    name: Annotated[
        str, typer.Argument(help="The shipped preset to write out.", show_default=True)
    ] = "korani-5.8b",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="The recipe file to write (default: NAME.yaml here)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Write a shipped recipe preset to a YAML file for editing; train with korani train FILE."""
    from korani_cli.errors import ConfigError
    from korani_cli.outputs import save_user_file
    from korani_cli.train.presets import preset_path, presets_hint

    source = preset_path(name)
    if source is None:
        raise ConfigError(f"no shipped preset '{name}'", presets_hint())
    target = output if output is not None else Path(source.name)
    # The file itself, comments included: they explain the reference run's choices.
    written = save_user_file(target, source.read_text(encoding="utf-8"), overwrite=overwrite)
    err_console().print(f"wrote {target}" + (f" (→ {written})" if written != target else ""))
    err_console().print(f"edit it, then: korani train {target}")


@app.command("keys")
@korani_command
def keys_command() -> None:
    """Every recipe key with its default and meaning."""
    from korani_cli.train.config import describe

    typer.echo(describe())


@app.command("merge")
@korani_command
def merge_command(
    adapter: Annotated[Path, typer.Argument(help="A trained adapter directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the merged model.")],
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights dtype of the merged model: float16, bfloat16 or float32.")
    ] = "float16",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a directory an earlier `korani train merge` wrote (never other files).",
        ),
    ] = False,
) -> None:
    """Fold the LoRA weights into a full-precision copy of the base; loads with `korani ask --model DIR`."""
    from korani_cli.train.merge import merge

    with err_console().status("병합 중…"):
        merged = merge(adapter, output, dtype=dtype, overwrite=overwrite)
    err_console().print(f"merged {merged['adapter']} into {merged['base']} → {output} ({dtype})")


@app.command("export-gguf")
@korani_command
def export_gguf_command(
    model: Annotated[
        Path, typer.Argument(help="A merged model directory (korani train merge) or an adapter directory.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .gguf file to write.")],
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            help="f16, bf16, f32 (the converter), or q8_0, q5_k_m, q4_k_m (llama.cpp's quantiser on the f16 "
            "file; q4_k_m runs a 5.8B model in ~4 GB).",
        ),
    ] = "f16",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing GGUF file (never a file of another kind)."),
    ] = False,
) -> None:
    """Convert a merged model to GGUF for llama.cpp (`korani ask --model FILE.gguf`), optionally quantised."""
    from korani_cli.train.export import export_gguf

    with err_console().status(
        "GGUF 변환 중…" if outtype.lower() in ("f16", "bf16", "f32") else "GGUF 변환·양자화 중…"
    ):
        result = export_gguf(model, output, outtype=outtype, overwrite=overwrite)
    console = err_console()
    line = f"wrote {output}: {result.outtype}, {_size(result.size)}"
    if result.f16_size:
        line += f" ({result.size / result.f16_size:.2f}× the converter's f16 file, {_size(result.f16_size)})"
    console.print(line, highlight=False)
    if result.tensor_types:
        console.print(
            "tensors: " + ", ".join(f"{kind} {n}" for kind, n in result.tensor_types.items()), highlight=False
        )
    if result.fallbacks:
        moved = sum(f.count for f in result.fallbacks)
        detail = "; ".join(
            f"{f.count} with rows of {f.row_length} values → {f.stored_as}" for f in result.fallbacks
        )
        console.print(
            f"llama.cpp's k-quant fallback: {moved} of {result.matrices} matrices have rows that are not a "
            f"multiple of 256 and were stored in a legacy type ({detail})",
            highlight=False,
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
