"""Packing that never lets one sample attend to another, on any attention kernel.

TRL packs conversations into rows (best-fit decreasing) and records each
row's `seq_lengths`. With flash attention, TRL's padding-free collator hands
those boundaries to the varlen kernel. Other kernels (sdpa, eager — every
CPU) would ignore them and let later samples attend to earlier ones, so for
those this collator builds what they do understand: a block-diagonal causal
4-D attention mask and position ids that restart at each sample.
"""

from __future__ import annotations


class BlockDiagonalCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        allowed = torch.zeros((batch, 1, width, width), dtype=torch.bool)
        for b, example in enumerate(examples):
            ids = example["input_ids"]
            n = len(ids)
            input_ids[b, :n] = torch.as_tensor(ids)
            labels[b, :n] = torch.as_tensor(example.get("labels", ids))
            start = 0
            for length in example.get("seq_lengths") or [n]:
                end = start + length
                position_ids[b, start:end] = torch.arange(length)
                allowed[b, 0, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
                # The first token of a sample is never predicted from the sample before it.
                labels[b, start] = -100
                start = end
            # Padding attends to itself only: no fully masked rows (NaN in softmax).
            idx = torch.arange(n, width)
            allowed[b, 0, idx, idx] = True
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": allowed,
        }
