"""Typed values that leave the search stages: a skipped page is a `Skipped`, not a (url, reason) tuple,
and what it quotes from servers is one clean line (it is printed as a notice and written to --json)."""

from __future__ import annotations

import pytest

from korani_cli.search.types import Skipped

SKIPPED = [
    # id, url, reason → url, reason as stored
    ("plain", "https://a.example/x", "HTTP 404", "https://a.example/x", "HTTP 404"),
    (
        "escape-in-reason",
        "https://a.example/x",
        "HTTP 500 \x1b[2J\x1b]0;owned\x07",
        "https://a.example/x",
        "HTTP 500 [2J]0;owned",
    ),
    ("newline-in-reason", "https://a.example/x", "bad\r\nheader", "https://a.example/x", "bad header"),
    ("escape-in-url", "https://a.example/\x1b[31mred", "refused", "https://a.example/[31mred", "refused"),
    ("not-a-string", "https://a.example/x", 404, "https://a.example/x", "404"),
]


@pytest.mark.parametrize(
    "url, reason, want_url, want_reason", [r[1:] for r in SKIPPED], ids=[r[0] for r in SKIPPED]
)
def test_skipped_is_one_clean_line(url, reason, want_url, want_reason):
    skipped = Skipped(url, reason)
    assert (skipped.url, skipped.reason) == (want_url, want_reason)
    assert skipped.to_json() == {"url": want_url, "reason": want_reason}
