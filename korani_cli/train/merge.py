"""LoRA weights folded into the base model.

The base is loaded in full precision — never 4-bit — even when the adapter
was trained on a 4-bit base (QLoRA): merging into quantised weights would
round the LoRA update away. No DeepSpeed is involved. Written through a
temporary directory (`.NAME.tmp-PID`, signed as korani's output), renamed
when complete; `-o` follows korani's rule for output directories
(`outputs.guard_output_dir`): never the adapter, the base, the working
directory or a directory korani did not write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from korani_cli import modelref
from korani_cli.errors import ModelLoadError, UsageError
from korani_cli.outputs import guard_output_dir, reap_stale, replace_dir, temp_dir, write_marker
from korani_cli.train.model import pretrained_source, settle_gguf

DTYPES = ("float16", "bfloat16", "float32")


def adapter_base(adapter: Path) -> str:
    """The base model an adapter directory was trained on."""
    config_path = adapter / "adapter_config.json"
    hint = "pass the output directory of `korani train`"
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter} is not a LoRA adapter (no adapter_config.json)", hint)
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_path} ({exc.__class__.__name__})", hint) from None
    base = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(f"{config_path} names no base model (base_model_name_or_path)", hint)
    modelref.check_base(base, str(config_path))
    return base


def load_merged(adapter: Path, dtype: str = "float16", base: str | None = None):
    """(merged model, the adapter's tokenizer — the base's when the adapter has none —, base name), in memory.

    `base` replaces the base the adapter names (a downloaded copy of it, for `korani models pull`)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    base = base or adapter_base(adapter)
    from korani_cli.runtime import quiet_libraries

    quiet_libraries()  # the spinner is the progress; shard-writing bars would break it
    import pickle

    import torch
    from peft import PeftModel
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A missing, foreign or broken base; an adapter of another shape; weights that are not what their
    # names say (a cut download, a .bin that is no pickle, a .safetensors with a bad header).
    unloadable = (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError)

    try:
        base_name, source = pretrained_source(base)
        model = AutoModelForCausalLM.from_pretrained(base_name, **source, dtype=getattr(torch, dtype))
        settle_gguf(model, base)
        has_tokenizer = any(
            (adapter / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
        )
        tokenizer = (
            AutoTokenizer.from_pretrained(adapter)
            if has_tokenizer
            else AutoTokenizer.from_pretrained(base_name, **source)
        )
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        align_special_ids(model, tokenizer)
    except unloadable as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(
            f"cannot load {adapter} onto its base '{base}' ({first})",
            "make the base model available locally or online, with all of its weight files intact",
        ) from None
    return model, tokenizer, base


def align_special_ids(model, tokenizer) -> None:
    """The merged model names its tokenizer's special ids. polyglot-ko's config.json says
    bos/eos 0, which its tokenizer calls <|pad|>; a merged directory that kept them would make
    whatever serves it (and llama.cpp's converter, for BOS) use the wrong ids. BOS, which the
    tokenizer does not define, becomes EOS, as in GPT-NeoX's own configs."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return
    ids = {
        "eos_token_id": eos,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            for key, value in ids.items():
                if value is not None:
                    setattr(config, key, value)


def merge(adapter: Path, output: Path, dtype: str = "float16", overwrite: bool = False) -> dict:
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    base = adapter_base(adapter)
    # Judged before the (slow) load: never the adapter, a local base, the working directory, or foreign files.
    sources = [adapter] + ([Path(base)] if Path(base).exists() else [])
    guard_output_dir(output, overwrite=overwrite, sources=sources)
    reap_stale(output)
    model, tokenizer, base = load_merged(adapter, dtype)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {output.parent} ({exc.strerror})", "choose another -o") from None
    tmp = temp_dir(output)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, "train merge", adapter=str(adapter.resolve()), base=base, dtype=dtype)
        replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"base": base, "adapter": str(adapter), "output": str(output)}
