"""One question → one answer, with the numbers a script wants about it.

`Run` is the generation loop: it consumes a backend's Generation chunk by
chunk and keeps the text and the moments that make an `Answer` value (text,
token counts, why it stopped, timings). `answer` hands each chunk to an
optional sink (the CLI's stdout writer) and returns the Answer; chat consumes
a Run itself, to stream events. Nothing here prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from korani_cli.backends import Backend, GenerationParams
from korani_cli.template import Message
from korani_cli.timings import Timings

JSON_TIMINGS = ("load_s", "first_token_s", "generate_s", "total_s")  # what `ask --json` shows


@dataclass(frozen=True)
class Answer:
    answer: str
    model: str
    backend: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None  # eos | stop | length
    timings: Timings
    limit_ignored: bool = False  # the server went past max_new_tokens; the backend cut it (Usage's)

    def to_json(self) -> dict:
        """What `ask --json` prints (limit_ignored is said in a note, not a field)."""
        timings = json_timings(self.timings, self.completion_tokens)
        return {
            "answer": self.answer,
            "model": self.model,
            "backend": self.backend,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "timings": timings,
        }


def json_timings(t: Timings, completion_tokens: int | None) -> dict:
    """An answer's timings as `ask --json` prints them (and `ask` records them), with the decode speed."""
    names = [*JSON_TIMINGS, "first_sentence_s"] if t.first_sentence_s is not None else JSON_TIMINGS
    timings = t.to_json(names)
    first = t.first_token_s
    gen = t.generate_s - first if first is not None else 0.0
    # Decode speed after the first token, the figure comparable across backends
    # (unknown when the first token's time is: an answer handed over whole).
    timings["decode_tok_s"] = (
        round((completion_tokens - 1) / gen, 2)
        if completion_tokens and completion_tokens > 1 and gen > 0
        else None
    )
    return timings


class Run:
    """One generation being consumed: iterate it for the text chunks as they come;
    `result()` — after the last chunk, or after stopping early (`close()`, Ctrl-C) —
    is the `Answer` with whatever was generated until then. This is the one
    generation loop for a plain answer: `answer` below drives it with a callback,
    chat (chat/session.py) turns its chunks into events."""

    def __init__(
        self, backend: Backend, messages: Sequence[Message], params: GenerationParams, *, load_s: float = 0.0
    ):
        self.backend = backend
        self.load_s = load_s
        self._start = time.perf_counter()
        self._first: float | None = None
        self._end: float | None = None
        self._parts: list[str] = []
        self.generation = backend.stream(messages, params)

    def __iter__(self) -> "Run":
        return self

    def __next__(self) -> str:
        try:
            chunk = next(self.generation)
        except BaseException:  # the end, a failure or an interrupt: generation stops here
            self.close()
            raise
        if self._first is None:
            self._first = time.perf_counter() - self._start
        self._parts.append(chunk)
        return chunk

    def close(self) -> None:
        """Stop generating (the backend frees its work); what came so far stays."""
        if self._end is None:
            self.generation.close()
            self._end = time.perf_counter()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def result(self) -> Answer:
        self.close()
        generate_s = self._end - self._start
        usage = self.generation.usage
        return Answer(
            answer=self.text,
            model=self.backend.info.name,
            backend=self.backend.info.backend,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            finish_reason=usage.finish_reason,
            timings=Timings(
                load_s=self.load_s,
                first_token_s=usage.first_token_s(self._start, self._first),
                generate_s=generate_s,
                total_s=self.load_s + generate_s,
            ),
            limit_ignored=usage.limit_ignored,
        )


def answer(
    backend: Backend,
    messages: Sequence[Message],
    params: GenerationParams,
    *,
    on_text: Callable[[str], None] | None = None,
    load_s: float = 0.0,
) -> Answer:
    run = Run(backend, messages, params, load_s=load_s)
    try:
        for chunk in run:
            if on_text:
                on_text(chunk)
    finally:
        run.close()
    return run.result()
