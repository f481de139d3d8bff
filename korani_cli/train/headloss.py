"""The loss computed only where labels are: the output layer applied to labelled positions alone.

A causal LM applies its output layer (hidden size → vocabulary) at every
position, and its loss then keeps the positions whose next token carries a
label. korani labels only the assistant's text, so most positions are prompt
— a grounded conversation has a few dozen answer tokens among ~700 — and with
a large vocabulary (gemma's 262k entries) that layer is most of a CPU step.

`narrowed` runs the model's *own* forward with a pre-hook on its output
layer that hands it only the hidden states of positions whose next token is
labelled, plus one spare row, and with labels laid out so that the model's
own loss — its shift by one, its reduction (mean, or sum over
`num_items_in_batch`), whatever it does to the logits first (gemma's
soft-capping, a logit scale) and any auxiliary loss it adds — comes out as it
would over every position. Nothing is copied from one architecture, so it
holds for every base whose forward calls its output-embedding module, which
transformers' causal LMs do; one that does not is noticed (the hook never
ran) and trained the full way. Quantisation does not enter: bitsandbytes
keeps the output layer unquantised, and the hook only selects rows of its
input, whatever their dtype.

The logits such a forward returns are those of the labelled positions only,
so it serves the loss and nothing else; evaluation that wants logits, and
batches that bring their own `shift_labels`, take the full path.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

IGNORE = -100


@dataclass
class Narrowing:
    """What one narrowed forward needs: the rows its output layer keeps, and whether it ran."""

    rows: object  # LongTensor of flat (batch × sequence) positions, spare row last
    fired: bool = False


def labelled_rows(labels):
    """(rows, labels) for a batch: the flat positions whose next token is labelled, then one
    spare row; and labels whose shift by one gives those positions their targets.

    Position t predicts token t+1, so row t is kept when labels[t+1] is a label. The
    model's loss pairs logit row r with label r+1: labels = [-100, targets...], and the
    spare row meets the -100 the shift pads with."""
    import torch

    batch, length = labels.shape
    nxt = torch.full_like(labels, IGNORE)
    nxt[:, :-1] = labels[:, 1:]
    keep = (nxt != IGNORE).reshape(-1)
    rows = torch.cat([keep.nonzero().squeeze(1), torch.tensor([batch * length - 1], device=labels.device)])
    targets = nxt.reshape(-1)[keep]
    arranged = torch.cat([torch.tensor([IGNORE], device=labels.device, dtype=labels.dtype), targets])
    return rows, arranged.unsqueeze(0)


@contextmanager
def narrowed(model, inputs: dict):
    """Inputs for a forward of `model` (unwrapped: PEFT, DeepSpeed and DDP wrappers are fine
    around it, the hook goes on the layer itself) whose output layer sees only labelled rows.

    Yields (inputs, narrowing): after the forward, `narrowing.fired` says whether the output
    layer ran on the narrowed rows; when it is False the forward's loss is not the model's
    loss and the caller must compute it the full way."""
    head = model.get_output_embeddings()
    rows, labels = labelled_rows(inputs["labels"])
    narrowing = Narrowing(rows)
    expected = inputs["labels"].numel()

    def keep_labelled(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("input")
        if hidden is None or hidden.shape[:-1].numel() != expected:
            # Not the full sequence (a caller asked for logits_to_keep): leave it, and say so.
            return None
        narrowing.fired = True
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.to(hidden.device)).unsqueeze(0)
        if args:
            return (selected,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "input": selected}

    handle = head.register_forward_pre_hook(keep_labelled, with_kwargs=True)
    try:
        yield {**inputs, "labels": labels}, narrowing
    finally:
        handle.remove()


def applicable(model, inputs: dict) -> bool:
    """Narrowing needs labels, no precomputed shift and an output layer that is a module."""
    import torch

    labels = inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or "shift_labels" in inputs:
        return False
    if not (labels[:, 1:] != IGNORE).any():
        return False  # nothing to learn: the full path gives the model's own answer for it
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return isinstance(head, torch.nn.Module)
