"""`korani data prepare | stats | show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from korani_cli.console import err_console, korani_command, notice, out_console

app = typer.Typer(
    help="Build one clean, deduplicated, split training set from KoAlpaca and Korean ShareGPT.",
    no_args_is_help=True,
)

# Progress labels: `korani data` speaks English, like its help, errors and tables.
STAGES = {"read": "reading", "clean": "cleaning", "dedup": "deduplicating", "write": "writing"}


class RichProgress:
    """rich progress bars on stderr for the pipeline's stages."""

    def __init__(self, progress):
        self.progress = progress
        self.tasks = {}

    def start(self, stage, total):
        if stage == "read":
            self.tasks[stage] = self.progress.add_task(STAGES[stage], total=total, unit="bytes")
        else:
            self.tasks[stage] = self.progress.add_task(STAGES[stage], total=total)

    def advance(self, stage, amount=1):
        self.progress.advance(self.tasks[stage], amount)


def _progress_columns():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    class Amount(MofNCompleteColumn):
        def render(self, task):
            if task.fields.get("unit") == "bytes":
                return DownloadColumn().render(task)
            if task.total is None:
                return super().render(task).__class__(f"{int(task.completed):,}")
            return super().render(task)

    return [
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TaskProgressColumn(),
        Amount(),
        TimeElapsedColumn(),
    ]


@app.command("prepare")
@korani_command
def prepare_command(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output directory (train/valid/test.jsonl, rejects.jsonl, stats.json)."
        ),
    ],
    koalpaca: Annotated[
        Optional[list[str]],
        typer.Option(
            "--koalpaca",
            help="KoAlpaca v1.1a: a .json/.jsonl/.parquet file, a directory, or a hub id "
            "(beomi/KoAlpaca-v1.1a). Repeatable. [default: none]",
        ),
    ] = None,
    sharegpt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--sharegpt",
            help="DeepL-Korean ShareGPT: a file, directory or hub id (junelee/sharegpt_deepl_ko). "
            "Repeatable. [default: none]",
        ),
    ] = None,
    grounded: Annotated[
        Optional[list[str]],
        typer.Option(
            "--grounded",
            help="A SQuAD/KorQuAD-format JSON file: each question becomes a RAG conversation answered "
            "from numbered sources (its paragraph + hard negatives), the prompt exactly as served. "
            "Repeatable. [default: none]",
        ),
    ] = None,
    unanswerable: Annotated[
        float,
        typer.Option(
            "--unanswerable",
            help="Share of --grounded questions that lose their gold passage and are answered with the "
            "abstention.",
        ),
    ] = 0.1,
    negatives: Annotated[
        str,
        typer.Option(
            "--negatives",
            metavar="other-articles|retrieval",
            help="Where --grounded hard negatives come from: other articles only, or the best BM25 "
            "passages of the whole file (mostly the question's own article, as a search serves them).",
        ),
    ] = "other-articles",
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            "--tokenizer", help="Count lengths with this tokenizer (id or path). [default: characters / 1.5]"
        ),
    ] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens", help="Longest conversation kept; longer ones lose their last exchanges."
        ),
    ] = 1024,
    valid: Annotated[float, typer.Option("--valid", help="Fraction of conversations for validation.")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction of conversations for test.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split and the mix.")] = 42,
    mix: Annotated[
        Optional[str],
        typer.Option(
            "--mix",
            help="Source weights, e.g. koalpaca=1.0,sharegpt=0.5,grounded=2 (<1 subsamples; >1 repeats in "
            "train only; "
            "at most 100). [default: 1.0 for every source]",
        ),
    ] = None,
    near_dup_threshold: Annotated[
        float,
        typer.Option(
            "--near-dup-threshold",
            help="MinHash Jaccard similarity at which two conversations are near-duplicates.",
        ),
    ] = 0.8,
    no_near_dup: Annotated[bool, typer.Option("--no-near-dup", help="Remove exact duplicates only.")] = False,
    no_clean: Annotated[
        Optional[list[str]],
        typer.Option(
            "--no-clean",
            help="Switch a cleaning rule off (repeatable): nfc, crlf, deepl_prefix, trim, "
            "koalpaca_followups, drop_empty_turns, merge_same_role, drop_midway_system, "
            "drop_leading_assistant, unglue_answer, drop_trailing_user. [default: every rule on]",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an earlier output of `korani data prepare` (a directory korani did not write is "
            "never replaced).",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Stop at the first malformed or unreadable record (exit 6) instead of skipping and "
            "counting it.",
        ),
    ] = False,
) -> None:
    """Read, clean, deduplicate, length-filter and split into OUT_DIR/{train,valid,test}.jsonl."""
    from rich.progress import Progress

    from korani_cli.data.prepare import PrepareConfig, parse_mix, prepare
    from korani_cli.data.report import empty_split_warnings, summary

    config = PrepareConfig(
        out_dir=out_dir,
        koalpaca=tuple(koalpaca or ()),
        sharegpt=tuple(sharegpt or ()),
        grounded=tuple(grounded or ()),
        unanswerable=unanswerable,
        negatives=negatives,
        tokenizer=tokenizer,
        max_tokens=max_tokens,
        valid=valid,
        test=test,
        seed=seed,
        mix=parse_mix(mix),
        overwrite=overwrite,
        strict=strict,
        disabled_rules=frozenset(no_clean or ()),
        near_dup=not no_near_dup,
        near_dup_threshold=near_dup_threshold,
    )
    console = err_console()
    # Bars only on a terminal: in a log or a pipe the final refresh would leave
    # an empty line before the one-line error or the summary.
    with Progress(
        *_progress_columns(), console=console, transient=True, disable=not console.is_terminal
    ) as bars:
        stats = prepare(config, RichProgress(bars))
    console.print(summary(stats))
    for warning in empty_split_warnings(stats):
        notice(warning)
    console.print(
        f"wrote {escape(str(out_dir))}/{{train,valid,test}}.jsonl, rejects.jsonl, stats.json", markup=True
    )


@app.command("stats")
@korani_command
def stats_command(
    out_dir: Annotated[Path, typer.Argument(help="A directory written by `korani data prepare`.")],
) -> None:
    """Print the summary of a prepared data set again."""
    from korani_cli.data.report import load_stats, summary

    out_console(highlight=True).print(summary(load_stats(out_dir / "stats.json")))


@app.command("show")
@korani_command
def show_command(
    out_dir: Annotated[Path, typer.Argument(help="A directory written by `korani data prepare`.")],
    split: Annotated[str, typer.Option("--split", help="train, valid or test.")] = "train",
    index: Annotated[
        Optional[int],
        typer.Option("--index", help="Show the conversation at this index. [default: 0, the first]"),
    ] = None,
    random_k: Annotated[
        Optional[int],
        typer.Option(
            "--random", min=1, help="Show K random conversations instead of one by index. [default: off]"
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --random.")] = 0,
) -> None:
    """Show examples exactly as training renders them; green text carries loss (assistant turns + EOS)."""
    from korani_cli.data.report import load_stats
    from korani_cli.data.show import load_example_lines, pick, render_example
    from korani_cli.data.sources import DataInputError
    from korani_cli.errors import UsageError
    from korani_cli.template import DEFAULT_EOS, TemplateError

    if split not in ("train", "valid", "test"):
        raise UsageError(f"unknown split '{split}'", "use --split train, valid or test")
    if index is not None and random_k is not None:
        raise UsageError("--index and --random exclude each other", "pass one of them")
    eos = DEFAULT_EOS
    stats_path = out_dir / "stats.json"
    if stats_path.exists():
        eos = load_stats(stats_path).get("eos_token", eos)
        if not isinstance(eos, str):
            raise DataInputError(
                f"{stats_path}: 'eos_token' must be a string",
                "re-run `korani data prepare -o DIR --overwrite`",
            )
    lines = load_example_lines(out_dir, split)
    console = out_console(highlight=True)
    chosen = pick(lines, index, random_k, seed, split)
    if not chosen:
        console.print(f"{split} is empty")
    for i, record in chosen:
        try:
            shown = render_example(record, eos, i, split)
        except TemplateError as exc:
            raise DataInputError(
                f"{split}.jsonl line {i + 1} cannot be rendered ({exc})",
                "re-run `korani data prepare -o DIR --overwrite`",
            ) from None
        console.print(shown)
