"""The RAG answer core: ranked passages → prompt → a streamed answer whose footnotes can be trusted.

`stream(backend, question, ranked, params, ...)` is the one place a sourced
answer is made; `ask --search`, chat's /검색 and `korani eval rag` consume
its typed events and only decide how they look:

    Trimmed(dropped)         earlier exchanges left out to fit the context window
    Text(text)               answer text, checked, ready to show as is
    Sentence(text, marks)    a checked sentence (markers removed) and the footnotes it kept
    Footnotes(citations)     the cited sources, in footnote order
    Done(answer, raw, usage, timings)

The prompt is the template's RAG form: the passages (cut to the context
budget, search/budget.py) numbered [1]..[k] inside the user turn. The answer
is read as it streams (search/segment.py): prose sentences are checked as
soon as their end is known; Markdown structure, code blocks and white space
pass through exactly as written; lines echoing the prompt are dropped.

Every [n] marker is checked (rag/support.py): one that points at no
source is removed; one whose cited passage does not support its sentence
moves to the offered passage that supports it best, if one clears the bar,
and is dropped otherwise. A prose sentence that cites nothing gets the
source that supports it best, if any clears the bar (headings and table
rows get none). The prescribed abstention (template.ABSTAIN_ANSWER) cites
nothing: its markers are removed and none is added. Kept markers stay where
the model wrote them, renumbered in order of first citation; footnotes list
only sources that are cited. So no text is shown before its markers are
checked, and a terminal sees the answer sentence by sentence.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from korani_cli.backends import Backend, GenerationParams, Usage
from korani_cli.rag import support as sup
from korani_cli.rag.segment import Piece, Segmenter
from korani_cli.rag.segment import split as split_pieces
from korani_cli.search.types import Citation, Ranked
from korani_cli.template import ABSTAIN_ANSWER, RAG_INSTRUCTION, RAG_QUESTION_PREFIX, Message, Source, user
from korani_cli.untrusted import clean_line

MARKER = re.compile(r"[ \t]*\[(\d{1,2})\]")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
SUPPORT_THRESHOLD = sup.THRESHOLD  # weighted share of a sentence's content found in the passage
# The prescribed abstention (template.ABSTAIN_ANSWER) without its final period:
# a sentence saying the sources lack the answer cites none of them.
_ABSTAIN = ABSTAIN_ANSWER.rstrip(".")


@dataclass
class SourcedAnswer:
    text: str  # as shown: the model's Markdown with checked, renumbered [n] markers
    citations: list = field(default_factory=list)  # Citation, in footnote order
    sources: list = field(default_factory=list)  # every passage offered to the model: {n, url, title, score}
    # Each sentence as shown (without markers) with the footnote numbers it
    # kept, so a reader (korani eval) can judge footnotes sentence by sentence.
    claims: list = field(default_factory=list)  # (sentence, [n, ...])

    def footnotes(self) -> str:
        # Titles and URLs come from pages: one clean line each, whatever built them.
        return "\n".join(f"[{c.n}] {clean_line(c.title)} — {clean_line(c.url)}" for c in self.citations)


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trimmed:
    dropped: int  # earlier exchanges left out of the prompt
    context_length: int


@dataclass(frozen=True)
class Text:
    text: str  # checked; print as is


@dataclass(frozen=True)
class Sentence:
    text: str  # without markers
    marks: tuple  # footnote numbers kept, as shown


@dataclass(frozen=True)
class Footnotes:
    citations: tuple  # Citation, in footnote order


@dataclass(frozen=True)
class Timings:
    prepare_s: float  # context budget + prompt
    first_token_s: float | None  # generation start → first chunk from the model
    first_sentence_s: float | None  # generation start → first checked sentence handed out
    generate_s: float  # generation start → end
    verify_s: float  # time spent checking sentences, included in generate_s


@dataclass(frozen=True)
class Done:
    answer: SourcedAnswer
    raw: str  # what the model wrote
    usage: Usage
    timings: Timings
    passages: tuple  # Ranked, as offered (after the context budget)


Event = Trimmed | Text | Sentence | Footnotes | Done


# -- prompt -------------------------------------------------------------------------------


def messages(question: str, ranked: Sequence[Ranked], system: str | None = None, history=()) -> list[Message]:
    sources = [Source(r.passage.title or r.passage.url, r.passage.url, r.passage.text) for r in ranked]
    head = [Message("system", system)] if system else []
    return [*head, *history, user(question, sources)]


def echo_prefixes(ranked: Sequence[Ranked]) -> list[str]:
    """How a line repeating the prompt starts: the instruction's sentences, the question
    label, a source header. Such lines are never shown (segment.Segmenter)."""
    label = RAG_QUESTION_PREFIX.strip()
    instruction = [s[:12] for s in re.split(r"(?<=[.])\s+", RAG_INSTRUCTION) if s]
    headers = [f"[{n}] {r.passage.title or r.passage.url} (" for n, r in enumerate(ranked, 1)]
    return [label, label.replace(":", " :"), *instruction, *headers]


# -- the check ------------------------------------------------------------------------------


def _markers(text: str) -> list[re.Match]:
    """[n] markers outside `code spans` (a[1] in code is an index, not a footnote)."""
    spans = [m.span() for m in _CODE_SPAN.finditer(text)]
    return [m for m in MARKER.finditer(text) if not any(a <= m.start(1) < b for a, b in spans)]


def _unmarked(text: str) -> tuple[str, int | None, list[int]]:
    """(text without markers, where the first marker was, the numbers written)."""
    found = _markers(text)
    if not found:
        return text, None, []
    body, last, at = [], 0, None
    for m in found:
        body.append(text[last : m.start()])
        if at is None:
            at = sum(map(len, body))
        last = m.end()
    body.append(text[last:])
    return "".join(body), at, [int(m.group(1)) for m in found]


class Checker:
    """Checks an answer's sentences in order against the offered passages; keeps the numbering."""

    def __init__(self, ranked: Sequence[Ranked], threshold: float = SUPPORT_THRESHOLD):
        self.ranked = list(ranked)
        self.threshold = threshold
        self._evidence = None
        self.renumber: dict[int, int] = {}  # offered n → footnote n
        self.best: dict[int, float] = {}  # offered n → best support among the sentences citing it
        self.claims: list[tuple[str, list[int]]] = []
        self.seconds = 0.0

    def _support(self, body: str) -> dict[int, float]:
        if not self.ranked:
            return {}
        if self._evidence is None:
            # Passages mostly arrive with their terms from the passage stage.
            self._evidence = sup.evidence([r.passage for r in self.ranked])
        claim = sup.claims([body])[0]
        return dict(enumerate(sup.scores(claim, self._evidence), start=1))

    def check(self, piece: Piece) -> tuple[str, Sentence | None]:
        """(the piece as shown, the checked sentence); verbatim pieces pass unchanged."""
        if not piece.prose:
            return piece.text, None
        start = time.perf_counter()
        body, at, written = _unmarked(piece.text)
        if not body.strip():
            return "", None  # markers alone, cut off from their sentence
        if _ABSTAIN in body:
            # "The sources do not hold the answer" is supported by no source: no marker, kept or added.
            sentence = Sentence(body.strip(), ())
            self.claims.append((sentence.text, []))
            self.seconds += time.perf_counter() - start
            return body, sentence
        support = self._support(body)
        best = max(support, key=support.get) if support else None
        marks: list[int] = []
        scores: dict[int, float] = {}
        for n in dict.fromkeys(written):
            if n not in support:  # out of range: points at no source
                continue
            if support[n] < self.threshold:
                # The cited passage does not say this; the footnote moves to one that does.
                if best is None or support[best] < self.threshold:
                    continue
                n = best
            if n not in scores:
                marks.append(n)
                scores[n] = support[n]
        if not written and piece.kind == "sentence" and best is not None and support[best] >= self.threshold:
            marks, scores, at = [best], {best: support[best]}, len(body)
        numbers = []
        for n in marks:
            self.renumber.setdefault(n, len(self.renumber) + 1)
            self.best[n] = max(self.best.get(n, 0.0), scores[n])
            numbers.append(self.renumber[n])
        shown = body if at is None else body[:at] + "".join(f"[{k}]" for k in numbers) + body[at:]
        sentence = Sentence(body.strip(), tuple(numbers))
        self.claims.append((sentence.text, list(numbers)))
        self.seconds += time.perf_counter() - start
        return shown, sentence

    def citations(self) -> list[Citation]:
        out = []
        for old, new in sorted(self.renumber.items(), key=lambda kv: kv[1]):
            p = self.ranked[old - 1].passage
            out.append(Citation(new, p.url, p.title or p.url, p.text, round(self.best[old], 3)))
        return out

    def answer(self, text: str) -> SourcedAnswer:
        sources = [
            {"n": i, "url": r.passage.url, "title": r.passage.title, "score": round(r.score, 4)}
            for i, r in enumerate(self.ranked, 1)
        ]
        return SourcedAnswer(text, self.citations(), sources, list(self.claims))


def verify(answer: str, ranked: Sequence[Ranked], threshold: float = SUPPORT_THRESHOLD) -> SourcedAnswer:
    """A whole answer checked at once: the same result `stream` reaches piece by piece."""
    checker = Checker(ranked, threshold)
    shown = [checker.check(p)[0] for p in split_pieces(answer, echo_prefixes(ranked))]
    return checker.answer("".join(shown))


def written_claims(raw: str) -> list[tuple[str, list[int]]]:
    """The model's own sentences with the markers it wrote, before any check (korani eval's raw figures)."""
    out = []
    for piece in split_pieces(raw):
        if piece.prose:
            body, _, written = _unmarked(piece.text)
            if body.strip():
                out.append((body.strip(), list(dict.fromkeys(written))))
    return out


# -- the core -----------------------------------------------------------------------------


def stream(
    backend: Backend,
    question: str,
    ranked: Sequence[Ranked],
    params: GenerationParams,
    *,
    system: str | None = None,
    history: Sequence[Message] = (),
    context_tokens: int | None = None,
    threshold: float = SUPPORT_THRESHOLD,
) -> Iterator[Event]:
    """Answer `question` from `ranked`, yielding events as the answer is generated and checked.

    `context_tokens` caps the sources' share of the prompt (None: the model's default).
    Closing the generator stops generation; what was yielded stays valid."""
    from korani_cli import memory
    from korani_cli.rag import budget

    prepare = time.perf_counter()
    limit = backend.info.context_length
    tokens = (
        context_tokens if context_tokens is not None else budget.default_tokens(limit, params.max_new_tokens)
    )
    # Passages cut to their sentences most relevant to the question; footnotes are
    # checked against, and quote, exactly what the model was given.
    ranked = budget.fit(question, list(ranked), tokens, backend.count_tokens)
    prompt = messages(question, ranked, system, history)
    if history and limit:
        prompt, dropped = memory.fit(prompt, backend, params.max_new_tokens)
        if dropped:
            yield Trimmed(dropped, limit)
    prepare_s = time.perf_counter() - prepare

    segmenter = Segmenter(echo_prefixes(ranked))
    checker = Checker(ranked, threshold)
    raw: list[str] = []
    shown: list[str] = []
    first_token = first_sentence = None
    start = time.perf_counter()

    def emit(pieces: list[Piece]) -> Iterator[Event]:
        nonlocal first_sentence
        for piece in pieces:
            text, sentence = checker.check(piece)
            if text:
                shown.append(text)
                if sentence is not None and first_sentence is None:
                    first_sentence = time.perf_counter() - start
                yield Text(text)
            if sentence is not None:
                yield sentence

    generation = backend.stream(prompt, params)
    try:
        for chunk in generation:
            if first_token is None:
                first_token = time.perf_counter() - start
            raw.append(chunk)
            yield from emit(segmenter.feed(chunk))
        yield from emit(segmenter.finish())
    finally:
        generation.close()
    generate_s = time.perf_counter() - start
    usage = generation.usage
    first_token = usage.first_token_s(start, first_token)
    answer = checker.answer("".join(shown))
    if answer.citations:
        yield Footnotes(tuple(answer.citations))
    yield Done(
        answer,
        "".join(raw),
        usage,
        Timings(prepare_s, first_token, first_sentence, generate_s, checker.seconds),
        tuple(ranked),
    )
