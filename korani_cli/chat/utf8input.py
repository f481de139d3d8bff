"""Bytes typed at the chat prompt that are not UTF-8, kept visible to the line editor.

GNU readline in a UTF-8 locale collects the bytes of a multibyte character
before it inserts it. An incomplete sequence followed by Enter (`a`, the lone
byte 0xE3, Enter) is dropped without a trace: the line arrives as `a` and is
answered, though the user typed something else — and line editors differ on
what the stray byte does to the next line (some swallow its first character).

`install` puts a small filter in front of readline's byte reader
(`rl_getc_function`): every byte sequence that is not UTF-8 becomes U+FFFD (�)
before readline sees it, so readline only ever edits valid text, the user sees
where the bad bytes were (and may delete them), and the chat, told by `take`
that the line held some, refuses it with one line instead of answering
something else. Characters arrive whole from a terminal (one write per key or
paste), so a sequence whose next byte does not come within WAIT_S is taken as
broken instead of waiting for it.

Only GNU readline has this hook in this form; with libedit (macOS) or without
readline `install` returns None and the editor behaves as it always did.
This module decides nothing about what the chat says; the REPL does.
"""

from __future__ import annotations

import select

WAIT_S = 0.05  # for the rest of a multibyte character: it comes in the same write as its first byte
REPLACEMENT = (0xEF, 0xBF, 0xBD)  # U+FFFD in UTF-8


def _lead(byte: int) -> tuple[int, int, int]:
    """For a byte that starts a UTF-8 sequence: (continuation bytes, lowest and highest allowed
    first continuation) — RFC 3629's table, which rules out overlong forms and surrogates.
    (0, 0, 0) for a byte that cannot start one."""
    if 0xC2 <= byte <= 0xDF:
        return 1, 0x80, 0xBF
    if byte == 0xE0:
        return 2, 0xA0, 0xBF
    if 0xE1 <= byte <= 0xEC or byte in (0xEE, 0xEF):
        return 2, 0x80, 0xBF
    if byte == 0xED:
        return 2, 0x80, 0x9F
    if byte == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= byte <= 0xF3:
        return 3, 0x80, 0xBF
    if byte == 0xF4:
        return 3, 0x80, 0x8F
    return 0, 0, 0


class Filter:
    """Turns the bytes `read` yields into valid UTF-8, U+FFFD for each broken sequence.

    `read()` gives the next byte (a negative number at the end of input) and `ready()`
    says whether another byte can be read at once; `push(byte)` hands readline what a
    call produced beyond its first byte."""

    def __init__(self, read, ready, push) -> None:
        self._read, self._ready, self._push = read, ready, push
        self.replaced = 0

    def next_key(self) -> int:
        out = self._decode(self._read())
        for byte in out[1:]:
            self._push(byte)
        return out[0]

    def _decode(self, byte: int) -> list[int]:
        out: list[int] = []
        while True:
            if byte < 0x80:  # ASCII, or the end of input
                if byte >= 0 or not out:
                    out.append(byte)
                return out
            need, low, high = _lead(byte)
            if not need:  # a stray continuation byte, or one that never occurs in UTF-8
                self.replaced += 1
                return out + list(REPLACEMENT)
            sequence, broke_at = [byte], None
            for i in range(need):
                if not self._ready():
                    broke_at = -1
                    break
                following = self._read()
                if not (low if i == 0 else 0x80) <= following <= (high if i == 0 else 0xBF):
                    broke_at = following
                    break
                sequence.append(following)
            if broke_at is None:
                return out + sequence
            self.replaced += 1
            out += REPLACEMENT
            if broke_at < 0:
                return out
            byte = broke_at  # the byte that broke the sequence starts the next one (Enter, a letter…)

    def take(self) -> int:
        """How many broken sequences were replaced since the last call."""
        count, self.replaced = self.replaced, 0
        return count


_installed: list = []  # (the ctypes callback, its Filter): the callback must outlive this call


def install(readline, fd: int) -> Filter | None:
    """Put a Filter in front of GNU readline's byte reader for terminal `fd` (once a process);
    None where that cannot be done (libedit, no ctypes, a readline without the hook)."""
    if _installed:
        return _installed[0][1]
    if "libedit" in (readline.__doc__ or ""):
        return None
    try:
        import ctypes

        lib = ctypes.CDLL(readline.__file__)  # the module's own readline library, found through it
        getc_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        slot = ctypes.c_void_p.in_dll(lib, "rl_getc_function")
        original = getc_type(slot.value or ctypes.cast(lib.rl_getc, ctypes.c_void_p).value)
        stuff = lib.rl_stuff_char
        stuff.argtypes, stuff.restype = [ctypes.c_int], ctypes.c_int
    except (ImportError, OSError, AttributeError, ValueError, TypeError):
        return None
    stream = [None]
    chosen = Filter(
        read=lambda: original(stream[0]),
        ready=lambda: bool(select.select([fd], [], [], WAIT_S)[0]),
        push=stuff,
    )

    def getc(file_pointer):
        stream[0] = file_pointer
        try:
            return chosen.next_key()
        except Exception:  # never let a bug here take the keyboard away: read as readline would
            return original(file_pointer)

    callback = getc_type(getc)
    _installed.append((callback, chosen))
    slot.value = ctypes.cast(callback, ctypes.c_void_p).value
    return chosen
