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
from pathlib import Path
from typing import Iterator, Sequence

from korani_cli import template as tpl
from korani_cli.backends import Generation, GenerationParams, ModelInfo, Notify, Usage, apply_stops
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, ModelLoadError, UsageError
from korani_cli.models import OFFLINE_FIX, ModelSpec


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? Decided in seconds, not after
    huggingface_hub's minute of retries; when not, loads use the local cache only."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parts = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _adapter_base(source: str, local_only: bool) -> str | None:
    """The base model named by a hub adapter's adapter_config.json, or None if `source` is no adapter."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hf_hub_download(source, "adapter_config.json", local_files_only=local_only)
    except LocalEntryNotFoundError:
        # Offline and not cached (a subclass of EntryNotFoundError, so first).
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local path, the Hugging Face Hub is unreachable and it is not in the local cache",
            OFFLINE_FIX,
        ) from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"'{source}' is neither a local path nor a model on the Hugging Face Hub", OFFLINE_FIX) from None
    except Exception as exc:  # offline, DNS, timeouts, gated repos: all mean "cannot get it now"
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local path, the Hugging Face Hub is unreachable and it is not cached ({exc.__class__.__name__})",
            OFFLINE_FIX,
        ) from None
    return json.loads(Path(path).read_text(encoding="utf-8")).get("base_model_name_or_path")


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
            ids = ids[self.n_prompt:] if len(ids) >= self.n_prompt else []
            self.n_prompt = 0
        for token in ids:
            self.ids.append(token)
            decode = self.tokenizer.decode
            before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
            after = decode(self.ids[self.prefix:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                self.queue.put(after[len(before):])
                self.prefix, self.read = self.read, len(self.ids)

    def end(self) -> None:
        tail = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        if len(tail) > len(before):
            self.queue.put(tail[len(before):])
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
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ModelLoadError("transformers/torch are not installed", "pip install 'korani[hf]'") from None

        from korani_cli.console import quiet_libraries

        quiet_libraries()

        is_local = Path(spec.source).is_dir()
        local_only = not is_local and not hub_reachable()
        adapter, base = None, spec.source
        if spec.base or not is_local:
            named_base = spec.base if is_local else _adapter_base(spec.source, local_only)
            if named_base:
                adapter, base = spec.source, named_base

        kwargs: dict = {}
        if torch.cuda.is_available():
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": 0}
            device, dtype = "cuda", "nf4/bf16"
        else:
            kwargs["dtype"] = torch.float32
            device, dtype = "cpu", "float32"

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                adapter if adapter and _has_tokenizer(adapter) else base, local_files_only=local_only
            )
            model = AutoModelForCausalLM.from_pretrained(base, local_files_only=local_only, **kwargs)
            if adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter, local_files_only=local_only)
        except ImportError as exc:
            raise ModelLoadError(f"a library needed to load {spec.name} is missing ({exc})", "pip install 'korani[all]'") from None
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelLoadError(f"cannot load '{spec.name}' ({first})", OFFLINE_FIX) from None
        model.eval()
        if device == "cpu":
            notify("no CUDA GPU: running on CPU in float32 (slow for large models; a GPU loads it in 4-bit NF4)")
        if settings.template == "model" and not tokenizer.chat_template:
            raise UsageError(f"{spec.name} ships no chat template", "use --template korani")
        config = getattr(model, "config", None)
        info = ModelInfo(
            name=spec.name,
            backend="hf",
            context_length=getattr(config, "max_position_embeddings", None),
            template=settings.template,
            details={"base": base, "adapter": adapter, "device": device, "dtype": dtype},
        )
        return cls(model, tokenizer, info)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, messages: Sequence[tpl.Message]) -> str:
        if self.info.template == "model":
            chat = [tpl.flatten_sources(m).to_dict() for m in messages]
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return tpl.render(messages, self.eos_text)

    def stream(self, messages: Sequence[tpl.Message], params: GenerationParams) -> Generation:
        return Generation(lambda usage: apply_stops(self._generate(messages, params, usage), usage))

    def _generate(self, messages, params: GenerationParams, usage: Usage) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

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
        if params.seed is not None:
            set_seed(params.seed)

        cancel = threading.Event()
        tokenizer = self.tokenizer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        class HeaderStop(StoppingCriteria):
            """Without a streaming consumer, stop generate() itself at the next header.
            Called after every new token, so its first call is when the first token was made."""

            def __call__(self, input_ids, scores, **kwargs):
                if usage.first_token_at is None:
                    usage.first_token_at = time.perf_counter()
                tail = tokenizer.decode(input_ids[0, max(n_prompt, input_ids.shape[1] - 6):], skip_special_tokens=True)
                return tpl.HEADER_STOP in tail

        streamer = IncrementalStreamer(self.tokenizer, n_prompt)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sampling = params.temperature > 0
        gen_kwargs = dict(
            **enc,
            max_new_tokens=max_new,
            do_sample=sampling,
            eos_token_id=eos,
            pad_token_id=pad,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
        )
        if sampling:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if not params.stream:
            # Nobody watches the text arrive: generate in this thread, no streamer.
            # (A worker thread costs torch ~0.5 ms a token: noticeable on small models.)
            del gen_kwargs["streamer"]
            gen_kwargs["stopping_criteria"] = StoppingCriteriaList([HeaderStop()])
            usage.whole = True
            try:
                with torch.inference_mode():
                    ids = self.model.generate(**gen_kwargs)
            except Exception as exc:
                raise GenerationError(f"generation failed ({exc.__class__.__name__}: {exc})", "retry with --debug for details") from None
            new = _count(ids[0, n_prompt:].tolist(), eos, max_new, usage)
            yield self.tokenizer.decode(new, skip_special_tokens=True)
            return
        outcome: dict = {}

        def work():
            try:
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(**gen_kwargs)
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
                _count(ids[0, n_prompt:].tolist(), eos, max_new, usage)
        if "error" in outcome:
            exc = outcome["error"]
            raise GenerationError(f"generation failed ({exc.__class__.__name__}: {exc})", "retry with --debug for details") from None


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
