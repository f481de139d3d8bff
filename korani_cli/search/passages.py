"""Page text → passages of roughly 300–600 characters on Korean sentence boundaries.

Sentences come from Kiwi's splitter (offline, loaded once per process). All
paragraphs of all pages go to Kiwi in one batch, which spreads them over its
worker threads and hands back each sentence's morphemes with it, so ranking
does not analyse the same text a second time.

Consecutive sentences are gathered until a passage reaches MIN_CHARS; a
sentence that would push it past MAX_CHARS starts the next one, which
repeats the previous passage's last sentence (the overlap) when that is
short. A single sentence longer than MAX_CHARS is cut.

Kiwi's time grows faster than linearly with the length of a run without
whitespace (2 MB of one took minutes), and a page can hold anything. So
before analysis each page's text is cut at PAGE_CHARS, every run longer than
RUN_CHARS is broken with spaces, and no Kiwi input is longer than
PIECE_CHARS; `passages_within` also stops analysing pages at a deadline
(whatever is left is reported, not waited for).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from korani_cli.search.types import Page, Passage
from korani_cli.untrusted import clean

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
    terms: tuple | None  # None: not analysed
    # Where each term starts in `text`, so that a sentence cut in pieces
    # hands each piece its own terms instead of analysing it again.
    starts: tuple | None = None

    def cut(self, at: int) -> tuple[Sentence, Sentence]:
        if self.terms is None or self.starts is None:
            return Sentence(self.text[:at], None), Sentence(self.text[at:], None)
        head = [(t, s) for t, s in zip(self.terms, self.starts) if s < at]
        tail = [(t, s - at) for t, s in zip(self.terms, self.starts) if s >= at]
        return (
            Sentence(self.text[:at], tuple(t for t, _ in head), tuple(s for _, s in head)),
            Sentence(self.text[at:], tuple(t for t, _ in tail), tuple(s for _, s in tail)),
        )


def _sentence(s) -> Sentence:
    """A Kiwi sentence (token offsets count from its paragraph) → Sentence."""
    text = s.text.strip()
    base = s.start + (len(s.text) - len(s.text.lstrip()))
    tokens = [t for t in (s.tokens or ()) if t.tag.startswith(CONTENT_TAGS)]
    return Sentence(
        text, tuple(t.form.lower() for t in tokens), tuple(max(0, t.start - base) for t in tokens)
    )


PAGE_CHARS = 100_000  # of one page's text; a long encyclopedia article fits
RUN_CHARS = 64  # longer runs without whitespace are broken (no Korean word, few URLs, are longer)
PIECE_CHARS = 2_000  # one Kiwi input; a longer paragraph is cut at whitespace
_LONG_RUN = re.compile(r"\S{%d,}" % (RUN_CHARS + 1))


def _break_run(match: re.Match) -> str:
    run = match.group(0)
    return " ".join(run[i : i + RUN_CHARS] for i in range(0, len(run), RUN_CHARS))


def bounded(text: str, limit: int = PAGE_CHARS) -> str:
    """`text` cut at `limit` characters, cleaned (Kiwi refuses lone
    surrogates), with every over-long run broken: what Kiwi may be given.
    Splitting a run changes no real sentence."""
    return _LONG_RUN.sub(_break_run, clean(text[:limit]))


def _pieces(paragraph: str) -> list[str]:
    """A paragraph in inputs of at most PIECE_CHARS, cut at whitespace (runs are already short)."""
    out = []
    while len(paragraph) > PIECE_CHARS:
        cut = paragraph.rfind(" ", 0, PIECE_CHARS)
        cut = cut if cut > 0 else PIECE_CHARS
        out.append(paragraph[:cut])
        paragraph = paragraph[cut:].lstrip()
    if paragraph:
        out.append(paragraph)
    return out


def _paragraphs(text: str) -> list[str]:
    return [piece for par in _PARAGRAPH.split(bounded(text)) for piece in _pieces(" ".join(par.split()))]


def analyse(texts: list[str], deadline: float | None = None) -> list[list[Sentence]]:
    """Each text → its sentences with their content terms, in Kiwi batches.

    With a `deadline` (a time.monotonic() value) the clock is read before each
    text: those not yet begun when it has passed come back as None (the first
    is always analysed). Batches are bounded by the caps above, so the
    deadline holds whatever the texts hold."""
    import time

    out: list = [None] * len(texts)
    batch: list[int] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        for j, sents in zip(batch, _analyse_batch([texts[j] for j in batch])):
            out[j] = sents
        batch, size = [], 0

    for i, text in enumerate(texts):
        if deadline is not None and i and time.monotonic() > deadline:
            break
        batch.append(i)
        size += min(len(text), PAGE_CHARS)
        # Without a deadline, one batch (Kiwi spreads it over its threads);
        # with one, batches of about a quarter page, so that the clock is read.
        if deadline is not None and size >= PAGE_CHARS // 4:
            flush()
    if batch:
        flush()
    return out


def _analyse_batch(texts: list[str]) -> list[list[Sentence]]:
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
                out[owner].append(_sentence(s))
    return out


def group(sents: list[Sentence]) -> list[tuple[str, tuple | None]]:
    """Sentences → (passage text, its terms, or None when some sentence was not analysed)."""
    chunks: list[tuple[str, tuple | None]] = []
    current: list[Sentence] = []
    size = 0

    def emit(items):
        terms = None if any(s.terms is None for s in items) else tuple(t for s in items for t in s.terms)
        chunks.append((" ".join(s.text for s in items), terms))

    for sentence in sents:
        while len(sentence.text) > MAX_CHARS:
            head, sentence = sentence.cut(MAX_CHARS)
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
    return passages_within(pages)[0]


def passages_within(pages: list[Page], deadline: float | None = None) -> tuple[list[Passage], list[Page]]:
    """(passages, pages left unread because the deadline came first)."""
    out, late = [], []
    for page, sents in zip(pages, analyse([page.text for page in pages], deadline)):
        if sents is None:
            late.append(page)
            continue
        for i, (chunk, terms) in enumerate(group(sents)):
            out.append(Passage(page.final_url, page.title, chunk, i, terms))
    return out, late
