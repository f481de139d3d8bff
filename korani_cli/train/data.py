"""What training reads from a prepared data directory, checked before any work.

`korani data prepare` writes train/valid/test.jsonl, one conversation a line:
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}`.
A hand-edited, truncated or foreign file would otherwise surface as a
traceback deep inside tokenisation — or, for a conversation without an
assistant turn, as a NaN loss (no label to learn). `check_data` reads every
line of every split once, before a model is loaded, and names the first bad
line; the loaders below then trust what was checked.

What this module does not know: tokenizers, templates beyond the role names,
how the data was made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from korani_cli.errors import EXIT_DATA, KoraniError
from korani_cli.template import ROLES

SPLITS = ("train", "valid", "test")
FORMAT_HINT = (
    'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": '
    '"..."}]}'
)


class TrainDataError(KoraniError):
    exit_code = EXIT_DATA


def parse_line(line: str) -> list[dict]:
    """One conversation's messages, or ValueError saying what is wrong with the line."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ValueError(f"not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("no 'messages' list")
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        if message.get("role") not in ROLES:
            raise ValueError(
                f"message {i} has role {message.get('role')!r}; expected one of {', '.join(ROLES)}"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} has no text 'content'")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"message {i} holds an unpaired surrogate (\\ud800-style escape)") from None
    # Without an assistant turn every label is masked: the loss is 0/0 = NaN.
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn (nothing to learn)")
    return messages


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; invalid UTF-8 is a data error."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise TrainDataError(
            f"cannot read {path} ({exc.strerror})", "check the path and its permissions"
        ) from None
    with fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TrainDataError(
                    f"{path} line {number}: not UTF-8 text (byte {exc.start})",
                    "regenerate it with `korani data prepare -o DIR`",
                ) from None
            if text.strip():
                yield number, text


def conversations(path: Path) -> Iterator[list[dict]]:
    for number, text in _lines(path):
        try:
            yield parse_line(text)
        except ValueError as exc:
            raise TrainDataError(
                f"{path} line {number}: {exc}",
                f"regenerate it with `korani data prepare -o DIR`; {FORMAT_HINT}",
            ) from None


def check_data(data_dir: Path) -> dict[str, int]:
    """Conversations per split, after checking every line of every split."""
    train = data_dir / "train.jsonl"
    hint = "run `korani data prepare -o DIR` and pass --data DIR"
    if not data_dir.is_dir():
        raise TrainDataError(
            f"the data directory {data_dir} does not exist"
            if not data_dir.exists()
            else f"{data_dir} is not a directory",
            hint,
        )
    if not train.is_file():
        raise TrainDataError(f"no training data at {train}", hint)
    counts = {}
    for split in SPLITS:
        path = data_dir / f"{split}.jsonl"
        counts[split] = sum(1 for _ in conversations(path)) if path.is_file() else 0
    if counts["train"] == 0:
        raise TrainDataError(f"{train} holds no conversations", hint)
    return counts


def load_split(data_dir: Path, split: str):
    """A split as a `datasets.Dataset` of {"messages": [...]}, or None when absent or empty."""
    from datasets import Dataset

    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        return None
    rows = [{"messages": messages} for messages in conversations(path)]
    return Dataset.from_list(rows) if rows else None


def texts(path: Path, limit: int = 20000) -> list[str]:
    """The message texts of the first `limit` conversations (to train a --smoke tokenizer on)."""
    out = []
    for i, messages in enumerate(conversations(path)):
        if i >= limit:
            break
        out += [m["content"] for m in messages]
    return out
