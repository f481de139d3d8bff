"""Ranked passages → the RAG prompt → an answer whose footnotes can be trusted.

The prompt is the template's RAG form: the passages numbered [1]..[k] with
title and URL inside the user turn. After generation every [n] marker is
checked (search/support.py): one that points at no source is removed; one
whose cited passage does not support its sentence moves to the offered
passage that supports it best, if one clears the bar, and is dropped
otherwise. When the model cites nothing (small models don't), each sentence
gets the source that supports it best, if any clears the bar. Footnotes list only sources
that were fetched and are cited, renumbered in order of first citation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from korani_cli import template as tpl
from korani_cli.search import support as sup
from korani_cli.search.types import Citation, Ranked
from korani_cli.untrusted import clean_line

MARKER = re.compile(r"\s*\[(\d{1,2})\]")
SUPPORT_THRESHOLD = sup.THRESHOLD  # weighted share of a sentence's content found in the passage


@dataclass
class SourcedAnswer:
    text: str  # with [n] markers, renumbered
    citations: list = field(default_factory=list)  # Citation, in footnote order
    sources: list = field(default_factory=list)  # every passage offered to the model: {n, url, title}
    # Each sentence as printed (without markers) with the footnote numbers it
    # kept, so a reader (korani eval) can judge footnotes sentence by sentence.
    claims: list = field(default_factory=list)  # (sentence, [n, ...])

    def footnotes(self) -> str:
        # Titles and URLs come from pages: one clean line each, whatever built them.
        return "\n".join(f"[{c.n}] {clean_line(c.title)} — {clean_line(c.url)}" for c in self.citations)


def messages(question: str, ranked: list[Ranked], system: str | None = None, history=()) -> list[tpl.Message]:
    sources = [tpl.Source(r.passage.title or r.passage.url, r.passage.url, r.passage.text) for r in ranked]
    head = [tpl.Message("system", system)] if system else []
    return [*head, *history, tpl.user(question, sources)]


def _sentences(text: str) -> list[str]:
    # Split after sentence-final punctuation, keeping trailing markers with their sentence.
    parts = re.split(r"(?<=[.!?。])((?:\s*\[\d{1,2}\])*)\s+", text.strip())
    out, i = [], 0
    while i < len(parts):
        sentence = parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
        if sentence.strip():
            out.append(sentence.strip())
        i += 2
    return out


def verify(answer: str, ranked: list[Ranked], threshold: float = SUPPORT_THRESHOLD) -> SourcedAnswer:
    k = len(ranked)
    sentences = _sentences(answer)
    bodies = [MARKER.sub("", sentence).strip() for sentence in sentences]
    # The answer's sentences go through Kiwi once, in one batch; passages
    # mostly arrive with their terms from the passage stage.
    passages = sup.evidence([r.passage for r in ranked]) if sentences else []
    cited_any = bool(MARKER.search(answer))
    kept: list[tuple[str, list[int], dict[int, float]]] = []
    for sentence, body, claim in zip(sentences, bodies, sup.claims(bodies)):
        support = dict(enumerate(sup.scores(claim, passages), start=1))
        best = max(support, key=support.get) if support else None
        marks, scores = [], {}
        for n in dict.fromkeys(int(m) for m in MARKER.findall(sentence)):
            if n not in support:  # out of range: points at no source
                continue
            if support[n] < threshold:
                # The cited passage does not say this; the footnote moves to one that does.
                if best is None or support[best] < threshold:
                    continue
                n = best
            if n not in scores:
                marks.append(n)
                scores[n] = support[n]
        if not cited_any and body and best is not None and support[best] >= threshold:
            marks, scores = [best], {best: support[best]}
        kept.append((body, marks, scores))
    # Renumber in order of first citation; footnotes only for cited sources.
    renumber: dict[int, int] = {}
    best_score: dict[int, float] = {}
    for _, marks, scores in kept:
        for n in marks:
            renumber.setdefault(n, len(renumber) + 1)
            best_score[n] = max(best_score.get(n, 0.0), scores[n])
    text = " ".join(body + "".join(f"[{renumber[n]}]" for n in marks) for body, marks, _ in kept if body)
    citations = [
        Citation(new, ranked[old - 1].passage.url, ranked[old - 1].passage.title or ranked[old - 1].passage.url,
                 ranked[old - 1].passage.text, round(best_score[old], 3))
        for old, new in sorted(renumber.items(), key=lambda kv: kv[1])
    ]
    sources = [{"n": i + 1, "url": r.passage.url, "title": r.passage.title, "score": round(r.score, 4)} for i, r in enumerate(ranked)]
    claims = [(body, [renumber[n] for n in marks]) for body, marks, _ in kept if body]
    return SourcedAnswer(text, citations, sources, claims)
