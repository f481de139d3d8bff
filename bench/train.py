"""Training throughput and quality: `korani train` against the seed project's recipe.

Same tiny GPT-NeoX (polyglot-ko's architecture, random init), same tokenizer,
same LoRA (r=8 on query_key_value), same prepared data, batch size, steps and
learning rate, CPU fp32, no gradient checkpointing:

- korani: TRL SFTTrainer, loss on assistant tokens + EOS only, pad ≠ EOS,
  length-grouped batches (packing needs flash attention).
- seed: plain transformers Trainer, DataCollatorForLanguageModeling with
  pad = EOS (so EOS is masked out as padding and never learned), labels =
  input ids (the prompt is learned too), random batches padded to the longest.

Measured: real (non-pad) tokens per second of training, and the eval loss on
assistant tokens of the valid split, computed the same way for both models
(offsets of the chat template's generation spans). Goal: ≥ 1.5× tokens/s
with no worse assistant-token loss.

Run: .venv/bin/python bench/train.py [--records 2000] [--epochs 1]
Ends with one line: RESULT {json}.

`--head BASE` measures one thing instead: a LoRA training step (forward,
backward, AdamW) of korani's loss with the output layer applied only where
labels are (`train/headloss.py`) against the named baseline `full-head` (the
same step with logits at every position), same model, same batch, in one
run. BASE is a model directory or a .gguf file (gemma-3-270m: the demo's
GGUF; needs the `gguf` distribution), or `tiny` for the bench's GPT-NeoX.
Rows are `--batch` × `--max-length` tokens with `--labelled` labelled
positions at the end of each row (a grounded conversation's answer), LoRA
r=8 on `--targets`, fp32 on CPU. Reports seconds per step (median) and the
losses, which must agree. Ends with RESULT {json}.

    .venv/bin/python bench/train.py --head ~/.cache/korani/models/gemma-3-270m-q4_k_m.gguf \
        --batch 2 --max-length 512 --labelled 32 --steps 4 --targets q_proj,v_proj
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def assistant_loss(model, tokenizer, data_dir: Path, limit: int = 200, max_length: int = 256) -> float:
    """Mean cross-entropy over assistant tokens (+ EOS) of valid.jsonl."""
    import torch

    from korani_cli.template import Message, render_with_mask

    total, count = 0.0, 0
    model.eval()
    with (data_dir / "valid.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= limit:
                break
            messages = [Message(m["role"], m["content"]) for m in json.loads(line)["messages"]]
            text, spans = render_with_mask(messages, tokenizer.eos_token)
            enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
            ids = enc["input_ids"]
            labels = [
                t if any(s <= a < e for s, e in spans) else -100
                for t, (a, _) in zip(ids, enc["offset_mapping"])
            ]
            with torch.inference_mode():
                logits = model(torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            mask = target != -100
            if mask.any():
                total += torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum").item()
                count += int(mask.sum())
    return total / max(count, 1)


def real_tokens(make_loader, steps: int, count) -> int:
    """Non-pad tokens in the first `steps` batches, epoch after epoch, as training saw them."""
    seen, done = 0, 0
    while done < steps:
        for batch in make_loader():
            seen += int(count(batch))
            done += 1
            if done >= steps:
                break
    return seen


def head_step_times(args) -> None:
    """Seconds per LoRA step: output layer at labelled positions only vs at every position."""
    import statistics

    from korani_cli.runtime import quiet_libraries

    quiet_libraries()
    import torch

    from korani_cli.train import headloss
    from korani_cli.train import model as train_model
    from korani_cli.train.config import TrainConfig

    torch.set_num_threads(os.cpu_count() or 1)
    base = args.head
    if base == "tiny":
        from korani_cli.train import smoke

        work = Path(tempfile.mkdtemp(prefix="korani-head-bench-"))
        tok = smoke.train_tokenizer(["한국어 문장 하나 둘 셋 넷 다섯"] * 50, work, vocab_size=300)
        base = str(smoke.build_model(tok, work, hidden_size=128, layers=4, heads=4, context=args.max_length))
    config = TrainConfig(
        base_model=base,
        load_in_4bit=False,
        bf16=False,
        bnb_4bit_compute_dtype="float32",
        gradient_checkpointing=False,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lora_target_modules=args.targets.split(","),
    )
    plan = train_model.plan_device(config, cuda=False)
    t = time.perf_counter()
    model = train_model.load_model(config, plan, base).train()
    load_s = time.perf_counter() - t
    vocab = model.get_output_embeddings().out_features
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (args.batch, args.max_length), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -args.labelled :] = ids[:, -args.labelled :]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "use_cache": False}
    num_items = torch.tensor(int((labels[:, 1:] != -100).sum()))
    params = [p for p in model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]

    def run(name: str) -> tuple[list[float], list[float]]:
        # Both start from the same adapter and optimizer state: their losses must agree step by step.
        with torch.no_grad():
            for p, p0 in zip(params, initial):
                p.copy_(p0)
        opt = torch.optim.AdamW(params, lr=1e-4)
        times, losses = [], []
        for _ in range(args.steps):
            t = time.perf_counter()
            if name == "labelled":
                with headloss.narrowed(model, batch) as (inputs, narrowing):
                    loss = model(**inputs, num_items_in_batch=num_items).loss
                assert narrowing.fired
            else:
                loss = model(**batch, num_items_in_batch=num_items).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
            losses.append(loss.item())
        return times, losses

    full_t, full_l = run("full-head")
    lab_t, lab_l = run("labelled")
    full_s, lab_s = statistics.median(full_t), statistics.median(lab_t)
    agree = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(full_l, lab_l))
    print(
        f"base {base} (loaded in {load_s:.0f} s), vocab {vocab:,}, batch {args.batch} x {args.max_length}, "
        f"{args.labelled} labelled per row, LoRA r=8 on {args.targets}, fp32 CPU, {args.steps} steps each"
    )
    print(f"{'head':<10} {'s/step (median)':>16} {'first loss':>11} {'last loss':>10}")
    print(f"{'full-head':<10} {full_s:>16.2f} {full_l[0]:>11.4f} {full_l[-1]:>10.4f}")
    print(f"{'labelled':<10} {lab_s:>16.2f} {lab_l[0]:>11.4f} {lab_l[-1]:>10.4f}")
    print(f"speed-up {full_s / lab_s:.2f}x; largest relative loss difference {agree:.1e}")
    print(
        "RESULT "
        + json.dumps(
            {
                "base": base,
                "vocab": vocab,
                "batch": args.batch,
                "max_length": args.max_length,
                "labelled_per_row": args.labelled,
                "steps": args.steps,
                "full_head_s_per_step": round(full_s, 3),
                "labelled_s_per_step": round(lab_s, 3),
                "speedup": round(full_s / lab_s, 3),
                "full_head_losses": [round(x, 5) for x in full_l],
                "labelled_losses": [round(x, 5) for x in lab_l],
                "max_relative_loss_difference": agree,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--head", metavar="BASE", help="compare the labelled-only output layer with full-head")
    ap.add_argument("--labelled", type=int, default=32, help="--head: labelled positions per row")
    ap.add_argument(
        "--targets", default="query_key_value", help="--head: LoRA target modules, comma-separated"
    )
    ap.add_argument("--quick", action="store_true", help="200 records, 4 steps of 4, 128 tokens (CI)")
    args = ap.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        ap.set_defaults(records=200, steps=4, batch=4, max_length=128)
        args = ap.parse_args()
    if args.head:
        head_step_times(args)
        return

    from korani_cli.runtime import quiet_libraries

    quiet_libraries()
    import torch
    from data_prepare import synthesize
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from korani_cli.data.prepare import PrepareConfig, prepare
    from korani_cli.template import Message, render
    from korani_cli.train import smoke
    from korani_cli.train.config import load_config
    from korani_cli.train.model import lora_config
    from korani_cli.train.trainer import build_trainer

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="korani-train-bench-"))
    ko, sg = synthesize(work, args.records)
    prepare(
        PrepareConfig(
            work / "data",
            koalpaca=(str(ko),),
            sharegpt=(str(sg),),
            max_tokens=args.max_length,
            near_dup=False,
        )
    )
    data = work / "data"
    texts = [
        m["content"]
        for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()[:3000]
        for m in json.loads(line)["messages"]
    ]
    tok = smoke.train_tokenizer(texts, work / "base", vocab_size=4000)
    smoke.build_model(
        tok, work / "base", hidden_size=128, layers=4, heads=4, context=max(512, args.max_length)
    )

    recipe = replace(
        load_config(REPO / "configs" / "korani-5.8b.yaml"),
        base_model=str(work / "base"),
        data=str(data),
        output=str(work / "korani"),
        load_in_4bit=False,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_checkpointing=False,
        max_length=args.max_length,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        eval_steps=10**6,
        save_steps=10**6,
        logging_steps=10**6,
        health_prompts=0,
    )

    # korani
    trainer, ktok, _ = build_trainer(recipe, Path(recipe.output), data)
    t = time.perf_counter()
    trainer.train()
    korani_s = time.perf_counter() - t
    # Real tokens seen: count non-pad tokens over the same number of batches, same sampler order.
    korani_tokens = real_tokens(
        trainer.get_train_dataloader, args.steps, lambda b: (b["input_ids"] != ktok.pad_token_id).sum()
    )
    korani_loss = assistant_loss(trainer.model, ktok, data, max_length=args.max_length)

    # seed: plain Trainer, pad = EOS, labels = input ids, no prompt masking, no grouping.
    stok = AutoTokenizer.from_pretrained(work / "base")
    stok.pad_token = stok.eos_token
    rows = [
        json.loads(line)["messages"]
        for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    texts = [
        render([Message(m["role"], m["content"]) for m in msgs], stok.eos_token, add_generation_prompt=False)
        for msgs in rows
    ]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: stok(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(work / "base"), lora_config(recipe))
    seed_args = TrainingArguments(
        output_dir=str(work / "seed"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        adam_beta1=0.9,
        adam_beta2=0.99,
        optim="adamw_torch",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        seed=42,
    )
    collator = DataCollatorForLanguageModeling(stok, mlm=False)
    seed_trainer = Trainer(model=model, args=seed_args, train_dataset=ds, data_collator=collator)
    t = time.perf_counter()
    seed_trainer.train()
    seed_s = time.perf_counter() - t
    seed_tokens = real_tokens(
        seed_trainer.get_train_dataloader, args.steps, lambda b: b["attention_mask"].sum()
    )
    seed_loss = assistant_loss(seed_trainer.model, stok, data, max_length=args.max_length)

    k_tps, s_tps = korani_tokens / korani_s, seed_tokens / seed_s
    print(
        f"{'recipe':<8} {'steps':>5} {'real tokens':>11} {'seconds':>8} {'tokens/s':>9} "
        f"{'assistant eval loss':>20}"
    )
    print(
        f"{'korani':<8} {args.steps:>5} {korani_tokens:>11,} {korani_s:>8.1f} {k_tps:>9.0f} "
        f"{korani_loss:>20.4f}"
    )
    print(f"{'seed':<8} {args.steps:>5} {seed_tokens:>11,} {seed_s:>8.1f} {s_tps:>9.0f} {seed_loss:>20.4f}")
    print(
        f"speed-up {k_tps / s_tps:.2f}x (goal ≥ 1.5x); eval loss "
        f"{'no worse' if korani_loss <= seed_loss else 'WORSE'}"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "steps": args.steps,
                "batch": args.batch,
                "records": args.records,
                "max_length": args.max_length,
                "korani_tokens_per_s": round(k_tps, 1),
                "seed_tokens_per_s": round(s_tps, 1),
                "speedup": round(k_tps / s_tps, 3),
                "korani_assistant_eval_loss": round(korani_loss, 4),
                "seed_assistant_eval_loss": round(seed_loss, 4),
                "korani_seconds": round(korani_s, 2),
                "seed_seconds": round(seed_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
