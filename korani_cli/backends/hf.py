"""hf backend: transformers AutoModelForCausalLM, optionally with a PEFT adapter.

- An adapter (a directory or hub id with adapter_config.json) is loaded on the
  base model its config names; its own tokenizer (which carries the KoRani
  chat template when korani trained it) wins over the base's.
- On CUDA the base loads in 4-bit NF4 with double quantisation and bf16
  compute (bitsandbytes) — the QLoRA recipe's inference twin. On CPU it loads
  in float32, announced in one line: bf16 matmuls are unusably slow on CPUs
  without AMX/AVX-512.
- Streaming runs `generate` in a thread feeding a TextIteratorStreamer; a
  stopping criterion watches an Event so a header cut or Ctrl-C ends the
  thread's work too, not just our reading of it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from korani_cli import modelref
from korani_cli.backends import (
    OFFLINE_FIX,
    Generation,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    Notify,
    Usage,
    apply_stops,
)
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, ModelLoadError, UsageError
from korani_cli.template import HEADER_STOP, Message, flatten_sources, render


def _adapter_base(source: str, local_only: bool) -> str | None:
    """The base model named by a hub adapter's adapter_config.json, or None if `source` is no adapter."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hf_hub_download(source, "adapter_config.json", local_files_only=local_only)
    except LocalEntryNotFoundError:
        # Offline and not cached (a subclass of EntryNotFoundError, so first).
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local path, the Hugging Face Hub is unreachable and it is "
            "not in the local cache",
            OFFLINE_FIX,
        ) from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"'{source}' is neither a local path nor a model on the Hugging Face Hub", OFFLINE_FIX
        ) from None
    except Exception as exc:  # offline, DNS, timeouts, gated repos: all mean "cannot get it now"
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local path, the Hugging Face Hub is unreachable and it is "
            f"not cached ({exc.__class__.__name__})",
            OFFLINE_FIX,
        ) from None
    base = json.loads(Path(path).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if isinstance(base, str):
        modelref.check_base(base, f"the adapter '{source}'", OFFLINE_FIX)
    return base


def _has_tokenizer(source: str) -> bool:
    directory = Path(source)
    return directory.is_dir() and any(
        (directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )


class IncrementalStreamer:
    """A transformers streamer that decodes each new token in O(1).

    TextIteratorStreamer re-decodes everything since the last newline at
    every step, which grows quadratically on long lines; this keeps a short
    window (the TGI prefix/read-offset technique) and holds back text that
    ends in an incomplete UTF-8 sequence, common with Korean byte-level BPE.
    """

    _END = object()

    def __init__(self, tokenizer, n_prompt: int):
        import queue

        self.tokenizer = tokenizer
        self.n_prompt = n_prompt
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, value) -> None:
        ids = value.reshape(-1).tolist()
        if self.n_prompt:  # generate() first hands over the prompt itself
            ids = ids[self.n_prompt :] if len(ids) >= self.n_prompt else []
            self.n_prompt = 0
        for token in ids:
            self.ids.append(token)
            decode = self.tokenizer.decode
            before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
            after = decode(self.ids[self.prefix :], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                self.queue.put(after[len(before) :])
                self.prefix, self.read = self.read, len(self.ids)

    def end(self) -> None:
        tail = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        if len(tail) > len(before):
            self.queue.put(tail[len(before) :])
        self.queue.put(self._END)

    def __iter__(self):
        while (item := self.queue.get()) is not self._END:
            yield item


class HFBackend:
    def __init__(self, model, tokenizer, info: ModelInfo):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.eos_text = tokenizer.eos_token or ""

    @classmethod
    def load(cls, spec: ModelSpec, settings: Settings, notify: Notify) -> "HFBackend":
        try:
            import torch  # noqa: F401  (checked here: the steps below import it again)
            import transformers  # noqa: F401
        except ImportError:
            raise ModelLoadError("transformers/torch are not installed", "pip install 'korani[hf]'") from None

        from korani_cli.runtime import quiet_libraries

        quiet_libraries()
        weights = _locate(spec)
        placement = _placement()
        model, tokenizer = _from_pretrained(spec, weights, placement)
        model.eval()
        if placement.device == "cpu":
            notify(
                "no CUDA GPU: running on CPU in float32 (slow for large models; a GPU loads it in 4-bit NF4)"
            )
        if settings.template == "model" and not tokenizer.chat_template:
            raise UsageError(f"{spec.name} ships no chat template", "use --template korani")
        config = getattr(model, "config", None)
        info = ModelInfo(
            name=spec.name,
            backend="hf",
            context_length=getattr(config, "max_position_embeddings", None),
            template=settings.template,
            details={
                "base": weights.base,
                "adapter": weights.adapter,
                "device": placement.device,
                "dtype": placement.dtype,
            },
        )
        return cls(model, tokenizer, info)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, messages: Sequence[Message]) -> str:
        if self.info.template == "model":
            chat = [flatten_sources(m).to_dict() for m in messages]
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return render(messages, self.eos_text)

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        return Generation(lambda usage: apply_stops(self._generate(messages, params, usage), usage))

    def _generate(self, messages, params: GenerationParams, usage: Usage) -> Iterator[str]:
        """Encode, then generate whole or streamed. A generator, so that a prompt too long
        for the context fails when the answer is read, as every backend's does."""
        from transformers import set_seed

        enc, n_prompt, max_new = self._encode(messages, params, usage)
        if params.seed is not None:
            set_seed(params.seed)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sampling = params.temperature > 0
        gen_kwargs = dict(
            **enc, max_new_tokens=max_new, do_sample=sampling, eos_token_id=eos, pad_token_id=pad
        )
        if sampling:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
        run = _Run(gen_kwargs, n_prompt, max_new, eos, usage)
        if params.stream:
            yield from self._streamed(run)
        else:
            yield from self._whole(run)

    def _encode(self, messages, params: GenerationParams, usage: Usage) -> tuple[dict, int, int]:
        """The prompt's tensors on the model's device, its length, and how many new tokens fit after it."""
        # A model-template prompt already holds its special tokens (BOS etc.).
        add_special = self.info.template != "model"
        enc = self.tokenizer(self.prompt_text(messages), return_tensors="pt", add_special_tokens=add_special)
        enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        n_prompt = enc["input_ids"].shape[1]
        usage.prompt_tokens = n_prompt
        limit = self.info.context_length
        max_new = params.max_new_tokens
        if limit:
            if n_prompt >= limit:
                raise GenerationError(
                    f"the prompt is {n_prompt} tokens but the model's context is {limit}",
                    "shorten the input",
                )
            max_new = min(max_new, limit - n_prompt)
        return enc, n_prompt, max_new

    def _whole(self, run: "_Run") -> Iterator[str]:
        """Nobody watches the text arrive: generate in this thread, no streamer, and let
        generate() itself stop at the next header. (A worker thread costs torch ~0.5 ms a
        token: noticeable on small models.)"""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer, usage, n_prompt = self.tokenizer, run.usage, run.n_prompt

        class HeaderStop(StoppingCriteria):
            """Called after every new token, so its first call is when the first token was made."""

            def __call__(self, input_ids, scores, **kwargs):
                if usage.first_token_at is None:
                    usage.first_token_at = time.perf_counter()
                tail = tokenizer.decode(
                    input_ids[0, max(n_prompt, input_ids.shape[1] - 6) :], skip_special_tokens=True
                )
                return HEADER_STOP in tail

        usage.whole = True
        try:
            with torch.inference_mode():
                ids = self.model.generate(
                    **run.gen_kwargs, stopping_criteria=StoppingCriteriaList([HeaderStop()])
                )
        except Exception as exc:
            raise _failed(exc) from None
        yield tokenizer.decode(run.count(ids), skip_special_tokens=True)

    def _streamed(self, run: "_Run") -> Iterator[str]:
        """generate() in a worker thread feeding an IncrementalStreamer; closing this
        generator (a header cut, Ctrl-C) sets an Event that stops generate() too."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancel = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        streamer = IncrementalStreamer(self.tokenizer, run.n_prompt)
        outcome: dict = {}

        def work():
            try:
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(
                        **run.gen_kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    )
            except BaseException as exc:  # surfaced in the consumer thread
                outcome["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, name="korani-hf-generate", daemon=True)
        thread.start()
        try:
            for text in streamer:
                if text:
                    yield text
        finally:
            cancel.set()
            thread.join()
            ids = outcome.get("ids")
            if ids is not None:
                run.count(ids)
        if "error" in outcome:
            raise _failed(outcome["error"]) from None


@dataclass(frozen=True)
class _Weights:
    """Where the weights come from: a base model, maybe with a PEFT adapter on it."""

    base: str
    adapter: str | None
    local_only: bool  # the Hub is unreachable: only the local cache may serve


@dataclass(frozen=True)
class _Placement:
    """Where and how the weights sit: 4-bit NF4 on CUDA, float32 on CPU."""

    device: str  # cuda | cpu
    dtype: str  # as ModelInfo.details shows it
    kwargs: dict  # for from_pretrained


def _locate(spec: ModelSpec) -> _Weights:
    """The base model and adapter behind `spec`; a hub source is asked whether it is an adapter."""
    from korani_cli.runtime import hub_reachable

    is_local = Path(spec.source).is_dir()
    local_only = not is_local and not hub_reachable()
    if spec.base or not is_local:
        named_base = spec.base if is_local else _adapter_base(spec.source, local_only)
        if named_base:
            return _Weights(named_base, spec.source, local_only)
    return _Weights(spec.source, None, local_only)


def _placement() -> _Placement:
    import torch

    if not torch.cuda.is_available():
        return _Placement("cpu", "float32", {"dtype": torch.float32})
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return _Placement("cuda", "nf4/bf16", {"quantization_config": quantization, "device_map": {"": 0}})


def _from_pretrained(spec: ModelSpec, weights: _Weights, placement: _Placement):
    """(model, tokenizer): the adapter's own tokenizer wins over the base's; load failures are
    ModelLoadErrors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, base, local_only = weights.adapter, weights.base, weights.local_only
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            adapter if adapter and _has_tokenizer(adapter) else base, local_files_only=local_only
        )
        model = AutoModelForCausalLM.from_pretrained(base, local_files_only=local_only, **placement.kwargs)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, local_files_only=local_only)
    except ImportError as exc:
        raise ModelLoadError(
            f"a library needed to load {spec.name} is missing ({exc})", "pip install 'korani[all]'"
        ) from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"cannot load '{spec.name}' ({first})", OFFLINE_FIX) from None
    return model, tokenizer


@dataclass
class _Run:
    """One generate() call: its arguments, and what counting its ids needs."""

    gen_kwargs: dict
    n_prompt: int
    max_new: int
    eos: int | None
    usage: Usage

    def count(self, ids) -> list:
        return _count(ids[0, self.n_prompt :].tolist(), self.eos, self.max_new, self.usage)


def _failed(exc: BaseException) -> GenerationError:
    return GenerationError(
        f"generation failed ({exc.__class__.__name__}: {exc})", "retry with --debug for details"
    )


def _count(new: list, eos: int | None, max_new: int, usage) -> list:
    """Fill usage from generated ids; return them without EOS and what follows.

    generate() pads finished rows, so counting stops at EOS. Neither EOS nor the
    limit means korani cut the answer (a header or Ctrl-C): finish_reason is left
    to whoever cut it.
    """
    ended = eos is not None and eos in new
    if ended:
        new = new[: new.index(eos)]
    usage.completion_tokens = len(new)
    if usage.finish_reason is None and (ended or len(new) >= max_new):
        usage.finish_reason = "eos" if ended else "length"
    return new
