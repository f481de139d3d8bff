"""One training run: data → tokenizer → model → SFTTrainer → adapter + metadata.

TRL's SFTTrainer tokenises each conversation through the KoRani chat
template stored on the tokenizer, and `assistant_only_loss` turns its
`{% generation %}` markers into labels: -100 everywhere except assistant
content and the EOS closing it. The pad token is never EOS, so padding can't
teach the model to stop — or not to.

The run talks to its caller through a `Reporter` (notices, progress); it
prints nothing itself.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from korani_cli import __version__
from korani_cli.outputs import atomic_write_text
from korani_cli.errors import EXIT_CONFIG, EXIT_INTERRUPTED, KoraniError, ModelLoadError, UsageError
from korani_cli.train import data as train_data
from korani_cli.train import dist
from korani_cli.train import model as mdl
from korani_cli.train import output as outdir
from korani_cli.train.config import TrainConfig, save_config, validate

SMOKE_STEPS = 20


class TrainingInterrupted(KoraniError):
    exit_code = EXIT_INTERRUPTED


class TrainingDiverged(KoraniError):
    """The loss (or the trained model's output) became NaN or infinite.

    Exit 5, a configuration error: what makes a run diverge is in the recipe
    (a learning rate too high for the model, a max_length that cuts every
    answer away), and the fix is a recipe value. No new exit code is needed.
    """

    exit_code = EXIT_CONFIG


class Reporter(Protocol):
    def notice(self, message: str) -> None: ...

    def start(self, total_steps: int, first_step: int) -> None: ...

    def step(self, step: int, logs: dict) -> None: ...

    def finish(self) -> None: ...


class _Silent:
    def notice(self, message):
        pass

    def start(self, total_steps, first_step):
        pass

    def step(self, step, logs):
        pass

    def finish(self):
        pass


def smoke_adjust(config: TrainConfig, output: Path, data_dir: Path, reporter: Reporter) -> TrainConfig:
    """Swap the base for a tiny random GPT-NeoX with a tokenizer trained on the data; ~20 CPU steps."""
    from korani_cli import tiny

    base_dir = output / "smoke-base"
    if not (base_dir / "config.json").is_file():
        reporter.notice(f"--smoke: building a tiny GPT-NeoX and a tokenizer trained on {data_dir / 'train.jsonl'}")
        tokenizer = tiny.train_tokenizer(train_data.texts(data_dir / "train.jsonl"), base_dir, vocab_size=2000)
        tiny.build_model(tokenizer, base_dir, hidden_size=64, layers=2, heads=4, context=max(config.max_length, 256))
    return replace(
        config,
        base_model=str(base_dir.resolve()),
        max_steps=SMOKE_STEPS if config.max_steps < 0 else config.max_steps,
        per_device_train_batch_size=min(config.per_device_train_batch_size, 4),
        per_device_eval_batch_size=min(config.per_device_eval_batch_size, 4),
        gradient_accumulation_steps=1,
        learning_rate=max(config.learning_rate, 1e-3),
        warmup_ratio=0.0,
        eval_steps=min(config.eval_steps, 10),
        save_steps=min(config.save_steps, 10),
        logging_steps=1,
        max_length=min(config.max_length, 256),
        health_prompts=min(config.health_prompts, 8),
        health_max_new_tokens=min(config.health_max_new_tokens, 32),
    )


def prepare_tokenizer(base: str, embedding_rows: int | None = None):
    """The base tokenizer with the KoRani template and a pad token that is not EOS."""
    from transformers import AutoTokenizer

    from korani_cli.template import CHAT_TEMPLATE, PAD_TOKEN

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise UsageError(f"the tokenizer of {base} has no EOS token", "use a base model whose tokenizer defines eos_token")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    return tokenizer


def _ensure_dist_env() -> None:
    """DeepSpeed in a plain `python` process needs the variables its launcher would set."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _trainer_class():
    """SFTTrainer for data preparation (template, assistant masks, packing); the
    model's own loss on those labels.

    TRL's compute_loss runs a chunked log-prob kernel to also log entropy and
    token accuracy; on a CPU that cost more than the model itself (measured
    in bench/train.py), and the loss it computes is the same masked
    cross-entropy the model computes from `labels`.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class KoraniSFTTrainer(SFTTrainer):
        def create_model_card(self, *args, **kwargs):
            # TRL drafts a card into the output directory at every checkpoint ("a fine-tuned
            # version of [None]" for a local base); korani writes its own when the run is done (train/card.py).
            return None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return KoraniSFTTrainer


def build_trainer(config: TrainConfig, output: Path, data_dir: Path, reporter: Reporter | None = None, callbacks=(), eval_limit: int | None = None):
    """Everything up to `trainer.train()`: returns (trainer, tokenizer, plan)."""
    import torch
    from trl import SFTConfig

    reporter = reporter or _Silent()
    plan = mdl.plan_device(config, torch.cuda.is_available())
    for message in plan.notices:
        reporter.notice(message)
    ds_path = mdl.resolve_deepspeed(config.deepspeed)
    mdl.check_combination(config, ds_path)
    if ds_path is not None:
        _ensure_dist_env()
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output / "tensorboard")

    # LoRA's A matrices start random: seed them, so that a run is repeatable and every
    # process of a launched job starts from the same adapter.
    from transformers import set_seed

    set_seed(config.seed)
    try:
        tokenizer = prepare_tokenizer(config.base_model)
        model = mdl.load_model(config, plan, config.base_model, vocab=len(tokenizer))
    except ImportError as exc:
        raise ModelLoadError(f"a library needed to train on {config.base_model} is missing ({exc})", "pip install 'korani[train]'") from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(
            f"cannot load the base model '{config.base_model}' ({first})",
            "set base_model to a local model directory, or a hub id that is cached (or reachable)",
        ) from None
    train = train_data.load_split(data_dir, "train")
    valid = train_data.load_split(data_dir, "valid")
    # Packed rows keep samples apart: through flash attention's varlen kernel
    # where the model has it, through a block-diagonal 4-D mask elsewhere.
    packing = config.packing
    collator = None
    if packing and not mdl.supports_packing(model):
        from korani_cli.train.packing import BlockDiagonalCollator

        collator = BlockDiagonalCollator(tokenizer.pad_token_id)
    args = SFTConfig(
        output_dir=str(output),
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        weight_decay=config.weight_decay,
        optim=plan.optim,
        bf16=plan.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        eval_strategy="steps" if valid is not None else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        # Log a NaN loss as NaN: transformers would log the mean of earlier losses
        # instead, and a diverged run would look healthy to the callback below.
        logging_nan_inf_filter=False,
        report_to=["tensorboard"],
        seed=config.seed,
        data_seed=config.seed,
        deepspeed=str(ds_path) if ds_path else None,
        ddp_timeout=config.dist_timeout,
        use_cpu=not plan.cuda,
        disable_tqdm=True,
        assistant_only_loss=True,
        max_length=config.max_length,
        packing=packing,
        padding_free=packing,
        train_sampling_strategy="random" if packing else "group_by_length",
        pad_token=tokenizer.pad_token,
        eos_token=tokenizer.eos_token,
        dataset_kwargs={"skip_prepare_dataset": False},
        save_only_model=False,
    )
    if valid is not None and eval_limit is not None and len(valid) > eval_limit:
        valid = valid.select(range(eval_limit))
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train, eval_dataset=valid, processing_class=tokenizer, callbacks=list(callbacks)
    )
    if collator is not None:
        # TRL refuses a custom collator with its best-fit packing, whose rows we
        # want; its own padding-free collator is only correct under flash attention.
        trainer.data_collator = collator
    if not plan.cuda:
        # TRL casts QLoRA adapters to bf16 (the paper's recipe for GPUs); on a CPU that is the slow path.
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our reporter shows progress; logs go to logs.jsonl
    return trainer, tokenizer, plan


def _callbacks(output: Path, reporter: Reporter, interrupted: dict, diverged: dict, ranks: dist.Ranks | None = None):
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            reporter.start(state.max_steps, state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                with (output / "logs.jsonl").open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, "time": round(time.time(), 3), **logs}) + "\n")
                reporter.step(state.global_step, logs)

        def on_step_end(self, args, state, control, **kw):
            reporter.step(state.global_step, {})
            # A Ctrl-C reaches the processes at slightly different moments; all of
            # them must save (a collective under DeepSpeed) and stop at the same step.
            interrupted["flag"] = dist.any_rank(ranks or dist.Ranks(), interrupted["flag"])
            if interrupted["flag"]:
                # Ctrl-C: checkpoint this step, then stop cleanly.
                control.should_save = True
                control.should_training_stop = True

    class StopOnNonFinite(TrainerCallback):
        """A NaN or infinite loss never recovers (the weights are gone): stop at
        once, and save no checkpoint from this step."""

        def on_log(self, args, state, control, logs=None, **kw):
            for key in ("loss", "eval_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value) and not diverged:
                    diverged.update(step=state.global_step, key=key, value=value)
            if diverged:
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

    return [Report(), StopOnNonFinite()]


def run(
    config: TrainConfig,
    *,
    smoke: bool = False,
    resume: str | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict:
    """Train; returns the metadata written to OUTPUT/korani_metadata.json."""
    ranks = dist.Ranks.from_env()
    # One process speaks for the job: the others' notices and progress would
    # repeat the first one's line for line.
    reporter = (reporter or _Silent()) if ranks.main else _Silent()
    if ranks.launched:
        import torch

        dist.init(ranks, cuda=torch.cuda.is_available(), timeout_s=config.dist_timeout)
    data_dir, output = Path(config.data), Path(config.output)
    base = Path(config.base_model).expanduser()
    # The first process checks the recipe and the data and prepares the output directory
    # while the others wait: they would repeat its errors, and see its fresh files as an
    # earlier run. When it fails, they stop with its exit code and print nothing.
    from korani_cli.console import quiet_libraries

    counts, taken = None, None
    recipe_base_model = config.base_model  # the model card names it; --smoke swaps in a stand-in
    with dist.main_first(ranks):
        if ranks.main:
            # Every recipe value is checked before --smoke replaces any of them: a
            # recipe that cannot train must not get a smoke run that looks like a pass.
            validate(config)
            ds_path = mdl.resolve_deepspeed(config.deepspeed)
            mdl.check_combination(config, ds_path)
            if ds_path is not None and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
                # accelerate's CPU mode turns DeepSpeed off inside transformers: the run would be plain DDP.
                raise UsageError("accelerate launch --cpu turns DeepSpeed off, so --deepspeed would be ignored",
                                 "use torchrun --nproc_per_node N -m korani_cli train ..., or accelerate launch"
                                 " --use_deepspeed --deepspeed_config_file FILE --num_processes N without --cpu")
            if not smoke and config.base_model.startswith(("/", ".", "~")) and not base.exists():  # --smoke never loads it
                raise ModelLoadError(f"base_model {config.base_model} does not exist", "set base_model to a model directory or a hub id")
            counts = train_data.check_data(data_dir)
            sources = [data_dir] + ([base] if base.exists() else [])
            outdir.judge(output, sources=sources, resume=bool(resume), overwrite=overwrite)
            checkpoint = outdir.find_checkpoint(output, resume) if resume else None
            if checkpoint is not None:
                outdir.check_matches(checkpoint, lora_r=config.lora_r, lora_target_modules=config.lora_target_modules,
                                     base_model=None if smoke else config.base_model)
            taken = outdir.take(output, resume=bool(resume))
            try:
                outdir.mark(output, data=str(data_dir.resolve()), base_model=config.base_model, smoke=smoke)
                quiet_libraries()
                if smoke:
                    config = smoke_adjust(config, output, data_dir, reporter)
                save_config(config, output / "korani_train.yaml")
            except BaseException:
                outdir.settle(taken, ok=False)
                raise
    if not ranks.main:
        # The first process found all of this valid; these only read what it prepared.
        quiet_libraries()
        checkpoint = outdir.find_checkpoint(output, resume) if resume else None
        if smoke:
            config = smoke_adjust(config, output, data_dir, reporter)
    loaded = False
    try:
        interrupted = {"flag": False}
        diverged: dict = {}
        # A smoke run evaluates on a slice of valid: it checks the path, not the model.
        trainer, tokenizer, plan = build_trainer(
            config, output, data_dir, reporter, _callbacks(output, reporter, interrupted, diverged, ranks),
            eval_limit=64 if smoke else None,
        )
        loaded = True
    finally:
        if taken is not None:
            outdir.settle(taken, ok=loaded)

    def on_sigint(signum, frame):
        if interrupted["flag"]:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        interrupted["flag"] = True
        reporter.notice("Ctrl-C: saving a checkpoint at the end of this step, then stopping (press again to abort)")

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        if not ranks.launched:
            raise
        dist.ignore_teardown()
        # Under a launcher this is mostly the launcher stopping the job because another
        # process died; say where the run can continue from.
        what, fix = dist.lost_peer_message(ranks, trainer.state.global_step, output, _last_checkpoint(output))
        raise TrainingInterrupted(f"interrupted: {what}", fix) from None
    except Exception as exc:
        if not (ranks.launched and dist.is_lost_peer(exc)):
            raise
        dist.ignore_teardown()
        what, fix = dist.lost_peer_message(ranks, trainer.state.global_step, output, _last_checkpoint(output))
        raise dist.PeerLost(f"{what} ({dist.first_line(exc)})", fix) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        reporter.finish()
    state = trainer.state
    if not ranks.main and (diverged or interrupted["flag"]):
        # Every process saw the same NaN loss (it is gathered) or the same Ctrl-C; the first one says so.
        raise dist.ReportedByMainRank(TrainingDiverged.exit_code if diverged else TrainingInterrupted.exit_code)
    if diverged:
        raise TrainingDiverged(
            f"training diverged: {diverged['key']} became {diverged['value']} at step {diverged['step']}; no adapter was saved",
            f"lower learning_rate (this run used {config.learning_rate:g}) or raise max_length ({config.max_length}) so answers fit,"
            " then start over with --overwrite",
        )
    if interrupted["flag"]:
        raise TrainingInterrupted(
            f"training stopped at step {state.global_step}; checkpoint saved in {output}",
            f"continue with: korani train ... --output {output} --resume",
        )

    trainer.save_model(str(output))
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(output))
    history = state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    eval_skipped = None if eval_losses else _why_no_eval(config, data_dir, counts, state.global_step)
    report, health_json, health_skipped = None, None, None
    if config.health_prompts <= 0:
        health_skipped = "health_prompts is 0 in the recipe"
    else:
        from korani_cli.train import health

        held_out = health.held_out_prompts(data_dir, config.health_prompts)
        if held_out.prompts:
            report = health.check(trainer.model, tokenizer, held_out.prompts, config.health_max_new_tokens, split=held_out.split)
            health_json = report.to_json()
        else:
            health_skipped = held_out.why_none
    stats_path = data_dir / "stats.json"
    fingerprint = json.loads(stats_path.read_text(encoding="utf-8")).get("fingerprint") if stats_path.is_file() else None
    metadata = {
        "korani_version": __version__,
        "base_model": config.base_model,
        "smoke": smoke,
        "data": {"dir": str(data_dir.resolve()), "fingerprint": fingerprint, "conversations": counts},
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_last": train_losses[-1] if train_losses else None,
        "train_loss_mean": getattr(result, "training_loss", None),
        "eval_losses": eval_losses,
        "eval_skipped": eval_skipped,  # why there is no eval loss; None when there is one
        "health": health_json,
        "health_skipped": health_skipped,  # why there is no health check; None when it ran
        "device": {"cuda": plan.cuda, "bf16": plan.bf16, "optim": plan.optim, "notices": plan.notices},
        "deepspeed": config.deepspeed,
        "quantization": config.bnb_4bit_quant_type if config.load_in_4bit else None,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_seconds": round(time.time() - started, 1),
        "pad_token": tokenizer.pad_token,
        "eos_token": tokenizer.eos_token,
    }
    atomic_write_text(output / "korani_metadata.json", json.dumps(metadata, ensure_ascii=False, indent=2) + "\n")
    from korani_cli.train import card

    # Replaces PEFT's blank template (save_model wrote it just now) with korani's card.
    atomic_write_text(output / "README.md", card.render(card.Run(
        name=output.resolve().name, output=str(output), config=config, recipe_base_model=recipe_base_model, metadata=metadata)))
    if report is not None and report.nonfinite:
        raise TrainingDiverged(
            f"the trained model's outputs are NaN or infinite on {report.nonfinite} of {report.prompts} held-out prompts"
            f" (health check in {output / 'korani_metadata.json'})",
            f"lower learning_rate (this run used {config.learning_rate:g}) and start over with --overwrite",
        )
    return metadata


def _why_no_eval(config: TrainConfig, data_dir: Path, counts: dict[str, int], steps: int) -> str:
    """Why a finished run logged no eval loss, and what to change."""
    if not counts.get("valid"):
        return (f"{data_dir / 'valid.jsonl'} holds no conversations; prepare the data with a --valid fraction "
                "(korani data prepare --valid 0.1)")
    # transformers evaluates every eval_steps and at the last step, so this is rare (a run stopped early).
    return f"the trainer logged no eval loss in {steps} steps (eval_steps {config.eval_steps})"



def _last_checkpoint(output: Path) -> Path | None:
    try:
        return outdir.find_checkpoint(output, "last")
    except KoraniError:
        return None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
