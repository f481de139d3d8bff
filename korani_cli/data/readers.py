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

Every format follows the same rules for what it cannot turn into a record
(each a Reject of kind "input", counted in stats.json; `--strict` stops):
  malformed_json   not JSON
  invalid_utf8     bytes that are not UTF-8 (never silently replaced by U+FFFD)
  too_deep         nested deeper than Python's JSON reader allows (~1,000 levels)
  huge_number      an integer longer than Python converts (4,300 digits)
  truncated_file   the file ends inside the array
  unreadable_file  a file that is not JSON, JSONL or readable Parquet
A file the operating system cannot read is not a Reject: `SourceReadError`
stops the run (a source that silently lost half its records would be worse).
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

from korani_cli.data.records import RawRecord, Reject

SUFFIXES = (".json", ".jsonl", ".parquet")
CHUNK = 4 << 20  # bytes read at a time
MAX_ELEMENT = 64 << 20  # an array element larger than this is treated as malformed
SMALL_OBJECT_FILE = 256 << 20  # a top-level JSON object is loaded whole only up to this size
_NEXT_ELEMENT = re.compile(r"\}\s*,\s*(\{)")
_WS = re.compile(r"\s*")
# Undecodable bytes, as the "surrogateescape" error handler leaves them: valid
# UTF-8 never decodes to these code points.
_RAW_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

OnBytes = Callable[[bytes], None]


class SourceReadError(Exception):
    """The operating system could not read a source file (EIO, a vanished file...)."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(f"{path}: {exc.strerror or exc}")
        self.path = path
        self.strerror = exc.strerror or str(exc)


def list_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [path]


def printable(text: str) -> str:
    """`text` with unpaired surrogates (undecodable bytes, escaped lone
    surrogates) shown as U+FFFD, so it can be written as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def _clip(value, limit: int = 2000):
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__} too deeply nested to show>"
    text = printable(text)
    return text if len(text) <= limit else text[:limit] + "…"


def decode_problem(exc: Exception) -> tuple[str, str]:
    """A JSON decoder's exception → (reason, detail) for a Reject."""
    if isinstance(exc, json.JSONDecodeError):
        return "malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "too_deep", "nested deeper than the JSON reader allows (about 1,000 levels)"
    if "integer string conversion" in str(exc):
        return "huge_number", f"an integer with more than {sys.get_int_max_str_digits():,} digits"
    return "malformed_json", str(exc)


def _bad(source: str, path: Path, where: str, reason: str, detail: str, record=None) -> Reject:
    return Reject(
        source, str(path), where, reason, detail, None if record is None else _clip(record), kind="input"
    )


def read_file(
    source: str, path: Path, on_bytes: OnBytes, record_keys: tuple[str, ...]
) -> Iterator[RawRecord | Reject]:
    """The records of one file, in order; raises SourceReadError if the file cannot be read."""
    try:
        yield from _read_any(source, path, on_bytes, record_keys)
    except OSError as exc:
        raise SourceReadError(path, exc) from None


def _read_any(
    source: str, path: Path, on_bytes: OnBytes, record_keys: tuple[str, ...]
) -> Iterator[RawRecord | Reject]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(source, path, on_bytes)
    elif suffix == ".parquet":
        yield from _read_parquet(source, path, on_bytes)
    elif suffix == ".json":
        yield from _read_json(source, path, on_bytes, record_keys)
    else:
        yield _bad(
            source,
            path,
            "file",
            "unsupported_file",
            f"unsupported file type '{path.suffix}' (use .json, .jsonl or .parquet)",
        )


def _read_jsonl(source: str, path: Path, on_bytes: OnBytes) -> Iterator[RawRecord | Reject]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            on_bytes(line)
            where = f"line {number}"
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield _bad(
                    source,
                    path,
                    where,
                    "invalid_utf8",
                    f"invalid UTF-8 at byte {exc.start}",
                    line.decode("utf-8", "replace"),
                )
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield _bad(
                    source,
                    path,
                    where,
                    "malformed_json",
                    f"{exc.msg} at column {exc.colno}",
                    text.rstrip("\n"),
                )
                continue
            except (RecursionError, ValueError) as exc:
                yield _bad(source, path, where, *decode_problem(exc), text.rstrip("\n"))
                continue
            yield RawRecord(source, str(path), where, value)


def _read_parquet(source: str, path: Path, on_bytes: OnBytes) -> Iterator[RawRecord | Reject]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield _bad(
            source, path, "file", "unreadable_file", "reading .parquet needs pyarrow (pip install pyarrow)"
        )
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
            try:
                items = parquet.read_row_group(group).to_pylist()
            except Exception as exc:  # a corrupt page, invalid UTF-8 in a string column
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the disk, not the format (pyarrow's own OSErrors carry no errno)
                yield _bad(
                    source,
                    path,
                    f"row group {group}",
                    "unreadable_file",
                    f"unreadable parquet row group ({exc})",
                )
                continue
            for item in items:
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
        # Undecodable bytes become lone surrogates, so each element that holds
        # one can be rejected (errors="replace" would hide them as U+FFFD).
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.dirty = False  # whether any undecodable byte has been seen
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
            self._add(self.decoder.decode(b"", final=True))
            return False
        self._add(self.decoder.decode(data))
        return True

    def _add(self, text: str) -> None:
        if not self.dirty and _RAW_BYTE.search(text):
            self.dirty = True
        self.text += text

    def raw_byte_at(self, start: int, end: int) -> int | None:
        """Where in text[start:end] an undecodable byte is, if any."""
        if not self.dirty:
            return None
        match = _RAW_BYTE.search(self.text, start, end)
        return None if match is None else match.start()

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
            self.text = self.text[self.pos :]
            self.pos = 0

    def line(self, pos: int | None = None) -> int:
        return self.lines_before + self.text.count("\n", 0, self.pos if pos is None else pos) + 1


def _read_json(
    source: str, path: Path, on_bytes: OnBytes, record_keys: tuple[str, ...]
) -> Iterator[RawRecord | Reject]:
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
            if buf.raw_byte_at(buf.pos, buf.pos + 1) is not None:
                yield _bad(
                    source,
                    path,
                    "line 1",
                    "invalid_utf8",
                    "the file does not start with UTF-8 text",
                    buf.text[buf.pos : buf.pos + 200],
                )
            else:
                yield _bad(
                    source,
                    path,
                    "line 1",
                    "malformed_json",
                    "not a JSON array or object (expected '[' or '{')",
                    buf.text[buf.pos : buf.pos + 200],
                )
            return
        buf.pos += 1
        yield from _read_array(source, path, buf, record_keys)


def _read_object_file(source, path: Path, buf: _Buffer, record_keys) -> Iterator[RawRecord | Reject]:
    """A JSON object holding the records in one list value (e.g. {"records": [...]})."""
    if path.stat().st_size > SMALL_OBJECT_FILE:
        yield _bad(
            source,
            path,
            "line 1",
            "unreadable_file",
            "a JSON object this large cannot be streamed; convert it to a JSON array or JSONL",
        )
        return
    while buf.fill():
        pass
    try:
        obj = json.loads(buf.text[buf.pos :])
    except json.JSONDecodeError as exc:
        yield _bad(source, path, f"line {exc.lineno}", "malformed_json", exc.msg)
        return
    except (RecursionError, ValueError) as exc:
        yield _bad(source, path, "line 1", *decode_problem(exc))
        return
    lists = [(k, v) for k, v in obj.items() if isinstance(v, list)]
    if any(k in obj for k in record_keys) or len(lists) != 1:
        # One record per file is still a record.
        yield _checked(source, path, "element 0", obj, buf.dirty)
        return
    key, items = lists[0]
    for index, item in enumerate(items):
        yield _checked(source, path, f"{key}[{index}]", item, buf.dirty)


def _checked(source: str, path: Path, where: str, value, dirty: bool) -> RawRecord | Reject:
    """A record of a whole-file object, unless it holds undecodable bytes."""
    if dirty:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (RecursionError, ValueError) as exc:
            return _bad(source, path, where, *decode_problem(exc))
        if _RAW_BYTE.search(text):
            return _bad(
                source, path, where, "invalid_utf8", "the record holds bytes that are not UTF-8", text
            )
    return RawRecord(source, str(path), where, value)


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
            yield _bad(source, path, where, "malformed_json", exc.msg, buf.text[start : start + 300])
            index += 1
            if not _resync(buf, decoder, record_keys):
                return
            continue
        except (RecursionError, ValueError) as exc:
            # Too deep or a too-long integer: more text would not help.
            where = f"element {index} (line {buf.line(start)})"
            yield _bad(source, path, where, *decode_problem(exc), buf.text[start : start + 300])
            index += 1
            if not _resync(buf, decoder, record_keys):
                return
            continue
        bad = buf.raw_byte_at(start, end)
        if bad is not None:
            where = f"element {index} (line {buf.line(bad)})"
            yield _bad(
                source,
                path,
                where,
                "invalid_utf8",
                "bytes that are not UTF-8 inside the element",
                buf.text[start:end],
            )
        else:
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
            yield _bad(
                source,
                path,
                f"after element {index - 1}",
                "truncated_file",
                "the file ends inside the array (an interrupted download?)",
            )
            return
        else:
            yield _bad(
                source,
                path,
                f"after element {index - 1} (line {buf.line()})",
                "malformed_json",
                f"expected ',' or ']' but found {nxt!r}",
            )
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
        except (RecursionError, ValueError):
            search = candidate + 1
            continue
        if isinstance(value, dict) and any(k in value for k in record_keys):
            buf.pos = candidate
            return True
        search = candidate + 1
