"""llamacpp backend: a .gguf file through llama-cpp-python — the fast CPU path.

We drive `Llama.generate` token by token instead of `create_completion`, which
gives exact token counts, a true EOS signal (as opposed to "some stop
happened") and incremental UTF-8 decoding of Korean text whose characters
often span several tokens. `--template model` renders the prompt with the
GGUF's own chat template (the formatter `create_chat_completion` would use)
and then takes the same path: the prompt is counted, the answer's room is
what the context window leaves, and a cut says which limit made it.

Threads: with `threads` unset, each answer asks llama.cpp for the cores nobody
else is using at that moment (`free_cores`). llama.cpp's threads meet at a
barrier for every batch and every token, so one thread more than there are free
cores makes all of them wait on the one the scheduler left out: on 2 cores with
one other busy process, 2 threads evaluated a /검색 prompt 2–3× slower and
generated 3–5× slower than 1 (bench/chat.py measures it in each run). A set
`threads` is used as given.

Each answer's usage carries llama.cpp's own count of the prompt tokens it
evaluated and the seconds that took: llama-cpp-python keeps the longest common
start of consecutive prompts in the KV cache, so a /검색 turn after another
evaluates only what follows the shared RAG instruction. A plain turn in between
would overwrite it; so the fixed start of a sourced prompt (what precedes its
first source: BOS, the user header, the instruction — 64 tokens with the demo
model) is kept as a llama.cpp state snapshot, about 18 KB a token here, and put
back in a few milliseconds where it would take 64 tokens of prompt evaluation
(`_FixedStart`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from korani_cli.backends import Generation, GenerationParams, ModelInfo, ModelSpec, Notify, Usage, apply_stops
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, ModelLoadError, UsageError
from korani_cli.template import Message, Source, flatten_sources, render

# Where Linux counts the runnable tasks (its fourth field, "running/total"): see free_cores.
LOADAVG = "/proc/loadavg"
# A GGUF string: a JSON list of the literals the original pre-tokenizer splits the text on and removes.
SPLIT_KEY = "korani.tokenizer.split_removed"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence llama.cpp's C-level loader chatter, which ignores verbose=False.

    It writes straight to file descriptor 2, so Python-level redirection can't
    catch it; with --debug it is left alone.
    """
    from korani_cli.runtime import debug_enabled

    if debug_enabled():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class SplitTokenizer:
    """llama-cpp-python's tokenizer behind the original pre-tokenizer's first steps.

    transformers' `Split(literal, behavior=Removed)` does not just delete the
    literal: it cuts the text there, and the byte-level step after it splits
    each piece on its own ("가ೱ나" is tokenised as "가" then "나", never as
    "가나"). So the text is cut at every literal, in the original's order, and
    llama.cpp tokenises each piece. Special tokens need no care: the
    originals parse them before any pre-tokenizer step, and none contains a
    literal (export refuses a tokenizer where one does)."""

    def __init__(self, inner, removed: Sequence[str], bos: int | None, eos: int | None):
        self.inner = inner
        self.removed = [literal.encode("utf-8") for literal in removed]
        self.bos, self.eos = bos, eos  # added around the whole text, as llama_tokenize's add_special does

    def pieces(self, text: bytes) -> list[bytes]:
        pieces = [text]
        for literal in self.removed:
            pieces = [part for piece in pieces for part in piece.split(literal)]
        return [piece for piece in pieces if piece]

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        ids = [self.bos] if add_bos and self.bos is not None else []
        for piece in self.pieces(text):
            ids += self.inner.tokenize(piece, False, special)
        if add_bos and self.eos is not None:
            ids.append(self.eos)
        return ids

    def detokenize(self, tokens, prev_tokens=None, special: bool = False) -> bytes:
        return self.inner.detokenize(tokens, prev_tokens=prev_tokens, special=special)


def apply_tokenizer_rules(llm, name: str) -> tuple[str, ...]:
    """Put `SplitTokenizer` in front of `llm`'s tokenizer when its GGUF asks for it (a `Llama`,
    vocab-only or not); returns the literals it removes."""
    import json

    import llama_cpp

    raw = llm.metadata.get(SPLIT_KEY)
    if raw is None:
        return ()
    try:
        removed = json.loads(raw)
    except ValueError:
        removed = None
    if not isinstance(removed, list) or not removed or not all(isinstance(s, str) and s for s in removed):
        raise ModelLoadError(
            f"{name} carries an unreadable {SPLIT_KEY} ({raw[:60]!r})",
            "export the model again with `korani train export-gguf` or `korani models pull --force`",
        )
    vocab = llm._model.vocab
    bos = llm.token_bos() if llama_cpp.llama_vocab_get_add_bos(vocab) else None
    eos = llm.token_eos() if llama_cpp.llama_vocab_get_add_eos(vocab) else None
    llm.tokenizer_ = SplitTokenizer(llm.tokenizer_, removed, bos, eos)
    return tuple(removed)


def free_cores(cores: int, samples: int = 5) -> int:
    """How many of `cores` no other task is running on now: `cores` less the runnable tasks
    /proc/loadavg counts besides the reader (the median of a few reads a millisecond apart, so a
    task that wakes for an instant does not count), at least 1. Where there is no /proc (macOS,
    Windows), every core."""
    import time

    counts = []
    for i in range(samples):
        try:
            with open(LOADAVG, encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return cores
        counts.append(running - 1)  # the reader itself is running
        if i + 1 < samples:
            time.sleep(0.001)
    others = sorted(counts)[len(counts) // 2]
    return max(1, min(cores, cores - others))


def machine_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LlamaCppBackend:
    def __init__(self, llm, info: ModelInfo, threads: int | None = None):
        self.llm = llm
        self.info = info
        # A set thread count is kept; None: chosen per answer from the cores free then (free_cores).
        self.fixed_threads = threads
        self.threads = threads or llm.n_threads  # the count the last answer ran with
        self.fixed_start = _FixedStart(llm)
        import llama_cpp

        self._is_eog = lambda token: llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
        # The EOS text the KoRani template writes after earlier Bot turns; the
        # prompt is tokenized with special=True so it becomes the EOS token.
        self.eos_text = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        self._formatter = None  # the GGUF's chat template, built on first use (--template model)

    @classmethod
    def load(cls, spec: ModelSpec, settings: Settings, notify: Notify) -> "LlamaCppBackend":
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelLoadError(
                "llama-cpp-python is not installed", "pip install 'korani[llamacpp]'"
            ) from None
        path = Path(spec.source)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}", "check the path")
        threads = settings.threads or machine_cores()  # auto starts with all; each answer picks again
        try:
            with _quiet_native_stderr():
                llm = Llama(
                    model_path=str(path),
                    n_ctx=settings.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {path.name} with n_ctx={settings.n_ctx} ({exc})",
                "check that the file is a complete GGUF model (re-download it) and that it fits in memory "
                "(a smaller n_ctx in the config file needs less)",
            ) from None
        removed = apply_tokenizer_rules(llm, path.name)
        if settings.template == "model" and not llm.metadata.get("tokenizer.chat_template"):
            raise UsageError(f"{path.name} ships no chat template", "use --template korani")
        info = ModelInfo(
            name=spec.name,
            backend="llamacpp",
            context_length=llm.n_ctx(),
            template=settings.template,
            details={
                "path": str(path),
                "threads": settings.threads or "auto",
                "train_context": llm._model.n_ctx_train(),
                **({"split_removed": list(removed)} if removed else {}),
            },
        )
        return cls(llm, info, settings.threads)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def prompt_text(self, messages: Sequence[Message]) -> str:
        if self.info.template == "model":
            return self._chat_formatter()(messages=[flatten_sources(m).to_dict() for m in messages]).prompt
        return render(messages, self.eos_text)

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        # The model's own template writes its special tokens itself (BOS among them, when it has one).
        add_bos = self.info.template != "model"
        return self.llm.tokenize(self.prompt_text(messages).encode("utf-8"), add_bos=add_bos, special=True)

    def _chat_formatter(self):
        """The GGUF's chat template as llama-cpp-python renders it for create_chat_completion."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model, llm = self.llm._model, self.llm
            self._formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=model.token_get_text(llm.token_eos()) if llm.token_eos() != -1 else "",
                bos_token=model.token_get_text(llm.token_bos()) if llm.token_bos() != -1 else "",
            )
        return self._formatter

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        return Generation(lambda usage: apply_stops(self._complete(messages, params, usage), usage))

    def _budget(self, n_prompt: int, params: GenerationParams) -> int:
        room = self.llm.n_ctx() - n_prompt
        if room <= 0:
            raise GenerationError(
                f"the prompt is {n_prompt} tokens but the context window is {self.llm.n_ctx()}",
                "shorten the input or raise n_ctx in the config file",
            )
        return min(params.max_new_tokens, room)

    def _prompt(self, messages) -> list[int]:
        try:
            return self.prompt_tokens(messages)
        except Exception as exc:  # the chat template's own raise_exception, or a Jinja error in it
            if self.info.template != "model":
                raise
            raise GenerationError(
                f"the model's chat template cannot render this conversation ({exc})",
                "retry with --template korani",
            ) from None

    def _fixed_tokens(self, messages, tokens: list[int]) -> list[int]:
        """The start of a sourced prompt that no source or question changes: what it shares
        with the same prompt asked about other sources."""
        other = Message(messages[-1].role, "?", (Source("?", "?", "?"),))
        return tokens[: _shared(tokens, self._prompt([*messages[:-1], other]))]

    def _set_threads(self) -> None:
        if self.fixed_threads is not None:
            return
        threads = free_cores(machine_cores())
        if threads != self.threads:
            self.llm._ctx.set_n_threads(threads, threads)
            self.threads = threads

    def _complete(self, messages, params: GenerationParams, usage: Usage) -> Iterator[str]:
        tokens = self._prompt(messages)
        usage.prompt_tokens = len(tokens)
        usage.completion_tokens = 0
        budget = self._budget(len(tokens), params)
        if params.seed is not None:
            self.llm.set_seed(params.seed)
        # The model's own template is sampled as create_chat_completion samples it (no repeat
        # penalty); the KoRani prompt keeps the penalty the base models need to not loop.
        repeat_penalty = 1.0 if self.info.template == "model" else 1.1
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._set_threads()
        perf = _PromptPerf(self.llm)
        try:
            if messages and messages[-1].sources:
                self.fixed_start.prepare(tokens, self._fixed_tokens(messages, tokens))
            for token in self.llm.generate(
                tokens,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=40,
                min_p=0.05,
                repeat_penalty=repeat_penalty,
            ):
                perf.read(usage)  # the first token: the prompt's evaluation is over
                if self._is_eog(token):
                    usage.finish_reason = "eos"
                    break
                usage.completion_tokens += 1
                text = decoder.decode(self.llm.detokenize([token]))
                if text:
                    yield text
                if usage.completion_tokens >= budget:
                    usage.finish_reason = "length"
                    break
        except RuntimeError as exc:  # llama_decode failures surface as RuntimeError
            raise GenerationError(
                f"llama.cpp failed while generating ({exc})", "retry; if it persists, lower n_ctx"
            ) from None
        # Bytes still waiting here are half a character (a byte-level vocabulary spells a Hangul
        # syllable in several tokens and the limit fell between them): dropped, where a final decode
        # would print them as "\ufffd".


class _PromptPerf:
    """llama.cpp's own count of one prompt's evaluation: its counters are zeroed before
    `generate`, and read once, when the first token comes (batches of more than one token are
    what llama.cpp counts as prompt evaluation; a prompt held whole in the cache counts none)."""

    def __init__(self, llm):
        import llama_cpp

        self.ctx, self.api, self.done = llm._ctx.ctx, llama_cpp, False
        self.api.llama_perf_context_reset(self.ctx)

    def read(self, usage: Usage) -> None:
        if self.done:
            return
        self.done = True
        data = self.api.llama_perf_context(self.ctx)
        usage.prompt_eval_tokens = int(data.n_p_eval)
        usage.prompt_eval_s = data.t_p_eval_ms / 1000


def _shared(a, b) -> int:
    """How many tokens two token sequences share from their start."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if len(differ) else n


class _FixedStart:
    """The fixed start of a sourced prompt, kept as a llama.cpp state snapshot.

    `prepare(tokens, fixed)` runs just before `Llama.generate(tokens)`: where the KV cache
    does not hold `fixed` already (a plain turn came in between), it is put back from the
    snapshot, or evaluated and snapshotted; generate's own prefix match then evaluates only
    what follows it. The snapshot holds the fixed tokens alone, so it stays small."""

    def __init__(self, llm):
        self.llm = llm
        self.tokens: list[int] = []
        self.state: bytes | None = None

    def prepare(self, tokens: list[int], fixed: list[int]) -> None:
        llm = self.llm
        # Fewer than all of the prompt: generate must still evaluate a token to sample from.
        fixed = fixed[: len(tokens) - 1]
        held = _shared(llm.input_ids[: llm.n_tokens], fixed)
        if not fixed or held == len(fixed):
            return
        if self.state is not None and self.tokens == fixed:
            self._load()
            return
        if held and not llm._ctx.kv_cache_seq_rm(-1, held, -1):
            held = 0  # a cache that cannot drop its end (a recurrent model's): start it afresh
            llm.reset()
        llm.n_tokens = held  # eval evaluates the rest after what the cache holds
        llm.eval(fixed[held:])
        self._save(fixed)

    def _save(self, fixed: list[int]) -> None:
        import ctypes

        import llama_cpp

        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_get_size(ctx)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_get_data(ctx, buffer, size)
        self.tokens, self.state = list(fixed), bytes(buffer[:written])

    def _load(self) -> None:
        import ctypes

        import llama_cpp

        llm, state = self.llm, self.state
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_set_data(llm._ctx.ctx, buffer, len(state)) != len(state):
            llm.reset()  # not restored: generate evaluates the whole prompt, as without a snapshot
            return
        n = len(self.tokens)
        llm.input_ids[:n] = self.tokens
        llm.n_tokens = n
        llm._requires_eval = True  # the logits are the snapshot's: generate must decode before sampling
