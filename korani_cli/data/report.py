"""stats.json → the tables `data prepare` and `data stats` print (pure: returns renderables).

`load_stats` reads a stats.json back and checks it has the shape `summary`
needs, so a truncated or hand-edited file is a one-line data error, not a
crash halfway through a table.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from korani_cli.data.sources import DataInputError
from korani_cli.untrusted import clean_line


def _text(value: str) -> str:
    # Names come from a file: neither rich markup nor terminal control characters.
    return escape(clean_line(value))


def summary(stats: dict) -> Group:
    parts = []
    inputs = Table(title="sources", title_justify="left", box=None, pad_edge=False)
    for col in ("source", "records in", "records out", "rejected", "truncated", "mix dropped"):
        inputs.add_column(col, justify="left" if col == "source" else "right")
    for name, info in stats["inputs"].items():
        inputs.add_row(
            _text(name),
            f"{info['records_in']:,}",
            f"{info['records_out']:,}",
            f"{sum(info['rejects'].values()):,}",
            f"{info['truncated']:,}",
            f"{info['mix_dropped']:,}",
        )
    parts.append(inputs)

    if stats["rejects"]:
        rej = Table(title="rejected (see rejects.jsonl)", title_justify="left", box=None, pad_edge=False)
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        for reason, count in sorted(stats["rejects"].items(), key=lambda kv: -kv[1]):
            rej.add_row(_text(reason), f"{count:,}")
        parts.append(rej)

    cleaning = Table(title="cleaning rules applied", title_justify="left", box=None, pad_edge=False)
    cleaning.add_column("rule")
    cleaning.add_column("count", justify="right")
    for rule, count in stats["cleaning"].items():
        cleaning.add_row(_text(rule), f"{count:,}")
    parts.append(cleaning)

    splits = Table(
        title=f"splits (lengths by {_text(stats['length_measure'])})",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for col in ("split", "conversations", "exchanges 1/2/3+", "p50", "p90", "p99", "max", "tokens"):
        splits.add_column(col, justify="left" if col == "split" else "right")
    for name, info in stats["splits"].items():
        ex = info["exchanges"]
        three = sum(v for k, v in ex.items() if int(k) >= 3)
        t = info["tokens"]
        splits.add_row(
            _text(name),
            f"{info['conversations']:,}",
            f"{ex.get('1', 0)}/{ex.get('2', 0)}/{three}",
            *(f"{t.get(k, 0):,}" for k in ("p50", "p90", "p99", "max", "total")),
        )
    parts.append(splits)
    return Group(*parts)


class StatsFormatError(ValueError):
    """stats.json parsed as JSON but is not what `korani data prepare` writes."""


def _counts(value, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in value.items()):
        raise StatsFormatError(f"'{where}' must map names to counts")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(value, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise StatsFormatError(f"'{where}' must be an object of objects")
    return value


def check_stats(stats) -> dict:
    """`stats` if it has every field `summary` reads, with the right types."""
    if not isinstance(stats, dict):
        raise StatsFormatError("the top level must be an object")
    for key in ("inputs", "rejects", "cleaning", "splits", "length_measure"):
        if key not in stats:
            raise StatsFormatError(f"the field '{key}' is missing")
    if not isinstance(stats["length_measure"], str):
        raise StatsFormatError("'length_measure' must be a string")
    _counts(stats["rejects"], "rejects")
    _counts(stats["cleaning"], "cleaning")
    for name, info in _table(stats["inputs"], "inputs").items():
        for key in ("records_in", "records_out", "truncated", "mix_dropped"):
            if not _is_int(info.get(key)):
                raise StatsFormatError(f"'inputs.{name}.{key}' must be a count")
        _counts(info.get("rejects"), f"inputs.{name}.rejects")
    for name, info in _table(stats["splits"], "splits").items():
        if not _is_int(info.get("conversations")):
            raise StatsFormatError(f"'splits.{name}.conversations' must be a count")
        exchanges = _counts(info.get("exchanges"), f"splits.{name}.exchanges")
        if not all(k.isdigit() for k in exchanges):
            raise StatsFormatError(f"'splits.{name}.exchanges' must be keyed by numbers")
        tokens = info.get("tokens")
        if not isinstance(tokens, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in tokens.values()
        ):
            raise StatsFormatError(f"'splits.{name}.tokens' must map names to numbers")
    return stats


def load_stats(path: Path) -> dict:
    """stats.json read back, or a DataInputError that says what is wrong with it."""
    again = "re-run `korani data prepare -o DIR --overwrite`"
    if path.exists() and not path.is_dir() and not path.is_file():
        # A FIFO would block the read forever, a device never end.
        raise DataInputError(f"{path} is not a regular file", again)
    try:
        stats = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataInputError(
            f"{path} not found", "run `korani data prepare -o DIR` first, or check the directory"
        ) from None
    except IsADirectoryError:
        raise DataInputError(f"{path} is a directory, not korani's stats file", again) from None
    except NotADirectoryError:
        raise DataInputError(
            f"{path.parent} is not a directory", "give the directory `korani data prepare -o` wrote"
        ) from None
    except OSError as exc:
        raise DataInputError(f"cannot read {path} ({exc.strerror})", "check the file") from None
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{path} is not UTF-8 text (byte {exc.start})", again) from None
    except RecursionError:
        raise DataInputError(f"{path} is nested too deeply to be korani's stats file", again) from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise DataInputError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})", again) from None
    try:
        return check_stats(stats)
    except StatsFormatError as exc:
        raise DataInputError(f"{path} is not a stats file korani wrote: {exc}", again) from None


def empty_split_warnings(stats: dict) -> list[str]:
    """Why a split came out empty and what to pass instead (`data prepare` prints them as notes).

    Sizes are rounded (round(n × fraction)), so on small input a fraction below
    half a conversation gives none: 4 conversations × 0.1 is 0 valid, 0 test."""
    splits, params = stats.get("splits", {}), stats.get("params", {})
    total = sum(s.get("conversations", 0) for s in splits.values())
    if not total:
        return []
    notes = []
    for name in ("valid", "test"):
        fraction = params.get(name) or 0
        if fraction > 0 and splits.get(name, {}).get("conversations", 1) == 0:
            need = -(-100 // total) / 100  # 1/total, rounded up to a hundredth: one conversation at least
            notes.append(
                f"the {name} split is empty: {total} conversations × {fraction:g} rounds to 0 — "
                f"pass --{name} {need:g} (one conversation) or more, or give more data"
            )
    if splits.get("train", {}).get("conversations", 1) == 0:
        notes.append(
            f"the train split is empty: --valid and --test took all {total} conversations — "
            "pass smaller --valid/--test fractions, or give more data"
        )
    return notes
