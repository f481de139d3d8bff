"""`korani train` on CPU: label mask, smoke run, EOS learning, DeepSpeed, resume, merge."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from support import RECIPE, REPO, QuietProgress, run_korani, smoke_config

from korani_cli.errors import EXIT_CONFIG, EXIT_USAGE
from korani_cli.train.config import load_config

pytestmark = pytest.mark.slow


# TRL warns when SFTConfig gets the deprecated pad_token; the tokenizer (processing_class) carries it.
@pytest.mark.filterwarnings("error:`pad_token`:FutureWarning")
def test_label_mask_learns_only_assistant_text_and_eos(prepared, tmp_path):
    from korani_cli.train.smoke import smoke_adjust
    from korani_cli.train.trainer import build_trainer

    config = smoke_adjust(
        smoke_config(prepared, tmp_path / "o", load_in_4bit=False), tmp_path / "o", prepared, QuietProgress()
    )
    trainer, tok, _ = build_trainer(config, tmp_path / "o", prepared)
    assert tok.pad_token_id != tok.eos_token_id
    batch = next(iter(trainer.get_train_dataloader()))
    checked = 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        learned = [i for i, lab in zip(ids, labels) if lab != -100]
        assert all(lab in (-100, i) for i, lab in zip(ids, labels))
        text = tok.decode([i for i in ids if i != tok.pad_token_id])
        # Rebuild the expected learned text from the conversation itself.
        turns = text.split("### Bot\n")[1:]
        expected = "".join(t.split(tok.eos_token)[0] + tok.eos_token for t in turns)
        assert tok.decode(learned) == expected
        assert tok.eos_token_id in learned and tok.pad_token_id not in learned
        assert "### User" not in tok.decode(learned) and "### Bot" not in tok.decode(learned)
        checked += 1
    assert checked == config.per_device_train_batch_size


def test_smoke_run_is_qlora_trains_and_answers(prepared, tmp_path):
    out = tmp_path / "smoke"
    proc = run_korani(
        "train", str(RECIPE), "--data", str(prepared), "--output", str(out), "--smoke", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: no CUDA GPU: training in float32" in proc.stderr and "Traceback" not in proc.stderr
    meta = json.loads((out / "korani_metadata.json").read_text())
    from korani_cli.train.metadata import TrainMetadata

    assert TrainMetadata.read(out).to_json() == meta  # what the run wrote reads back as the same value
    assert meta["steps"] == 20 and meta["smoke"] is True
    assert meta["train_loss_last"] < meta["train_loss_first"]
    assert meta["eval_losses"] and meta["health"]["prompts"] > 0
    assert meta["quantization"] == "nf4"  # the real 4-bit path, on CPU
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "korani_train.yaml",
        "logs.jsonl",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    saved = load_config(out / "korani_train.yaml")
    assert saved.max_steps == 20 and Path(saved.base_model) == (out / "smoke-base").resolve()
    from transformers import AutoTokenizer

    from korani_cli.template import CHAT_TEMPLATE

    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    answer = run_korani("ask", "--model", str(out), "-n", "8", "--json", "서울은 어떤 도시인가요?")
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    # A 20-step model may well answer with EOS straight away: that is an answer too.
    assert (
        data["backend"] == "hf"
        and data["prompt_tokens"] > 0
        and data["finish_reason"] in ("eos", "stop", "length")
    )


def test_training_teaches_the_model_to_stop(prepared, tmp_path):
    """Enough steps on a small repeated set: more answers end with EOS than before training."""
    from transformers import AutoModelForCausalLM

    from korani_cli.train import health
    from korani_cli.train.run import run
    from korani_cli.train.smoke import smoke_adjust
    from korani_cli.train.trainer import prepare_tokenizer

    out = tmp_path / "eos"
    config = smoke_config(
        prepared,
        out,
        load_in_4bit=False,
        max_steps=160,
        learning_rate=3e-3,
        lora_r=16,
        lora_target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        eval_steps=1000,
        save_steps=1000,
        health_prompts=12,
        health_max_new_tokens=40,
    )
    config = smoke_adjust(
        config, tmp_path / "base", prepared, QuietProgress()
    )  # the tiny base, outside the run's output
    config = replace(config, learning_rate=3e-3, per_device_train_batch_size=8)
    tok = prepare_tokenizer(config.base_model)
    base = AutoModelForCausalLM.from_pretrained(config.base_model)
    before = health.check(base, tok, health.held_out_prompts(prepared, 12).prompts, 40)
    meta = run(config)
    after = meta.health
    assert after.eos_share > before.eos_share, (before, after)
    assert after.eos_share >= 0.5


def test_deepspeed_zero2_single_process_on_cpu(prepared, tmp_path):
    out = tmp_path / "ds"
    proc = run_korani(
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "--deepspeed",
        "zero2",
        "load_in_4bit=false",
        "max_steps=3",
        "health_prompts=0",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "korani_metadata.json").read_text())
    assert meta["steps"] == 3 and meta["deepspeed"] == "zero2"


def test_4bit_with_zero3_is_refused_before_loading(prepared, tmp_path):
    proc = run_korani(
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(tmp_path / "z3"),
        "--deepspeed",
        "zero3",
    )
    assert proc.returncode == EXIT_USAGE
    assert "ZeRO-3" in proc.stderr and "zero2" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_recipe_key_lists_the_valid_ones(prepared, tmp_path):
    proc = run_korani(
        "train", str(RECIPE), "--data", str(prepared), "--output", str(tmp_path / "x"), "learning_rat=1"
    )
    assert proc.returncode == EXIT_CONFIG
    assert "unknown key 'learning_rat'" in proc.stderr and "learning_rate" in proc.stderr


def test_kill_9_then_resume_reaches_the_total(prepared, tmp_path):
    out = tmp_path / "resume"
    args = [
        sys.executable,
        "-m",
        "korani_cli",
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "max_steps=200",
        "save_steps=10",
        "eval_steps=1000",
        "health_prompts=0",
        "load_in_4bit=false",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (out / "checkpoint-10" / "trainer_state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-10").is_dir()
    assert not (out / "korani_metadata.json").exists()
    # A checkpoint the kill caught mid-save has no trainer_state.json; --resume skips it.
    done = sorted(
        int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    last = done[-1]
    assert last < 200
    resumed = run_korani(*args[3:], "--resume", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((out / "korani_metadata.json").read_text())
    assert meta["steps"] == 200 and meta["resumed_from"].endswith(f"checkpoint-{last}")
    steps = [json.loads(line)["step"] for line in (out / "logs.jsonl").read_text().splitlines()]
    # The step counter continues from the checkpoint: the resumed run's first log is step last+1.
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] < steps[i - 1]]
    assert restarts in ([], [last + 1])
    assert set(steps) == set(range(1, 201)) and steps[-1] == 200


def test_merge_matches_base_plus_adapter(prepared, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    proc = run_korani(
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "max_steps=5",
        "health_prompts=0",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged_dir = tmp_path / "merged"
    merged = run_korani("train", "merge", str(out), "-o", str(merged_dir), "--dtype", "float32")
    assert merged.returncode == 0, merged.stderr[-2000:]
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("### User\n서울은?\n\n### Bot\n", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(out / "smoke-base", dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, out)
    full = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.inference_mode():
        a, b = with_adapter(ids).logits, full(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not (merged_dir / "adapter_config.json").exists()
    answer = run_korani("ask", "--model", str(merged_dir), "-n", "5", "--json", "안녕?")
    assert answer.returncode == 0 and json.loads(answer.stdout)["backend"] == "hf"


def test_ctrl_c_saves_a_checkpoint_and_exits_130(prepared, tmp_path):
    out = tmp_path / "int"
    args = [
        sys.executable,
        "-m",
        "korani_cli",
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "max_steps=400",
        "save_steps=1000",
        "eval_steps=1000",
        "health_prompts=0",
        "load_in_4bit=false",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        logs = out / "logs.jsonl"
        if logs.exists() and len(logs.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "--resume" in stderr and "Traceback" not in stderr
    step = int(checkpoints[0].name.split("-")[1])
    assert 5 <= step < 400
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == step


def test_packed_rows_never_attend_across_samples(tiny_neox_dir):
    """A packed row through the block-diagonal collator gives each sample the logits it has alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from korani_cli.train.packing import BlockDiagonalCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_neox_dir).eval()
    a, b, c = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14], [20, 21, 22]
    batch = BlockDiagonalCollator(pad_token_id=1)(
        [
            {"input_ids": a + b, "labels": a + b, "seq_lengths": [6, 4]},
            {"input_ids": c, "labels": c, "seq_lengths": [3]},
        ]
    )
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert batch["labels"][0, 6].item() == -100 and batch["labels"][1, 3:].tolist() == [-100] * 7
    with torch.inference_mode():
        packed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
        for row, start, ids in ((0, 0, a), (0, 6, b), (1, 0, c)):
            alone = model(torch.tensor([ids])).logits[0]
            assert torch.allclose(packed[row, start : start + len(ids)], alone, atol=1e-5)


def test_export_gguf_answers_like_the_hf_model(prepared, tmp_path):
    out = tmp_path / "g"
    proc = run_korani(
        "train",
        str(RECIPE),
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "max_steps=3",
        "health_prompts=0",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    gguf = tmp_path / "model.gguf"
    exported = run_korani("train", "export-gguf", str(out), "-o", str(gguf), "--outtype", "f32", timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert gguf.read_bytes()[:4] == b"GGUF"
    # Greedy answers from llama.cpp on the GGUF and from transformers on the merged weights agree.
    via_gguf = run_korani(
        "ask", "--model", str(gguf), "-t", "0", "-n", "8", "--json", "서울은 어떤 도시인가요?"
    )
    merged = tmp_path / "merged"
    assert run_korani("train", "merge", str(out), "-o", str(merged), "--dtype", "float32").returncode == 0
    via_hf = run_korani(
        "ask", "--model", str(merged), "-t", "0", "-n", "8", "--json", "서울은 어떤 도시인가요?"
    )
    a, b = json.loads(via_gguf.stdout), json.loads(via_hf.stdout)
    assert a["backend"] == "llamacpp" and b["backend"] == "hf"
    assert a["prompt_tokens"] == b["prompt_tokens"] and a["answer"] == b["answer"]
