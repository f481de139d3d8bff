"""Bytes of a web page → text, even when the page lies about its encoding.

Korean sites declare euc-kr and send UTF-8, or declare UTF-8 and send CP949.
Valid UTF-8 is a strong signal (Korean text in CP949 essentially never
decodes as UTF-8), so a strict UTF-8 decode is tried first; then the
declared charsets (HTTP header, then <meta>), strictly; then
charset-normalizer's detection. EUC-KR is read as CP949, its superset.
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
