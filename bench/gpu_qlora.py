"""The CUDA path of `korani train`: the shipped QLoRA recipe against bf16 LoRA on one GPU.

The reference recipe (configs/korani-5.8b.yaml) trains polyglot-ko-5.8b with its
weights in 4-bit NF4 (double quantisation, bf16 compute), LoRA r=8 on
query_key_value, paged 8-bit AdamW and gradient checkpointing. None of that runs
on a CPU, so the test suite cannot prove it; this script does, on a lent GPU.

The base is a random GPT-NeoX of polyglot-ko-5.8b's shape (hidden 4096, 28
layers, 16 heads; the Hub is unreachable, and the weights' values do not change
memory or speed) with a Korean tokenizer trained on the data. Two runs of
`korani train` over the same prepared data, same steps and batch:

- qlora: the shipped preset as it is (load_in_4bit=true);
- baseline `lora_bf16`: the same recipe with load_in_4bit=false (LoRA on bf16 weights).

Measured per run: peak GPU memory (nvidia-smi, sampled every 50 ms, minus the
memory in use before the run), seconds per optimizer step after the first,
first/last training loss and the EOS health figure from korani_metadata.json.
Then `korani ask --model ADAPTER --json` loads the QLoRA adapter on its base
(the hf backend quantises the base to NF4 on CUDA) and answers, as a user would.
The losses of a random model say only that training moves; memory and speed are
what the comparison is for.

Run (on a CUDA machine):
  python bench/gpu_qlora.py --data DIR [--hidden 4096 --layers 28 --heads 16] [--steps 20]
DIR is a prepared data directory (`korani data prepare`). Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT = "대한민국의 수도는 어디인가요?"


def korani(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


class GpuMemory:
    """Peak memory.used of GPU 0 while the block runs, sampled through nvidia-smi."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()

    @staticmethod
    def used_mib() -> int | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return int(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _poll(self):
        while not self._stop.is_set():
            used = self.used_mib()
            if used is not None:
                self.samples.append(used)
            self._stop.wait(0.05)

    def __enter__(self):
        self.idle = self.used_mib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        if not self.samples or self.idle is None:
            return None
        return round((max(self.samples) - self.idle) / 1024, 2)


def build_base(data: Path, out: Path, hidden: int, layers: int, heads: int, vocab: int) -> dict:
    """A random GPT-NeoX of the given shape, saved in bf16, with a tokenizer trained on the data."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from korani_cli.train import data as train_data
    from korani_cli.train import smoke

    start = time.perf_counter()
    tokenizer = smoke.train_tokenizer(train_data.texts(data / "train.jsonl"), out, vocab_size=vocab)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=2048,
        rotary_pct=0.5,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTNeoXForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"params": params, "vocab": len(tokenizer), "build_s": round(time.perf_counter() - start, 1)}


def step_seconds(logs: Path) -> float | None:
    """Median seconds between consecutive logged optimizer steps, the first step (warm-up) left out."""
    if not logs.is_file():
        return None
    times = {}
    for line in logs.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "loss" in row:
            times[row["step"]] = row["time"]
    steps = sorted(times)
    gaps = sorted((times[b] - times[a]) / (b - a) for a, b in zip(steps[1:], steps[2:]))
    return round(gaps[len(gaps) // 2], 3) if gaps else None


def train(name: str, base: Path, data: Path, out: Path, steps: int, batch: int, extra: list[str]) -> dict:
    args = [
        "train",
        "run",
        "korani-5.8b",
        "--data",
        str(data),
        "--output",
        str(out),
        f"base_model={base}",
        f"max_steps={steps}",
        f"per_device_train_batch_size={batch}",
        f"per_device_eval_batch_size={batch}",
        "logging_steps=1",
        f"eval_steps={steps}",
        f"save_steps={steps}",
        "health_prompts=4",
        "health_max_new_tokens=16",
        *extra,
    ]
    start = time.perf_counter()
    with GpuMemory() as memory:
        proc = korani(*args)
    wall = round(time.perf_counter() - start, 1)
    print(
        f"--- {name}: exit {proc.returncode} in {wall} s; stderr tail:\n{proc.stderr[-1500:]}",
        file=sys.stderr,
        flush=True,
    )
    result = {
        "exit": proc.returncode,
        "wall_s": wall,
        "peak_gib": memory.peak_gib,
        "s_per_step": step_seconds(out / "logs.jsonl"),
    }
    meta_path = out / "korani_metadata.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        health = meta.get("health") or {}
        result.update(
            {
                "steps": meta.get("steps"),
                "loss_first": meta.get("train_loss_first"),
                "loss_last": meta.get("train_loss_last"),
                "eval_losses": meta.get("eval_losses"),
                "quantization": meta.get("quantization"),
                "device": meta.get("device"),
                "eos_share": health.get("eos_share"),
                "train_s": meta.get("train_seconds"),
            }
        )
    return result


def ask(adapter: Path) -> dict:
    start = time.perf_counter()
    with GpuMemory() as memory:
        proc = korani("ask", "--model", str(adapter), "-t", "0", "-n", "24", "--json", PROMPT)
    result = {
        "exit": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_gib": memory.peak_gib,
        "stderr_tail": proc.stderr[-600:],
    }
    if proc.returncode == 0:
        answer = json.loads(proc.stdout)
        result.update(
            {k: answer.get(k) for k in ("backend", "completion_tokens", "finish_reason", "timings")}
        )
        result["answer_chars"] = len(answer.get("answer") or "")
        result["device_note"] = next(
            (line for line in proc.stderr.splitlines() if "4-bit" in line or "GPU" in line), None
        )
    return result


def tiny_data(out: Path) -> Path:
    """--quick without --data: 200 synthetic records prepared as `korani data prepare` does."""
    sys.path.insert(0, str(REPO / "bench"))
    from data_prepare import synthesize

    from korani_cli.data.prepare import PrepareConfig, prepare

    ko, sg = synthesize(out.parent, 200)
    prepare(PrepareConfig(out, koalpaca=(str(ko),), sharegpt=(str(sg),), max_tokens=256, near_dup=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, help="A prepared data directory (korani data prepare); --quick makes a tiny one."
    )
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=30003)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="The recipe's per-device batch.")
    parser.add_argument("--out", type=Path, help="Write the partial results here as each step ends (JSON).")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A 2-layer model, 3 steps of 2 (CI); without a CUDA GPU it says skipped and exits 0.",
    )
    args = parser.parse_args()
    if args.quick:  # tiny sizes, the same two runs; a size given on the command line wins
        parser.set_defaults(hidden=256, layers=2, heads=4, vocab=4000, steps=3, batch=2)
        args = parser.parse_args()
    elif args.data is None:
        parser.error("--data DIR is needed (a prepared data directory), or --quick")

    import torch

    if not torch.cuda.is_available():
        if not args.quick:
            raise SystemExit("bench/gpu_qlora.py needs a CUDA GPU (bitsandbytes' 4-bit kernels)")
        # CI has no GPU: the 4-bit path cannot run, and saying so is this bench's quick result there.
        print("RESULT " + json.dumps({"skipped": "no CUDA GPU: the QLoRA path runs only on one"}))
        return
    work = Path(tempfile.mkdtemp(prefix="korani-gpu-bench-"))
    os.environ.setdefault("KORANI_HOME", str(work / "home"))
    if args.data is None:
        args.data = tiny_data(work / "data")
    results: dict = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "shape": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads},
        "steps": args.steps,
        "batch": args.batch,
    }

    def checkpoint():
        if args.out:
            args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    try:
        results["base"] = build_base(
            args.data, work / "base", args.hidden, args.layers, args.heads, args.vocab
        )
        checkpoint()
        print(f"base: {results['base']}", file=sys.stderr, flush=True)
        results["qlora"] = train(
            "qlora", work / "base", args.data, work / "qlora", args.steps, args.batch, []
        )
        checkpoint()
        results["ask_qlora"] = ask(work / "qlora")
        checkpoint()
        results["lora_bf16"] = train(
            "lora_bf16",
            work / "base",
            args.data,
            work / "lora_bf16",
            args.steps,
            args.batch,
            ["load_in_4bit=false"],
        )
        checkpoint()
        q, b = results["qlora"], results["lora_bf16"]
        if q.get("peak_gib") and b.get("peak_gib"):
            results["memory_ratio_bf16_over_qlora"] = round(b["peak_gib"] / q["peak_gib"], 2)
        if q.get("s_per_step") and b.get("s_per_step"):
            results["speed_ratio_qlora_over_bf16"] = round(q["s_per_step"] / b["s_per_step"], 2)
    finally:
        checkpoint()
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
