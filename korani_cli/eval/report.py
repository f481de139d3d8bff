"""A run's summary as a table, and several runs side by side with deltas.

`load` reads RUN_DIR/summary.json into a `Summary` value (refusing directories
korani did not write and files it cannot read); `table` and `comparison` build
rich Tables — pure functions, the command prints them. Model text never
appears here, only names and numbers (escaped all the same).

Runs are compared only on the same questions: `common_ground` refuses runs on
different sets (another set_sha256 / prompts_sha256), and when runs on one set
hold different items (another --limit or --seed, a run not finished) it
recomputes each run's measures over the items they all share and says so.

Each measure is labelled with whose work it scores (`metrics.MEASURED_BY`):
retrieval, the model, or korani's footnote checker — `citation_*` score the
footnotes korani prints after its check, `raw_citation_*` the model's own.
`cut_note` is the one line to print when most answers hit the length limit;
`find_run` turns `last` or the start of a run's name into its directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from korani_cli.errors import UsageError, excerpt
from korani_cli.eval import EvalDataError
from korani_cli.eval.metrics import MEASURED_BY, labelled
from korani_cli.eval.run import SUMMARY, is_run_dir, read_items, read_marker
from korani_cli.untrusted import clean_line

# Shown as percentages; the rest are plain numbers.
RATIOS = {
    "retrieval_hit",
    "answer_in_context",
    "answer_correct",
    "f1",
    "citation_precision",
    "citation_recall",
    "raw_citation_precision",
    "raw_citation_recall",
    "abstain_correct",
    "false_abstain",
    "stop_rate",
    "repetition",
    "hangul_share",
    "header_leak",
}

# MEASURED_BY's labels as the table shows them.
BY_LABEL = {"retrieval": "retrieval", "model": "the model", "checker": "korani's check"}
CITATION_CAPTION = (
    "citation_*: the footnotes korani prints, after its check adds, moves and drops markers; "
    "raw_citation_*: the model's own [n] markers"
)


@dataclass(frozen=True)
class Measure:
    value: float | None
    count: int | None
    of: int
    p95: float | None = None


@dataclass(frozen=True)
class Summary:
    path: Path
    kind: str  # rag | chat
    model: str
    items: int
    complete: bool
    metrics: dict  # name → Measure, in the order written
    finish_reasons: dict  # reason → count
    first_token_p50: float | None
    total_p50: float | None
    raw: dict
    first_sentence_p50: float | None = (
        None  # rag: when the first checked sentence was shown  # the whole summary.json, for --json
    )


def load(path: Path) -> Summary:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory", "pass the -o directory of a `korani eval` run")
    if not is_run_dir(path):
        raise UsageError(
            f"{path} is not a run directory korani wrote", "pass the -o directory of a `korani eval` run"
        )
    command = read_marker(path).get("command", "")
    if not str(command).startswith("eval "):
        raise UsageError(
            f"{path} holds the output of `korani {command}`, not of an evaluation",
            "pass the -o directory of a `korani eval` run",
        )
    try:
        raw = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalDataError(
            f"{path} has no {SUMMARY} yet", "let the run finish, or rerun it with the same -o to resume"
        ) from None
    except OSError as exc:
        raise EvalDataError(
            f"cannot read {path / SUMMARY} ({exc.strerror})", "check its permissions"
        ) from None
    except (ValueError, RecursionError):
        # RecursionError: [[[[… thousands deep, which no summary korani writes is.
        raise EvalDataError(
            f"{path / SUMMARY} is not JSON korani wrote",
            "rerun the evaluation with the same -o to write it again",
        ) from None
    return parse(path, raw)


def parse(path: Path, raw: dict) -> Summary:
    """A summary object (as written to summary.json) → a Summary value."""
    try:
        metrics = {
            name: Measure(v.get("value"), v.get("count"), int(v.get("of") or 0), v.get("p95"))
            for name, v in raw["metrics"].items()
        }
        usage, timings = raw.get("usage") or {}, raw.get("timings") or {}
        return Summary(
            path,
            str(raw["kind"]),
            str((raw.get("model") or {}).get("name", "?")),
            int(raw["items"]),
            bool(raw.get("complete")),
            metrics,
            dict(usage.get("finish_reason") or {}),
            (timings.get("first_token_s") or {}).get("p50"),
            (timings.get("total_s") or {}).get("p50"),
            # Older runs' summaries lack "by": --json shows it for them too.
            {**raw, "metrics": labelled(raw["metrics"])},
            (timings.get("first_sentence_s") or {}).get("p50"),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EvalDataError(
            f"{path / SUMMARY} is not a summary korani wrote",
            "rerun the evaluation with the same -o to write it again",
        ) from None


def _value(name: str, measure: Measure | None) -> str:
    if measure is None or measure.value is None:
        return "—"
    if name in RATIOS:
        return f"{100 * measure.value:.1f}%"
    return f"{measure.value:.1f}"


def _counts(measure: Measure) -> str:
    if measure.count is not None:
        return f"{measure.count}/{measure.of}"
    extra = f", p95 {measure.p95:.0f}" if measure.p95 is not None else ""
    return f"n={measure.of}{extra}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}s"


def _by(name: str) -> str:
    return BY_LABEL.get(MEASURED_BY.get(name, ""), "")


def _caption(names) -> str | None:
    return escape(CITATION_CAPTION) if any(n.startswith("citation_") for n in names) else None


def table(summary: Summary) -> Table:
    state = "" if summary.complete else " (incomplete)"
    out = Table(
        title=escape(f"eval {summary.kind}: {summary.model} — {summary.items} items{state}"),
        caption=_caption(summary.metrics),
        caption_justify="left",
        box=None,
    )
    out.add_column("measure")
    out.add_column("scores")
    out.add_column("value", justify="right")
    out.add_column("counts", justify="right")
    for name, measure in summary.metrics.items():
        out.add_row(name, _by(name), _value(name, measure), _counts(measure))
    reasons = ", ".join(f"{k} {v}" for k, v in summary.finish_reasons.items())
    out.add_row("finish_reason", "", "", escape(reasons))
    # The timings' p50s are over the same items (eval.rag.timings): say how many.
    timed = ((summary.raw.get("timings") or {}).get("total_s") or {}).get("n")
    counted = f"n={timed}" if isinstance(timed, int) else ""
    out.add_row("first token p50", "", _seconds(summary.first_token_p50), counted)
    if summary.first_sentence_p50 is not None:
        out.add_row("first sentence p50", "", _seconds(summary.first_sentence_p50), counted)
    out.add_row("total p50", "", _seconds(summary.total_p50), counted)
    return out


def comparison(summaries: list[Summary]) -> Table:
    """Runs side by side; every run after the first also shows its delta to the first
    (`common_ground` decides what may stand side by side)."""
    base = summaries[0]
    names = list(dict.fromkeys(name for s in summaries for name in s.metrics))
    out = Table(
        title=f"eval {base.kind}: {len(summaries)} runs",
        caption=_caption(names),
        caption_justify="left",
        box=None,
    )
    out.add_column("measure")
    out.add_column("scores")
    for i, (s, label) in enumerate(zip(summaries, labels(summaries))):
        out.add_column(escape(f"{s.model}\n{label}"), justify="right")
        if i:
            out.add_column("Δ", justify="right")
    for name in names:
        row = [name, _by(name)]
        for i, s in enumerate(summaries):
            measure = s.metrics.get(name)
            row.append(_value(name, measure))
            if i:
                row.append(_delta(name, base.metrics.get(name), measure))
        out.add_row(*row)
    items = ["items", ""]
    for i, s in enumerate(summaries):
        items.append(str(s.items) + ("" if s.complete else "*"))
        if i:
            items.append("")
    out.add_row(*items)
    return out


def _delta(name: str, base: Measure | None, other: Measure | None) -> str:
    if base is None or other is None or base.value is None or other.value is None:
        return "—"
    diff = other.value - base.value
    return f"{100 * diff:+.1f}pt" if name in RATIOS else f"{diff:+.1f}"


# kind → (the settings key of the set's sha256, of its path, the flag that chose it)
SET_KEYS = {
    "rag": ("set_sha256", "set_path", "--set"),
    "chat": ("prompts_sha256", "prompts_path", "--prompts"),
}


def _settings(summary: Summary) -> dict:
    settings = summary.raw.get("settings")
    return settings if isinstance(settings, dict) else {}


def common_ground(summaries: list[Summary]) -> tuple[list[Summary], str | None]:
    """The summaries to compare, and a note when they are not the ones on disk.

    Runs on different sets are refused (their measures are over other questions). Runs on one
    set that hold different items are each measured again over the items all of them share
    (same id; for rag, equally answerable) — a Δ between 13 questions and 1 says nothing."""
    kinds = {s.kind for s in summaries}
    if len(kinds) > 1:
        raise UsageError(
            f"cannot compare runs of different kinds ({', '.join(sorted(kinds))})",
            "compare rag runs with rag runs, chat with chat",
        )
    sha_key, path_key, flag = SET_KEYS.get(summaries[0].kind, ("", "", "--set"))
    shas = {_settings(s).get(sha_key) for s in summaries} - {None}
    if len(shas) > 1:
        shown = "; ".join(
            f"{label}: {Path(str(_settings(s).get(path_key, '?'))).name} "
            f"(sha256 {str(_settings(s).get(sha_key, '?'))[:12]}…, {_count(s.items)})"
            for s, label in zip(summaries, labels(summaries))
        )
        raise UsageError(
            f"cannot compare runs on different sets ({excerpt(shown, 400)})",
            f"compare runs made with the same {flag}: these measured other questions",
        )
    records = [read_items(s.path) for s in summaries]
    keys = [{(i, r.get("unanswerable")) for i, r in recs.items()} for recs in records]
    if all(k == keys[0] for k in keys) and all(s.items == len(r) for s, r in zip(summaries, records)):
        return summaries, None
    common = set.intersection(*keys)
    counts = ", ".join(f"{label}: {len(r)}" for label, r in zip(labels(summaries), records))
    if not common:
        raise UsageError(
            f"the runs share no item ({counts} items)",
            "compare runs of the same set and seed; a longer --limit extends a shorter one",
        )
    ids = {i for i, _ in common}
    again = [_over(s, [r for i, r in recs.items() if i in ids]) for s, recs in zip(summaries, records)]
    return again, (
        f"compared on the {_count(len(ids))} all runs share ({counts}); "
        "each run's measures are recomputed over those"
    )


def labels(summaries: list[Summary]) -> list[str]:
    """What names each run in a comparison: its directory's name, or as much of its path as
    tells the runs apart (two runs both called `run`, under `before/` and `after/`)."""
    paths = [s.path.resolve() for s in summaries]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        tails = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in paths]


def _count(n: int) -> str:
    return f"{n} item{'' if n == 1 else 's'}"


def _over(summary: Summary, records: list[dict]) -> Summary:
    """`summary` with its measures recomputed over `records` (a subset of its items)."""
    from korani_cli.eval import chat, rag

    measure = {"rag": rag.summarise, "chat": chat.summarise}[summary.kind]
    try:
        again = measure(records)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EvalDataError(
            f"{summary.path / 'items.jsonl'} holds an item korani did not write",
            "rerun the evaluation with --overwrite",
        ) from None
    return parse(summary.path, {**summary.raw, **again})


CUT_SHARE = 0.5  # more than this share of answers cut by the length limit: the measures score torsos


def cut_note(summary: Summary) -> str | None:
    """One line when most answers ended at the token limit (finish_reason "length"): their
    measures score answers that were cut off, whatever the model would have said."""
    cut, total = summary.finish_reasons.get("length", 0), sum(summary.finish_reasons.values())
    if not total or cut <= CUT_SHARE * total:
        return None
    limit = _settings(summary).get("max_new_tokens")
    at = f" of {limit} tokens" if isinstance(limit, int) else ""
    return (
        f"{cut} of {total} answers ({100 * cut / total:.0f}%) were cut by the length limit{at}, so the "
        "measures score cut answers — rerun with a higher --max-new-tokens, or give the model a stop"
    )


def runs_dir() -> Path:
    """Where `korani eval` puts a run when -o is not given."""
    from korani_cli import paths

    return paths.data_dir() / "eval"


def find_run(arg: Path | str) -> Path:
    """The run directory the user means: a path as given (an existing one always wins); else `last`,
    the run under runs_dir() whose summary was written last; else the one run there whose name
    starts with `arg`, as `history show` takes a session id's first characters. Exit 2 for none
    or several (the candidates are listed)."""
    text = str(arg)
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or (os.altsep and os.altsep in text) or not text.strip():
        return path
    root = runs_dir()
    try:
        runs = sorted(d for d in root.iterdir() if d.is_dir() and is_run_dir(d))
    except OSError:  # no run yet (or an unreadable data directory): nothing to match
        runs = []
    shown = clean_line(text)[:60]
    if text == "last":
        if not runs:
            raise UsageError(
                f"there is no eval run under {root} yet",
                "run `korani eval rag` or `korani eval chat`, or pass a run directory",
            )
        return max(runs, key=_written)
    matches = [d for d in runs if d.name.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(
            f"{shown} is neither a directory nor the start of a run's name under {root}",
            f"pass a run directory (the -o of a `korani eval` run), `last`, or a name from `ls {root}`",
        )
    names = ", ".join(d.name for d in matches[:10]) + (", …" if len(matches) > 10 else "")
    raise UsageError(f"run name {shown} is ambiguous: {names}", "give more of its characters")


def _written(run: Path) -> tuple[float, str]:
    """When a run last wrote its summary (its directory's time before it has one); the name breaks ties."""
    for name in (SUMMARY, ""):
        try:
            return (run / name).stat().st_mtime, run.name
        except OSError:
            continue
    return 0.0, run.name
