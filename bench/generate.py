"""Generation speed: korani against the baselines it must not lose to.

1. llamacpp: `korani ask` (the backend, in process and as the CLI) against raw
   llama-cpp-python `create_completion(stream=True)` on the same GGUF, prompt,
   threads and context — time to first token and decode tokens/s (goal ≥ 0.95×).
   Both sides' tokens are counted the same way: the answer text each produced,
   tokenized by the GGUF's own tokenizer. (The backend's own count includes the
   tokens of the `### ` header it stopped at, and the raw stream yields text
   chunks, not tokens: 27 against 26 for one answer, ~4 % on a short one.) Each
   side's own count is reported beside it.
2. hf: korani's streaming hf backend against the seed project's way, a
   transformers `pipeline("text-generation")` call, on the same tiny GPT-NeoX
   and greedy settings.
3. `korani --help` wall time, next to a bare `python -c pass`.

Run: .venv/bin/python bench/generate.py [--reps 3] [--tokens 128]
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
PROMPT = "한국의 사계절과 각 계절의 특징, 그리고 계절마다 즐기는 음식과 놀이를 자세히 설명해 주세요."


def median(values):
    return statistics.median(values) if values else None


def counted(llm, text: str) -> int:
    """Tokens of an answer's text by the model's tokenizer (no BOS, specials as text), white
    space at its ends left out: korani's stop filter drops the newline before a header that
    the raw stream keeps (the same answer was 25 tokens against 26 with it)."""
    return len(llm.tokenize(text.strip().encode("utf-8"), add_bos=False, special=False))


def tok_s(counts: list[int], spans: list[float]) -> list[float]:
    """Decode speed after the first token, as oneshot's decode_tok_s: (tokens - 1) / (first text → end)."""
    return [(n - 1) / span for n, span in zip(counts, spans) if n > 1 and span > 0]


def bench_llamacpp(reps: int, tokens: int, threads: int) -> dict:
    from llama_cpp import Llama

    from korani_cli import oneshot
    from korani_cli.backends import GenerationParams
    from korani_cli.config import Settings
    from korani_cli.models import load_backend, resolve
    from korani_cli.template import render, user

    settings = Settings(model="demo", threads=threads, n_ctx=2048)
    spec = resolve("demo", settings)
    t = time.perf_counter()
    backend = load_backend(spec, settings)
    korani_load = time.perf_counter() - t
    messages = [user(PROMPT)]
    prompt = render(messages, backend.eos_text)
    # Temperature 0 on both sides; the stop filter may end korani's answer at a
    # header, so speeds are compared per token, not per answer.
    params = GenerationParams(max_new_tokens=tokens, temperature=0.0, top_p=0.9)

    # (answer text, seconds from its first text to the end) of each run, per side.
    korani_runs, korani_ttft, korani_tokens = [], [], []
    for _ in range(reps):
        result = oneshot.answer(backend, messages, params)
        timing = result.timings
        korani_ttft.append(timing.first_token_s)
        korani_runs.append((result.answer, timing.generate_s - timing.first_token_s))
        korani_tokens.append(result.completion_tokens)
    del backend

    t = time.perf_counter()
    llm = Llama(model_path=spec.source, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    raw_load = time.perf_counter() - t
    raw_runs, raw_ttft, raw_chunks = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        first = None
        n = 0
        text = []
        # Same sampler chain and the same header stop as the korani backend.
        for chunk in llm.create_completion(
            prompt,
            max_tokens=tokens,
            temperature=0.0,
            top_k=40,
            top_p=0.9,
            min_p=0.05,
            repeat_penalty=1.1,
            stop=["\n###"],
            stream=True,
        ):
            if chunk["choices"][0]["text"]:
                n += 1
                text.append(chunk["choices"][0]["text"])
                if first is None:
                    first = time.perf_counter() - start
        end = time.perf_counter() - start
        raw_ttft.append(first)
        raw_runs.append(("".join(text), end - first))
        raw_chunks.append(n)

    # The one count both sides get: the answer's tokens by the GGUF's own tokenizer.
    korani_counted = [counted(llm, text) for text, _ in korani_runs]
    raw_counted = [counted(llm, text) for text, _ in raw_runs]
    korani_tps = tok_s(korani_counted, [span for _, span in korani_runs])
    raw_tps = tok_s(raw_counted, [span for _, span in raw_runs])
    same_answer = [k.strip() == r.strip() for (k, _), (r, _) in zip(korani_runs, raw_runs)]
    del llm

    # The CLI end to end, as a script would call it.
    env = {**os.environ, "KORANI_THREADS": str(threads)}
    t = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "korani_cli",
            "ask",
            "--model",
            "demo",
            "-t",
            "0",
            "-n",
            str(tokens),
            "--json",
            PROMPT,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    cli_wall = time.perf_counter() - t
    cli = json.loads(out.stdout)

    return {
        "korani_load_s": round(korani_load, 3),
        "raw_load_s": round(raw_load, 3),
        "korani_ttft_s": round(median(korani_ttft), 4),
        "raw_ttft_s": round(median(raw_ttft), 4),
        "korani_decode_tok_s": round(median(korani_tps), 2),
        "raw_decode_tok_s": round(median(raw_tps), 2),
        "decode_ratio": round(median(korani_tps) / median(raw_tps), 3),
        # The counts the tok/s above divide by: the same tokenizer over each side's answer.
        "korani_counted_tokens": korani_counted,
        "raw_counted_tokens": raw_counted,
        "same_answer": same_answer,
        # What each side would have counted by itself (not used above).
        "korani_backend_tokens": korani_tokens,
        "raw_text_chunks": raw_chunks,
        "cli_wall_s": round(cli_wall, 3),
        "cli_timings": cli["timings"],
    }


def bench_hf(reps: int, tokens: int) -> dict:
    import torch
    from transformers import AutoTokenizer, pipeline

    from korani_cli import oneshot
    from korani_cli.backends import GenerationParams
    from korani_cli.config import Settings
    from korani_cli.models import load_backend, resolve
    from korani_cli.template import render, user
    from korani_cli.train import smoke

    texts = [PROMPT]
    korquad = SHARED / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"
    if korquad.exists():
        data = json.loads(korquad.read_text(encoding="utf-8"))["data"]
        texts += [p["context"] for a in data[:40] for p in a["paragraphs"]]
    work = Path(tempfile.mkdtemp(prefix="korani-bench-"))
    tok = smoke.train_tokenizer(texts, work / "tok", vocab_size=4000)
    model_dir = smoke.build_model(tok, work / "model", hidden_size=256, layers=4, heads=8, context=1024)

    settings = Settings(model=str(model_dir))
    backend = load_backend(resolve(settings.model, settings), settings)
    messages = [user(PROMPT)]
    prompt = render(messages, backend.eos_text)
    params = GenerationParams(max_new_tokens=tokens, temperature=0.0)

    korani_total, korani_ttft, korani_tokens = [], [], []
    for _ in range(reps):
        r = oneshot.answer(backend, messages, params)
        korani_total.append(r.timings.generate_s)
        korani_ttft.append(r.timings.first_token_s)
        korani_tokens.append(r.completion_tokens)

    # What `korani ask` does when stdout is not a terminal: one whole answer, no streaming.
    whole_params = GenerationParams(max_new_tokens=tokens, temperature=0.0, stream=False)
    whole_total = []
    for _ in range(reps):
        r = oneshot.answer(backend, messages, whole_params)
        whole_total.append(r.timings.generate_s)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pipe = pipeline(
        "text-generation", model=str(model_dir), tokenizer=tokenizer, dtype=torch.float32, device="cpu"
    )
    pipe_total, pipe_tokens = [], []
    for _ in range(reps):
        t = time.perf_counter()
        out = pipe(
            prompt,
            max_new_tokens=tokens,
            do_sample=False,
            return_tensors=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        pipe_total.append(time.perf_counter() - t)
        n_prompt = len(tokenizer(prompt)["input_ids"])
        pipe_tokens.append(len(out[0]["generated_token_ids"]) - n_prompt)
    return {
        "model": "tiny GPT-NeoX (256 hidden, 4 layers, 4k vocab)",
        "korani_total_s": round(median(korani_total), 4),
        "korani_whole_total_s": round(median(whole_total), 4),
        "korani_ttft_s": round(median(korani_ttft), 4),
        "pipeline_total_s": round(median(pipe_total), 4),
        # The pipeline returns nothing until the end: its first token arrives with the last.
        "pipeline_ttft_s": round(median(pipe_total), 4),
        "korani_tokens": korani_tokens,
        "pipeline_tokens": pipe_tokens,
        "korani_tok_s": round(median(korani_tokens) / median(korani_total), 1),
        "pipeline_tok_s": round(median(pipe_tokens) / median(pipe_total), 1),
    }


def bench_help(reps: int) -> dict:
    def wall(cmd):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        return round(median(times), 3)

    korani = str(Path(sys.executable).with_name("korani"))
    return {
        "korani_help_s": wall([korani, "--help"]),
        "ask_help_s": wall([korani, "ask", "--help"]),
        "python_pass_s": wall([sys.executable, "-c", "pass"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="one repetition of 16 tokens (CI)")
    args = ap.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        ap.set_defaults(reps=1, tokens=16)
        args = ap.parse_args()
    os.environ.setdefault("KORANI_HOME", str(Path(tempfile.gettempdir()) / "korani-bench-home"))

    lc = bench_llamacpp(args.reps, args.tokens, args.threads)
    hf = bench_hf(args.reps, args.tokens)
    hp = bench_help(2 if args.quick else 5)

    rows = [
        (
            "llamacpp decode tok/s",
            f"{lc['korani_decode_tok_s']}",
            f"{lc['raw_decode_tok_s']} (raw llama-cpp-python)",
            f"{lc['decode_ratio']}x",
        ),
        (
            "llamacpp tokens counted",
            f"{lc['korani_counted_tokens']}",
            f"{lc['raw_counted_tokens']} (same tokenizer; own counts {lc['korani_backend_tokens']} "
            f"/ {lc['raw_text_chunks']} chunks)",
            "",
        ),
        ("llamacpp first token s", f"{lc['korani_ttft_s']}", f"{lc['raw_ttft_s']}", ""),
        ("llamacpp load s", f"{lc['korani_load_s']}", f"{lc['raw_load_s']}", ""),
        ("korani ask CLI wall s", f"{lc['cli_wall_s']}", "", ""),
        (
            "hf total s, streaming",
            f"{hf['korani_total_s']}",
            f"{hf['pipeline_total_s']} (pipeline)",
            f"{round(hf['pipeline_total_s'] / hf['korani_total_s'], 2)}x",
        ),
        ("hf first token s", f"{hf['korani_ttft_s']}", f"{hf['pipeline_ttft_s']}", ""),
        (
            "hf total s, whole answer",
            f"{hf['korani_whole_total_s']}",
            f"{hf['pipeline_total_s']} (pipeline)",
            f"{round(hf['pipeline_total_s'] / hf['korani_whole_total_s'], 2)}x",
        ),
        ("korani --help s", f"{hp['korani_help_s']}", f"{hp['python_pass_s']} (python -c pass)", ""),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{'measure':<{width[0]}}  {'korani':>{width[1]}}  {'baseline':<{width[2]}}  ratio")
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:<{width[2]}}  {r[3]}")
    print(
        "RESULT "
        + json.dumps(
            {
                "llamacpp": lc,
                "hf": hf,
                "help": hp,
                "tokens": args.tokens,
                "reps": args.reps,
                "threads": args.threads,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
