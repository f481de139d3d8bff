"""Does a passage support a sentence? The lexical check behind every footnote.

A sentence's content words (Kiwi: nouns, verb and adjective stems, numbers,
foreign words) are weighted by how informative they are in this retrieval —
smoothed IDF over the offered passages, damped for words that say little on
their own (년, 이름, 되다) — and support is the weighted share of them that the
passage holds. A word counts as held when the passage has it among its own
terms or verbatim in its text (two syllables or more), so a name Kiwi cuts
differently in a short sentence than in a long passage still matches; a run
of content morphemes written together (훈민+정음, 1443+년) also counts when the
run appears verbatim. The copula and endings (입니다, 이다) are not content
words and weigh nothing. Every number the sentence states must appear in the
passage (1,947 = 1947; 1443년 ~ 1443), or the passage does not support it.

bench/citations.py measures this check against the old unweighted share on a
labelled set built from KorQuAD dev.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from korani_cli.search.types import Passage

# Weighted share at or above which a passage supports a sentence. Chosen on
# bench/citations.py (KorQuAD dev): see the module docstring there.
THRESHOLD = 0.5

# Words that carry little on their own whatever their IDF in a handful of
# passages: light verbs, dependent nouns, units of time, generic nouns.
_COMMON = frozenset(
    "하 되 있 없 같 보 주 받 나 들 오 가 알 말 것 수 등 중 후 전 때 년 월 일 명 개 번 곳 점 바 데 적 "
    "이름 사람 경우 때문 자신 다음 처음 가장 또한 매우 모두 많 크 작 이후 이전 당시 현재 관련 대하 위하 "
    "통하 따르 의하 가지 사용 이용 지 시 뒤 앞 안 밖 위 아래 더 잘 다시 함께 또 그리고 결과 부분 이상 이하".split()
)
_COMMON_WEIGHT = 0.15
_ONE_SYLLABLE_WEIGHT = 0.5  # a one-syllable stem (먹, 크) is usually a verb or adjective: less telling

_NUMBER = re.compile(r"\d+(?:,\d{3})+(?![\d])|\d+(?:\.\d+)?")


def numbers(text: str) -> frozenset[str]:
    """The numbers a text states, normalised: 1,947 → 1947, 007 → 7, 2.50 → 2.5."""
    out = set()
    for match in _NUMBER.finditer(text):
        raw = match.group().replace(",", "")
        if "." in raw:
            whole, frac = raw.split(".", 1)
            frac = frac.rstrip("0")
            out.add(f"{int(whole)}.{frac}" if frac else str(int(whole)))
        else:
            out.add(str(int(raw)))
    return frozenset(out)


@dataclass(frozen=True)
class Evidence:
    """A passage as the checker reads it."""

    text: str  # lower-cased, for verbatim matches
    terms: frozenset
    numbers: frozenset

    def holds(self, word: str) -> bool:
        return word in self.terms or (len(word) >= 2 and word in self.text)


@dataclass(frozen=True)
class Claim:
    """A sentence's content: runs of content morphemes written together (units of parts)."""

    units: tuple  # ((surface, ((part, tag), ...)), ...)
    numbers: frozenset


def evidence(passages: Sequence[Passage]) -> list[Evidence]:
    from korani_cli.search.rank import passage_terms

    terms = passage_terms(passages) if passages else []
    return [Evidence(p.text.lower(), frozenset(t), numbers(p.text)) for p, t in zip(passages, terms)]


def claims(sentences: Sequence[str]) -> list[Claim]:
    """Each sentence's content units, analysed by Kiwi in one batch."""
    from korani_cli.search.passages import CONTENT_TAGS, bounded, kiwi

    if not sentences:
        return []
    texts = [bounded(s) for s in sentences]
    out = []
    for text, tokens in zip(texts, kiwi().tokenize(texts)):
        units, run, start, end = [], [], 0, -1
        for t in tokens:
            if not t.tag.startswith(CONTENT_TAGS):
                continue
            if run and t.start == end:  # written together with the previous content morpheme
                run.append((t.form.lower(), t.tag))
            else:
                if run:
                    units.append((text[start:end].lower(), tuple(run)))
                run, start = [(t.form.lower(), t.tag)], t.start
            end = t.start + t.len
        if run:
            units.append((text[start:end].lower(), tuple(run)))
        out.append(Claim(tuple(units), numbers(text)))
    return out


def _prior(part: str, tag: str) -> float:
    if part in _COMMON or tag == "NNB":
        return _COMMON_WEIGHT
    if len(part) == 1 and not tag.startswith(("SN", "SL", "SH")):
        return _ONE_SYLLABLE_WEIGHT
    return 1.0


def scores(claim: Claim, passages: Sequence[Evidence]) -> list[float]:
    """Support of `claim` by each passage, in [0, 1]; IDF is taken over `passages`."""
    n = len(passages)
    total, held = 0.0, [0.0] * n
    for surface, parts in claim.units:
        verbatim = [len(surface) >= 2 and surface in p.text for p in passages]
        for part, tag in parts:
            has = [v or p.holds(part) for v, p in zip(verbatim, passages)]
            # BM25's smoothed IDF, kept positive: a word in every passage still counts a
            # little. A word no passage holds weighs as one that a single passage holds:
            # rarer than that says nothing more about which passage supports the sentence.
            df = max(1, sum(has))
            weight = math.log(1 + (n - df + 0.5) / (df + 0.5)) * _prior(part, tag)
            total += weight
            for i, h in enumerate(has):
                if h:
                    held[i] += weight
    if total <= 0:
        return [0.0] * n
    return [0.0 if not claim.numbers <= p.numbers else h / total for h, p in zip(held, passages)]
