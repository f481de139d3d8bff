"""Text that came from outside (web pages, search results, local files, servers).

Such text is data, never terminal input: a page `<title>` holding
`ESC ] 0 ; … BEL` would retitle the user's terminal, `ESC [ 2 J` clear it.
rich's markup escaping does not touch those bytes, so every piece of untrusted
text goes through `clean` before it is stored, printed or put in a prompt.
This module knows nothing about where the text came from.

Invisible formatting characters go too. Bidi controls (U+202A–U+202E,
U+2066–U+2069, U+200E/U+200F, U+061C) reorder what the terminal draws: a
right-to-left override makes `moc.elgoog//:sptth` read as another URL, or
hides the end of a line behind its start. Zero-width characters (U+200B,
U+2060, U+FEFF) make two strings that look the same differ, or split a word
so a search misses it. Korean never needs any of them. U+200C (ZWNJ) and
U+200D (ZWJ) stay: they change how neighbouring characters join — ZWJ builds
emoji sequences (👨‍👩‍👧 would fall apart into three faces), ZWNJ spells Persian
and Indic words correctly — and neither reorders or hides text.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 range (U+0080–U+009F,
# where a lone U+009B is an 8-bit CSI that some terminals obey); bidi controls
# and zero-width characters other than ZWNJ/ZWJ (see the module's docstring).
_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)
_NEWLINES = re.compile(r"\r\n?")
# Lone surrogates: what a file name that is not UTF-8 decodes to. They cannot
# be written to a UTF-8 terminal or JSON, and Kiwi refuses them.
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """`text` with every control, bidi and zero-width character removed (ZWNJ and
    ZWJ kept); CR and CRLF become LF (a bare CR would let a line overwrite the
    one before it); a lone surrogate becomes U+FFFD."""
    if not text:
        return text
    return _CONTROLS.sub("", _NEWLINES.sub("\n", _SURROGATES.sub("\ufffd", text)))


def clean_line(text: str) -> str:
    """One line of untrusted text (a title, a URL, a server message): controls
    removed and any line breaks folded into single spaces."""
    return " ".join(clean(text).split())
