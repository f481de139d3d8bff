"""`korani train --smoke`: the recipe's base swapped for a tiny random model.

A tiny, randomly initialised GPT-NeoX — polyglot-ko's architecture — with a
byte-level BPE tokenizer trained on the run's own data, and the recipe's
sizes cut down to ~20 CPU steps, so that data and config mistakes show in a
minute. The tokenizer carries the KoRani chat template, EOS and a pad token
that differs from EOS, like the tokenizers training saves.

The test suite and the benchmarks build their small models with the same two
functions (`train_tokenizer`, `build_model`). What the run does with the
swapped recipe is `run.py`'s business; this module only builds and adjusts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from korani_cli.template import DEFAULT_EOS, PAD_TOKEN
from korani_cli.train.config import TrainConfig
from korani_cli.train.data import texts

if TYPE_CHECKING:
    from korani_cli.train.trainer import Reporter

SMOKE_STEPS = 20
# The longest rows a smoke run packs. It keeps the recipe's max_length up to this: a grounded
# (RAG) conversation is ~700 tokens with its answer at the end, so a shorter cut would leave
# the smoke run nothing to learn (loss nan at step 1) — while the seed's 256 stays 256.
SMOKE_MAX_LENGTH = 1024


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 800):
    """Train and save a tokenizer; EOS gets id 0 and pad id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from korani_cli.template import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[DEFAULT_EOS, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # Its progress bars went to stdout at `train --smoke` start (blank lines when piped).
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=DEFAULT_EOS, pad_token=PAD_TOKEN)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_model(
    tokenizer,
    out_dir: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    context: int = 512,
    seed: int = 0,
) -> Path:
    """Save a random GPT-NeoX sized for `tokenizer` (and the tokenizer) to `out_dir`."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPTNeoXForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def smoke_adjust(config: TrainConfig, output: Path, data_dir: Path, reporter: Reporter) -> TrainConfig:
    """Swap the base for a tiny random GPT-NeoX with a tokenizer trained on the data; ~20 CPU steps.

    The base is built once in OUTPUT/smoke-base and reused by a resumed run."""
    base_dir = output / "smoke-base"
    if not (base_dir / "config.json").is_file():
        reporter.notice(
            f"--smoke: building a tiny GPT-NeoX and a tokenizer trained on {data_dir / 'train.jsonl'}"
        )
        tokenizer = train_tokenizer(texts(data_dir / "train.jsonl"), base_dir, vocab_size=2000)
        build_model(
            tokenizer, base_dir, hidden_size=64, layers=2, heads=4, context=max(config.max_length, 256)
        )
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
        max_length=min(config.max_length, SMOKE_MAX_LENGTH),
        health_prompts=min(config.health_prompts, 8),
        health_max_new_tokens=min(config.health_max_new_tokens, 32),
    )
