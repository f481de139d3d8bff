"""Text that came from outside (web pages, search results, local files, servers).

Such text is data, never terminal input: a page `<title>` holding
`ESC ] 0 ; … BEL` would retitle the user's terminal, `ESC [ 2 J` clear it.
rich's markup escaping does not touch those bytes, so every piece of untrusted
text goes through `clean` before it is stored, printed or put in a prompt.
This module knows nothing about where the text came from.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 range (U+0080–U+009F,
# where a lone U+009B is an 8-bit CSI that some terminals obey).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"\r\n?")
# Lone surrogates: what a file name that is not UTF-8 decodes to. They cannot
# be written to a UTF-8 terminal or JSON, and Kiwi refuses them.
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """`text` with every control character removed; CR and CRLF become LF
    (a bare CR would let a line overwrite the one before it); a lone
    surrogate becomes U+FFFD."""
    if not text:
        return text
    return _CONTROLS.sub("", _NEWLINES.sub("\n", _SURROGATES.sub("\ufffd", text)))


def clean_line(text: str) -> str:
    """One line of untrusted text (a title, a URL, a server message): controls
    removed and any line breaks folded into single spaces."""
    return " ".join(clean(text).split())
