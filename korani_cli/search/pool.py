"""An in-memory pool of pages, ranked the way `korani search` ranks fetched pages.

`korani eval rag` asks thousands of questions of one fixed set of pages (the
paragraphs of a KorQuAD file). It must see what users get, so the stages are
the search pipeline's own: `passages.passages` splits the pages, `rank.rank`
ranks with SearchOptions' k, per-page cap, embedder and reranker. What this
module adds is doing the per-pool work once: the passage split, the Kiwi
morphemes and the BM25 index are built when the pool is, and each passage head
is embedded the first time a query needs it. No network stage is involved.

A query may leave pages out (`exclude`): the pool without them is indexed
afresh, so BM25's statistics are those of the smaller pool, as if the pages
had never been fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from korani_cli.search.pipeline import SearchOptions
from korani_cli.search.rank import Embedder, Index, Reranker, bm25_index, make_embedder, make_reranker, rank
from korani_cli.search.types import Page, Passage, Ranked, Timings


@dataclass
class Pool:
    options: SearchOptions
    passages: list  # Passage, every page's, in page order
    index: Index | None  # None when there are no passages
    embedder: Embedder | None
    reranker: Reranker | None

    @classmethod
    def build(cls, pages: Sequence[Page], options: SearchOptions = SearchOptions()) -> "Pool":
        from korani_cli.search.passages import passages as split_pages

        chunks: list[Passage] = split_pages(list(pages))
        return cls(
            options,
            chunks,
            bm25_index(chunks) if chunks else None,
            make_embedder(options.embedder),
            make_reranker(options.reranker),
        )

    def rank(
        self, query: str, exclude: frozenset = frozenset(), timings: Timings | None = None
    ) -> list[Ranked]:
        """The top `options.k` passages for `query`; pages whose URL is in `exclude` are not in the pool."""
        passages, index = self.passages, self.index
        if exclude:
            passages = [p for p in self.passages if p.url not in exclude]
            if passages:
                index = bm25_index(passages, vectors=self.index.vectors)
        if not passages:
            # Every page left out (a one-paragraph set whose question is made unanswerable), or none
            # had text: nothing to rank, and bm25s cannot index an empty corpus.
            return []
        return rank(
            query,
            passages,
            self.embedder,
            k=self.options.k,
            per_page=self.options.per_page,
            reranker=self.reranker,
            timings=timings,
            index=index,
        )
