"""Page text → passages of roughly 300–600 characters on Korean sentence boundaries.

Sentences come from Kiwi's splitter (offline, loaded once per process). All
paragraphs of all pages go to Kiwi in one batch, which spreads them over its
worker threads and hands back each sentence's morphemes with it, so ranking
does not analyse the same text a second time.

Consecutive sentences are gathered until a passage reaches MIN_CHARS; a
sentence that would push it past MAX_CHARS starts the next one, which
repeats the previous passage's last sentence (the overlap) when that is
short. A single sentence longer than MAX_CHARS is cut.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from korani_cli.search.types import Page, Passage

MIN_CHARS, MAX_CHARS, OVERLAP_MAX = 300, 600, 160
# Content words only (nouns, verb and adjective stems, roots, foreign words,
# numbers, adverbs): "서울의" and "서울은" meet at "서울".
CONTENT_TAGS = ("NNG", "NNP", "NNB", "NR", "VV", "VA", "XR", "SL", "SN", "SH", "MAG")
_PARAGRAPH = re.compile(r"\n\s*\n")

_kiwi = None
_kiwi_lock = threading.Lock()


def kiwi():
    """The process's Kiwi; loading takes ~2 s, so `pipeline` starts it early in a thread."""
    global _kiwi
    with _kiwi_lock:
        if _kiwi is None:
            from kiwipiepy import Kiwi

            from korani_cli.search.workers import cores

            _kiwi = Kiwi(num_workers=max(1, min(cores(), 4)))
        return _kiwi


def content_terms(tokens) -> list[str]:
    return [t.form.lower() for t in tokens if t.tag.startswith(CONTENT_TAGS)]


@dataclass(frozen=True)
class Sentence:
    text: str
    terms: tuple | None  # None: not analysed (a piece of an over-long sentence)


def _paragraphs(text: str) -> list[str]:
    return [p for p in (" ".join(par.split()) for par in _PARAGRAPH.split(text)) if p]


def analyse(texts: list[str]) -> list[list[Sentence]]:
    """Each text → its sentences with their content terms, in one Kiwi batch."""
    owners, paragraphs = [], []
    for i, text in enumerate(texts):
        for paragraph in _paragraphs(text):
            owners.append(i)
            paragraphs.append(paragraph)
    out: list[list[Sentence]] = [[] for _ in texts]
    if not paragraphs:
        return out
    # Kiwi hands back a generator fed by its worker threads: drain it whole.
    analysed = list(kiwi().split_into_sents(paragraphs, return_tokens=True))
    for owner, sents in zip(owners, analysed):
        for s in sents:
            if s.text.strip():
                out[owner].append(Sentence(s.text.strip(), tuple(content_terms(s.tokens or ()))))
    return out


def group(sents: list[Sentence]) -> list[tuple[str, tuple | None]]:
    """Sentences → (passage text, its terms, or None when a piece was not analysed)."""
    chunks: list[tuple[str, tuple | None]] = []
    current: list[Sentence] = []
    size = 0

    def emit(items):
        terms = None if any(s.terms is None for s in items) else tuple(t for s in items for t in s.terms)
        chunks.append((" ".join(s.text for s in items), terms))

    for sentence in sents:
        while len(sentence.text) > MAX_CHARS:
            head = Sentence(sentence.text[:MAX_CHARS], None)
            sentence = Sentence(sentence.text[MAX_CHARS:], None)
            if current:
                emit(current)
                current, size = [], 0
            emit([head])
        if current and size + len(sentence.text) + 1 > MAX_CHARS:
            emit(current)
            last = current[-1]
            current = [last] if len(last.text) <= OVERLAP_MAX else []
            size = sum(len(s.text) + 1 for s in current)
        current.append(sentence)
        size += len(sentence.text) + 1
        if size >= MIN_CHARS:
            emit(current)
            last = current[-1]
            current = [last] if len(last.text) <= OVERLAP_MAX and size - len(last.text) > 0 else []
            size = sum(len(s.text) + 1 for s in current)
    if current and (not chunks or " ".join(s.text for s in current) not in chunks[-1][0]):
        emit(current)
    return chunks


def split(text: str) -> list[str]:
    return [chunk for chunk, _ in group(analyse([text])[0])]


def passages(pages: list[Page]) -> list[Passage]:
    out = []
    for page, sents in zip(pages, analyse([page.text for page in pages])):
        for i, (chunk, terms) in enumerate(group(sents)):
            out.append(Passage(page.final_url, page.title, chunk, i, terms))
    return out
