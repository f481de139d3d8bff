"""`korani eval chat`: does the model behave — stop by itself, not repeat, answer in Korean, keep headers in.

Each instruction goes through the template's plain conversation and
`oneshot.answer`, as `korani ask` sends it; the text measured is what the user
would see (after the backends' shared header stop). Records and summary are
built here; `metrics` judges, `run` stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from korani_cli.backends import Backend
from korani_cli.eval import metrics as m
from korani_cli.eval.rag import finish, timings, usage
from korani_cli.eval.run import Retry, RunConfig, RunDir, evaluate, ratio
from korani_cli.eval.sets import Instruction, PromptSet, order


@dataclass(frozen=True)
class ChatConfig(RunConfig):
    prompts_path: str
    prompts_sha256: str
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    system: str | None = None
    model: str = ""
    template: str = "korani"
    concurrency: int = 1


def plan(prompts: PromptSet, config: ChatConfig) -> list[tuple[int, Instruction]]:
    by_id = {p.id: p for p in prompts.prompts}
    return [(i, by_id[pid]) for i, pid in enumerate(order(list(by_id), config.seed)[: config.limit or None])]


def answer_one(backend: Backend, config: ChatConfig, item: tuple[int, Instruction]) -> dict:
    from korani_cli import oneshot
    from korani_cli.template import conversation

    position, prompt = item
    start = time.perf_counter()
    result = oneshot.answer(backend, conversation(prompt.prompt(), config.system), config.params())
    text = result.answer
    return {
        "id": prompt.id,
        "position": position,
        "instruction": prompt.instruction,
        "input": prompt.input,
        "answer": text,
        "metrics": {
            "stopped": result.finish_reason in ("eos", "stop"),
            "repetition": m.repetition(text),
            "hangul_share": m.hangul_share(text),
            "header_leak": m.header_leak(text),
            "chars": len(text),
        },
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
        },
        "timings": result.timings.but(total_s=time.perf_counter() - start).to_json(
            ("first_token_s", "generate_s", "total_s"), digits=None
        ),
    }


def summarise(records: list[dict]) -> dict:
    n = len(records)
    chars = [r["metrics"]["chars"] for r in records]
    tokens = [r["usage"]["completion_tokens"] for r in records if r["usage"]["completion_tokens"] is not None]
    hangul = [r["metrics"]["hangul_share"] for r in records if r["metrics"]["hangul_share"] is not None]
    metrics = {
        "stop_rate": ratio(sum(r["metrics"]["stopped"] for r in records), n),
        "repetition": {
            "value": m.mean([r["metrics"]["repetition"] for r in records]),
            "count": None,
            "of": n,
        },
        "hangul_share": {"value": m.mean(hangul), "count": None, "of": len(hangul)},
        "header_leak": ratio(sum(r["metrics"]["header_leak"] for r in records), n),
        "length_chars": {"value": m.mean(chars), "count": None, "of": n, "p95": m.percentile(chars, 95)},
        "length_tokens": {
            "value": m.mean(tokens),
            "count": None,
            "of": len(tokens),
            "p95": m.percentile(tokens, 95),
        },
    }
    return {
        "kind": "chat",
        "items": n,
        "metrics": m.labelled(metrics),
        "usage": usage(records),
        "timings": timings(records, ("first_token_s", "total_s")),
    }


def run_chat(
    prompts: PromptSet,
    backend: Backend,
    config: ChatConfig,
    run: RunDir,
    *,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_item: Callable[[dict], None] = lambda record: None,
    retry: Retry = Retry(),
) -> dict:
    planned = plan(prompts, config)
    todo = [p for p in planned if p[1].id not in run.done]
    on_start(len(planned), len(planned) - len(todo))
    start, before, complete = time.perf_counter(), len(run.done), False
    try:
        evaluate(
            todo,
            lambda item: answer_one(backend, config, item),
            run,
            concurrency=config.concurrency,
            on_item=on_item,
            retry=retry,
        )
        complete = True
    finally:
        records = [run.done[p.id] for _, p in planned if p.id in run.done]
        summary = finish(
            summarise(records),
            run,
            backend,
            config.settings(),
            complete,
            time.perf_counter() - start,
            len(run.done) - before,
        )
    return summary
