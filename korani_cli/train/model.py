"""Recipe → library objects (quantisation, LoRA, DeepSpeed, device plan),
loading the base model with its LoRA adapter, and checks of the loaded model
(LoRA target modules, packing support).

`plan_device` decides once what the hardware allows and returns the
adjustments with the one-line notices that explain them, so the run can
print them and the metadata can record them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from korani_cli.errors import ConfigError, UsageError
from korani_cli.train import presets
from korani_cli.train.config import TrainConfig

DS_NAMES = ("zero2", "zero3", "zero2_offload", "zero3_offload")  # configs/ds_NAME.json, shipped in the wheel


@dataclass(frozen=True)
class DevicePlan:
    cuda: bool
    bf16: bool
    compute_dtype: str
    optim: str
    notices: list = field(default_factory=list)


def plan_device(config: TrainConfig, cuda: bool) -> DevicePlan:
    notices = []
    if cuda:
        return DevicePlan(True, config.bf16, config.bnb_4bit_compute_dtype, config.optim, notices)
    if config.bf16 or config.bnb_4bit_compute_dtype != "float32":
        notices.append(
            "no CUDA GPU: training in float32 on CPU (bf16 is unusably slow on CPUs without AMX/AVX-512)"
        )
    optim = config.optim
    if "paged" in optim or "8bit" in optim:
        notices.append(f"no CUDA GPU: optimizer {optim} needs CUDA; using adamw_torch")
        optim = "adamw_torch"
    return DevicePlan(False, False, "float32", optim, notices)


def resolve_deepspeed(name_or_path: str | None) -> Path | None:
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UsageError(
                f"DeepSpeed config not found: {path}", f"pass one of {', '.join(DS_NAMES)} or a JSON file"
            )
        return path.resolve()
    # A name is always the shipped file (inside the package when installed), never
    # whatever a `configs/` directory in the current directory happens to hold.
    shipped = presets.deepspeed_path(name_or_path)
    if shipped is not None:
        return shipped.resolve()
    raise UsageError(
        f"unknown DeepSpeed config '{name_or_path}'", f"use one of {', '.join(DS_NAMES)} or a JSON path"
    )


def check_combination(config: TrainConfig, ds_path: Path | None) -> None:
    """Refuse combinations known not to work, before any model is loaded."""
    if ds_path is None:
        return
    try:
        ds = json.loads(ds_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(
            f"{ds_path} is not valid JSON ({exc.__class__.__name__}: {exc})", "fix the DeepSpeed config"
        ) from None
    zero = ds.get("zero_optimization", {}) if isinstance(ds, dict) else None
    if not isinstance(zero, dict):
        raise UsageError(
            f"{ds_path} is not a DeepSpeed config (expected an object with 'zero_optimization')",
            "start from configs/ds_zero2.json",
        )
    stage = zero.get("stage", 0)
    if config.load_in_4bit and stage == 3:
        raise UsageError(
            "4-bit (QLoRA) weights cannot be partitioned by DeepSpeed ZeRO-3",
            "use --deepspeed zero2 with load_in_4bit=true, or load_in_4bit=false with zero3",
        )


def quantization_config(config: TrainConfig, plan: DevicePlan):
    if not config.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, plan.compute_dtype),
    )


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def pretrained_source(base: str) -> tuple[str, dict]:
    """`from_pretrained`'s (name, keyword arguments) for a base. A `.gguf` file — the demo's
    gemma-3-270m, say — loads from its directory with `gguf_file`: transformers dequantises
    it into ordinary weights of the dtype asked for (it needs the `gguf` distribution)."""
    path = Path(base)
    if path.suffix.lower() == ".gguf" and path.is_file():
        return str(path.resolve().parent), {"gguf_file": path.name}
    return base, {}


def settle_gguf(model, base: str) -> None:
    """A model loaded from a GGUF file keeps transformers' GGUF quantizer marker, which
    refuses `save_pretrained` although its weights are ordinary tensors: the marker goes.
    Its name becomes the file itself, so an adapter trained on it names a base that loads
    again (PEFT records the name; the directory alone would not)."""
    if not pretrained_source(base)[1]:
        return
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # transformers' own undoing: quantizer, config entry, method and the is_quantized flag.
        quantizer.remove_quantization_config(model)
    model.name_or_path = str(Path(base).resolve())
    model.config._name_or_path = model.name_or_path


def load_model(config: TrainConfig, plan: DevicePlan, base: str, vocab: int | None = None):
    """The base model, quantised when asked, made ready for k-bit training, with LoRA attached."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    quant = quantization_config(config, plan)
    kwargs = {"dtype": torch.bfloat16 if plan.bf16 else torch.float32}
    if quant is not None:
        kwargs["quantization_config"] = quant
        if plan.cuda:
            # One full copy per process: each rank's 4-bit model on its own GPU
            # (the launchers set LOCAL_RANK; a single process is rank 0).
            import os

            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    name, source = pretrained_source(base)
    model = AutoModelForCausalLM.from_pretrained(name, **source, **kwargs)
    settle_gguf(model, base)
    # A pad token added to the tokenizer usually fits in the embedding
    # matrix's spare rows (polyglot-ko pads its vocabulary); grow it otherwise.
    if vocab is not None and vocab > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab)
    if quant is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    check_target_modules(model, config.lora_target_modules, base)
    model = get_peft_model(model, lora_config(config))
    return model


def _adaptable(module) -> bool:
    """Layers PEFT's LoRA can wrap (bitsandbytes' 4-bit Linear is an nn.Linear)."""
    import torch

    kinds = [torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d]
    try:
        from transformers.pytorch_utils import Conv1D

        kinds.append(Conv1D)
    except ImportError:
        pass
    return isinstance(module, tuple(kinds))


def check_target_modules(model, targets: list[str], base: str) -> None:
    """Every `lora_target_modules` entry must name a layer LoRA can wrap. PEFT
    itself fails only when none matches, with a traceback, and silently skips
    a misspelt one beside a correct one."""
    layers = [name for name, module in model.named_modules() if name and _adaptable(module)]
    # PEFT's rule for a list of names: the full dotted name, or its last parts.
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in layers if not n.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(
            f"lora_target_modules: {', '.join(missing)} matches no linear layer of {base}",
            f"choose from: {', '.join(names)}",
        )


def supports_packing(model) -> bool:
    """Padding-free packing keeps samples apart only with varlen (flash) attention."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "flash" in impl
