"""How long one answer took: the one `Timings` value every front end reports.

The plain generation loop (oneshot.py) and the RAG answer core (rag/answer.py)
fill in what they measure; the answer layer (turn/layer.py) adds what its
callers measure around them (loading the model, retrieving). `ask --json`,
the chat's history rows and `korani eval` records are all written from it
with `to_json`, each naming the fields it keeps. It sits below rag/ and the
generation loop, so it knows nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable


@dataclass(frozen=True)
class Timings:
    generate_s: float = 0.0  # generation start → end
    first_token_s: float | None = None  # generation start → first printable text (None: not known)
    first_sentence_s: float | None = None  # generation start → first checked sentence shown (sourced)
    prepare_s: float | None = None  # sourced: context budget + prompt, before generation
    verify_s: float | None = None  # sourced: time spent checking sentences, included in generate_s
    load_s: float | None = None  # resolving + loading the model, when the caller loaded it
    retrieve_s: float | None = None  # searching (or ranking a pool) before the answer
    total_s: float | None = None  # the whole turn as its front end counts it

    def but(self, **changes) -> "Timings":
        """This value with some fields changed (a front end adds what it measured around the answer)."""
        return replace(self, **changes)

    def to_json(self, names: Iterable[str] | None = None, *, digits: int | None = 4) -> dict:
        """`names` (every field when None), rounded to `digits` (None: as measured); a named field
        that is None stays null."""
        names = [f.name for f in fields(self)] if names is None else list(names)
        out = {}
        for name in names:
            value = getattr(self, name)
            out[name] = round(value, digits) if value is not None and digits is not None else value
        return out
