"""One question → one answer, with the numbers a script wants about it.

`answer` consumes a backend's Generation, hands each chunk to an optional
sink (the CLI's stdout writer) and returns an `Answer` value: text, token
counts, why it stopped, and timings. It prints nothing itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from korani_cli.backends import Backend, GenerationParams
from korani_cli.template import Message


@dataclass(frozen=True)
class Timings:
    load_s: float  # resolving + loading the model
    first_token_s: float | None  # generation start → first printable text
    generate_s: float  # generation start → end
    total_s: float  # load + generate
    # generation start → first checked sentence shown (answers with sources; None otherwise)
    first_sentence_s: float | None = None


@dataclass(frozen=True)
class Answer:
    answer: str
    model: str
    backend: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None  # eos | stop | length
    timings: Timings

    def to_json(self) -> dict:
        out = asdict(self)
        first = self.timings.first_token_s
        gen = self.timings.generate_s - first if first is not None else 0.0
        # Decode speed after the first token, the figure comparable across backends
        # (unknown when the first token's time is: an answer handed over whole).
        out["timings"]["decode_tok_s"] = (
            round((self.completion_tokens - 1) / gen, 2) if self.completion_tokens and self.completion_tokens > 1 and gen > 0 else None
        )
        if self.timings.first_sentence_s is None:
            del out["timings"]["first_sentence_s"]  # only answers with sources are shown by sentence
        for key in ("load_s", "first_token_s", "first_sentence_s", "generate_s", "total_s"):
            if out["timings"].get(key) is not None:
                out["timings"][key] = round(out["timings"][key], 4)
        return out


def answer(
    backend: Backend,
    messages: Sequence[Message],
    params: GenerationParams,
    *,
    on_text: Callable[[str], None] | None = None,
    load_s: float = 0.0,
) -> Answer:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    generation = backend.stream(messages, params)
    try:
        for chunk in generation:
            if first is None:
                first = time.perf_counter() - start
            parts.append(chunk)
            if on_text:
                on_text(chunk)
    finally:
        generation.close()
    generate_s = time.perf_counter() - start
    usage = generation.usage
    first = usage.first_token_s(start, first)
    return Answer(
        answer="".join(parts),
        model=backend.info.name,
        backend=backend.info.backend,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        finish_reason=usage.finish_reason,
        timings=Timings(load_s=load_s, first_token_s=first, generate_s=generate_s, total_s=load_s + generate_s),
    )
