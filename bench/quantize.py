"""GGUF quantisation for CPUs: file size and decode speed of f16 (the baseline)
against q8_0 and q4_k_m, all made by `korani train export-gguf --outtype …` and
all measured through `korani ask --model FILE.gguf --json`.

Decode speed is (tokens − 1) / (generate_s of an N-token answer − generate_s of
a 1-token answer to the same prompt): the second run is the prompt's prefill
plus the first token, so the difference is decoding alone. (`ask --json`'s own
`decode_tok_s` counts from the first *printable* text; a random model's output
is full of partial UTF-8 pieces, which would make that figure meaningless here.)

The model is polyglot-ko's as the Hub has it — its config.json keys and values
(vocab 30080 padded over the tokenizer's 30,003 ids, rotary_pct, untied
embeddings, parallel residual, bos/eos 0), the polyglot team's tokenizer, sharded
float16 `.bin` weights — built by tests/rehearsal.py with random weights, at the
shape `--shape` names: `polyglot-ko-5.8b` (the real one: hidden 4096, 28 layers,
16 heads, 5.9 B parameters; about 12 GB of disk per copy and as much RAM to
build), `polyglot-ko-1.3b` (hidden 2048, 24 layers, rotary_pct 0.5 — the
default, built in minutes) or `rehearsal` (the tests' cut-down one);
`--hidden`/`--layers` change the width and depth of any of them. Its weights are
random, so only size and speed mean anything here; whether a
quantised model still answers like the f16 one is tested on a trained tiny model
in tests/test_ship.py. Decode speed on a CPU is bound by reading the weights
once per token, so it follows file size; with other work on the machine the
figures are noisy, which is why the runs of the three files are interleaved
and the median is reported.

Run: .venv/bin/python bench/quantize.py [--shape polyglot-ko-1.3b] [--hidden N] [--layers N]
                                       [--tokens 64] [--reps 3]
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT = "한국의 사계절과 각 계절의 특징, 그리고 계절마다 즐기는 음식과 놀이를 자세히 설명해 주세요."
TYPES = ("f16", "q8_0", "q4_k_m")


def korani(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# Width and depth over the Hub's polyglot-ko-5.8b config.json (tests/rehearsal.py has its keys).
SHAPES = {
    "polyglot-ko-5.8b": {},
    "polyglot-ko-1.3b": {
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 8192,
        "rotary_pct": 0.5,
    },
    "rehearsal": None,  # rehearsal.SMALL
}


def build(work: Path, shape: str, hidden: int | None, layers: int | None) -> tuple[Path, int, float, dict]:
    """The Hub's polyglot-ko base at `shape`; returns (dir, parameter count, seconds, its config)."""
    sys.path.insert(0, str(REPO / "tests"))
    import rehearsal

    start = time.perf_counter()
    chosen = dict(rehearsal.SMALL if SHAPES[shape] is None else SHAPES[shape])
    if hidden:
        chosen["hidden_size"], chosen["intermediate_size"] = hidden, 4 * hidden
    if layers:
        chosen["num_hidden_layers"] = layers
    out = rehearsal.build_base(work / "model", shape=chosen, rig=False)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    h, n, ff, v = (config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    # embed_in + embed_out (untied), per layer qkv + dense + two MLP matrices with biases, and norms.
    params = 2 * v * h + n * (4 * h * h + 2 * h * ff + 9 * h + ff) + 2 * h
    return out, params, time.perf_counter() - start, config


def export(model: Path, target: Path, outtype: str) -> dict:
    start = time.perf_counter()
    proc = korani("train", "export-gguf", str(model), "-o", str(target), "--outtype", outtype)
    if proc.returncode != 0:
        raise SystemExit(f"export-gguf --outtype {outtype} failed:\n{proc.stderr[-2000:]}")
    tensors = next((line for line in proc.stderr.splitlines() if line.startswith("tensors:")), "")
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "bytes": target.stat().st_size,
        "tensors": tensors.removeprefix("tensors: "),
    }


def ask(gguf: Path, tokens: int) -> dict:
    proc = korani("ask", "--model", str(gguf), "-t", "0", "-n", str(tokens), "--json", PROMPT)
    if proc.returncode != 0:
        raise SystemExit(f"korani ask --model {gguf.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="polyglot-ko-1.3b")
    parser.add_argument("--hidden", type=int, help="Another width (intermediate 4×) for the shape.")
    parser.add_argument("--layers", type=int, help="Another depth for the shape.")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the work directory (model and GGUF files).")
    parser.add_argument(
        "--quick", action="store_true", help="The rehearsal shape, one repetition of 8 tokens (CI)."
    )
    args = parser.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        parser.set_defaults(shape="rehearsal", tokens=8, reps=1)
        args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="korani-quant-bench-"))
    os.environ.setdefault("KORANI_HOME", str(work / "home"))
    try:
        model, params, build_s, config = build(work, args.shape, args.hidden, args.layers)
        print(
            f"built a random {args.shape}: {params / 1e9:.2f} B parameters (hidden {config['hidden_size']}, "
            f"{config['num_hidden_layers']} layers, vocab {config['vocab_size']}) in {build_s:.0f} s",
            file=sys.stderr,
        )
        files = {t: work / f"model-{t}.gguf" for t in TYPES}
        exports = {t: export(model, files[t], t) for t in TYPES}
        runs: dict[str, list[dict]] = {t: [] for t in TYPES}
        for _ in range(args.reps):
            for t in TYPES:  # interleaved: background load hits every file alike
                first, full = ask(files[t], 1), ask(files[t], args.tokens)
                decode_s = full["timings"]["generate_s"] - first["timings"]["generate_s"]
                n = full["completion_tokens"] or 0
                runs[t].append(
                    {
                        "tok_s": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else None,
                        "tokens": n,
                        "load_s": full["timings"]["load_s"],
                    }
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for t in TYPES:
        speeds = [r["tok_s"] for r in runs[t] if r["tok_s"]]
        rows[t] = {
            "bytes": exports[t]["bytes"],
            "bits_per_weight": round(exports[t]["bytes"] * 8 / params, 2),
            "export_s": exports[t]["seconds"],
            "tensors": exports[t]["tensors"],
            "decode_tok_s": round(statistics.median(speeds), 2) if speeds else None,
            "decode_tok_s_all": speeds,
            "completion_tokens": [r["tokens"] for r in runs[t]],
            "load_s": round(statistics.median(r["load_s"] for r in runs[t]), 2),
        }
    base = rows["f16"]
    print(
        f"\n{'type':8} {'size':>10} {'× f16':>6} {'bits/w':>7} {'decode tok/s':>13} {'× f16':>6} "
        f"{'load s':>7}  tensors"
    )
    for t, row in rows.items():
        speed = row["decode_tok_s"]
        ratio = f"{speed / base['decode_tok_s']:.2f}" if speed and base["decode_tok_s"] else "-"
        print(
            f"{t:8} {row['bytes'] / 1e9:>8.2f}GB {row['bytes'] / base['bytes']:>6.2f} "
            f"{row['bits_per_weight']:>7.2f} "
            f"{speed if speed else '-':>13} {ratio:>6} {row['load_s']:>7}  {row['tensors']}"
        )
    result = {
        "model": (
            f"random {args.shape} (the Hub's config.json), hidden {config['hidden_size']}, "
            f"{config['num_hidden_layers']} layers, {config['num_attention_heads']} heads, "
            f"vocab {config['vocab_size']}"
        ),
        "parameters": params,
        "build_s": round(build_s, 1),
        "tokens": args.tokens,
        "reps": args.reps,
        "cpu_count": os.cpu_count(),
        "baseline": "f16",
        "rows": rows,
    }
    print("RESULT " + json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
