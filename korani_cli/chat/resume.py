"""Picking up a saved conversation: `chat --continue/--session` and `ask -c/--session`.

`resume` finds the session (the last one, or an id or unique prefix), brings
back its messages since its last /초기화, and settles its model, template and
system text against those given on the command line (the command line wins;
the note says so). It prints nothing and loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass

from korani_cli.chat.history import History
from korani_cli.errors import UsageError
from korani_cli.template import Message


@dataclass(frozen=True)
class Resumed:
    id: str
    model: str | None  # the command line's, else the session's
    template: str | None
    system: str | None
    messages: list[Message]  # user and assistant turns the model is given again
    note: str  # "resuming session … (N messages)", and what the command line replaced


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
) -> Resumed:
    """The session `session_id` (any unique prefix), or the last one when it is None.
    `start_hint` is the fix named when there is nothing to continue."""
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
    return Resumed(
        id=sid,
        model=model if model is not None else stored.model,
        template=template if template is not None else stored.template,
        system=system if system is not None else stored.system,
        messages=[Message(m.role, m.content) for m in kept],
        note=f"resuming session {sid} ({counted})" + "".join(f"; {r}" for r in replaced),
    )
