"""Examples as training will see them: rendered through the KoRani template,
with the characters that carry loss (assistant content + EOS) highlighted."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rich.console import Group
from rich.text import Text

from korani_cli import template as tpl
from korani_cli.data.sources import DataInputError

LOSS_STYLE = "bold green"
CONTEXT_STYLE = "dim"


def load_example_lines(out_dir: Path, split: str) -> list[str]:
    path = out_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DataInputError(f"{path} not found", "run `korani data prepare` first, or check --split")
    with path.open(encoding="utf-8") as fh:
        return fh.readlines()


def pick(lines: list[str], index: int | None, random_k: int | None, seed: int) -> list[tuple[int, dict]]:
    if not lines:
        return []
    if random_k:
        chosen = sorted(random.Random(seed).sample(range(len(lines)), min(random_k, len(lines))))
    else:
        i = index or 0
        if not 0 <= i < len(lines):
            raise DataInputError(f"--index {i} is out of range", f"this split has {len(lines)} conversations (0–{len(lines) - 1})")
        chosen = [i]
    return [(i, json.loads(lines[i])) for i in chosen]


def render_example(record: dict, eos: str, index: int, split: str) -> Group:
    messages = [tpl.Message(m["role"], m["content"]) for m in record["messages"]]
    text, spans = tpl.render_with_mask(messages, eos)
    # Context and learned text as separate segments: learned text must not inherit "dim".
    body, cursor = Text(), 0
    for start, end in spans:
        body.append(text[cursor:start], style=CONTEXT_STYLE)
        body.append(text[start:end], style=LOSS_STYLE)
        cursor = end
    body.append(text[cursor:], style=CONTEXT_STYLE)
    learned = sum(e - s for s, e in spans)
    header = Text.assemble(
        (f"{split}[{index}] ", "bold"), (f"{record['id']} ", "cyan"), (f"({record['source']}) ", ""),
        (f"{learned:,} of {len(text):,} characters carry loss", "green"),
    )
    return Group(header, body, Text(""))
