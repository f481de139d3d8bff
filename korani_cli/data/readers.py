"""Files → RawRecords, streamed, with bad lines and elements turned into Rejects.

Formats: a `.json` array (the 650 MB ShareGPT files: never loaded whole), a
`.json` object holding one list of records (small files only), `.jsonl`, and
`.parquet` (the hub's KoAlpaca). A directory means every such file in it,
sorted by name.

The JSON array reader decodes one element at a time with the C decoder
(`JSONDecoder.raw_decode`) over a sliding text buffer, so memory stays flat
whatever the file size. A malformed element is reported with its index and
line, then the reader resynchronises at the next `}, {` that opens a record
of the expected shape and goes on.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from korani_cli.data.records import RawRecord, Reject

SUFFIXES = (".json", ".jsonl", ".parquet")
CHUNK = 4 << 20  # bytes read at a time
MAX_ELEMENT = 64 << 20  # an array element larger than this is treated as malformed
SMALL_OBJECT_FILE = 256 << 20  # a top-level JSON object is loaded whole only up to this size
_NEXT_ELEMENT = re.compile(r"\}\s*,\s*(\{)")
_WS = re.compile(r"\s*")

OnBytes = Callable[[bytes], None]


def list_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [path]


def _clip(value, limit: int = 2000):
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _bad(source: str, path: Path, where: str, reason: str, detail: str, record=None) -> Reject:
    return Reject(source, str(path), where, reason, detail, None if record is None else _clip(record), kind="input")


def read_file(source: str, path: Path, on_bytes: OnBytes, record_keys: tuple[str, ...]) -> Iterator[RawRecord | Reject]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(source, path, on_bytes)
    elif suffix == ".parquet":
        yield from _read_parquet(source, path, on_bytes)
    elif suffix == ".json":
        yield from _read_json(source, path, on_bytes, record_keys)
    else:
        yield _bad(source, path, "file", "unsupported_file", f"unsupported file type '{path.suffix}' (use .json, .jsonl or .parquet)")


def _read_jsonl(source: str, path: Path, on_bytes: OnBytes) -> Iterator[RawRecord | Reject]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            on_bytes(line)
            where = f"line {number}"
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield _bad(source, path, where, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}", line.decode("utf-8", "replace"))
                continue
            if not text.strip():
                continue
            try:
                yield RawRecord(source, str(path), where, json.loads(text))
            except json.JSONDecodeError as exc:
                yield _bad(source, path, where, "malformed_json", f"{exc.msg} at column {exc.colno}", text.rstrip("\n"))


def _read_parquet(source: str, path: Path, on_bytes: OnBytes) -> Iterator[RawRecord | Reject]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield _bad(source, path, "file", "unreadable_file", "reading .parquet needs pyarrow (pip install pyarrow)")
        return
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        yield _bad(source, path, "file", "unreadable_file", f"unreadable parquet file ({exc})")
        return
    # Feed the progress/fingerprint with the file's bytes as row groups go by.
    size, done = path.stat().st_size, 0
    groups = max(parquet.num_row_groups, 1)
    row = 0
    with path.open("rb") as fh:
        for group in range(parquet.num_row_groups):
            for item in parquet.read_row_group(group).to_pylist():
                row += 1
                yield RawRecord(source, str(path), f"row {row}", item)
            chunk = fh.read(size // groups if group < groups - 1 else size - done)
            done += len(chunk)
            on_bytes(chunk)
        rest = fh.read()
        if rest:
            on_bytes(rest)


class _Buffer:
    """A sliding window of decoded text over a binary file."""

    def __init__(self, fh, on_bytes: OnBytes):
        self.fh = fh
        self.on_bytes = on_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0  # newlines in text already dropped from the window

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(CHUNK)
        self.on_bytes(data)
        if not data:
            self.eof = True
            self.text += self.decoder.decode(b"", final=True)
            return False
        self.text += self.decoder.decode(data)
        return True

    def ensure(self, n: int) -> bool:
        while len(self.text) - self.pos < n and self.fill():
            pass
        return len(self.text) - self.pos >= n

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at end of file)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""

    def compact(self) -> None:
        if self.pos > CHUNK:
            self.lines_before += self.text.count("\n", 0, self.pos)
            self.text = self.text[self.pos:]
            self.pos = 0

    def line(self, pos: int | None = None) -> int:
        return self.lines_before + self.text.count("\n", 0, self.pos if pos is None else pos) + 1


def _read_json(source: str, path: Path, on_bytes: OnBytes, record_keys: tuple[str, ...]) -> Iterator[RawRecord | Reject]:
    with path.open("rb") as fh:
        buf = _Buffer(fh, on_bytes)
        buf.ensure(1)
        if buf.text.startswith("\ufeff"):
            buf.pos = 1
        first = buf.skip_ws()
        if first == "{":
            yield from _read_object_file(source, path, buf, record_keys)
            return
        if first != "[":
            yield _bad(source, path, "line 1", "malformed_json", "not a JSON array or object (expected '[' or '{')", buf.text[buf.pos:buf.pos + 200])
            return
        buf.pos += 1
        yield from _read_array(source, path, buf, record_keys)


def _read_object_file(source, path: Path, buf: _Buffer, record_keys) -> Iterator[RawRecord | Reject]:
    """A JSON object holding the records in one list value (e.g. {"records": [...]})."""
    if path.stat().st_size > SMALL_OBJECT_FILE:
        yield _bad(source, path, "line 1", "unreadable_file", "a JSON object this large cannot be streamed; convert it to a JSON array or JSONL")
        return
    while buf.fill():
        pass
    try:
        obj = json.loads(buf.text[buf.pos:])
    except json.JSONDecodeError as exc:
        yield _bad(source, path, f"line {exc.lineno}", "malformed_json", exc.msg)
        return
    lists = [(k, v) for k, v in obj.items() if isinstance(v, list)]
    if any(k in obj for k in record_keys) or len(lists) != 1:
        # One record per file is still a record.
        yield RawRecord(source, str(path), "element 0", obj)
        return
    key, items = lists[0]
    for index, item in enumerate(items):
        yield RawRecord(source, str(path), f"{key}[{index}]", item)


def _read_array(source, path: Path, buf: _Buffer, record_keys) -> Iterator[RawRecord | Reject]:
    decoder = json.JSONDecoder()
    index = 0
    if buf.skip_ws() == "]":
        return
    while True:
        start = buf.pos
        try:
            value, end = decoder.raw_decode(buf.text, start)
        except json.JSONDecodeError as exc:
            # Incomplete (the element runs past the window) or malformed?
            if not buf.eof and len(buf.text) - start < MAX_ELEMENT:
                buf.fill()
                continue
            where = f"element {index} (line {buf.line(start)})"
            yield _bad(source, path, where, "malformed_json", exc.msg, buf.text[start:start + 300])
            index += 1
            if not _resync(buf, decoder, record_keys):
                return
            continue
        yield RawRecord(source, str(path), f"element {index}", value)
        index += 1
        buf.pos = end
        nxt = buf.skip_ws()
        if nxt == ",":
            buf.pos += 1
            buf.skip_ws()
            buf.compact()
        elif nxt == "]":
            return
        elif nxt == "":
            yield _bad(source, path, f"after element {index - 1}", "truncated_file", "the file ends inside the array (an interrupted download?)")
            return
        else:
            yield _bad(source, path, f"after element {index - 1} (line {buf.line()})", "malformed_json", f"expected ',' or ']' but found {nxt!r}")
            if not _resync(buf, decoder, record_keys):
                return


def _resync(buf: _Buffer, decoder: json.JSONDecoder, record_keys) -> bool:
    """Move to the next `{` after `},` that decodes to a record with an expected key."""
    search = buf.pos + 1
    while True:
        match = _NEXT_ELEMENT.search(buf.text, search)
        if match is None:
            if not buf.fill():
                return False
            continue
        candidate = match.start(1)
        try:
            value, _ = decoder.raw_decode(buf.text, candidate)
        except json.JSONDecodeError:
            if not buf.eof and len(buf.text) - candidate < MAX_ELEMENT and buf.fill():
                continue
            search = candidate + 1
            continue
        if isinstance(value, dict) and any(k in value for k in record_keys):
            buf.pos = candidate
            return True
        search = candidate + 1
