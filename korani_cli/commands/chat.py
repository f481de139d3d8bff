"""`korani chat` (the saved sessions' commands, `korani history …`, are in commands/history.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

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
    NoHistoryOpt,
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
from korani_cli.console import korani_command, notice


@korani_command
def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    resume_last: ContinueOpt = False,
    session_id: SessionOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    template: TemplateOpt = None,
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
    soft_deadline: SoftDeadlineOpt = None,
    context_tokens: ContextTokensOpt = None,
    no_history: NoHistoryOpt = False,
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
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.config import CONTEXT_TOKENS, SEED, check_flag
    from korani_cli.console import err_console
    from korani_cli.errors import UsageError

    check_flag("--seed", seed, SEED)
    check_flag("--context-tokens", context_tokens, CONTEXT_TOKENS)
    if session_id is not None and not session_id.strip():
        raise UsageError("--session is empty", "pass a session id from `korani history list`")
    if no_history and (resume_last or session_id):
        raise UsageError(
            "--no-history cannot resume a saved session", "drop --continue/--session, or drop --no-history"
        )
    flags = SearchFlags.from_params(locals())
    choices = _Choices(max_new_tokens, temperature, top_p, backend, seed, given_template=template)
    history = History.in_memory() if no_history else History()
    try:
        resumed = (
            _resume(history, session_id, model, template, system, flags)
            if resume_last or session_id
            else None
        )
        if resumed is not None:
            model, template, system = resumed.model, resumed.template, resumed.system
            flags = _restored(flags, resumed.search)
        kept = resumed.search if resumed is not None else _kept(flags)
        session = _session(history, resumed, choices, model, template, system, flags, kept, context_tokens)
        if no_history:
            notice("--no-history: this chat is kept in memory only and will not be saved")
        if resumed is not None and resumed.note:
            notice(resumed.note)
        if resumed is not None and resumed.last:
            _show_last_exchange(resumed.last)
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


def _kept(flags: SearchFlags) -> dict:
    """The search flags a session keeps (a relative --local-dir is kept absolute: a later
    --continue may run from another directory)."""
    return {
        "provider": list(flags.provider) if flags.provider else None,
        "searxng_url": flags.searxng_url,
        "local_dir": str(flags.local_dir.expanduser().absolute()) if flags.local_dir is not None else None,
        "allow_private": flags.allow_private,
    }


def _restored(flags: SearchFlags, kept: dict) -> SearchFlags:
    """The search flags a resumed session runs with: the command line's, else the session's."""
    return replace(
        flags,
        provider=kept.get("provider") or None,
        searxng_url=kept.get("searxng_url") or None,
        local_dir=Path(kept["local_dir"]) if kept.get("local_dir") else None,
        allow_private=bool(kept.get("allow_private")),
    )


def _resume(history, session_id, model, template, system, flags: SearchFlags):
    from korani_cli.chat.resume import resume

    return resume(
        history,
        session_id,
        model=model,
        template=template,
        system=system,
        start_hint="start one with korani chat (without --continue)",
        search=_kept(flags),
    )


def _session(history, resumed, choices, model, template, system, flags: SearchFlags, kept, context_tokens):
    """The ChatSession, its model not loaded yet; bad settings or a bad --local-dir fail here."""
    from korani_cli.chat.session import ChatSession

    settings = choices.settings(model, template)
    opts = flags.options()
    return ChatSession(
        choices.loader(settings),
        history,
        resumed.id if resumed is not None else None,
        model_name=settings.model,
        system=system,
        template=settings.template,
        params=choices.params(settings),
        search_options=opts,
        restored=resumed.messages if resumed is not None else [],
        context_tokens=context_tokens,
        choose_model=choices.model,
        search_settings={k: v for k, v in kept.items() if v not in (None, False)} or None,
        restored_sources=resumed.sources if resumed is not None else None,
    )


class _Choices:
    """How the chat picks a model's settings and sampling: the flags given here over the
    config, the environment and the model's own defaults. `/모델 NAME` asks again with
    the new name (the template given here binds it; a resumed session's does not)."""

    def __init__(self, max_new_tokens, temperature, top_p, backend, seed, given_template):
        self.flags = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "backend": backend,
        }
        self.seed, self.given_template = seed, given_template

    def settings(self, name, template):
        from korani_cli.config import load_settings

        return load_settings({"model": name, "template": template, **self.flags})

    def params(self, chosen):
        from korani_cli.backends import GenerationParams

        return GenerationParams(
            max_new_tokens=chosen.max_new_tokens,
            temperature=chosen.temperature,
            top_p=chosen.top_p,
            seed=self.seed,
        )

    @staticmethod
    def loader(chosen):
        from korani_cli.models import load_backend, resolve

        return lambda: load_backend(resolve(chosen.model, chosen), chosen, notice)

    def model(self, name: str):
        """/모델 NAME: the new model's own defaults (template, temperature, …), unless given here."""
        from korani_cli.chat.session import ModelChoice

        chosen = self.settings(name, self.given_template)
        return ModelChoice(chosen.model, chosen.template, self.loader(chosen), self.params(chosen))


LAST_LINES = 12  # how much of the last answer a resumed chat shows


def _show_last_exchange(last) -> None:
    """On resume: the last question and (the end of) its answer, dimmed, so the chat picks up where it was."""
    from rich.markup import escape

    from korani_cli.console import err_console
    from korani_cli.untrusted import clean

    err = err_console()
    one_line = not err.is_terminal  # on a terminal, wrapped at words (the terminal's own wrap cuts them)
    err.print("[dim]── 지난 대화의 마지막 ──[/dim]")
    for m in last:
        lines = clean(m.content or "").strip().split("\n")
        if len(lines) > LAST_LINES:
            lines = [f"(… 앞의 {len(lines) - LAST_LINES}줄 생략)", *lines[-LAST_LINES:]]
        who = "나> " if m.role == "user" else ""
        err.print(escape(who + "\n".join(lines)), soft_wrap=one_line, highlight=False)
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
                soft_wrap=one_line,
                highlight=False,
            )
    err.print("[dim]──[/dim]")
