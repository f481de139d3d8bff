"""After training: does the model stop, and does it loop?

On held-out prompts (first user turns of the test split, else valid — never
train: a model that stops on prompts it was trained on proves nothing),
greedy generation up to a token limit. With neither split, there is no check,
and `held_out_prompts` says why. The EOS share is the fraction that ended with
EOS before the limit — the thing the original project's model never learned.
The repetition score is the mean share of repeated token 3-grams in a
generation (0 = none repeated, →1 = one phrase over and over).

A model whose logits are NaN or infinite (a diverged run) "answers" with
whatever token argmax picks from NaN — often id 0, which is EOS in many
tokenizers, so it would score a perfect EOS share. Such answers are counted in
`nonfinite` and never as ended with EOS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from korani_cli.template import render, user
from korani_cli.train.data import conversations

EOS_WARN_BELOW = 0.9  # a smaller EOS share is a warning: the model may not have learned to stop
EOS_WARNING = f"under {EOS_WARN_BELOW * 100:g} %"  # how the card and `korani train` word it


@dataclass(frozen=True)
class Health:
    prompts: int
    eos_share: float
    repetition: float
    mean_new_tokens: float
    samples: list  # a few (prompt, answer) pairs for the user to eyeball
    nonfinite: int = 0  # prompts on which the model's logits held NaN or inf
    split: str = ""  # where the prompts came from: test or valid

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def stops_too_rarely(self) -> bool:
        return self.eos_share < EOS_WARN_BELOW


HELD_OUT = ("test", "valid")  # never train


@dataclass(frozen=True)
class Prompts:
    split: str | None  # test or valid; None when neither had a prompt
    prompts: list[str]
    why_none: str = ""  # when there are none: why, and what to pass


def held_out_prompts(data_dir: Path, n: int) -> Prompts:
    """Up to `n` first user turns of the test split, else of valid; never of train."""
    for split in HELD_OUT:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            continue
        prompts = []
        for messages in conversations(path):
            first = next((m["content"] for m in messages if m["role"] == "user"), None)
            if first:
                prompts.append(first)
            if len(prompts) >= n:
                break
        if prompts:
            return Prompts(split, prompts)
    return Prompts(
        None,
        [],
        f"{data_dir} has no held-out conversations (test.jsonl and valid.jsonl are empty or missing), "
        "and prompts the model was trained on would prove nothing; "
        "prepare the data with a --test or --valid fraction (korani data prepare --test 0.1)",
    )


def repetition(ids: list[int], n: int = 3) -> float:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def check(
    model, tokenizer, prompts: list[str], max_new_tokens: int, max_prompt_tokens: int = 512, split: str = ""
) -> Health:
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ended, reps, lengths, samples, nonfinite = 0, [], [], [], 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for prompt in prompts:
            text = render([user(prompt)], tokenizer.eos_token)
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_prompt_tokens)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            finite = all(bool(torch.isfinite(step).all()) for step in out.logits)
            nonfinite += not finite
            new = out.sequences[0, enc["input_ids"].shape[1] :].tolist()
            stopped = finite and eos in new
            if stopped:
                new = new[: new.index(eos)]
            ended += stopped
            reps.append(repetition(new))
            lengths.append(len(new))
            if len(samples) < 3:
                answer = (
                    tokenizer.decode(new, skip_special_tokens=True)[:400] if finite else "(NaN/inf logits)"
                )
                samples.append({"prompt": prompt[:200], "answer": answer, "ended_with_eos": stopped})
    finally:
        model.train(was_training)
    n = max(len(prompts), 1)
    return Health(
        len(prompts),
        round(ended / n, 4),
        round(sum(reps) / n, 4),
        round(sum(lengths) / n, 1),
        samples,
        nonfinite,
        split,
    )
