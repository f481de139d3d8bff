"""Generation backends: one small Protocol and the values that cross it.

A backend turns a message list into a stream of answer text. Three built-in ones:
`hf` (transformers + PEFT), `llamacpp` (GGUF on CPU) and `openai` (any
OpenAI-compatible server over HTTP). Each module imports its heavy library
inside its functions, so importing this package costs nothing.

What backends share is here: the `ModelSpec` a backend is loaded from (made
by `korani_cli.models.resolve`), the parameters, the `Generation` stream whose
usage fills in as it is consumed, and `apply_stops`, which makes every backend
stop at a `### ` header the same way (see `korani_cli.template.StopFilter`)
and strips control characters from what the model wrote: a model can echo an
escape sequence from a page in its prompt, and its answer is printed to a
terminal and stored (see `korani_cli.untrusted`).

Which class loads which backend name is `korani_cli.backends.registry`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from korani_cli.template import Message, StopFilter
from korani_cli.untrusted import clean

# The way forward when a model cannot be had here (offline, not cached, no such path).
OFFLINE_FIX = (
    "use --model demo for the offline demo (`korani models default demo` makes it the default), or "
    "--model PATH for a local model (directory or .gguf)"
)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and with which backend: what `models.resolve` makes of `--model`."""

    name: str  # as the user gave it
    backend: str  # a registered backend name: hf | llamacpp | openai, or one added by `registry.register`
    source: str  # .gguf path, hub id or directory, or the served model's name
    base: str | None = None  # hf: base model when `source` is a LoRA adapter
    base_url: str | None = None  # openai
    api_key: str | None = field(default=None, repr=False)  # openai; a secret, never in a repr
    # Said once, before the model loads: which form of an alias was chosen and why, or which other machine
    # an openai: model connects to.
    notice: str | None = None


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None
    # A hint: a backend that can answer in one piece (openai) may do so when
    # nobody watches the text arrive. Chunks are still yielded either way.
    stream: bool = True


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for (alias, path, id)
    backend: str  # the registered backend name: hf | llamacpp | openai, or an added one
    context_length: int | None
    template: str  # korani | model
    details: dict = field(default_factory=dict)  # resolved paths, base model, device, dtype


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # eos | stop | length
    # A backend that hands the answer over in one piece sets `whole`: the arrival of
    # its text then says nothing about when the first token was made. It sets
    # `first_token_at` (a time.perf_counter() value) when it knows that moment.
    whole: bool = False
    first_token_at: float | None = None
    # The backend cut the answer at max_new_tokens itself: the server it reads went past the
    # limit it was sent (an OpenAI-compatible server that ignores max_tokens). Front ends say so
    # after the answer (see `limit_ignored_note`); finish_reason is then "length".
    limit_ignored: bool = False
    # What the backend itself reports of the prompt's evaluation, where it can (llamacpp: llama.cpp's
    # own counters): the tokens it evaluated — fewer than prompt_tokens when the start of the prompt
    # was still held from the call before — and the seconds that took. None: not reported.
    prompt_eval_tokens: int | None = None
    prompt_eval_s: float | None = None

    def first_token_s(self, start: float, seen: float | None) -> float | None:
        """Seconds from `start` to the first token: `seen` (when the consumer saw the first
        text), unless the answer came whole — then the backend's own record, if it has one."""
        if not self.whole:
            return seen
        return self.first_token_at - start if self.first_token_at is not None else None


def limit_ignored_note(max_new_tokens: int, korean: bool = False) -> str:
    if korean:  # the chat's wording: every chat line is one language
        return (
            f"서버가 max_tokens({max_new_tokens})를 무시하고 계속 생성해서 korani가 답을 {max_new_tokens} "
            "토큰에서 잘랐습니다 — 서버 설정을 확인하세요"
        )
    return (
        f"the server ignored max_tokens ({max_new_tokens}) and went on generating; korani cut its answer "
        f"at {max_new_tokens} tokens — check the server's settings"
    )


class Generation:
    """An iterator of answer text chunks; `usage` is complete once it is exhausted."""

    def __init__(self, run: Callable[[Usage], Iterator[str]]):
        self.usage = Usage()
        self._chunks = run(self.usage)

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        """Stop generating now (Ctrl-C in a chat); the backend frees its work."""
        self._chunks.close()

    def text(self) -> str:
        return "".join(self)


class Backend(Protocol):
    info: ModelInfo

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...


Notify = Callable[[str], None]


def apply_stops(raw: Iterator[str], usage: Usage, extra_stops: Sequence[str] = ()) -> Iterator[str]:
    """Filter a backend's raw text through StopFilter; close `raw` at a header.

    `raw` counts tokens into `usage` as it goes and sets finish_reason when it
    ends by itself (eos / length); a header cut sets "stop" here.
    """
    stops = StopFilter(extra_stops)
    after_cr = False

    def cleaned(text: str) -> str:
        nonlocal after_cr
        if after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks: `clean` made the CR a LF already
        after_cr = text.endswith("\r")
        return clean(text)

    try:
        for piece in raw:
            out = cleaned(stops.feed(piece))
            if out:
                yield out
            if stops.stopped:
                usage.finish_reason = "stop"
                return
        tail = cleaned(stops.flush())
        if tail:
            yield tail
    finally:
        raw.close()
