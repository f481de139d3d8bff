"""One training run, in the order of TRL's `scripts/sft.py`: model, data, train, save.

`run` checks the recipe and the data, takes the output directory (`output.py`)
and swaps in the `--smoke` model (`smoke.py`); builds the SFTTrainer
(`trainer.py`); trains, turning Ctrl-C, a lost process and a non-finite loss
into one-line errors; then saves the adapter, the tokenizer, the metadata
(`metadata.py`) and the model card (`card.py`).

The run talks to its caller through a `Reporter` (notices, progress); it
prints nothing itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from korani_cli import __version__
from korani_cli.errors import EXIT_CONFIG, EXIT_INTERRUPTED, KoraniError, ModelLoadError, UsageError
from korani_cli.outputs import atomic_write_text
from korani_cli.train import data as train_data
from korani_cli.train import dist
from korani_cli.train import model as train_model
from korani_cli.train import output as outdir
from korani_cli.train.config import TrainConfig, save_config, validate
from korani_cli.train.metadata import FILENAME, DataInfo, DeviceInfo, EvalLoss, TrainMetadata
from korani_cli.train.smoke import smoke_adjust
from korani_cli.train.trainer import Reporter, RunState, Silent, build_trainer, callbacks

SMOKE_EVAL_LIMIT = 64  # a smoke run evaluates on a slice of valid: it checks the path, not the model


class TrainingInterrupted(KoraniError):
    exit_code = EXIT_INTERRUPTED


class TrainingDiverged(KoraniError):
    """The loss (or the trained model's output) became NaN or infinite.

    Exit 5, a configuration error: what makes a run diverge is in the recipe
    (a learning rate too high for the model, a max_length that cuts every
    answer away), and the fix is a recipe value. No new exit code is needed.
    """

    exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class Setup:
    """A checked recipe in a prepared output directory, ready to load."""

    config: TrainConfig  # after --smoke's changes
    recipe_base_model: str  # the recipe's own base (the card names it)
    data_dir: Path
    output: Path
    checkpoint: Path | None  # what --resume continues
    counts: dict[str, int] | None  # conversations per split (known to the first process)
    taken: outdir.Taken | None  # what the first process did to the output directory


def run(
    config: TrainConfig,
    *,
    smoke: bool = False,
    resume: str | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> TrainMetadata | None:
    """Train; returns what OUTPUT/korani_metadata.json says (None on every process but the first)."""
    ranks = dist.Ranks.from_env()
    # One process speaks for the job: the others' notices and progress would
    # repeat the first one's line for line.
    reporter = (reporter or Silent()) if ranks.main else Silent()
    if ranks.launched:
        import torch

        dist.init(ranks, cuda=torch.cuda.is_available(), timeout_s=config.dist_timeout)
    setup = _set_up(config, ranks, smoke=smoke, resume=resume, overwrite=overwrite, reporter=reporter)
    state = RunState()
    trainer, tokenizer, plan = _load(setup, state, ranks, reporter, smoke=smoke)
    started = time.time()
    result = _train(trainer, setup, state, ranks, reporter)
    _stop_if_stopped(setup, state, ranks, trainer.state.global_step)
    trainer.save_model(str(setup.output))
    if not trainer.is_world_process_zero():
        return None
    return _save(trainer, tokenizer, plan, setup, result, smoke=smoke, seconds=time.time() - started)


def _set_up(
    config: TrainConfig,
    ranks: dist.Ranks,
    *,
    smoke: bool,
    resume: str | None,
    overwrite: bool,
    reporter: Reporter,
) -> Setup:
    """Check the recipe and the data, take the output directory, swap in the --smoke model.

    The first process does it while the others wait: they would repeat its errors, and
    see its fresh files as an earlier run. When it fails, they stop with its exit code
    and print nothing."""
    from korani_cli.runtime import quiet_libraries

    data_dir, output = Path(config.data), Path(config.output)
    recipe_base_model = config.base_model
    counts, taken, checkpoint = None, None, None
    with dist.main_first(ranks):
        if ranks.main:
            counts, checkpoint = _check(
                config, data_dir, output, smoke=smoke, resume=resume, overwrite=overwrite
            )
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
    return Setup(config, recipe_base_model, data_dir, output, checkpoint, counts, taken)


def _check(
    config: TrainConfig, data_dir: Path, output: Path, *, smoke: bool, resume: str | None, overwrite: bool
) -> tuple[dict[str, int], Path | None]:
    """Everything that can be wrong before a model loads; returns the split counts and the checkpoint."""
    # Every recipe value is checked before --smoke replaces any of them: a
    # recipe that cannot train must not get a smoke run that looks like a pass.
    validate(config)
    ds_path = train_model.resolve_deepspeed(config.deepspeed)
    train_model.check_combination(config, ds_path)
    if ds_path is not None and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        # accelerate's CPU mode turns DeepSpeed off inside transformers: the run would be plain DDP.
        raise UsageError(
            "accelerate launch --cpu turns DeepSpeed off, so --deepspeed would be ignored",
            "use torchrun --nproc_per_node N -m korani_cli train ..., or accelerate launch"
            " --use_deepspeed --deepspeed_config_file FILE --num_processes N without --cpu",
        )
    base = Path(config.base_model).expanduser()
    if (
        not smoke and config.base_model.startswith(("/", ".", "~")) and not base.exists()
    ):  # --smoke never loads it
        raise ModelLoadError(
            f"base_model {config.base_model} does not exist",
            "set base_model to a model directory or a hub id",
        )
    counts = train_data.check_data(data_dir)
    sources = [data_dir] + ([base] if base.exists() else [])
    outdir.judge(output, sources=sources, resume=bool(resume), overwrite=overwrite)
    checkpoint = outdir.find_checkpoint(output, resume) if resume else None
    if checkpoint is not None:
        outdir.check_matches(
            checkpoint,
            lora_r=config.lora_r,
            lora_target_modules=config.lora_target_modules,
            base_model=None if smoke else config.base_model,
        )
    return counts, checkpoint


def _load(setup: Setup, state: RunState, ranks: dist.Ranks, reporter: Reporter, *, smoke: bool):
    """Model and data: the SFTTrainer. The output directory is settled either way:
    an earlier run it replaces goes only once the new model has loaded."""
    loaded = False
    try:
        built = build_trainer(
            setup.config,
            setup.output,
            setup.data_dir,
            reporter,
            callbacks(setup.output, reporter, state, ranks),
            eval_limit=SMOKE_EVAL_LIMIT if smoke else None,
        )
        loaded = True
        return built
    finally:
        if setup.taken is not None:
            outdir.settle(setup.taken, ok=loaded)


def _train(trainer, setup: Setup, state: RunState, ranks: dist.Ranks, reporter: Reporter):
    """`trainer.train()` with Ctrl-C (and, for one process, SIGTERM) asking for a checkpoint,
    and a lost process named."""
    output, checkpoint = setup.output, setup.checkpoint

    def on_stop(signum, frame):
        if state.interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C (or SIGTERM): stop now
        state.interrupted = True
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        reporter.notice(
            f"{what}: saving a checkpoint at the end of this step, then stopping (press Ctrl-C to abort)"
        )

    # A job scheduler (slurm, a Kubernetes eviction, systemd) stops a job with SIGTERM, then
    # SIGKILL a while later: the step and its checkpoint fit in between, and --resume finds it.
    # Under a launcher SIGTERM means the launcher is ending the job because another process
    # died: no checkpoint can be gathered then, so it stays an interruption (below).
    stops = (signal.SIGINT,) if ranks.launched else (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_stop) for sig in stops} if _main_thread() else {}
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
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
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)
        reporter.finish()


def _stop_if_stopped(setup: Setup, state: RunState, ranks: dist.Ranks, step: int) -> None:
    """A run the callbacks stopped (a non-finite loss, a Ctrl-C) ends here, with no adapter saved."""
    config, output = setup.config, setup.output
    if not ranks.main and (state.diverged or state.interrupted):
        # Every process saw the same NaN loss (it is gathered) or the same Ctrl-C; the first one says so.
        raise dist.ReportedByMainRank(
            TrainingDiverged.exit_code if state.diverged else TrainingInterrupted.exit_code
        )
    if state.diverged:
        d = state.diverged
        raise TrainingDiverged(
            f"training diverged: {d.key} became {d.value} at step {d.step}; no adapter was saved",
            f"lower learning_rate (this run used {config.learning_rate:g}) or raise max_length "
            f"({config.max_length}) so answers fit,"
            " then start over with --overwrite",
        )
    if state.interrupted:
        raise TrainingInterrupted(
            f"training stopped at step {step}; checkpoint saved in {output}",
            f"continue with: korani train ... --output {output} --resume",
        )


def _save(
    trainer, tokenizer, plan: train_model.DevicePlan, setup: Setup, result, *, smoke: bool, seconds: float
) -> TrainMetadata:
    """The tokenizer, the health check, korani_metadata.json and the model card (the adapter is saved)."""
    config, output, data_dir = setup.config, setup.output, setup.data_dir
    tokenizer.save_pretrained(str(output))
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [EvalLoss(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    counts = setup.counts or {}
    report, health_skipped = _health(trainer.model, tokenizer, config, data_dir)
    metadata = TrainMetadata(
        korani_version=__version__,
        base_model=config.base_model,
        smoke=smoke,
        data=DataInfo(str(data_dir.resolve()), _fingerprint(data_dir), counts),
        steps=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        train_loss_first=train_losses[0] if train_losses else None,
        train_loss_last=train_losses[-1] if train_losses else None,
        train_loss_mean=getattr(result, "training_loss", None),
        eval_losses=eval_losses,
        eval_skipped=None
        if eval_losses
        else _why_no_eval(config, data_dir, counts, trainer.state.global_step),
        health=report,
        health_skipped=health_skipped,
        device=DeviceInfo(plan.cuda, plan.bf16, plan.optim, list(plan.notices)),
        deepspeed=config.deepspeed,
        quantization=config.bnb_4bit_quant_type if config.load_in_4bit else None,
        resumed_from=str(setup.checkpoint) if setup.checkpoint else None,
        train_seconds=round(seconds, 1),
        pad_token=tokenizer.pad_token,
        eos_token=tokenizer.eos_token,
    )
    metadata.write(output)
    from korani_cli.train import card

    # Replaces PEFT's blank template (save_model wrote it just now) with korani's card.
    atomic_write_text(
        output / "README.md",
        card.render(
            card.Run(
                name=output.resolve().name,
                output=str(output),
                config=config,
                recipe_base_model=setup.recipe_base_model,
                metadata=metadata,
            )
        ),
    )
    if report is not None and report.nonfinite:
        raise TrainingDiverged(
            f"the trained model's outputs are NaN or infinite on {report.nonfinite} of "
            f"{report.prompts} held-out prompts"
            f" (health check in {output / FILENAME})",
            f"lower learning_rate (this run used {config.learning_rate:g}) and start over with --overwrite",
        )
    return metadata


def _health(model, tokenizer, config: TrainConfig, data_dir: Path):
    """The held-out health check, or why it did not run: (Health | None, skipped | None)."""
    if config.health_prompts <= 0:
        return None, "health_prompts is 0 in the recipe"
    from korani_cli.train import health

    held_out = health.held_out_prompts(data_dir, config.health_prompts)
    if not held_out.prompts:
        return None, held_out.why_none
    return health.check(
        model, tokenizer, held_out.prompts, config.health_max_new_tokens, split=held_out.split
    ), None


def _fingerprint(data_dir: Path) -> str | None:
    """`korani data prepare`'s fingerprint of the sources, from its stats.json."""
    stats_path = data_dir / "stats.json"
    return (
        json.loads(stats_path.read_text(encoding="utf-8")).get("fingerprint")
        if stats_path.is_file()
        else None
    )


def _why_no_eval(config: TrainConfig, data_dir: Path, counts: dict[str, int], steps: int) -> str:
    """Why a finished run logged no eval loss, and what to change."""
    if not counts.get("valid"):
        return (
            f"{data_dir / 'valid.jsonl'} holds no conversations; prepare the data with a --valid fraction "
            "(korani data prepare --valid 0.1)"
        )
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
