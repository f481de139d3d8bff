"""Tiny, randomly initialised GPT-NeoX models — polyglot-ko's architecture —
with a byte-level BPE tokenizer trained on the given text.

Used where a real model is needed but a real model is too big: the test
suite, the benchmarks, and `korani train --smoke`, which swaps the
recipe's base for one of these to catch data and config mistakes on a CPU in
a minute. The tokenizer carries the KoRani chat template, EOS and a pad token
that differs from EOS, like the tokenizers training saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from korani_cli.template import DEFAULT_EOS, PAD_TOKEN


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
