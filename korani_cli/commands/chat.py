"""`korani chat` and `korani history list | show | search | export | rm`."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

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

history_app = typer.Typer(
    help="Saved chat and ask sessions: list, show, search, export, rm.", no_args_is_help=True
)


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


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text, for scripts.")]


def _when(created: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created or 0))


def _iso(created: float | None) -> str | None:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="seconds") if created else None


def _print_json(value) -> None:
    import json

    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


@history_app.command("list")
@korani_command
def history_list(
    limit: Annotated[int, typer.Option("--limit", help="How many sessions (1 to 1000000).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Saved sessions, newest first.

    Each row: id, when it began, which command began it (chat, or ask: a
    one-shot answer), model, message count, the first question.
    --json prints a list of {id, created (ISO 8601, UTC), kind, model, messages, first}.
    Exit codes: 0 listed, 2 usage error, 5 the history database is unusable (damaged, locked, not a file).
    """
    from korani_cli.chat.history import History
    from korani_cli.config import Rule, check_flag
    from korani_cli.untrusted import clean, clean_line

    check_flag("--limit", limit, Rule(int, 1, 1_000_000))
    history = History()
    rows = history.sessions(limit)
    if as_json:
        _print_json(
            [
                {
                    "id": r.id,
                    "created": _iso(r.created),
                    "kind": r.kind,
                    "model": r.model,
                    "messages": r.messages,
                    "first": clean(r.first) if r.first is not None else None,
                }
                for r in rows
            ]
        )
        return
    if not rows:
        # stdout stays empty for scripts; a person is told why, and how to start.
        notice('no saved sessions yet: start one with korani chat, or korani ask "질문"')
    # Columns: the model (cut at MODEL_WIDTH) and the count are padded to the widest row, so
    # the first questions start in one column.
    models = [_cut(clean_line(str(r.model)), MODEL_WIDTH) for r in rows]
    model_width = max((len(m) for m in models), default=0)
    count_width = max((len(str(r.messages)) for r in rows), default=0)
    for r, shown_model in zip(rows, models):
        first_line = clean_line((r.first or "").split("\n", 1)[0])[:50]
        typer.echo(
            f"{clean_line(str(r.id))}  {_when(r.created)}  {clean_line(r.kind):<4}  "
            f"{shown_model:<{model_width}}  "
            f"{r.messages:>{count_width}} messages  {first_line}"
        )


MODEL_WIDTH = 40  # a longer model name (a path, an openai:MODEL@URL) is cut with …


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


SessionArg = Annotated[
    str,
    typer.Argument(
        help="Session id, or any unique prefix of it (see `korani history list`); `last`: the "
        "session with the latest message.",
        show_default=False,
    ),
]


def _resolve(history, session_id: str) -> str:
    """The session's full id; `last` (never an id: ids are hex) is the most recent one."""
    from korani_cli.errors import UsageError

    if session_id.strip() == "last":
        sid = history.last_session()
        if sid is None:
            raise UsageError(
                "there is no saved session yet", 'start one with korani chat, or korani ask "질문"'
            )
        return sid
    return history.resolve(session_id)


@history_app.command("show")
@korani_command
def history_show(session_id: SessionArg, as_json: JsonOpt = False) -> None:
    """Print a session's messages.

    --json prints {id, created, kind, model, system, template, messages: [{role,
    content, created, model, timings, citations}]}.
    Exit codes: 0 shown, 2 no such session or an ambiguous prefix (the
    candidates are listed), 5 the history database is unusable.
    """
    from korani_cli.chat.history import History, to_markdown
    from korani_cli.untrusted import clean, clean_line

    history = History()
    sid = _resolve(history, session_id)
    messages = history.messages(sid)
    stored = history.session(sid)
    if as_json:
        _print_json(
            {
                "id": sid,
                "created": _iso(stored.created),
                "kind": stored.kind,
                "model": stored.model,
                "system": stored.system,
                "template": stored.template,
                "messages": [
                    {
                        "role": m.role,
                        "content": clean(m.content or ""),
                        "created": _iso(m.created),
                        "model": m.model,
                        "timings": m.timings,
                        "citations": m.citations,
                    }
                    for m in messages
                ],
            }
        )
        return
    typer.echo(to_markdown(messages, f"korani {clean_line(stored.kind)} {sid}"), nl=False)


@history_app.command("export")
@korani_command
def history_export(
    session_id: SessionArg,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Markdown file to write. [default: stdout]")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file.")] = False,
) -> None:
    """A session as a Markdown transcript with footnotes.

    -o writes atomically and never replaces an existing file without --overwrite,
    nor any of korani's own files (the history database, its config, cache and
    data); a symlink is written through to its target, and a device, FIFO or
    socket is refused. Exit codes: 0 written, 2 no such session, an ambiguous
    prefix or a bad -o, 5 the history database is unusable.
    """
    from korani_cli.chat.history import History, to_markdown
    from korani_cli.outputs import guard_output_file, save_user_file
    from korani_cli.untrusted import clean_line

    if output is not None:  # before reading the history: a refused -o costs nothing
        guard_output_file(output, overwrite=overwrite)
    history = History()
    sid = _resolve(history, session_id)
    text = to_markdown(history.messages(sid), f"korani {clean_line(history.session(sid).kind)} {sid}")
    if output is None:
        sys.stdout.write(text)
        return
    save_user_file(output, text, overwrite=overwrite)


@history_app.command("rm")
@korani_command
def history_rm(
    session_id: Annotated[
        str,
        typer.Argument(
            # No `last` here: a deletion names its session.
            help="Session id, or any unique prefix of it (see `korani history list`).",
            show_default=False,
        ),
    ],
) -> None:
    """Delete a session.

    Exit codes: 0 deleted, 2 no such session or an ambiguous prefix, 5 the history database is unusable.
    """
    from korani_cli.chat.history import History

    history = History()
    sid = history.resolve(session_id)
    history.delete(sid)
    typer.echo(f"deleted {sid}")


@history_app.command("search")
@korani_command
def history_search(
    words: Annotated[
        list[str],
        typer.Argument(
            help="Words to find; a message must hold every one (예: 서울 인구).", show_default=False
        ),
    ],
    limit: Annotated[int, typer.Option("--limit", help="Most messages to show (1 to 1000).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Find saved messages by their words, best match first.

    Korean is matched by Kiwi morphemes, so `서울` finds `서울에서` and
    `서울특별시`, and `먹다` finds `먹었어`. The first search builds the index
    (SQLite FTS5, inside the history database; the messages themselves are
    not changed). --json prints a list of {session, role, created, content}.
    Exit codes: 0 searched (also when nothing matched), 2 usage error, 5 the
    history database is unusable.
    """
    from korani_cli.chat.history import History
    from korani_cli.config import Rule, check_flag
    from korani_cli.errors import UsageError
    from korani_cli.untrusted import clean, clean_line

    check_flag("--limit", limit, Rule(int, 1, 1000))
    query = " ".join(" ".join(words).split())
    if not query:  # `history search ""`: nothing to look for is a mistake, not "no match"
        raise UsageError("history search was given no words", "pass the words to find, e.g. 서울 인구")
    history = History()
    with _status_if_terminal("검색 중…"):
        hits = history.search(query, limit)
    if as_json:
        _print_json(
            [
                {
                    "session": h.session_id,
                    "role": h.role,
                    "created": _iso(h.created),
                    "content": clean(h.content or ""),
                }
                for h in hits
            ]
        )
        return
    if not hits:
        notice(f"no saved message matches {clean_line(query)!r}")
        return
    for h in hits:
        typer.echo(f"{h.session_id}  {_when(h.created)}  {h.role:<9}  {_excerpt(h.content or '', query)}")


def _status_if_terminal(text: str):
    import contextlib

    from korani_cli.console import err_console

    return err_console().status(text) if sys.stderr.isatty() else contextlib.nullcontext()


def _excerpt(content: str, query: str, width: int = 70) -> str:
    """One line of the message, around the first query word it contains."""
    from korani_cli.untrusted import clean_line

    line = clean_line(content)
    at = min((i for i in (line.find(w) for w in query.split()) if i >= 0), default=0)
    start = max(0, at - width // 3)
    return ("…" if start else "") + line[start : start + width] + ("…" if start + width < len(line) else "")
