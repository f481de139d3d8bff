"""Grounded conversations: a SQuAD/KorQuAD-format file → questions answered from numbered sources.

Each question becomes one conversation whose user turn is, character for
character, the RAG turn the answer core sends at serving time: the same
`rag.answer.messages` builds it from ranked passages, cut by the same
`rag.budget.fit`, and it is stored as the text the template renders (its
sources written in, `template.flatten_sources`), so training, `data show`
and the length filter need nothing new.

- The pool is the file's paragraphs as `korani eval rag` pages them (one page
  per paragraph, its URL and article title: `eval.sets.load_korquad`), split
  into passages as search splits pages (`search.passages`).
- Sources: the gold passage (the best-ranked passage of the question's own
  paragraph that holds a gold answer) and k−1 hard negatives — the passages
  BM25 (`search.rank`, Kiwi morphemes) ranks highest for the question, at most
  `per_page` from one paragraph (the gold's included), none holding a gold
  answer — in a shuffled order, then cut to the context budget. Where the
  negatives come from (`Options.negatives`, `--negatives`):
  - `other-articles` (the default): other articles of the file only, so no
    negative can say the answer in other words;
  - `retrieval`: the whole file, so mostly the question's own article, as
    retrieval serves them (`korani eval rag` on held-out articles: five
    passages with one title). Negatives from other articles only can teach
    citing the passage whose title matches the question, and abstaining when
    none does; neither holds when every passage is about the same subject.
    The CPU proof (bench/rag_train.py) trains on these.
- The assistant turn names the answer in one short sentence ending with the
  gold passage's marker, `{answer}입니다[n].` (`{answer}[n].` when the answer
  already ends like a sentence, in 다): the span is in the sentence, the marker
  points at the passage that holds it, where the RAG instruction asks for it.
  If the budget cuts the answer out of the gold passage, the question is
  rejected (`answer_cut`): the conversation would teach citing a passage that
  does not say it.
- Unanswerable: a seeded, evenly spread share of the questions (the share
  exact for every prefix, as `korani eval rag` draws them) gets k negatives
  (with `retrieval`, none from its own paragraph, as `eval rag` drops the gold
  page), no gold passage, and `template.ABSTAIN_ANSWER`.

Each result carries its article (`group`), so the split keeps an article in
one split only. What this module leaves to others: reading the options,
dedup, the length filter, the mix and the split (`data.prepare`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from korani_cli.data.records import Conversation, RawRecord, Reject, Turn
from korani_cli.data.sources import DataInputError

SOURCE = "grounded"
K = 5  # sources per question: `ask --search`'s and `korani eval rag`'s default k
PER_PAGE = 2  # passages of one paragraph among the negatives, as search caps a page
UNANSWERABLE = 0.1
# Where hard negatives come from (see the module docstring); the first is the default.
NEGATIVES = ("other-articles", "retrieval")
# Tokens left for the answer when --max-tokens stands for the serving context: the
# sources get budget.default_tokens(max_tokens, ANSWER_ROOM) — 640 for --max-tokens ≥ 928,
# the budget a served model with a large window gets.
ANSWER_ROOM = 128


@dataclass(frozen=True)
class Options:
    unanswerable: float = UNANSWERABLE
    seed: int = 42
    k: int = K
    source_tokens: int = 640  # the sources' share of the prompt (rag.budget)
    negatives: str = NEGATIVES[0]


@dataclass(frozen=True)
class Item:
    """One question's outcome: a conversation or a reject, the record it came from, its article."""

    raw: RawRecord
    result: Conversation | Reject
    group: str  # "<file>#<article>": conversations of one article stay in one split
    unanswerable: bool = False


def answer_text(answer: str, n: int) -> str:
    """The assistant's sentence stating `answer` from source [n]."""
    answer = answer.strip().rstrip(".")
    # 입니다 follows a noun with or without a final consonant; an answer that is already a
    # predicate ("크게 늘었다") is a sentence by itself.
    tail = "" if answer.endswith("다") else "입니다"
    return f"{answer}{tail}[{n}]."


def _load(path: Path, on_bytes: Callable[[bytes], None]):
    from korani_cli.eval import EvalDataError
    from korani_cli.eval.sets import load_korquad

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataInputError(f"cannot read {path} ({exc.strerror})", "check the --grounded file") from None
    on_bytes(data)
    try:
        return load_korquad(path)
    except EvalDataError as exc:
        raise DataInputError(exc.what, exc.fix) from None


def read(
    path: Path,
    options: Options,
    count_tokens: Callable[[str], int],
    on_bytes: Callable[[bytes], None] = lambda data: None,
) -> Iterator[Item]:
    """The grounded conversations of one KorQuAD-format file, in question order."""
    from korani_cli.eval.metrics import normalize_answer
    from korani_cli.eval.sets import order, unanswerable_at
    from korani_cli.rag.answer import messages
    from korani_cli.rag.budget import fit
    from korani_cli.search.passages import passages as split_pages
    from korani_cli.search.rank import bm25_index, rank
    from korani_cli.search.types import Page
    from korani_cli.template import ABSTAIN_ANSWER, flatten_sources

    qaset = _load(path, on_bytes)
    pages = [Page(p.url, p.url, p.title, p.text, "text/plain", "utf-8") for p in qaset.paragraphs]
    chunks = split_pages(pages)
    index = bm25_index(chunks) if chunks else None
    url_of = {p.page_id: p.url for p in qaset.paragraphs}
    article_of = {p.url: p.page_id.split(".")[0] for p in qaset.paragraphs}
    other_articles = options.negatives == "other-articles"
    ids = order([q.id for q in qaset.questions], options.seed)
    no_gold = {qid for i, qid in enumerate(ids) if unanswerable_at(i, options.unanswerable)}

    for position, q in enumerate(qaset.questions):
        article = q.page_id.split(".")[0]
        raw = RawRecord(
            SOURCE,
            str(path),
            f"question {q.id}",
            {"question": q.question, "answers": list(q.answers), "paragraph": q.page_id},
        )
        group = f"{path}#{article}"
        unanswerable = q.id in no_gold

        def reject(reason: str, detail: str) -> Item:
            return Item(raw, Reject(SOURCE, str(path), raw.position, reason, detail, raw.payload), group)

        golds = [g for g in (normalize_answer(a) for a in q.answers) if g]
        ranked = rank(q.question, chunks, None, k=len(chunks), per_page=len(chunks), mode="bm25", index=index)
        gold_url = url_of[q.page_id]
        gold = next((r for r in ranked if r.passage.url == gold_url and _holds(r, golds)), None)
        if gold is None and not unanswerable:
            yield reject("no_answer_in_paragraph", "no passage of its paragraph holds a gold answer")
            continue
        # The gold passage counts toward its paragraph's cap, as search caps a page.
        negatives, per_url = [], ({} if unanswerable else {gold_url: 1})
        for r in ranked:
            if len(negatives) >= options.k - (0 if unanswerable else 1):
                break
            url = r.passage.url
            # None that holds the answer (a negative must not answer it); nothing of its own article
            # (other-articles), or for an unanswerable question nothing of its own paragraph.
            own = article_of[url] == article if other_articles else unanswerable and url == gold_url
            if own or per_url.get(url, 0) >= PER_PAGE or _holds(r, golds):
                continue
            per_url[url] = per_url.get(url, 0) + 1
            negatives.append(r)
        if unanswerable and not negatives:
            where = "of another article" if other_articles else "outside its paragraph"
            yield reject("no_negatives", f"no passage {where} to offer instead of its own")
            continue
        offered = negatives if unanswerable else [gold, *negatives]
        random.Random(f"grounded:{options.seed}:{q.id}").shuffle(offered)
        fitted = fit(q.question, offered, options.source_tokens, count_tokens)
        if unanswerable:
            reply = ABSTAIN_ANSWER
        else:
            # The budget keeps a passage's url and position (and never reorders).
            place = (gold.passage.url, gold.passage.position)
            places = [(r.passage.url, r.passage.position) for r in fitted]
            at = places.index(place) + 1 if place in places else None
            said = None if at is None else _stated(fitted[at - 1].passage.text, q.answers)
            if said is None:
                yield reject("answer_cut", "the context budget cut the gold answer out of its passage")
                continue
            reply = answer_text(said, at)
        prompt = flatten_sources(messages(q.question, fitted)[-1])
        turns = (Turn("user", prompt.content), Turn("assistant", reply))
        yield Item(raw, Conversation(f"{SOURCE}-{q.id}", SOURCE, turns), group, unanswerable)


def _holds(r, golds: list[str]) -> bool:
    from korani_cli.eval.metrics import normalize_answer

    text = normalize_answer(r.passage.text)
    return any(g in text for g in golds)


def _stated(text: str, answers) -> str | None:
    """The first gold answer found, as written, in the (cut) passage text."""
    return next((a for a in answers if a and a in text), None)
