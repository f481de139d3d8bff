"""After `korani train`: the health check's prompts are held out (never train), a
skipped eval loss or health check says why, the output's README is korani's
model card (not TRL's "fine-tuned version of [None]"), and a smoke run's
stdout/stderr carry korani's lines only.

The two runs are real `--smoke` runs (a tiny GPT-NeoX on CPU, a few steps);
the rest reads files and renders text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from support import KOREAN_CORPUS, REPO, run_korani

from korani_cli.train import card, health
from korani_cli.train.config import load_config
from korani_cli.train.metadata import TrainMetadata

RECIPE = REPO / "configs" / "korani-5.8b.yaml"


def write_split(path: Path, n: int, tag: str) -> None:
    corpus = sorted({s for s in KOREAN_CORPUS if "###" not in s})
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{tag} 질문 {i}: {corpus[i % len(corpus)]}"},
                {"role": "assistant", "content": f"{corpus[(i + 3) % len(corpus)]} 번호 {i}."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def data_dir(root: Path, *, train: int = 60, valid: int = 0, test: int = 0) -> Path:
    root.mkdir(parents=True)
    for split, n in (("train", train), ("valid", valid), ("test", test)):
        write_split(root / f"{split}.jsonl", n, split)
    return root


# -- the health check's prompts: held out, never train ------------------------------------------------

PROMPT_ROWS = [
    # (valid, test, split the prompts come from, or None: no check)
    (0, 0, None),
    (5, 0, "valid"),
    (0, 5, "test"),
    (5, 5, "test"),
]


@pytest.mark.parametrize(
    "valid, test, split", PROMPT_ROWS, ids=["train-only", "valid-only", "test-only", "both"]
)
def test_health_prompts_come_from_a_held_out_split_never_train(tmp_path, valid, test, split):
    found = health.held_out_prompts(data_dir(tmp_path / "d", valid=valid, test=test), 8)
    assert found.split == split
    if split is None:
        assert found.prompts == []
        assert "no held-out conversations" in found.why_none and "--test" in found.why_none
    else:
        assert found.prompts and all(p.startswith(f"{split} 질문") for p in found.prompts)


# -- the model card ----------------------------------------------------------------------------------


def _metadata(**changes) -> dict:
    meta = {
        "korani_version": "0.1.0",
        "base_model": "EleutherAI/polyglot-ko-5.8b",
        "smoke": False,
        "data": {
            "dir": "/data/ko",
            "fingerprint": "ab" * 32,
            "conversations": {"train": 900, "valid": 50, "test": 50},
        },
        "steps": 300,
        "max_steps": 300,
        "train_loss_first": 2.5,
        "train_loss_last": 1.25,
        "eval_losses": [{"step": 300, "eval_loss": 1.5}],
        "eval_skipped": None,
        "health": {
            "prompts": 50,
            "eos_share": 0.96,
            "repetition": 0.012,
            "mean_new_tokens": 41.5,
            "samples": [],
            "nonfinite": 0,
            "split": "test",
        },
        "health_skipped": None,
        "device": {"cuda": True, "bf16": True, "optim": "paged_adamw_8bit"},
        "train_seconds": 1234.5,
        "resumed_from": None,
    }
    meta.update(changes)
    return meta


CARD_ROWS = [
    # (recipe base, metadata changes, fragments the card must hold, fragments it must not)
    (
        "EleutherAI/polyglot-ko-5.8b",
        {},
        [
            'base_model: "EleutherAI/polyglot-ko-5.8b"',
            "- **Base model:** `EleutherAI/polyglot-ko-5.8b`",
            "900 train, 50 valid, 50 test",
            "LoRA r=8, alpha=32",
            "4-bit nf4 (QLoRA)",
            "eval loss 1.5000 at step 300",
            "ended with EOS: 96%",
            "the test split, never train",
            "korani ask --model runs/ko",
            "korani train merge runs/ko -o runs/ko-merged",
        ],
        ["[None]", "fine-tuned version of", "under 90 %", "Skipped"],
    ),
    (
        "/models/local-base",
        {
            "base_model": "/models/local-base",
            "eval_losses": [],
            "eval_skipped": "eval_steps 500 is more than the 300 steps trained",
            "health": None,
            "health_skipped": "health_prompts is 0 in the recipe",
        },
        [
            "- **Base model:** `/models/local-base`",
            "eval loss: skipped — eval_steps 500 is more than the 300 steps trained",
            "Skipped — health_prompts is 0 in the recipe.",
        ],
        ["base_model:", "[None]"],
    ),
    (
        "EleutherAI/polyglot-ko-5.8b",
        {
            "smoke": True,
            "base_model": "runs/ko/smoke-base",
            "OUTPUT": "my runs/ko",
            "health": {
                "prompts": 8,
                "eos_share": 0.0,
                "repetition": 0.6,
                "mean_new_tokens": 32.0,
                "samples": [],
                "nonfinite": 0,
                "split": "valid",
            },
        },
        [
            "tiny random GPT-NeoX built by `--smoke`",
            "standing in for the recipe's `EleutherAI/polyglot-ko-5.8b`",
            "This is a smoke run",
            "ended with EOS: 0% — **under 90 %",
            "the valid split, never train",
            "korani ask --model 'my runs/ko' ",
            "korani train merge 'my runs/ko' -o 'my runs/ko-merged'",
        ],
        ["base_model:"],
    ),
]


@pytest.mark.parametrize(
    "recipe_base, changes, present, absent", CARD_ROWS, ids=["hub-base", "local-base-skips", "smoke"]
)
def test_the_model_card_says_what_was_trained_how_it_did_and_how_to_run_it(
    recipe_base, changes, present, absent
):
    changes = dict(changes)
    output = changes.pop("OUTPUT", "runs/ko")  # a path with a space must stay one shell word
    meta = _metadata(**changes)
    config = replace(load_config(RECIPE), base_model=meta["base_model"])
    text = card.render(
        card.Run(
            name="ko",
            output=output,
            config=config,
            recipe_base_model=recipe_base,
            metadata=TrainMetadata.from_json(meta),
        )
    )
    assert text.startswith("---\n") and "\n# ko\n" in text
    for fragment in present:
        assert fragment in text, fragment
    for fragment in absent:
        assert fragment not in text, fragment


# -- bitsandbytes' optional-kernel record, and only it, is dropped --------------------------------------


def test_only_bitsandbytes_optional_kernel_warning_is_silenced():
    code = (
        "import logging\n"
        "from korani_cli.runtime import quiet_libraries\n"
        "quiet_libraries()\n"
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
        "you already `pip install kernels`', 'x')\n"
        "log.warning('bitsandbytes: another warning that matters')\n"
        "import bitsandbytes\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gemm_4bit_forward" not in proc.stderr and "pip install kernels" not in proc.stderr
    assert "another warning that matters" in proc.stderr


# -- real smoke runs ---------------------------------------------------------------------------------


def _smoke(data: Path, out: Path, *overrides: str):
    proc = run_korani(
        "train",
        str(RECIPE),
        "--data",
        str(data),
        "--output",
        str(out),
        "--smoke",
        "load_in_4bit=false",
        *overrides,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "korani_metadata.json").read_text(encoding="utf-8"))


def _korani_lines_only(stderr: str) -> None:
    """What a smoke run prints: korani's notes, its progress bar and its summary; no library chatter."""
    known = (
        "note:",
        "train ",
        "trained ",
        "eval loss",
        "health",
        "WARNING: under 90 %",
        "adapter, tokenizer",
        "try it:",
    )
    for line in stderr.splitlines():
        assert not line.strip() or line.startswith(known), line


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_without_held_out_data_says_why_eval_and_health_were_skipped(tmp_path):
    out = tmp_path / "out"
    proc, meta = _smoke(data_dir(tmp_path / "d"), out, "max_steps=3")
    assert meta["eval_losses"] == [] and "valid.jsonl holds no conversations" in meta["eval_skipped"]
    assert meta["health"] is None and "no held-out conversations" in meta["health_skipped"]
    assert "eval loss: skipped — " in proc.stderr and "health check: skipped — " in proc.stderr
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "[None]" not in readme and "fine-tuned version" not in readme and "Model Card for" not in readme
    assert "eval loss: skipped" in readme and "Skipped — " in readme
    assert proc.stdout == ""  # the tokenizer trainer's progress bars once wrote blank lines here
    _korani_lines_only(proc.stderr)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_with_held_out_data_gets_korani_s_card_with_its_health_figures(tmp_path):
    out = tmp_path / "out"
    proc, meta = _smoke(data_dir(tmp_path / "d", valid=8, test=8), out, "max_steps=3", "health_prompts=4")
    assert meta["eval_losses"][-1]["step"] == 3 and meta["eval_skipped"] is None  # evaluated at the last step
    assert meta["health"]["split"] == "test" and meta["health"]["prompts"] == 4
    assert all(s["prompt"].startswith("test 질문") for s in meta["health"]["samples"])
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n") and "[None]" not in readme and "Model Card for" not in readme
    assert (
        f"# {out.name}" in readme
        and "This is a smoke run" in readme
        and "the test split, never train" in readme
    )
    assert f"korani ask --model {out}" in readme and "60 train, 8 valid, 8 test" in readme
    assert f"eval loss {meta['eval_losses'][-1]['eval_loss']:.4f} at step 3" in readme
    assert "(expected for a 3-step --smoke run)" in proc.stderr
    assert not list(out.glob(".README.md*"))  # written atomically: no temporary left behind
    assert proc.stdout == ""
    _korani_lines_only(proc.stderr)
