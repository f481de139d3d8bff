"""The measures: pure functions of an answer, its footnotes and the gold.

Answers (KorQuAD 1.0's official evaluate script, as it is):
  `normalize_answer` — quotes, 《》〈〉<>()‘’ to spaces, lower case, ASCII
  punctuation removed, whitespace collapsed; `f1` — its F1, which counts
  *characters* of the normalised tokens (Korean has no useful word unit for
  partial credit), best over the gold answers; `answer_correct` — some gold
  answer, normalised, occurs in the normalised answer ([n] markers removed);
  `answer_in_context` — the same test on the passages offered to the model.

Footnotes (ALCE's citation precision/recall, judged with the gold instead of
an NLI model): a sentence *states the answer* when it contains a gold answer;
a footnote on it is *right* when the passage it points at contains the answer
the sentence states. Precision = right footnotes / footnotes on stating
sentences; recall = stating sentences with a right footnote / stating sentences.

Abstention: the answer says the sources do not hold the answer. The RAG
instruction prescribes one answer for that (`template.ABSTAIN_ANSWER`), which
grounded training data teaches; it is recognised wherever it stands, with or
without markers, quotes or its final period. Models trained before it was
prescribed phrase it their own way, so a list of Korean and English phrasings
is recognised too.

Chat: `repetition` (share of word 4-grams that repeat an earlier one),
`hangul_share` (Hangul among letters), `header_leak` (a `###` or a role header
in what the user would see).

Nothing here reads files, runs models or ranks passages.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from korani_cli.template import ABSTAIN_ANSWER

_MARKER = re.compile(r"\s*\[\d{1,2}\]")
_REMOVE = re.compile("['\"《》<>〈〉()‘’]")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = _REMOVE.sub(" ", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(text.split())


def strip_markers(text: str) -> str:
    return _MARKER.sub("", text)


def _f1_one(prediction: str, gold: str) -> float:
    pred = [c for token in normalize_answer(prediction).split() for c in token]
    ref = [c for token in normalize_answer(gold).split() for c in token]
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Sequence[str]) -> float:
    """KorQuAD's F1 against the best gold answer."""
    return max((_f1_one(strip_markers(prediction), g) for g in golds), default=0.0)


def stated(sentence: str, golds: Sequence[str]) -> list[str]:
    """The gold answers a sentence states (normalised), longest first."""
    body = normalize_answer(strip_markers(sentence))
    found = {normalize_answer(g) for g in golds} - {""}
    return sorted((g for g in found if g in body), key=len, reverse=True)


def answer_correct(answer: str, golds: Sequence[str]) -> bool:
    return bool(stated(answer, golds))


def answer_in_context(passages: Sequence[str], golds: Sequence[str]) -> bool:
    """Some gold answer, normalised as `answer_correct` normalises, occurs in one of the
    passage texts offered to the model: the most a reader of them could answer (a
    context budget may keep the gold passage yet cut its answer away)."""
    found = {normalize_answer(g) for g in golds} - {""}
    return any(g in normalize_answer(text) for text in passages for g in found)


ABSTAIN_PATTERNS = [
    re.compile(p)
    for p in (
        r"(자료|출처|문서|정보|내용|본문|지문)[^.!?\n]{0,20}(없습니다|없어요|없다|없음|않습니다|않아요|않다|"
        r"않음|찾을 수 없|확인할 수 없)",
        r"답(을|이|변을)?\s*(할 수 없|찾을 수 없|드릴 수 없|알 수 없|없습니다|없어요|없다)",
        r"(알 수 없|모르겠|확인되지 않|확인할 수 없)",
        r"(?i)(not (mentioned|provided|contain|found|available|stated)|no information|cannot (answer|find|be "
        r"determined)|do(es)? not (say|mention|contain|provide))",
    )
]


# The prescribed answer as `normalize_answer` writes it (no period, no quotes).
_ABSTAIN = normalize_answer(ABSTAIN_ANSWER)


def abstains(answer: str) -> bool:
    """Does the answer say that the sources do not contain the answer?"""
    text = strip_markers(answer)
    return _ABSTAIN in normalize_answer(text) or any(p.search(text) for p in ABSTAIN_PATTERNS)


@dataclass(frozen=True)
class Footnotes:
    """Footnote counts of one answer, the numerators and denominators of precision and recall."""

    on_stating: int  # footnotes printed on sentences that state a gold answer
    right: int  # of those, pointing at a passage that contains the stated answer
    stating: int  # sentences that state a gold answer
    supported: int  # of those, with at least one right footnote


def footnotes(
    claims: Sequence[tuple[str, Sequence[int]]], cited_text: dict, golds: Sequence[str]
) -> Footnotes:
    """`claims`: (sentence, footnote numbers) as printed; `cited_text`: footnote
    number → the passage text it points at (a number with no passage is wrong)."""
    on_stating = right = stating = supported = 0
    for sentence, marks in claims:
        answers = stated(sentence, golds)
        if not answers:
            continue
        stating += 1
        good = 0
        for n in dict.fromkeys(marks):
            on_stating += 1
            passage = normalize_answer(cited_text.get(n, ""))
            if any(a in passage for a in answers):
                good += 1
        right += good
        supported += good > 0
    return Footnotes(on_stating, right, stating, supported)


# -- chat behaviour -------------------------------------------------------------------------

_HEADER = re.compile(
    r"###|<\|im_(start|end)\|>|<(start|end)_of_turn>|<\|(user|assistant|system)\|>"
    r"|(^|\n)\s*(User|Assistant|Bot|Human|System|사용자|어시스턴트|질문|답변)\s*:",
    re.I,
)


def header_leak(text: str) -> bool:
    return bool(_HEADER.search(text))


def repetition(text: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 for fewer than n words)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def _hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f"


def hangul_share(text: str) -> float | None:
    """Hangul among letters; None when the answer has no letters."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum(map(_hangul, letters)) / len(letters) if letters else None


# -- aggregation ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
