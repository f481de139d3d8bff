"""Web search RAG: one module per stage, typed values between them.

  types.py      Hit → Page → Passage → Ranked → Citation (frozen dataclasses)
  providers.py  query → Hits: google, duckduckgo, searxng, naver, local; an ordered fallback chain
  safety.py     the SSRF guard: which URLs may be fetched
  fetch.py      Hits → Pages: concurrent, capped, charset-correct, cached in SQLite
  extract.py    HTML → main text (readability, trafilatura fallback)
  workers.py    the process pool that decodes and extracts pages on every core
  passages.py   text → ~300–600 character passages on Korean sentence boundaries, with morphemes
  rank.py       BM25 over Kiwi morphemes + dense embeddings, fused; optional cross-encoder; per-page cap
  answer.py     ranked passages → prompt (through the template) → answer → verified footnotes
  pipeline.py   the stages in order, with timings
"""
