"""The output directory's README.md: korani's model card for a trained adapter.

TRL writes a draft card when it saves a checkpoint ("This model is a
fine-tuned version of [None]" for a local base, a pipeline() example that
ignores the KoRani template) and PEFT adds its own blank template. korani
turns TRL's draft off (`trainer.trainer_class`) and, once the run is done,
replaces the README with this card: what the adapter was trained from
(base model, recipe, data), how it did (losses, the held-out health check,
or why either was skipped), and how to run it. It is rendered from the same
values as korani_metadata.json (a `TrainMetadata`), and written atomically by the run.

Everything here is text: no model, no file access.
"""

from __future__ import annotations

from dataclasses import dataclass

from korani_cli.train.config import TrainConfig
from korani_cli.train.health import EOS_WARNING
from korani_cli.train.metadata import TrainMetadata


@dataclass(frozen=True)
class Run:
    """What the card reports about one finished run."""

    name: str  # the output directory's name
    output: str  # its path, as the user gave it (for the commands to run it)
    config: TrainConfig  # the recipe as trained (after --smoke's changes)
    recipe_base_model: str  # the recipe's base (a --smoke run trains a tiny stand-in instead)
    metadata: TrainMetadata  # korani_metadata.json, as written


def _yaml_text(text: str) -> str:
    """A YAML scalar that stays one string whatever it holds."""
    import json

    return json.dumps(text, ensure_ascii=False)


def _is_local(base: str) -> bool:
    return base.startswith(("/", ".", "~")) or base.count("/") != 1


def _number(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(run: Run) -> str:
    """The run's README.md: Hub front matter, then one section per step of the run, then how to use it."""
    sections = (_front_matter, _intro, _recipe, _data, _training, _health, _run_it)
    return "\n".join(line for section in sections for line in section(run))


def _front_matter(run: Run) -> list[str]:
    c = run.config
    front = [
        "---",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "language:",
        "- ko",
        "tags:",
        "- korani",
        "- lora",
        "- sft",
    ]
    if c.load_in_4bit:
        front.append("- qlora")
    if not run.metadata.smoke and not _is_local(run.recipe_base_model):
        # The Hub links `base_model` to that model's page; a local path there would be a dead link.
        front.append(f"base_model: {_yaml_text(run.recipe_base_model)}")
    front.append("---")
    return front


def _intro(run: Run) -> list[str]:
    c, m = run.config, run.metadata
    if m.smoke:
        base = (
            f"a tiny random GPT-NeoX built by `--smoke` (`{c.base_model}`), standing in for the recipe's "
            f"`{run.recipe_base_model}`. **This is a smoke run: it checks the data and the recipe, "
            "not a model anyone should use.**"
        )
    else:
        base = f"`{c.base_model}`"
    return [
        "",
        f"# {run.name}",
        "",
        f"A LoRA adapter trained with korani {m.korani_version} "
        "on Korean instruction data in the KoRani format (`### User` / `### Bot`, answers closed by EOS).",
        "",
        f"- **Base model:** {base}",
    ]


def _recipe(run: Run) -> list[str]:
    c = run.config
    quant = f"4-bit {c.bnb_4bit_quant_type} (QLoRA)" if c.load_in_4bit else "full precision"
    batch = c.per_device_train_batch_size * c.gradient_accumulation_steps
    return [
        "",
        "## Recipe",
        "",
        f"- LoRA r={c.lora_r}, alpha={c.lora_alpha}, dropout={c.lora_dropout} on "
        f"{', '.join(c.lora_target_modules)}; base loaded in {quant}",
        f"- learning rate {c.learning_rate:g} ({c.lr_scheduler_type}, warm-up {c.warmup_ratio:g}), "
        f"batch {c.per_device_train_batch_size} × {c.gradient_accumulation_steps} accumulation = "
        f"{batch} rows, "
        f"max_length {c.max_length}, packing {'on' if c.packing else 'off'}, seed {c.seed}",
        f"- loss on assistant turns and their EOS only; DeepSpeed {c.deepspeed or 'off'}",
        "- the whole recipe: `korani_train.yaml`; every figure below: `korani_metadata.json`",
    ]


def _data(run: Run) -> list[str]:
    m = run.metadata
    counts = m.data.conversations
    lines = [
        "",
        "## Data",
        "",
        f"- `{m.data.dir}`: {counts.get('train', 0)} train, {counts.get('valid', 0)} valid, "
        f"{counts.get('test', 0)} test conversations",
    ]
    if m.data.fingerprint:
        lines.append(f"- fingerprint `{m.data.fingerprint[:16]}…` (`stats.json` of `korani data prepare`)")
    return lines


def _training(run: Run) -> list[str]:
    m = run.metadata
    lines = [
        "",
        "## Training",
        "",
        f"- {m.steps} steps of {m.max_steps} in {m.train_seconds} s"
        + (f", resumed from `{m.resumed_from}`" if m.resumed_from else ""),
        f"- train loss {_number(m.train_loss_first)} → {_number(m.train_loss_last)}",
    ]
    if m.eval_losses:
        last = m.eval_losses[-1]
        lines.append(f"- eval loss {_number(last.eval_loss)} at step {last.step} (valid split)")
    else:
        lines.append(f"- eval loss: skipped — {m.eval_skipped or 'no evaluation ran'}")
    device = m.device
    lines.append(
        f"- {'CUDA GPU' if device.cuda else 'CPU'}, {'bf16' if device.bf16 else 'float32'}, "
        f"optimizer {device.optim}"
    )
    return lines


def _health(run: Run) -> list[str]:
    m, health = run.metadata, run.metadata.health
    lines = ["", "## Health check", ""]
    if not health:
        return [*lines, f"Skipped — {m.health_skipped or 'not run'}."]
    lines += [
        f"Greedy answers to {health.prompts} held-out prompts (the {health.split or 'held-out'} split, "
        f"never train), at most {run.config.health_max_new_tokens} new tokens each:",
        "",
        f"- ended with EOS: {health.eos_share:.0%}"
        + (
            f" — **{EOS_WARNING}: the model may not have learned to stop**" if health.stops_too_rarely else ""
        ),
        f"- repeated 3-grams: {health.repetition:.3f} (0 = none)",
        f"- mean answer length: {health.mean_new_tokens} tokens",
    ]
    if health.nonfinite:
        lines.append(f"- **NaN/inf logits on {health.nonfinite} prompts**")
    return lines


def _run_it(run: Run) -> list[str]:
    import shlex

    out, merged, gguf = (shlex.quote(p) for p in (run.output, f"{run.output}-merged", f"{run.name}.gguf"))
    return [
        "",
        "## Run it",
        "",
        "```sh",
        f'korani ask --model {out} "한국의 수도는 어디인가요?"',
        f"korani chat --model {out}",
        f"korani train merge {out} -o {merged}        # fold the adapter into the base",
        f"korani train export-gguf {merged} -o {gguf}   # for llama.cpp",
        "```",
        "",
        "The tokenizer saved here carries the KoRani chat template, so "
        "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` builds the prompt "
        "the adapter was trained on "
        "(PEFT: `AutoPeftModelForCausalLM.from_pretrained(...)`).",
        "",
    ]
