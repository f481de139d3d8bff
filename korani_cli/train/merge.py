"""LoRA weights folded into the base model.

The base is loaded in full precision — never 4-bit — even when the adapter
was trained on a 4-bit base (QLoRA): merging into quantised weights would
round the LoRA update away. No DeepSpeed is involved. Written through a
temporary directory, renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from korani_cli.errors import ModelLoadError, UsageError

DTYPES = ("float16", "bfloat16", "float32")


def merge(adapter: Path, output: Path, dtype: str = "float16", overwrite: bool = False) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter} is not a LoRA adapter (no adapter_config.json)", "pass the output directory of `korani train`")
    base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists", "pass --overwrite or choose another -o")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except OSError as exc:
        raise ModelLoadError(f"cannot load the base model '{base}' ({str(exc).splitlines()[0]})", "make it available locally or online") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"base": base, "adapter": str(adapter), "output": str(output)}
