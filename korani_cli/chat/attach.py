"""`/파일 PATH` in the chat: a file's text, to go before the next question (aichat's `.file`).

Only a regular file is read, and only up to `LIMIT` bytes: a directory, a FIFO, a device
(/dev/zero) or a socket is refused before a byte is read — the file is opened non-blocking and
checked with fstat, so a FIFO swapped in after a look cannot hang the chat — and so is a file
larger than the limit (a prompt has to fit a context window anyway), a binary file (NUL bytes)
and text that is neither UTF-8 nor Korean CP949 (read as `ask` reads piped text). Every refusal
is one `AttachError` whose what and fix the chat shows as one line. Nothing here prints.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from korani_cli.errors import UsageError

LIMIT = 100_000  # bytes: about 30,000 Korean characters, past most local models' context already


class AttachError(UsageError):
    """A file /파일 will not attach: what, and what to do (both Korean, as the chat speaks)."""


@dataclass(frozen=True)
class Attached:
    name: str  # as the user typed it
    text: str
    encoding: str  # utf-8, or cp949 when it was read as such


def _kind(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "디렉터리"
    if stat.S_ISFIFO(mode):
        return "FIFO(파이프)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "장치 파일"
    if stat.S_ISSOCK(mode):
        return "소켓"
    return None if stat.S_ISREG(mode) else "일반 파일이 아닌 것"


def read_attachment(arg: str) -> Attached:
    from korani_cli.search.decode import decode_text
    from korani_cli.untrusted import clean, clean_line

    if not arg:
        raise AttachError("붙일 파일을 적어 주세요", "예: /파일 notes.txt")
    shown = clean_line(arg)
    path = Path(arg).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise AttachError(f"파일이 없습니다: {shown}", "경로를 확인하세요") from None
    except IsADirectoryError:
        raise AttachError(f"{shown} 은(는) 디렉터리입니다", "디렉터리 안의 파일 하나를 주세요") from None
    except OSError as exc:
        raise AttachError(
            f"{shown} 을(를) 열 수 없습니다 ({exc.strerror or exc})", "권한과 경로를 확인하세요"
        ) from None
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is not None:
            raise AttachError(f"{shown} 은(는) {kind}입니다", "일반 텍스트 파일만 붙일 수 있습니다")
        if info.st_size > LIMIT:
            raise AttachError(
                f"{shown} 은(는) 너무 큽니다 ({info.st_size:,}바이트; 최대 {LIMIT:,}바이트)",
                "필요한 부분만 따로 저장해 붙이세요",
            )
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= LIMIT:  # a file that grows past the limit while read is refused too
            chunk = os.read(fd, LIMIT + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise AttachError(
            f"{shown} 을(를) 읽을 수 없습니다 ({exc.strerror or exc})", "파일을 확인하세요"
        ) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > LIMIT:
        raise AttachError(
            f"{shown} 은(는) 너무 큽니다 (최대 {LIMIT:,}바이트)", "필요한 부분만 따로 저장해 붙이세요"
        )
    if b"\0" in data:
        raise AttachError(f"{shown} 은(는) 바이너리 파일입니다", "텍스트 파일만 붙일 수 있습니다")
    decoded = decode_text(data)
    if decoded is None:
        raise AttachError(
            f"{shown} 은(는) UTF-8 텍스트가 아닙니다",
            "UTF-8로 바꿔서 붙이세요: iconv -f ENCODING -t UTF-8 FILE > FILE.txt",
        )
    text, encoding = decoded
    if not text.strip():
        raise AttachError(f"{shown} 은(는) 비어 있습니다", "내용이 있는 파일을 주세요")
    # A file can carry terminal control sequences; they mean nothing to the model.
    return Attached(shown, clean(text.removeprefix("\ufeff")), encoding)
