"""stats.json → the tables `data prepare` and `data stats` print (pure: returns renderables)."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table


def summary(stats: dict) -> Group:
    parts = []
    inputs = Table(title="sources", title_justify="left", box=None, pad_edge=False)
    for col in ("source", "records in", "records out", "rejected", "truncated", "mix dropped"):
        inputs.add_column(col, justify="left" if col == "source" else "right")
    for name, info in stats["inputs"].items():
        inputs.add_row(name, f"{info['records_in']:,}", f"{info['records_out']:,}", f"{sum(info['rejects'].values()):,}",
                       f"{info['truncated']:,}", f"{info['mix_dropped']:,}")
    parts.append(inputs)

    if stats["rejects"]:
        rej = Table(title="rejected (see rejects.jsonl)", title_justify="left", box=None, pad_edge=False)
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        for reason, count in sorted(stats["rejects"].items(), key=lambda kv: -kv[1]):
            rej.add_row(escape(reason), f"{count:,}")
        parts.append(rej)

    cleaning = Table(title="cleaning rules applied", title_justify="left", box=None, pad_edge=False)
    cleaning.add_column("rule")
    cleaning.add_column("count", justify="right")
    for rule, count in stats["cleaning"].items():
        cleaning.add_row(rule, f"{count:,}")
    parts.append(cleaning)

    splits = Table(title=f"splits (lengths by {escape(stats['length_measure'])})", title_justify="left", box=None, pad_edge=False)
    for col in ("split", "conversations", "exchanges 1/2/3+", "p50", "p90", "p99", "max", "tokens"):
        splits.add_column(col, justify="left" if col == "split" else "right")
    for name, info in stats["splits"].items():
        ex = info["exchanges"]
        three = sum(v for k, v in ex.items() if int(k) >= 3)
        t = info["tokens"]
        splits.add_row(name, f"{info['conversations']:,}", f"{ex.get('1', 0)}/{ex.get('2', 0)}/{three}",
                       *(f"{t.get(k, 0):,}" for k in ("p50", "p90", "p99", "max", "total")))
    parts.append(splits)
    return Group(*parts)
