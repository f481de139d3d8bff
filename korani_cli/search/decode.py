"""Bytes of a web page → text, even when the page lies about its encoding.

Korean sites declare euc-kr and send UTF-8, or declare UTF-8 and send CP949.
Valid UTF-8 is a strong signal (Korean text in CP949 essentially never
decodes as UTF-8), so a strict UTF-8 decode is tried first; then the
declared charsets (HTTP header, then <meta>), strictly; then
charset-normalizer's detection. EUC-KR is read as CP949, its superset.

`decode_text` is the stricter rule for text that declares nothing (stdin):
UTF-8, else CP949 when it reads as Korean, else not text.
"""

from __future__ import annotations

import codecs
import re

_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.I)
_ALIASES = {
    "euc-kr": "cp949",
    "euckr": "cp949",
    "ks_c_5601-1987": "cp949",
    "ksc5601": "cp949",
    "x-windows-949": "cp949",
}


def _norm(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def meta_charset(data: bytes) -> str | None:
    match = _META.search(data[:8192])
    return _norm(match.group(1).decode("ascii", "ignore")) if match else None


def decode_html(data: bytes, http_charset: str | None = None) -> tuple[str, str]:
    """(text, encoding used)."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace"), "utf-8"
    tried = []
    for name in ("utf-8", _norm(http_charset), meta_charset(data)):
        if name and name not in tried:
            tried.append(name)
            try:
                return data.decode(name), name
            except (UnicodeDecodeError, LookupError):
                continue
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None:
        return str(best), best.encoding
    fallback = tried[1] if len(tried) > 1 else "utf-8"
    return data.decode(fallback, "replace"), fallback


# Text with no declaration at all (stdin): C0 controls other than these mean binary, not text.
_TEXT_CONTROLS = set("\t\n\r\f\v")


def _looks_like_text(text: str) -> bool:
    return not any(ch < " " and ch not in _TEXT_CONTROLS for ch in text) and "\x7f" not in text


def _mostly_hangul(text: str) -> bool:
    """Most of the non-ASCII characters are the Hangul syllables everyday Korean is written in
    (the 2,350 of KS X 1001, EUC-KR's own). Bytes in another encoding misread as CP949 land
    in its extension's rare syllables ("궇궋" from Shift-JIS kana), in Hanja or in symbols."""
    wide = [ch for ch in text if ord(ch) > 0x7F]
    return bool(wide) and sum(_common_hangul(ch) for ch in wide) >= 0.7 * len(wide)


def _common_hangul(ch: str) -> bool:
    if not "\uac00" <= ch <= "\ud7a3":
        return False
    # Python's euc_kr writes a syllable outside KS X 1001 as an 8-byte make-up sequence.
    try:
        return len(ch.encode("euc_kr")) == 2
    except UnicodeEncodeError:
        return False


def decode_text(data: bytes) -> tuple[str, str] | None:
    """Undeclared text (stdin) → (text, encoding), or None when it is neither UTF-8 nor Korean CP949.

    As for pages, valid UTF-8 first; then CP949 (EUC-KR's superset, what a Korean Windows
    saves) when the result reads as Korean text. No detection beyond that: with no
    declaration and often a few bytes, charset-normalizer reads a stray UTF-8 fragment as
    Cyrillic, Latin-1 as Central European — a wrong guess in the prompt is worse than
    asking for `iconv`."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp949")
    except UnicodeDecodeError:
        return None
    return (text, "cp949") if _looks_like_text(text) and _mostly_hangul(text) else None
