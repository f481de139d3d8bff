"""`korani chat` (the saved sessions' commands, `korani history …`, are in commands/history.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from korani_cli.commands.models import BackendOpt
from korani_cli.commands.search import (
    AllowPrivateOpt,
    ContextTokensOpt,
    EmbedderOpt,
    FollowLinksOpt,
    LocalDirOpt,
    OfflineOpt,
    ProviderOpt,
    RerankerOpt,
    SearxngOpt,
    TopKOpt,
    search_options,
)
from korani_cli.console import korani_command, notice


@korani_command
def chat(
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="As for `korani ask`; when resuming, replaces the session's model. [default: the session's "
            "model, else config / KORANI_MODEL / korani-5.8b]",
        ),
    ] = None,
    system: Annotated[
        Optional[str],
        typer.Option(
            "--system", "-s", help="System text for the whole chat. [default: the session's, else none]"
        ),
    ] = None,
    resume_last: Annotated[
        bool,
        typer.Option(
            "--continue",
            "-c",
            help="Resume the last conversation: its model, template, system text and messages.",
        ),
    ] = False,
    session_id: Annotated[
        Optional[str],
        typer.Option(
            "--session",
            help="Resume this session; any unique prefix of its id works (see `korani history list`). "
            "[default: a new session]",
        ),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-new-tokens", "-n", help="Most tokens per answer. [default: 256, or the alias's own]"
        ),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option(
            "--temperature",
            "-t",
            help="Sampling temperature, 0 to 100; 0 is greedy. [default: 0.7, or the alias's own: "
            "korani models resolve]",
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option("--seed", help="Random seed for sampling, for repeatable answers. [default: random]"),
    ] = None,
    template: Annotated[
        Optional[str],
        typer.Option(
            "--template",
            help="Prompt format: korani (### User / ### Bot) or model (the model's own chat template). "
            "[default: the session's, else model for demo-chat (it ships one), else korani]",
        ),
    ] = None,
    backend: BackendOpt = None,
    provider: ProviderOpt = None,
    searxng_url: SearxngOpt = None,
    local_dir: LocalDirOpt = None,
    top_k: TopKOpt = 5,
    allow_private: AllowPrivateOpt = False,
    offline: OfflineOpt = False,
    embedder: EmbedderOpt = "auto",
    reranker: RerankerOpt = None,
    follow_links: FollowLinksOpt = False,
    context_tokens: ContextTokensOpt = None,
    no_history: Annotated[
        bool,
        typer.Option(
            "--no-history",
            help="Keep this chat in memory only: nothing is read from or saved to the history database.",
        ),
    ] = False,
) -> None:
    """Chat in the terminal; `/검색 질문` answers from the web with footnotes, `/도움말` lists commands.

    The model is loaded before the first prompt. A session is saved with its
    first message; `--continue` / `--session ID` resume one with its model,
    template, system text and messages (a --model, --template or --system given
    here wins, and a note says so).

    Exit codes: 0 done, 2 usage error (also: no such session, or an ambiguous
    session prefix), 3 the model could not be loaded, 5 bad configuration or an
    unusable history database (then --no-history chats without it), 130 interrupted.
    """
    from korani_cli.backends import GenerationParams
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.chat.resume import resume
    from korani_cli.chat.session import ChatSession, ModelChoice
    from korani_cli.config import CONTEXT_TOKENS, SEED, check_flag, load_settings
    from korani_cli.console import err_console
    from korani_cli.errors import UsageError
    from korani_cli.models import load_backend, resolve

    check_flag("--seed", seed, SEED)
    check_flag("--context-tokens", context_tokens, CONTEXT_TOKENS)
    given_template = template  # as typed: a resumed session's own template does not bind /모델 NAME
    if session_id is not None and not session_id.strip():
        raise UsageError("--session is empty", "pass a session id from `korani history list`")
    if no_history and (resume_last or session_id):
        raise UsageError(
            "--no-history cannot resume a saved session", "drop --continue/--session, or drop --no-history"
        )
    history = History.in_memory() if no_history else History()
    try:
        restored: list = []
        sid = None
        resumed_note = ""
        resumed = None
        # The search flags a session keeps (a relative --local-dir is kept absolute: a later
        # --continue may run from another directory).
        search = {
            "provider": list(provider) if provider else None,
            "searxng_url": searxng_url,
            "local_dir": str(local_dir.expanduser().absolute()) if local_dir is not None else None,
            "allow_private": allow_private,
        }
        if resume_last or session_id:
            resumed = resume(
                history,
                session_id,
                model=model,
                template=template,
                system=system,
                start_hint="start one with korani chat (without --continue)",
                search=search,
            )
            sid, restored, resumed_note = resumed.id, resumed.messages, resumed.note
            model, template, system = resumed.model, resumed.template, resumed.system
            search = resumed.search
            provider = search.get("provider") or None
            searxng_url = search.get("searxng_url") or None
            local_dir = Path(search["local_dir"]) if search.get("local_dir") else None
            allow_private = bool(search.get("allow_private"))

        def settings_for(name: str | None, chosen_template: str | None):
            return load_settings(
                {
                    "model": name,
                    "max_new_tokens": max_new_tokens,
                    "temperature": temperature,
                    "template": chosen_template,
                    "backend": backend,
                }
            )

        def loader(chosen):
            return lambda: load_backend(resolve(chosen.model, chosen), chosen, notice)

        settings = settings_for(model, template)
        opts = search_options(
            provider, searxng_url, local_dir, top_k, allow_private, offline, embedder, reranker, follow_links
        )
        if no_history:
            notice("--no-history: this chat is kept in memory only and will not be saved")
        if resumed_note:
            notice(resumed_note)
        if resumed is not None and resumed.last:
            _show_last_exchange(resumed.last)

        def params_for(chosen) -> GenerationParams:
            return GenerationParams(
                max_new_tokens=chosen.max_new_tokens,
                temperature=chosen.temperature,
                top_p=chosen.top_p,
                seed=seed,
            )

        params = params_for(settings)

        def choose_model(name: str) -> ModelChoice:
            # /모델 NAME: the new model's own defaults (template, temperature, …), unless given here.
            chosen = settings_for(name, given_template)
            return ModelChoice(chosen.model, chosen.template, loader(chosen), params_for(chosen))

        session = ChatSession(
            loader(settings),
            history,
            sid,
            model_name=settings.model,
            system=system,
            template=settings.template,
            params=params,
            search_options=opts,
            restored=restored,
            context_tokens=context_tokens,
            choose_model=choose_model,
            search_settings={k: v for k, v in search.items() if v not in (None, False)} or None,
            restored_sources=resumed.sources if resumed is not None else None,
        )
        # Load before the first prompt: a model that cannot load at all ends the command
        # with exit 3 (piped or not), instead of failing each message and exiting 0.
        interactive = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
        if interactive:
            with err_console().status("모델 불러오는 중…"):
                session.load()
        else:
            session.load()
        run(session)
    finally:
        history.close()


LAST_LINES = 12  # how much of the last answer a resumed chat shows


def _show_last_exchange(last) -> None:
    """On resume: the last question and (the end of) its answer, dimmed, so the chat picks up where it was."""
    from rich.markup import escape

    from korani_cli.console import err_console
    from korani_cli.untrusted import clean

    err = err_console()
    err.print("[dim]── 지난 대화의 마지막 ──[/dim]")
    for m in last:
        lines = clean(m.content or "").strip().split("\n")
        if len(lines) > LAST_LINES:
            lines = [f"(… 앞의 {len(lines) - LAST_LINES}줄 생략)", *lines[-LAST_LINES:]]
        who = "나> " if m.role == "user" else ""
        err.print(escape(who + "\n".join(lines)), soft_wrap=True, highlight=False)
        if m.role == "assistant" and m.citations:
            err.print(
                escape(
                    clean(
                        "\n".join(
                            f"[{c.get('n', '?')}] {c.get('title', '')} — {c.get('url', '')}"
                            for c in m.citations
                            if isinstance(c, dict)
                        )
                    )
                ),
                soft_wrap=True,
                highlight=False,
            )
    err.print("[dim]──[/dim]")
