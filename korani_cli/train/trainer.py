"""The SFTTrainer of one run: tokenizer, `SFTConfig`, trainer class and callbacks.

TRL's SFTTrainer tokenises each conversation through the KoRani chat
template stored on the tokenizer, and `assistant_only_loss` turns its
`{% generation %}` markers into labels: -100 everywhere except assistant
content and the EOS closing it. The pad token is never EOS, so padding can't
teach the model to stop — or not to.

The recipe reaches `SFTConfig` through one declared table (`RECIPE_TO_SFT`),
the values korani always sets (`SFT_FIXED`), and the few computed from the
device plan and the data (`sft_kwargs`). The callbacks report progress to a
`Reporter` and record a Ctrl-C or a non-finite loss in a `RunState`; what the
run does about either is `run.py`'s business, as are the output directory,
`--smoke` and the metadata. Nothing here prints.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from korani_cli.errors import ModelLoadError, UsageError
from korani_cli.train import data as train_data
from korani_cli.train import dist
from korani_cli.train import model as train_model
from korani_cli.train.config import TrainConfig


class Reporter(Protocol):
    """What the run tells its caller: notices, and progress by step."""

    def notice(self, message: str) -> None: ...

    def start(self, total_steps: int, first_step: int) -> None: ...

    def step(self, step: int, logs: dict) -> None: ...

    def finish(self) -> None: ...


class Silent:
    """A Reporter that says nothing (library callers, and every process but the first)."""

    def notice(self, message: str) -> None:
        pass

    def start(self, total_steps: int, first_step: int) -> None:
        pass

    def step(self, step: int, logs: dict) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class Divergence:
    """The first non-finite loss the trainer logged."""

    step: int
    key: str  # loss or eval_loss
    value: float


@dataclass
class RunState:
    """What the callbacks saw, for the run to act on once `train()` returns."""

    interrupted: bool = False  # Ctrl-C: save this step, then stop
    diverged: Divergence | None = None


# Recipe key → SFTConfig field, copied as they are. A recipe key may feed two
# fields (the seed orders the data too); `warmup_ratio` goes to `warmup_steps`,
# which reads a float below 1 as a ratio of the total steps.
RECIPE_TO_SFT: tuple[tuple[str, str], ...] = (
    ("max_steps", "max_steps"),
    ("num_train_epochs", "num_train_epochs"),
    ("per_device_train_batch_size", "per_device_train_batch_size"),
    ("per_device_eval_batch_size", "per_device_eval_batch_size"),
    ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    ("learning_rate", "learning_rate"),
    ("lr_scheduler_type", "lr_scheduler_type"),
    ("warmup_ratio", "warmup_steps"),
    ("adam_beta1", "adam_beta1"),
    ("adam_beta2", "adam_beta2"),
    ("weight_decay", "weight_decay"),
    ("gradient_checkpointing", "gradient_checkpointing"),
    ("eval_steps", "eval_steps"),
    ("save_steps", "save_steps"),
    ("save_total_limit", "save_total_limit"),
    ("logging_steps", "logging_steps"),
    ("seed", "seed"),
    ("seed", "data_seed"),
    ("dist_timeout", "ddp_timeout"),
    ("max_length", "max_length"),
    ("packing", "packing"),
    # Packed rows are padding-free: no pad tokens between samples.
    ("packing", "padding_free"),
)

# What korani sets the same way for every run.
SFT_FIXED: dict[str, Any] = {
    "save_strategy": "steps",
    # Log a NaN loss as NaN: transformers would log the mean of earlier losses
    # instead, and a diverged run would look healthy to StopOnNonFinite.
    "logging_nan_inf_filter": False,
    "report_to": ["tensorboard"],
    "disable_tqdm": True,  # the Reporter shows progress
    "assistant_only_loss": True,
    "save_only_model": False,  # a checkpoint must hold the optimizer for --resume
}


def sft_kwargs(
    config: TrainConfig,
    plan: train_model.DevicePlan,
    output: Path,
    *,
    deepspeed: Path | None,
    evaluate: bool,
    eos_token: str,
) -> dict[str, Any]:
    """The keyword arguments of `SFTConfig` for this run (no TRL import: a pure function)."""
    kwargs = {field: getattr(config, key) for key, field in RECIPE_TO_SFT}
    kwargs.update(SFT_FIXED)
    kwargs.update(
        output_dir=str(output),
        optim=plan.optim,  # the device plan's, not the recipe's: paged 8-bit Adam needs CUDA
        bf16=plan.bf16,
        use_cpu=not plan.cuda,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        eval_strategy="steps" if evaluate else "no",
        deepspeed=str(deepspeed) if deepspeed else None,
        train_sampling_strategy="random" if config.packing else "group_by_length",
        # TRL mirrors it onto the model's config and generation config.
        eos_token=eos_token,
    )
    return kwargs


def prepare_tokenizer(base: str):
    """The base tokenizer with the KoRani template and a pad token that is not EOS; the template
    opens with BOS where the tokenizer puts one before a text it encodes (as serving does)."""
    from transformers import AutoTokenizer

    from korani_cli.template import PAD_TOKEN, chat_template

    name, source = train_model.pretrained_source(base)
    tokenizer = AutoTokenizer.from_pretrained(name, **source)
    bos = tokenizer.bos_token_id
    tokenizer.chat_template = chat_template(
        bos=bos is not None and tokenizer("가", add_special_tokens=True)["input_ids"][:1] == [bos]
    )
    if tokenizer.eos_token is None:
        raise UsageError(
            f"the tokenizer of {base} has no EOS token", "use a base model whose tokenizer defines eos_token"
        )
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    return tokenizer


def ensure_dist_env() -> None:
    """DeepSpeed in a plain `python` process needs the variables its launcher would set."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def trainer_class():
    """SFTTrainer for data preparation (template, assistant masks, packing); the
    model's own loss on those labels, with its output layer applied only where
    labels are (`headloss.py`).

    TRL's compute_loss runs a chunked log-prob kernel to also log entropy and
    token accuracy; on a CPU that cost more than the model itself (measured
    in bench/train.py), and the loss it computes is the same masked
    cross-entropy the model computes from `labels`.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    from korani_cli.train import headloss

    class KoraniSFTTrainer(SFTTrainer):
        # False once a forward bypassed its output-embedding module (the hook never ran):
        # from then on every step is computed the full way. A bench sets it to compare.
        labelled_head = True

        def create_model_card(self, *args, **kwargs):
            # TRL drafts a card into the output directory at every checkpoint ("a fine-tuned
            # version of [None]" for a local base); korani writes its own when the run is done
            # (train/card.py).
            return None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False

            def full():
                return Trainer.compute_loss(
                    self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )

            # Evaluation that keeps logits needs them at every position.
            unwrapped = self.accelerator.unwrap_model(model)
            if return_outputs or not self.labelled_head or not headloss.applicable(unwrapped, inputs):
                return full()
            with headloss.narrowed(unwrapped, inputs) as (narrow, narrowing):
                try:
                    loss = Trainer.compute_loss(self, model, narrow, num_items_in_batch=num_items_in_batch)
                except (RuntimeError, ValueError):
                    if narrowing.fired:
                        raise
                    loss = None  # labels laid out for narrowed logits met full ones
            if narrowing.fired:
                return loss
            self.labelled_head = False
            return full()

    return KoraniSFTTrainer


def build_trainer(
    config: TrainConfig,
    output: Path,
    data_dir: Path,
    reporter: Reporter | None = None,
    callbacks=(),
    eval_limit: int | None = None,
):
    """Everything up to `trainer.train()`: returns (trainer, tokenizer, plan)."""
    import torch
    from trl import SFTConfig

    reporter = reporter or Silent()
    plan = train_model.plan_device(config, torch.cuda.is_available())
    for message in plan.notices:
        reporter.notice(message)
    ds_path = train_model.resolve_deepspeed(config.deepspeed)
    train_model.check_combination(config, ds_path)
    if ds_path is not None:
        ensure_dist_env()
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output / "tensorboard")

    # LoRA's A matrices start random: seed them, so that a run is repeatable and every
    # process of a launched job starts from the same adapter.
    from transformers import set_seed

    set_seed(config.seed)
    try:
        tokenizer = prepare_tokenizer(config.base_model)
        model = train_model.load_model(config, plan, config.base_model, vocab=len(tokenizer))
    except ImportError as exc:
        gguf = bool(train_model.pretrained_source(config.base_model)[1])
        raise ModelLoadError(
            f"a library needed to train on {config.base_model} is missing ({exc})",
            # transformers reads a GGUF base with the `gguf` distribution, which korani[train] leaves out.
            "pip install gguf" if gguf else "pip install 'korani[train]'",
        ) from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(
            f"cannot load the base model '{config.base_model}' ({first})",
            "set base_model to a local model directory, or a hub id that is cached (or reachable)",
        ) from None
    train = train_data.load_split(data_dir, "train")
    valid = train_data.load_split(data_dir, "valid")
    args = SFTConfig(
        **sft_kwargs(
            config, plan, output, deepspeed=ds_path, evaluate=valid is not None, eos_token=tokenizer.eos_token
        )
    )
    if valid is not None and eval_limit is not None and len(valid) > eval_limit:
        valid = valid.select(range(eval_limit))
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    # Packed rows keep samples apart: through flash attention's varlen kernel
    # where the model has it, through a block-diagonal 4-D mask elsewhere.
    if config.packing and not train_model.supports_packing(model):
        from korani_cli.train.packing import BlockDiagonalCollator

        # TRL refuses a custom collator with its best-fit packing, whose rows we
        # want; its own padding-free collator is only correct under flash attention.
        trainer.data_collator = BlockDiagonalCollator(tokenizer.pad_token_id)
    if not plan.cuda:
        # TRL casts QLoRA adapters to bf16 (the paper's recipe for GPUs); on a CPU that is the slow path.
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our reporter shows progress; logs go to logs.jsonl
    return trainer, tokenizer, plan


def callbacks(output: Path, reporter: Reporter, state: RunState, ranks: dist.Ranks | None = None) -> list:
    """Progress and OUTPUT/logs.jsonl; a Ctrl-C saves and stops; a non-finite loss stops."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_train_begin(self, args, trainer_state, control, **kw):
            reporter.start(trainer_state.max_steps, trainer_state.global_step)

        def on_log(self, args, trainer_state, control, logs=None, **kw):
            if trainer_state.is_world_process_zero and logs:
                with (output / "logs.jsonl").open("a", encoding="utf-8") as fh:
                    fh.write(
                        json.dumps({"step": trainer_state.global_step, "time": round(time.time(), 3), **logs})
                        + "\n"
                    )
                reporter.step(trainer_state.global_step, logs)

        def on_step_end(self, args, trainer_state, control, **kw):
            reporter.step(trainer_state.global_step, {})
            # A Ctrl-C reaches the processes at slightly different moments; all of
            # them must save (a collective under DeepSpeed) and stop at the same step.
            state.interrupted = dist.any_rank(ranks or dist.Ranks(), state.interrupted)
            if state.interrupted:
                # Ctrl-C: checkpoint this step, then stop cleanly.
                control.should_save = True
                control.should_training_stop = True

    class StopOnNonFinite(TrainerCallback):
        """A NaN or infinite loss never recovers (the weights are gone): stop at
        once, and save no checkpoint from this step."""

        def on_log(self, args, trainer_state, control, logs=None, **kw):
            for key in ("loss", "eval_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value) and state.diverged is None:
                    state.diverged = Divergence(trainer_state.global_step, key, value)
            if state.diverged is not None:
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

    return [Report(), StopOnNonFinite()]
