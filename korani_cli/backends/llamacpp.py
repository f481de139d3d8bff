"""llamacpp backend: a .gguf file through llama-cpp-python — the fast CPU path.

We drive `Llama.generate` token by token instead of `create_completion`, which
gives exact token counts, a true EOS signal (as opposed to "some stop
happened") and incremental UTF-8 decoding of Korean text whose characters
often span several tokens. `--template model` uses the GGUF's own chat
template through `create_chat_completion`.
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
from korani_cli.template import Message, flatten_sources, render

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


class LlamaCppBackend:
    def __init__(self, llm, info: ModelInfo):
        self.llm = llm
        self.info = info
        import llama_cpp

        self._is_eog = lambda token: llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
        # The EOS text the KoRani template writes after earlier Bot turns; the
        # prompt is tokenized with special=True so it becomes the EOS token.
        self.eos_text = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")

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
        threads = settings.threads or os.cpu_count() or 1
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
                "threads": threads,
                "train_context": llm._model.n_ctx_train(),
                **({"split_removed": list(removed)} if removed else {}),
            },
        )
        return cls(llm, info)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        prompt = render(messages, self.eos_text)
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        if self.info.template == "model":
            return Generation(lambda usage: apply_stops(self._chat(messages, params, usage), usage))
        return Generation(lambda usage: apply_stops(self._complete(messages, params, usage), usage))

    def _budget(self, n_prompt: int, params: GenerationParams) -> int:
        room = self.llm.n_ctx() - n_prompt
        if room <= 0:
            raise GenerationError(
                f"the prompt is {n_prompt} tokens but the context window is {self.llm.n_ctx()}",
                "shorten the input or raise n_ctx in the config file",
            )
        return min(params.max_new_tokens, room)

    def _complete(self, messages, params: GenerationParams, usage: Usage) -> Iterator[str]:
        tokens = self.prompt_tokens(messages)
        usage.prompt_tokens = len(tokens)
        usage.completion_tokens = 0
        budget = self._budget(len(tokens), params)
        if params.seed is not None:
            self.llm.set_seed(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for token in self.llm.generate(
                tokens, temp=params.temperature, top_p=params.top_p, top_k=40, min_p=0.05, repeat_penalty=1.1
            ):
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
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _chat(self, messages, params: GenerationParams, usage: Usage) -> Iterator[str]:
        chat = [flatten_sources(m).to_dict() for m in messages]
        try:
            chunks = self.llm.create_chat_completion(
                messages=chat,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stream=True,
            )
            usage.completion_tokens = 0
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    usage.completion_tokens += 1
                    yield text
                if choice.get("finish_reason"):
                    usage.finish_reason = "length" if choice["finish_reason"] == "length" else "eos"
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(
                f"llama.cpp failed while generating ({exc})", "retry with --template korani"
            ) from None
