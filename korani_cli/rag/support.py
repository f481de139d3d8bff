"""Does a passage support a sentence? The lexical check behind every footnote.

A sentence's content words (Kiwi: nouns, verb and adjective stems, numbers,
foreign words) are weighted by how informative they are in this retrieval —
smoothed IDF over the offered passages, damped for words that say little on
their own (년, 이름, 되다) — and support is the weighted share of them that the
passage holds; a word no offered passage holds weighs a little more than
one a single passage holds. A word counts as held when the passage has it
among its own terms, or when the written word it belongs to (its run of
content morphemes with noun affixes: 훈민+정음, 1443+년, 창의+성) appears
verbatim in the passage text — so a name Kiwi cuts differently in a short
sentence than in a long passage ("현정은입니다" → 현정) still matches. The copula and
endings (입니다, 이다) are not content words and weigh nothing. Every number the
sentence states must appear in the passage (1,947 = 1947; 1443년 ~ 1443), or the
passage does not support it.

bench/citations.py measures this check against the old unweighted share on a
labelled set built from KorQuAD dev.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from korani_cli.search.types import Passage

# Weighted share at or above which a passage supports a sentence: more than half of
# the sentence's information. Chosen on bench/citations.py (KorQuAD dev), where it
# gives precision 0.97 / recall 0.97 (0.9724 / 0.9683); 0.5 lets two-word answers through on one word.
THRESHOLD = 0.6

# Words that carry little on their own whatever their IDF in a handful of
# passages: light verbs, dependent nouns, units of time, generic nouns.
_COMMON = frozenset(
    "하 되 있 없 같 보 주 받 나 들 오 가 알 말 것 수 등 중 후 전 때 년 월 일 명 개 번 곳 점 바 데 적 "
    "이름 사람 경우 때문 자신 다음 처음 가장 또한 매우 모두 많 크 작 이후 이전 당시 현재 관련 대하 위하 "
    "통하 따르 의하 가지 사용 이용 지 시 뒤 앞 안 밖 위 아래 더 잘 다시 함께 또 그리고 "
    "결과 부분 이상 이하".split()
)
_COMMON_WEIGHT = 0.15
_AFFIX_TAGS = ("XSN", "XPN")
# A run of content morphemes (훈민+정음, 1443+년) the passage does not hold as written
# counts its parts that the passage has among its terms at this share.
_SPLIT_CREDIT = 0.5
_ONE_SYLLABLE_WEIGHT = 0.5  # a one-syllable stem (먹, 크) is usually a verb or adjective: less telling

_COUNTERS = "년월일시분초명개권대회번위세층살원달주차호장편곡골점표척석인"
_NUMBER = re.compile(r"(\d+(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)([%s])?" % _COUNTERS)


def _number(raw: str) -> str:
    # String work, not int(): a page may hold a digit run longer than int() accepts.
    whole, _, frac = raw.replace(",", "").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def numbers(text: str) -> frozenset:
    """The numbers a text states, normalised (1,947 → 1947, 007 → 7, 2.50 → 2.5), each
    with the syllable written right after it (년, 월, 명) or None: ("1443", "년")."""
    return frozenset((_number(m.group(1)), m.group(2)) for m in _NUMBER.finditer(text))


# Two or more numbers with their counters in a row: a date or a measure, which the
# passage must state as one (9월 15일 is not held by "5월 15일 … 9월").
_NUMBER_RUN = re.compile(r"\d[\d,.]*[{0}]\s*(?:\d[\d,.]*[{0}]\s*)*\d[\d,.]*[{0}]".format(_COUNTERS))


def _fold(text: str) -> str:
    """Thousands separators dropped (1,947 → 1947) and runs of white space made one space."""
    return re.sub(r"\s+", " ", re.sub(r"(?<=\d),(?=\d{3})", "", text))


def numbers_held(claimed: frozenset, held: frozenset) -> bool:
    """Every number of a sentence is in the passage: with the same counter, or bare there
    (1443년 ~ 1443); a bare number in the sentence matches it with any counter."""
    bare = {n for n, _ in held}
    return all((n, c) in held or (n, None) in held if c else n in bare for n, c in claimed)


@dataclass(frozen=True)
class Evidence:
    """A passage as the checker reads it."""

    text: str  # lower-cased and folded (_fold), for verbatim matches and number runs
    terms: frozenset  # folded too: 1,947 → 1947
    numbers: frozenset

    def verbatim(self, surface: str) -> bool:
        return len(surface) >= 2 and surface in self.text


@dataclass(frozen=True)
class Claim:
    """A sentence's content: runs of content morphemes written together (units of parts)."""

    units: tuple  # ((surface, ((part, tag), ...)), ...); the surface includes noun affixes (창의+성)
    numbers: frozenset
    number_runs: tuple  # dates and measures written as one run ("1989년 2월 15일"), folded


def evidence(passages: Sequence[Passage]) -> list[Evidence]:
    from korani_cli.search.rank import passage_terms

    terms = passage_terms(passages) if passages else []
    return [
        Evidence(_fold(p.text.lower()), frozenset(_fold(w) for w in t), numbers(p.text))
        for p, t in zip(passages, terms)
    ]


def claims(sentences: Sequence[str]) -> list[Claim]:
    """Each sentence's content units, analysed by Kiwi in one batch."""
    from korani_cli.search.passages import CONTENT_TAGS, bounded, kiwi

    if not sentences:
        return []
    texts = [bounded(s) for s in sentences]
    out = []
    for sentence, text, tokens in zip(sentences, texts, kiwi().tokenize(texts)):
        units, run, start, end = [], [], 0, -1
        for t in tokens:
            if t.tag in _AFFIX_TAGS and run and t.start == end:
                end = t.start + t.len  # part of the written word, not a content word of its own
                continue
            if not t.tag.startswith(CONTENT_TAGS):
                continue
            if run and t.start == end:  # written together with the previous content morpheme
                run.append((_fold(t.form.lower()), t.tag))
            else:
                if run:
                    units.append((_fold(text[start:end].lower()), tuple(run)))
                run, start = [(_fold(t.form.lower()), t.tag)], t.start
            end = t.start + t.len
        if run:
            units.append((_fold(text[start:end].lower()), tuple(run)))
        # Numbers from the sentence as written: `bounded` breaks over-long runs, passages' numbers are
        # unbroken.
        out.append(
            Claim(
                tuple(units),
                numbers(sentence),
                tuple(_fold(m.group()) for m in _NUMBER_RUN.finditer(sentence)),
            )
        )
    return out


def prior(part: str, tag: str) -> float:
    """How telling a content morpheme is on its own, before IDF: 1, less for light
    words (_COMMON, dependent nouns) and one-syllable stems. search/budget.py uses it too."""
    if part in _COMMON or tag == "NNB":
        return _COMMON_WEIGHT
    if len(part) == 1 and not tag.startswith(("SN", "SL", "SH")):
        return _ONE_SYLLABLE_WEIGHT
    return 1.0


def idf(df: float, n: int) -> float:
    """BM25's smoothed IDF of a word held by `df` of `n` passages, kept positive:
    a word in every passage still counts a little."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def scores(claim: Claim, passages: Sequence[Evidence]) -> list[float]:
    """Support of `claim` by each passage, in [0, 1]; IDF is taken over `passages`."""
    n = len(passages)
    total, held = 0.0, [0.0] * n
    for surface, parts in claim.units:
        verbatim = [p.verbatim(surface) for p in passages]
        for part, tag in parts:
            whole = len(parts) == 1 and part == surface  # a plain word: its term is the word
            credit = [
                1.0 if v else (1.0 if whole else _SPLIT_CREDIT) if part in p.terms else 0.0
                for v, p in zip(verbatim, passages)
            ]
            # A word no passage holds weighs as one that a single passage holds:
            # rarer than that says nothing more about which passage supports the sentence.
            df = max(0.5, sum(1 for c in credit if c))
            weight = idf(df, n) * prior(part, tag)
            total += weight
            for i, c in enumerate(credit):
                held[i] += weight * c
    if total <= 0:
        return [0.0] * n
    return [
        h / total
        if numbers_held(claim.numbers, p.numbers) and all(r in p.text for r in claim.number_runs)
        else 0.0
        for h, p in zip(held, passages)
    ]
