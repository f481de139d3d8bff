"""`korani chat` and `korani history list | show | export | rm`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from korani_cli.commands.search import (
    AllowPrivateOpt, EmbedderOpt, FollowLinksOpt, LocalDirOpt, OfflineOpt, ProviderOpt, RerankerOpt, SearxngOpt, TopKOpt, search_options,
)
from korani_cli.console import korani_command, notice

history_app = typer.Typer(help="Saved chat sessions: list, show, export, rm.", no_args_is_help=True)


@korani_command
def chat(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="As for `korani ask` (default: config / KORANI_MODEL / korani-5.8b).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System text for the whole chat.")] = None,
    resume_last: Annotated[bool, typer.Option("--continue", "-c", help="Resume the last session.")] = False,
    session_id: Annotated[Optional[str], typer.Option("--session", help="Resume this session (see `korani history list`).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", "-n", help="Most tokens per answer. [default: 256]")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="Sampling temperature, 0 to 100; 0 is greedy. [default: 0.7]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="korani or model.")] = None,
    provider: ProviderOpt = None,
    searxng_url: SearxngOpt = None,
    local_dir: LocalDirOpt = None,
    top_k: TopKOpt = 5,
    allow_private: AllowPrivateOpt = False,
    offline: OfflineOpt = False,
    embedder: EmbedderOpt = "auto",
    reranker: RerankerOpt = None,
    follow_links: FollowLinksOpt = False,
    no_history: Annotated[bool, typer.Option("--no-history", help="Keep this chat in memory only: nothing is read from or saved to the history database.")] = False,
) -> None:
    """Chat in the terminal; `/검색 질문` answers from the web with footnotes, `/도움말` lists commands.

    Exit codes: 0 done, 2 usage error, 5 bad configuration or an unusable history
    database (then --no-history chats without it), 130 interrupted.
    """
    from korani_cli import template as tpl
    from korani_cli.backends import GenerationParams
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.chat.session import ChatSession
    from korani_cli.config import SEED, check_flag, load_settings
    from korani_cli.errors import UsageError
    from korani_cli.models import load_backend, resolve

    settings = load_settings({"model": model, "max_new_tokens": max_new_tokens, "temperature": temperature, "template": template})
    check_flag("--seed", seed, SEED)
    opts = search_options(provider, searxng_url, local_dir, top_k, allow_private, offline, embedder, reranker, follow_links)
    if session_id is not None and not session_id.strip():
        raise UsageError("--session is empty", "pass a session id from `korani history list`")
    if no_history and (resume_last or session_id):
        raise UsageError("--no-history cannot resume a saved session", "drop --continue/--session, or drop --no-history")
    history = History.in_memory() if no_history else History()
    if no_history:
        notice("--no-history: this chat is kept in memory only and will not be saved")
    restored: list = []
    if resume_last or session_id:
        sid = session_id or history.last_session()
        row = history.session(sid) if sid else None
        if row is None:
            raise UsageError(f"no saved session {sid or ''}".strip(), "see `korani history list`, or start a new chat without --continue")
        system = system or row[3]
        restored = [tpl.Message(m.role, m.content) for m in history.messages(sid, since_reset=True) if m.role in ("user", "assistant")]
        notice(f"resuming session {sid} ({len(restored)} messages)")
    else:
        sid = history.new_session(settings.model, system)
    params = GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p, seed=seed)
    session = ChatSession(
        lambda: load_backend(resolve(settings.model, settings), settings, notice), history, sid,
        model_name=settings.model, system=system, params=params, search_options=opts, restored=restored,
    )
    try:
        run(session)
    finally:
        history.close()


@history_app.command("list")
@korani_command
def history_list(limit: Annotated[int, typer.Option("--limit", help="How many sessions (1 to 1000000).")] = 20) -> None:
    """Saved sessions, newest first.

    Exit codes: 0 listed, 2 usage error, 5 the history database is unusable (damaged, locked, not a file).
    """
    from korani_cli.chat.history import History
    from korani_cli.config import Rule, check_flag

    check_flag("--limit", limit, Rule(int, 1, 1_000_000))
    history = History()
    from korani_cli.untrusted import clean_line

    for sid, created, model, n, first in history.sessions(limit):
        first_line = clean_line((first or "").split("\n", 1)[0])[:50]
        typer.echo(f"{clean_line(str(sid))}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(created or 0))}  {clean_line(str(model))}  {n} messages  {first_line}")


def _session(history, sid: str):
    from korani_cli.errors import UsageError

    if history.session(sid) is None:
        raise UsageError(f"no saved session {sid}", "see `korani history list`")


@history_app.command("show")
@korani_command
def history_show(session_id: Annotated[str, typer.Argument(help="Session id.")]) -> None:
    """Print a session's messages.

    Exit codes: 0 shown, 2 no such session, 5 the history database is unusable.
    """
    from korani_cli.chat.history import History, to_markdown

    history = History()
    _session(history, session_id)
    typer.echo(to_markdown(history.messages(session_id), f"korani chat {session_id}"), nl=False)


@history_app.command("export")
@korani_command
def history_export(
    session_id: Annotated[str, typer.Argument(help="Session id.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Markdown file (default: stdout).")] = None,
) -> None:
    """A session as a Markdown transcript with footnotes.

    -o writes atomically; a symlink is written through to its target, and a
    device, FIFO or socket is refused. Exit codes: 0 written, 2 no such session
    or a bad -o, 5 the history database is unusable.
    """
    from korani_cli.chat.history import History, to_markdown
    from korani_cli.outputs import atomic_write_text

    history = History()
    _session(history, session_id)
    text = to_markdown(history.messages(session_id), f"korani chat {session_id}")
    if output is None:
        sys.stdout.write(text)
        return
    atomic_write_text(output, text)


@history_app.command("rm")
@korani_command
def history_rm(session_id: Annotated[str, typer.Argument(help="Session id.")]) -> None:
    """Delete a session."""
    from korani_cli.chat.history import History

    history = History()
    _session(history, session_id)
    history.delete(session_id)
    typer.echo(f"deleted {session_id}")
