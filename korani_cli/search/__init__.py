"""Web search RAG: one module per stage, typed values between them.

types.py      Hit → Page → Passage → Ranked → Citation (frozen dataclasses)
query.py      a chat's follow-up question → a search query that stands on its own
providers.py  query → Hits: google, duckduckgo, searxng, naver, local; an ordered fallback chain
safety.py     the SSRF guard: which URLs may be fetched
fetch.py      Hits → Pages: concurrent, capped, charset-correct, cached in SQLite
cache.py      the SQLite page cache, with a time to live and each page's redirect chain
decode.py     page bytes → text, even when the page lies about its encoding
extract.py    HTML → main text (readability, trafilatura fallback)
workers.py    the process pool that decodes and extracts pages on every core
passages.py   text → ~300–600 character passages on Korean sentence boundaries, with morphemes
rank.py       BM25 over Kiwi morphemes + dense embeddings, fused; optional cross-encoder; per-page cap
pool.py       a fixed in-memory pool of pages ranked the same way (for `korani eval rag`)
budget.py     ranked passages cut to their relevant sentences so the sources fit a token budget
answer.py     ranked passages → prompt (through the template) → answer → verified footnotes
segment.py    the streamed answer cut into sentences to check and text to keep as written
support.py    does a passage support a sentence? the lexical check behind every footnote
pipeline.py   the stages in order, with timings
"""
