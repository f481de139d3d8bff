"""Page text → passages of roughly 300–600 characters on Korean sentence boundaries.

Sentences come from Kiwi's splitter (offline, loaded once per process).
Consecutive sentences are gathered until a passage reaches MIN_CHARS; a
sentence that would push it past MAX_CHARS starts the next one, which
repeats the previous passage's last sentence (the overlap) when that is
short. A single sentence longer than MAX_CHARS is cut.
"""

from __future__ import annotations

import re
from functools import lru_cache

from korani_cli.search.types import Page, Passage

MIN_CHARS, MAX_CHARS, OVERLAP_MAX = 300, 600, 160


@lru_cache(maxsize=1)
def kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def sentences(text: str) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        out += [s.text.strip() for s in kiwi().split_into_sents(paragraph) if s.text.strip()]
    return out


def split(text: str) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in sentences(text):
        while len(sentence) > MAX_CHARS:
            head, sentence = sentence[:MAX_CHARS], sentence[MAX_CHARS:]
            if current:
                chunks.append(" ".join(current))
                current, size = [], 0
            chunks.append(head)
        if current and size + len(sentence) + 1 > MAX_CHARS:
            chunks.append(" ".join(current))
            last = current[-1]
            current = [last] if len(last) <= OVERLAP_MAX else []
            size = sum(len(s) + 1 for s in current)
        current.append(sentence)
        size += len(sentence) + 1
        if size >= MIN_CHARS:
            chunks.append(" ".join(current))
            last = current[-1]
            current = [last] if len(last) <= OVERLAP_MAX and size - len(last) > 0 else []
            size = sum(len(s) + 1 for s in current)
    if current and (not chunks or " ".join(current) not in chunks[-1]):
        chunks.append(" ".join(current))
    return chunks


def passages(pages: list[Page]) -> list[Passage]:
    out = []
    for page in pages:
        for i, chunk in enumerate(split(page.text)):
            out.append(Passage(page.final_url, page.title, chunk, i))
    return out
