"""`korani ask`: one question, answer on stdout, everything else on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Annotated, Optional

import typer
from rich.markup import escape

from korani_cli.commands.options import (
    AllowPrivateOpt,
    BackendOpt,
    ContextTokensOpt,
    ContinueOpt,
    EmbedderOpt,
    FollowLinksOpt,
    LocalDirOpt,
    MaxNewTokensOpt,
    ModelOpt,
    NoLogOpt,
    OfflineOpt,
    ProviderOpt,
    RerankerOpt,
    SearchFlags,
    SearxngOpt,
    SeedOpt,
    SessionOpt,
    SoftDeadlineOpt,
    SystemOpt,
    TemperatureOpt,
    TemplateOpt,
    TopKOpt,
    TopPOpt,
)
from korani_cli.config import CONTEXT_TOKENS, SEED, TOP_K, check_flag, load_settings
from korani_cli.console import WordWrap, err_console, korani_command, notice
from korani_cli.errors import UsageError
from korani_cli.untrusted import clean, clean_line

STDIN_IS_QUESTION_FIX = "pipe a UTF-8 text question: echo 질문 | korani ask -"
PIPED_TEXT_FIX = "pipe UTF-8 text, or run with </dev/null to ask without it"
# Stdin that is neither UTF-8 nor CP949 (which korani reads itself): the way to convert it.
ICONV = "; other encodings convert with iconv -f ENCODING -t UTF-8 FILE | korani ask …"
WAITING = (
    "waiting for text on stdin (piped text goes before the question); end it with Ctrl-D, or run "
    "with </dev/null"
)


def _question(text: str | None) -> str:
    """The prompt: the question, from argv or stdin (`-`), after any text piped
    with a question (llm's rule: the piped text first, then the question)."""
    from korani_cli import piped

    if text is None or text == "-":
        if sys.stdin is None:
            raise UsageError(
                "no question given and stdin is closed", 'pass it as an argument: korani ask "질문"'
            )
        if text is None and sys.stdin.isatty():
            raise UsageError(
                "no question given",
                'pass it as an argument (korani ask "질문") or pipe it: echo 질문 | korani ask -',
            )
        text = piped.read(notice, waiting=WAITING, fix=STDIN_IS_QUESTION_FIX + ICONV)
    else:
        if any("\udc80" <= ch <= "\udcff" for ch in text):  # argv bytes that were not UTF-8
            raise UsageError("the question is not UTF-8 text", 'pass it in UTF-8: korani ask "질문"')
        # An empty pipe (/dev/null, CliRunner, subprocess.run without input) leaves the question alone.
        before = (
            piped.read(notice, waiting=WAITING, fix=PIPED_TEXT_FIX + ICONV).strip()
            if piped.attached()
            else ""
        )
        if "\x00" in before:
            raise UsageError("stdin holds NUL bytes (binary data?)", PIPED_TEXT_FIX)
        if before and text.strip():
            text = f"{before}\n\n{text.strip()}"
    if "\x00" in text:
        raise UsageError(
            "the question holds NUL bytes (binary data?)", 'pass a text question: korani ask "질문"'
        )
    text = text.strip()
    if not text:
        raise UsageError("the question is empty", 'pass a question: korani ask "질문"')
    return text


def _trimmed_note(dropped: int, context_length: int) -> str:
    return (
        f"the conversation is longer than the model's context window ({context_length} tokens): "
        f"its {dropped} oldest exchanges were left out of the prompt"
    )


@korani_command
def ask(
    question: Annotated[
        Optional[str],
        typer.Argument(
            help="The question; '-' (or nothing, when piped) reads it from stdin. Text piped with a "
            'question goes before it: cat notes.txt | korani ask "요약해 줘".',
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    backend: BackendOpt = None,
    template: TemplateOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: answer, model, backend, token counts, finish_reason, timings, "
            "session (the history id it was saved to, or null).",
        ),
    ] = False,
    web: Annotated[
        bool, typer.Option("--search", help="Search the web first and answer from the pages, with footnotes.")
    ] = False,
    provider: ProviderOpt = None,
    searxng_url: SearxngOpt = None,
    local_dir: LocalDirOpt = None,
    top_k: TopKOpt = 5,
    allow_private: AllowPrivateOpt = False,
    offline: OfflineOpt = False,
    embedder: EmbedderOpt = "auto",
    reranker: RerankerOpt = None,
    follow_links: FollowLinksOpt = False,
    soft_deadline: SoftDeadlineOpt = None,
    context_tokens: ContextTokensOpt = None,
    allow_no_sources: Annotated[
        bool,
        typer.Option(
            "--allow-no-sources",
            help="With --search: answer without sources (and say so) when nothing could be found or read.",
        ),
    ] = False,
    resume_last: ContinueOpt = False,
    session_id: SessionOpt = None,
    no_log: NoLogOpt = False,
) -> None:
    """Answer one question and exit: the answer alone on stdout, for shell scripts.

    Text piped on stdin together with a question is put before it (the
    question last): `cat notes.txt | korani ask "요약해 줘"`. With `-` alone,
    or no question, stdin is the question. An empty pipe changes nothing;
    stdin is read up to 1 MiB (a note says when it held more). In a shell
    loop that reads a file, run `korani ask "…" </dev/null` so it does not
    read the rest of the file.

    Every exchange is saved to the chat history (`korani history list` marks
    it ask) unless --no-log or KORANI_LOG=0; a history that cannot be used
    costs a note, not the answer. `-c` / `--session ID` continue a saved
    conversation, as `llm -c` does.

    Exit codes: 0 answered, 2 usage error (also: nothing to continue, no such
    session, an ambiguous session prefix), 3 model could not be loaded,
    4 generation failed, 5 bad configuration (also: KORANI_LOG not 0 or 1, or
    a history that -c/--session cannot read), 7 --search found no sources,
    130 interrupted.
    """
    from korani_cli.backends import GenerationParams
    from korani_cli.turn import asklog
    from korani_cli.turn.layer import Request

    if session_id is not None and not session_id.strip():
        raise UsageError("--session is empty", "pass a session id from `korani history list`")
    log = asklog.enabled(no_log)
    resumed = _resumed(session_id, model, template, system) if resume_last or session_id is not None else None
    if resumed is not None:
        model, template, system = resumed.model, resumed.template, resumed.system
    settings = _settings(locals())
    text = _question(question)
    if resumed is not None:
        notice(resumed.note)
    streaming = sys.stdout.isatty() and not as_json
    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
        stream=streaming,
    )
    retrieval = None
    if web or local_dir:
        retrieval = _retrieve(text, SearchFlags.from_params(locals()).options(), allow_no_sources)
    loaded, load_s = _load(settings)
    history = resumed.messages if resumed is not None else ()
    sources = retrieval.ranked if retrieval is not None else None
    request = Request(text, params, system, history, sources, context_tokens, search=retrieval)
    recorder = _recorder(resumed, settings, system) if log else None
    result = _answer(loaded, request, recorder, load_s)
    _print(result, as_json, streaming)
    _cut_note(result, params, retrieval is not None, loaded.info.context_length)


def _settings(given: dict):
    """The generation settings (flags over the model's defaults over config), every value checked."""
    keys = ("model", "max_new_tokens", "temperature", "top_p", "template", "backend")
    settings = load_settings({key: given[key] for key in keys})
    check_flag("--seed", given["seed"], SEED)
    check_flag("--top-k", given["top_k"], TOP_K)
    check_flag("--context-tokens", given["context_tokens"], CONTEXT_TOKENS)
    return settings


def _print(result, as_json: bool, streaming: bool) -> None:
    """The answer on stdout: --json's object, or the text (streamed already on a terminal) and footnotes."""
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        return
    if not streaming:
        sys.stdout.write(clean(result.answer) + "\n")
    footnotes = result.footnotes()
    if footnotes and streaming:  # a terminal: titles wrap at words too (a URL stays whole)
        wrap = WordWrap(sys.stdout.write, _columns())
        wrap.feed("\n" + clean(footnotes) + "\n")
        wrap.finish()
    elif footnotes:
        sys.stdout.write("\n" + clean(footnotes) + "\n")


def _recorder(resumed, settings, system):
    """Where the exchange is logged: the continued session, or a new `ask` one (turn/asklog.py)."""
    from korani_cli.turn import asklog

    session = resumed.id if resumed is not None else None
    return asklog.Log(session, model=settings.model, system=system, template=settings.template, notify=notice)


def _resumed(session_id, model, template, system):
    """The saved conversation -c / --session continue. Continuing needs the history:
    a database that cannot be read is exit 5, before the model loads."""
    from korani_cli.chat.history import History
    from korani_cli.chat.resume import resume

    history = History(without="or ask without continuing (drop -c/--session)")
    try:
        return resume(
            history,
            session_id,
            model=model,
            template=template,
            system=system,
            start_hint='ask a first question without -c: korani ask "질문"',
        )
    finally:
        history.close()  # the exchange is stored through a connection of its own, after the answer


def _retrieve(text: str, opts, allow_no_sources: bool):
    """Search and read the pages; None when nothing was found and --allow-no-sources says answer anyway."""
    from korani_cli.search.pipeline import NoSources
    from korani_cli.turn.layer import Notice, Retrieved, retrieve

    try:
        with err_console().status("검색 중 → 페이지 읽는 중…", spinner="dots"):
            for event in retrieve(text, opts):
                if isinstance(event, Notice):
                    notice(event.text)
                elif isinstance(event, Retrieved):
                    return event.retrieval
    except NoSources as exc:
        if not allow_no_sources:
            # Only ask can answer without sources, so only ask's hint names the option.
            raise NoSources(
                exc.what, f"{exc.fix}, or pass --allow-no-sources" if exc.fix else "pass --allow-no-sources"
            ) from None
        notice(f"{exc.what}; answering without sources (--allow-no-sources)")
        return None


def _load(settings):
    """The backend and the seconds it took to load."""
    from korani_cli.models import load_backend, resolve

    start = time.perf_counter()
    with err_console().status(
        f"모델 불러오는 중… [bold]{escape(clean_line(settings.model))}[/bold]", spinner="dots"
    ):
        loaded = load_backend(resolve(settings.model, settings), settings, notice)
    return loaded, time.perf_counter() - start


def _answer(backend, request, recorder, load_s: float):
    """The turn, through the answer layer: streamed to stdout on a terminal, its notes on stderr."""
    from korani_cli.turn.layer import Finished, Text, Trimmed, answer

    streaming = request.params.stream
    # Only a terminal streams: wrapped at words as chat wraps, not cut mid-word.
    wrap = WordWrap(sys.stdout.write, _columns()) if streaming else None
    waiting = contextlib.nullcontext() if streaming else err_console().status("답변 생성 중…", spinner="dots")
    result = None
    try:
        with waiting:
            for event in answer(backend, request, recorder=recorder, load_s=load_s):
                if isinstance(event, Text) and streaming:
                    # Backends strip control characters already (apply_stops); the terminal is worth a
                    # second look. A sourced answer's text comes a checked sentence at a time.
                    wrap.feed(clean(event.text))
                    sys.stdout.flush()
                elif isinstance(event, Trimmed):
                    notice(_trimmed_note(event.dropped, event.context_length))
                elif isinstance(event, Finished):
                    result = event.result
    finally:
        if wrap is not None:
            wrap.finish()
            sys.stdout.write("\n")
            sys.stdout.flush()
    if result.unsupported():
        notice("no sentence of the answer is supported by the sources; no footnotes")
    return result


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size().columns


def _cut_note(result, params, searched: bool, context_length: int | None) -> None:
    """Why an answer stopped at the length limit, and what to change. The context window is
    named only when the counts show it was full; the counts are the backend's, exact on every
    local backend (and as the server reports them for openai:)."""
    from korani_cli.backends import limit_ignored_note

    usage = result.usage
    if usage.finish_reason != "length":
        return
    if usage.limit_ignored:
        notice(limit_ignored_note(params.max_new_tokens))
        return
    made, prompt = usage.completion_tokens, usage.prompt_tokens
    if made is None:  # a server that does not count: the limit korani set is the likely one
        notice(f"the answer hit a length limit; raise --max-new-tokens ({params.max_new_tokens}) for more")
        return
    if made >= params.max_new_tokens:
        notice(f"the answer was cut at {params.max_new_tokens} tokens; raise --max-new-tokens for more")
        return
    shorten = "shorten the question" + (" or lower --context-tokens" if searched else "")
    if prompt is None:
        notice(
            f"the answer was cut at {made} tokens, before --max-new-tokens ({params.max_new_tokens}): the "
            f"server's context window is probably full; {shorten}"
        )
        return
    window = f"{context_length}-token " if context_length else ""
    # The backend gave the answer only the room the context window had left.
    notice(
        f"the answer was cut at {made} tokens: the prompt ({prompt} tokens) filled the rest of the "
        f"model's {window}context window; {shorten}"
    )
