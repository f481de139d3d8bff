"""Examples as training will see them: rendered through the KoRani template,
with the characters that carry loss (assistant content + EOS) highlighted.

The split files are read as untrusted: a line that is not a conversation
korani wrote is a one-line data error naming the line, and control
characters are removed before anything reaches the terminal.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rich.console import Group
from rich.text import Text

from korani_cli.data.sources import DataInputError
from korani_cli.template import ROLES, Message, render_with_mask
from korani_cli.untrusted import clean

AGAIN = "re-run `korani data prepare -o DIR --overwrite`"

LOSS_STYLE = "bold green"
CONTEXT_STYLE = "dim"


def load_example_lines(out_dir: Path, split: str) -> list[str]:
    path = out_dir / f"{split}.jsonl"
    if path.exists() and not path.is_file():
        raise DataInputError(f"{path} is not a regular file", AGAIN)
    if not path.is_file():
        raise DataInputError(f"{path} not found", "run `korani data prepare` first, or check --split")
    try:
        with path.open("rb") as fh:
            return fh.readlines()
    except OSError as exc:
        raise DataInputError(f"cannot read {path} ({exc.strerror})", "check the file") from None


def parse_example(line: bytes, index: int, split: str) -> dict:
    """One line of a split file as a conversation record, or a DataInputError."""
    where = f"{split}.jsonl line {index + 1}"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{where} is not UTF-8 text (byte {exc.start})", AGAIN) from None
    except RecursionError:
        raise DataInputError(f"{where} is nested too deeply to be a conversation", AGAIN) from None
    except ValueError as exc:  # malformed or truncated JSON, an integer too long to convert
        raise DataInputError(
            f"{where} is not valid JSON ({str(exc).splitlines()[0]}; a truncated file?)", AGAIN
        ) from None
    problem = _record_problem(record)
    if problem:
        raise DataInputError(f"{where} is not a conversation korani wrote ({problem})", AGAIN)
    return record


def _record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "not an object"
    if not isinstance(record.get("id"), str) or not isinstance(record.get("source"), str):
        return "no string 'id' and 'source'"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no list of 'messages'"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"message {i} is not {{role: system|user|assistant, content: str}}"
    return None


def pick(
    lines: list[bytes], index: int | None, random_k: int | None, seed: int, split: str = "train"
) -> list[tuple[int, dict]]:
    if not lines:
        return []
    if random_k:
        chosen = sorted(random.Random(seed).sample(range(len(lines)), min(random_k, len(lines))))
    else:
        i = index or 0
        if not 0 <= i < len(lines):
            raise DataInputError(
                f"--index {i} is out of range",
                f"this split has {len(lines)} conversations (0–{len(lines) - 1})",
            )
        chosen = [i]
    return [(i, parse_example(lines[i], i, split)) for i in chosen]


def render_example(record: dict, eos: str, index: int, split: str) -> Group:
    messages = [Message(m["role"], clean(m["content"])) for m in record["messages"]]
    text, spans = render_with_mask(messages, clean(eos))
    # Context and learned text as separate segments: learned text must not inherit "dim".
    body, cursor = Text(), 0
    for start, end in spans:
        body.append(text[cursor:start], style=CONTEXT_STYLE)
        body.append(text[start:end], style=LOSS_STYLE)
        cursor = end
    body.append(text[cursor:], style=CONTEXT_STYLE)
    learned = sum(e - s for s, e in spans)
    header = Text.assemble(
        (f"{split}[{index}] ", "bold"),
        (f"{clean(record['id'])} ", "cyan"),
        (f"({clean(record['source'])}) ", ""),
        (f"{learned:,} of {len(text):,} characters carry loss", "green"),
    )
    return Group(header, body, Text(""))
