"""`korani history list | show | search | export | rm`: the saved chat and ask sessions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from korani_cli.console import korani_command, notice

history_app = typer.Typer(
    help="Saved chat and ask sessions: list, show, search, export, rm.", no_args_is_help=True
)


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
