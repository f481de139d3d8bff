"""Retrieval quality on KorQuAD 1.0 dev: BM25-only vs dense-only vs hybrid, same run.

Pool: all 964 paragraphs. Queries: the questions (all 5,774 by default).
Gold: the question's own paragraph. Reported: recall@1/5/10 and MRR@10.
korani's ranking pieces are used as they are (Kiwi morphemes into bm25s,
the default offline embedder, reciprocal rank fusion); the pool is embedded
once and scored in bulk, which gives the same ranking as per-query calls.
Goal: hybrid recall@5 ≥ 0.95 and above both others.

The search pipeline takes two shortcuts to keep time to context low on a
CPU: only the BM25 top-N passages are embedded, and only their first C
characters (`rank.EMBED_CHARS`). Rows "hybrid N×C" measure what each
setting costs in recall, next to the full hybrid. Ends with RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KORQUAD = REPO.parent / "shared" / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"


def cached(embedder, kind: str, texts: list[str]):
    """Embeddings of `texts`, kept in korani's cache directory (`bench-embeddings/`, under
    KORANI_HOME when it is set): the pool takes minutes on 2 cores."""
    import hashlib
    import io

    import numpy as np

    from korani_cli.outputs import atomic_write_bytes
    from korani_cli.paths import cache_dir

    key = hashlib.sha256("\x00".join([embedder.name, kind, *texts]).encode()).hexdigest()[:20]
    path = cache_dir() / "bench-embeddings" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = getattr(embedder, kind)(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, vectors)
    atomic_write_bytes(path, buf.getvalue())
    return vectors


def metrics(rank_lists, gold) -> dict:
    r1 = r5 = r10 = mrr = 0.0
    for ranking, g in zip(rank_lists, gold):
        top = list(ranking[:10])
        if g in top:
            pos = top.index(g)
            mrr += 1 / (pos + 1)
            r1 += pos < 1
            r5 += pos < 5
            r10 += 1
    n = len(gold)
    return {
        "recall@1": round(r1 / n, 4),
        "recall@5": round(r5 / n, 4),
        "recall@10": round(r10 / n, 4),
        "mrr@10": round(mrr / n, 4),
    }


def main() -> None:
    import bm25s
    import numpy as np

    from korani_cli.search.rank import (
        DENSE_WEIGHT,
        EMBED_CHARS,
        MIN_CANDIDATES,
        RRF_K,
        make_embedder,
        morphemes,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=0, help="use only the first N questions (0: all)")
    ap.add_argument("--articles", type=int, default=0, help="pool only the first N articles (0: all)")
    ap.add_argument("--embedder", default="auto")
    ap.add_argument(
        "--shortcuts",
        default=f"10x240,{MIN_CANDIDATES}x{EMBED_CHARS}",
        help="N×C settings to measure: BM25 top-N candidates, first C characters embedded",
    )
    ap.add_argument(
        "--weights",
        default=f"1,{DENSE_WEIGHT}",
        help="dense weights in the rank fusion to measure (korani's is rank.DENSE_WEIGHT)",
    )
    ap.add_argument("--quick", action="store_true", help="3 articles and their questions (CI)")
    args = ap.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        ap.set_defaults(articles=3)
        args = ap.parse_args()
    data = json.loads(KORQUAD.read_text(encoding="utf-8"))["data"][: args.articles or None]
    paragraphs, contexts, questions, gold = [], [], [], []
    for article in data:
        for para in article["paragraphs"]:
            pid = len(paragraphs)
            paragraphs.append(article["title"] + " " + para["context"])
            contexts.append(para["context"])
            for qa in para["qas"]:
                questions.append(qa["question"])
                gold.append(pid)
    if args.queries:
        questions, gold = questions[: args.queries], gold[: args.queries]
    timings = {}
    t = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(morphemes(paragraphs), show_progress=False)
    q_tokens = morphemes(questions)
    bm25 = np.stack([retriever.get_scores(q) if q else np.zeros(len(paragraphs)) for q in q_tokens])
    timings["bm25_s"] = round(time.perf_counter() - t, 1)
    embedder = make_embedder(args.embedder)
    t = time.perf_counter()
    P = cached(embedder, "passages", paragraphs)
    timings["embed_pool_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    Q = cached(embedder, "queries", questions)
    timings["embed_queries_s"] = round(time.perf_counter() - t, 1)
    dense = Q @ P.T

    def order(scores):
        return np.argsort(-scores, axis=1)

    bm25_order, dense_order = order(bm25), order(dense)
    n = len(paragraphs)
    ranks_b = np.empty_like(bm25_order)
    ranks_d = np.empty_like(dense_order)
    rows = np.arange(len(questions))[:, None]
    ranks_b[rows, bm25_order] = np.arange(n)
    ranks_d[rows, dense_order] = np.arange(n)
    weights = list(dict.fromkeys(float(w) for w in args.weights.split(",")))
    results = {"bm25": metrics(bm25_order[:, :10], gold), "dense": metrics(dense_order[:, :10], gold)}
    for w in weights:
        fused = 1 / (RRF_K + ranks_b + 1) + w / (RRF_K + ranks_d + 1)
        results["hybrid" if w == 1 else f"hybrid w={w:g}"] = metrics(order(fused)[:, :10], gold)
    heads = {}
    for setting in filter(None, args.shortcuts.split(",")):
        n_cand, chars = (int(x) for x in setting.lower().split("x"))
        if chars not in heads:
            t = time.perf_counter()
            heads[chars] = cached(embedder, "passages", [c[:chars] for c in contexts])
            timings[f"embed_heads_{chars}_s"] = round(time.perf_counter() - t, 1)
        # As rank() does: dense scores for the BM25 top-N only, the rest last.
        cand = bm25_order[:, :n_cand]
        short = np.full(bm25.shape, -1.0)
        np.put_along_axis(short, cand, np.einsum("qd,qkd->qk", Q, heads[chars][cand]), axis=1)
        ranks_s = np.empty_like(dense_order)
        ranks_s[rows, order(short)] = np.arange(n)
        for w in weights:
            fused = 1 / (RRF_K + ranks_b + 1) + w / (RRF_K + ranks_s + 1)
            results[f"hybrid {n_cand}x{chars}" + ("" if w == 1 else f" w={w:g}")] = metrics(
                order(fused)[:, :10], gold
            )
    print(f"{len(questions):,} questions, {n} paragraphs, embedder: {embedder.name}")
    print(f"{'method':<20} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'MRR@10':>7}")
    for name, m in results.items():
        print(
            f"{name:<20} {m['recall@1']:>7.4f} {m['recall@5']:>7.4f} {m['recall@10']:>7.4f} "
            f"{m['mrr@10']:>7.4f}"
        )
    print(
        "RESULT "
        + json.dumps(
            {
                "questions": len(questions),
                "paragraphs": n,
                "embedder": embedder.name,
                **results,
                "timings": timings,
            }
        )
    )


if __name__ == "__main__":
    main()
