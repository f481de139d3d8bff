"""Picking up a saved conversation: `chat --continue/--session` and `ask -c/--session`.

`resume` finds the session (the last one, or an id or unique prefix), brings
back its messages since its last /초기화, the sources of its last sourced
answer (for /출처) and its last exchange (shown on resume), and settles its
model, template, system text and search flags against those given on the
command line (the command line wins; the note says so). It prints nothing and
loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass

from korani_cli.chat.history import History, StoredMessage
from korani_cli.errors import UsageError
from korani_cli.search.types import Passage, Ranked
from korani_cli.template import Message

SEARCH_FLAGS = {  # the search flags a session keeps, as the command line spells them
    "provider": "--provider",
    "searxng_url": "--searxng-url",
    "local_dir": "--local-dir",
    "allow_private": "--allow-private",
}


@dataclass(frozen=True)
class Resumed:
    id: str
    model: str | None  # the command line's, else the session's
    template: str | None
    system: str | None
    messages: list[Message]  # user and assistant turns the model is given again
    note: str  # "resuming session … (N messages)", and what the command line replaced
    search: dict  # the search flags to use: the command line's, else the session's
    sources: list[Ranked]  # the last sourced answer's citations, for /출처
    last: list[StoredMessage]  # the last exchange (question and answer), to show on resume


def _sources(kept: list[StoredMessage]) -> list[Ranked]:
    """The citations of the last answer that had any, as /출처 lists them."""
    for m in reversed(kept):
        if m.role == "assistant" and m.citations:
            return [
                Ranked(
                    Passage(str(c.get("url", "")), str(c.get("title", "")), str(c.get("passage", "")), 0),
                    float(c.get("score") or 0.0),
                )
                for c in m.citations
                if isinstance(c, dict)
            ]
    return []


def _last_exchange(kept: list[StoredMessage]) -> list[StoredMessage]:
    """The last question and what answered it (an unanswered question alone)."""
    for i in range(len(kept) - 1, -1, -1):
        if kept[i].role == "user":
            return kept[i : i + 2]
    return kept[-1:]


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def resume(
    history: History,
    session_id: str | None,
    *,
    model: str | None,
    template: str | None,
    system: str | None,
    start_hint: str,
    search: dict | None = None,
) -> Resumed:
    """The session `session_id` (any unique prefix), or the last one when it is None.
    `start_hint` is the fix named when there is nothing to continue; `search` holds the
    search flags given on the command line (a missing or None/False one: not given)."""
    sid = history.resolve(session_id) if session_id is not None else history.last_session()
    if sid is None:
        raise UsageError("there is no saved conversation to continue", start_hint)
    stored = history.session(sid)
    kept = [m for m in history.messages(sid, since_reset=True) if m.role in ("user", "assistant")]
    total = history.count(sid)
    # Sessions written before /초기화 began a new session keep a reset mark inside.
    counted = f"{total} messages" + (
        f"; the {len(kept)} after its /초기화 are remembered" if len(kept) != total else ""
    )
    replaced = [
        f"{flag} {_short(value)} replaces the session's {_short(was)}"
        for flag, value, was in (
            ("--model", model, stored.model),
            ("--template", template, stored.template),
            ("--system", system, stored.system),
        )
        if value is not None and was is not None and value != was
    ]
    given = {k: v for k, v in (search or {}).items() if v not in (None, False, [], ())}
    was_search = {k: v for k, v in (stored.search or {}).items() if k in SEARCH_FLAGS}
    replaced += [
        f"{SEARCH_FLAGS[k]} {_short(_flag_text(v), 200)} replaces the session's "
        f"{_short(_flag_text(was_search[k]), 200)}"  # a path cut short would say little
        for k, v in given.items()
        if k in was_search and _flag_text(v) != _flag_text(was_search[k])
    ]
    kept_search = {k: v for k, v in was_search.items() if k not in given}
    if kept_search:
        replaced.append(
            "searching as before: "
            + " ".join(
                SEARCH_FLAGS[k] if v is True else f"{SEARCH_FLAGS[k]} {_flag_text(v)}"
                for k, v in kept_search.items()
            )
        )
    return Resumed(
        id=sid,
        model=model if model is not None else stored.model,
        template=template if template is not None else stored.template,
        system=system if system is not None else stored.system,
        messages=[Message(m.role, m.content) for m in kept],
        note=f"resuming session {sid} ({counted})" + "".join(f"; {r}" for r in replaced),
        search={**was_search, **given},
        sources=_sources(kept),
        last=_last_exchange(kept),
    )


def _flag_text(value) -> str:
    if value is True:
        return "on"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
