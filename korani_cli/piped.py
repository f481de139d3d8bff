"""What `korani ask` reads on stdin: the question itself (`-`), or text to put before it.

Follows llm: when stdin is not a terminal and a question is given, the piped
text comes first and the question after it (`cat notes.txt | korani ask "요약해 줘"`).
An empty pipe — /dev/null in CI, pytest's CliRunner, `subprocess.run` with
nothing to send — leaves the question as it was; a closed descriptor is no
stdin at all. Text in CP949 (EUC-KR, what a Korean Windows saves) is read as
`--local-dir` reads such a file, with a note; other encodings and binary
input are refused (exit 2). More than `LIMIT` bytes is cut
there, at a character boundary, and a notice says so: the prompt still has to
fit the model's context window, which `ask` checks (exit 4), but a runaway
pipe (`yes | korani ask …`) must not fill the memory first.

This module knows nothing of models or prompts; it returns text or raises.
"""

from __future__ import annotations

import os
import select
import stat
import sys
from typing import BinaryIO, Callable

from korani_cli.errors import UsageError

LIMIT = 1 << 20  # bytes of stdin korani reads: far beyond any context window, far below any memory limit
WAIT_NOTICE_S = 2.0  # an open pipe with nothing in it this long gets one line saying korani is waiting


def attached() -> bool:
    """True when stdin can carry text to read: open and not a terminal."""
    return sys.stdin is not None and not sys.stdin.isatty()


def _wait_notice(stream: BinaryIO, notify: Callable[[str], None], waiting: str) -> None:
    """Say once that korani is waiting, when a pipe stays open and empty (an `ssh` or a
    parent process that never closes it); a file or /dev/null is never waited on."""
    try:
        fd = stream.fileno()
        if not (stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)):
            return
        ready, _, _ = select.select([fd], [], [], WAIT_NOTICE_S)
    except (
        OSError,
        ValueError,
        AttributeError,
    ):  # no descriptor (CliRunner's BytesIO), or select can't watch it
        return
    if not ready:
        notify(waiting)


def read(notify: Callable[[str], None], *, waiting: str, what: str = "stdin", fix: str) -> str:
    """Stdin as text (a leading BOM dropped), at most LIMIT bytes of it.

    `fix` is the way out named when stdin is not UTF-8 text."""
    stream = sys.stdin.buffer
    _wait_notice(stream, notify, waiting)
    data = stream.read(LIMIT + 1)  # blocks until EOF or one byte past the limit
    cut = len(data) > LIMIT
    if cut:
        data = data[:LIMIT]
    try:
        text = data.decode("utf-8-sig")  # a BOM from a Windows editor is not part of the text
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            text = data[: exc.start].decode("utf-8-sig")  # the cut fell inside a character
        else:
            text = _legacy(data, cut, notify, what)
            if text is None:
                raise UsageError(
                    f"{what} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})", fix
                ) from None
    if cut:
        notify(
            f"{what} holds more than {LIMIT // (1 << 20)} MiB; "
            f"only its first {LIMIT // (1 << 20)} MiB is used "
            "(pipe less, e.g. head -c 100000 FILE | korani ask …)"
        )
    return text


def _legacy(data: bytes, cut: bool, notify: Callable[[str], None], what: str) -> str | None:
    """Text that is not UTF-8 but Korean CP949 (EUC-KR), decoded as `--local-dir` decodes a file
    (korani_cli.search.decode), with a note saying so; None when it is neither."""
    from korani_cli.search.decode import decode_text

    # A cut can fall inside a two-byte CP949 character too.
    decoded = decode_text(data) or (decode_text(data[:-1]) if cut else None)
    if decoded is None:
        return None
    text, encoding = decoded
    notify(
        f"{what} is not UTF-8; it was read as {encoding.upper()} (EUC-KR) — if that is wrong, convert it "
        "first: iconv -f ENCODING -t UTF-8"
    )
    return text.removeprefix("\ufeff")
