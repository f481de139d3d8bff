"""Finding and reading pages: one module per stage, typed values between them.

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
pipeline.py   the stages in order, with timings

What is done with the passages found (prompt, answer, footnotes) is korani_cli.rag.
"""
