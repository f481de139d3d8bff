"""`korani ask`: one question, answer on stdout, everything else on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Optional

import typer

from korani_cli.config import TEMPLATES, load_settings
from korani_cli.console import err_console, korani_command, notice
from korani_cli.errors import UsageError


def _question(text: str | None) -> str:
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise UsageError("no question given", 'pass it as an argument (korani ask "질문") or pipe it: echo 질문 | korani ask -')
        text = sys.stdin.read()
    text = text.strip()
    if not text:
        raise UsageError("the question is empty", 'pass a question: korani ask "질문"')
    return text


@korani_command
def ask(
    question: Annotated[Optional[str], typer.Argument(help="The question; '-' (or nothing, when piped) reads it from stdin.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Alias (korani-5.8b, demo, demo-chat), .gguf path, model directory, hub id or openai:MODEL@URL. Default: config file / KORANI_MODEL / korani-5.8b.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System text placed before the conversation.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", "-n", min=1, help="Most tokens to generate. [default: 256]")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature; 0 is greedy. [default: 0.7]")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass. [default: 0.9]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed, for repeatable sampling.")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help=f"Prompt format: {' or '.join(TEMPLATES)} (the model's own chat template). [default: korani]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: answer, model, backend, token counts, finish_reason, timings.")] = False,
) -> None:
    """Answer one question and exit: the answer alone on stdout, for shell scripts.

    Exit codes: 0 answered, 2 usage error, 3 model could not be loaded,
    4 generation failed, 5 bad configuration, 130 interrupted.
    """
    from korani_cli import oneshot
    from korani_cli.backends import GenerationParams
    from korani_cli.models import load_backend, resolve
    from korani_cli.template import conversation

    text = _question(question)
    settings = load_settings(
        {"model": model, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "template": template}
    )
    streaming = sys.stdout.isatty() and not as_json
    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
        stream=streaming,
    )
    console = err_console()
    start = time.perf_counter()
    with console.status(f"모델 불러오는 중… [bold]{settings.model}[/bold]", spinner="dots"):
        backend = load_backend(resolve(settings.model, settings), settings, notice)
    load_s = time.perf_counter() - start

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        if streaming:
            result = oneshot.answer(backend, conversation(text, system), params, on_text=write, load_s=load_s)
        else:
            with console.status("답변 생성 중…", spinner="dots"):
                result = oneshot.answer(backend, conversation(text, system), params, load_s=load_s)
    finally:
        if streaming:
            sys.stdout.write("\n")
            sys.stdout.flush()
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    elif not streaming:
        sys.stdout.write(result.answer + "\n")
    if result.finish_reason == "length":
        notice(f"the answer was cut at {params.max_new_tokens} tokens; raise --max-new-tokens for more")
