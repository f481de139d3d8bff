"""The output layer and the loss only where labels are: the same loss and gradients as the
full computation, for GPT-NeoX (polyglot-ko), gemma3 with logit soft-capping, and llama."""

import pytest
from support import QuietProgress, smoke_config

pytestmark = pytest.mark.slow


def _tiny(arch: str, tiny_neox_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if arch == "gpt_neox":
        return AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            # gemma-3-270m has none; gemma 2 had 30: the narrowed rows must go through it too.
            final_logit_softcapping=30.0,
        )
        return Gemma3ForCausalLM(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def _batch(vocab: int):
    """Two rows of 24 tokens; labels on a short answer in each, at different places, and the
    second row padded (labels -100, attention 0) at its end."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (2, 24), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 10:15] = ids[0, 10:15]
    labels[1, 17:20] = ids[1, 17:20]
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _rows_seen(model):
    """Rows the output layer computes, one entry per call."""
    seen = []
    head = model.get_output_embeddings()
    return seen, head.register_forward_hook(lambda m, a, out: seen.append(out.shape[:-1].numel()))


@pytest.mark.parametrize("num_items", [None, 8])
@pytest.mark.parametrize("arch", ["gpt_neox", "gemma3", "llama"])
def test_the_loss_on_labelled_rows_equals_the_full_loss(arch, num_items, tiny_neox_dir):
    import torch

    from korani_cli.train import headloss

    model = _tiny(arch, tiny_neox_dir).float().train()
    if arch == "gemma3":
        assert model.config.final_logit_softcapping == 30.0
    batch = _batch(model.config.vocab_size)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    full = model(**batch, **extra).loss
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    seen, handle = _rows_seen(model)
    assert headloss.applicable(model, batch)
    with headloss.narrowed(model, batch) as (inputs, narrowing):
        loss = model(**inputs, **extra).loss
    handle.remove()
    assert narrowing.fired
    # 5 + 3 labelled tokens, each predicted from the position before it, and the spare row.
    assert seen == [8 + 1]
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, p in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(p.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The hook is gone: the next forward computes every position again.
    seen, handle = _rows_seen(model)
    model(**batch)
    handle.remove()
    assert seen == [2 * 24]


@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_korani_s_trainer_pays_the_output_layer_only_for_labelled_tokens(prepared, tmp_path, four_bit):
    """`korani train`'s own compute_loss on a real batch: the loss of the full computation,
    with the output layer applied to the labelled positions alone — on bf16-free LoRA and on
    the 4-bit QLoRA path (bitsandbytes on CPU, the output layer kept unquantised)."""
    import torch

    from korani_cli.train.smoke import smoke_adjust
    from korani_cli.train.trainer import build_trainer

    config = smoke_adjust(
        smoke_config(prepared, tmp_path / "o", load_in_4bit=four_bit),
        tmp_path / "o",
        prepared,
        QuietProgress(),
    )
    trainer, _, _ = build_trainer(config, tmp_path / "o", prepared)
    if four_bit:
        assert getattr(trainer.model, "is_loaded_in_4bit", False)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() // 2
    model = trainer.model.train()
    with torch.no_grad():
        full = model(**batch, use_cache=False).loss
        seen, handle = _rows_seen(model)
        loss = trainer.compute_loss(model, dict(batch))
        handle.remove()
    assert seen == [labelled + 1]
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)


def test_a_gguf_base_loads_from_its_directory_with_gguf_file(tmp_path):
    """`base_model: FILE.gguf` (the demo's gemma-3-270m): transformers gets the directory and
    `gguf_file`; a directory or a hub id goes through as it is."""
    from korani_cli.train.model import pretrained_source

    gguf = tmp_path / "m" / "gemma-3-270m-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert pretrained_source(str(gguf)) == (str(gguf.parent.resolve()), {"gguf_file": gguf.name})
    assert pretrained_source(str(gguf.parent)) == (str(gguf.parent), {})
    assert pretrained_source("EleutherAI/polyglot-ko-5.8b") == ("EleutherAI/polyglot-ko-5.8b", {})
