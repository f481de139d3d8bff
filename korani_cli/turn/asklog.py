"""`korani ask` exchanges in the chat history, so `korani history` shows them and `ask -c` continues them.

Logging is on unless `--no-log` or `KORANI_LOG=0`. An answer is never lost
to its log: a history database korani cannot use (damaged, locked, not a
file, KORANI_HOME not writable) costs one notice, and the answer stands.
A new one-shot session is written with its first exchange (`kind` ask);
a continued one gets the exchange appended, whichever command began it.
`Log` is the recorder `ask` hands the answer layer (turn/layer.py).
"""

from __future__ import annotations

from typing import Callable

from korani_cli.chat.history import History
from korani_cli.config import env_switch
from korani_cli.errors import ConfigError


def enabled(no_log: bool) -> bool:
    """--no-log wins; else KORANI_LOG (0/1, read now; a bad value is exit 5); else on."""
    return not no_log and env_switch("KORANI_LOG")


class Log:
    """`ask`'s Recorder: the question and its answer are stored together, once the answer is
    complete (an answer cut short by an error or Ctrl-C is not logged)."""

    def __init__(self, session_id: str | None, *, model: str, system: str | None, template: str | None,
                 notify: Callable[[str], None]):  # fmt: skip
        self.session_id, self.model, self.system, self.template = session_id, model, system, template
        self.notify = notify
        self._question = ""

    def question(self, text: str) -> None:
        self._question = text

    def answer(self, result) -> str | None:
        from korani_cli.oneshot import json_timings

        if not result.finished:
            return None
        timings = json_timings(result.timings, result.usage.completion_tokens)
        return save(
            None,
            self.session_id,
            self._question,
            result.answer,
            model=self.model,
            system=self.system,
            template=self.template,
            timings={k: v for k, v in timings.items() if v is not None},
            citations=[c.to_json() for c in result.citations] or None,
            notify=self.notify,
        )


def save(
    history: History | None,
    session_id: str | None,
    question: str,
    answer: str,
    *,
    model: str,
    system: str | None,
    template: str | None,
    timings: dict | None,
    citations: list | None,
    notify: Callable[[str], None],
) -> str | None:
    """Store one exchange; the session id it went to, or None (and one notice) when it could not be stored.
    `history` None: open the default database now (only a logged answer needs it)."""
    opened = None
    try:
        if history is None:
            history = opened = History()
        if session_id is None:
            session_id = history.new_session(model, system, template, kind="ask")
        history.add(session_id, "user", question)
        if answer:
            history.add(session_id, "assistant", answer, model, timings, citations)
        return session_id
    except ConfigError as exc:  # HistoryError, or a KORANI_HOME korani cannot write to
        notify(
            f"this answer was not saved to the history: {exc.what} (--no-log or KORANI_LOG=0 skips saving)"
        )
        return None
    finally:
        if opened is not None:
            opened.close()
