"""What a ChatSession hands its renderer: typed events, one class per kind, and the
answer they describe stored as before (chat/session.py → chat/repl.py)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from support import ScriptedBackend, chat_session

from korani_cli.backends import Usage
from korani_cli.chat.history import History
from korani_cli.chat.session import Answered, AnswerText, ErrorLine, Exit, Notice, Output, Stage
from korani_cli.search.types import Citation


def stored(path):
    rows = (
        sqlite3.connect(path)
        .execute("SELECT role, content, timings, citations FROM messages ORDER BY id")
        .fetchall()
    )
    return [
        (role, content, json.loads(t) if t else None, json.loads(c) if c else None)
        for role, content, t, c in rows
    ]


COMMANDS = [
    # id, input → the kinds of event it yields, in order
    ("help", "/도움말", [Output]),
    ("unknown-command", "/검섹", [ErrorLine]),
    ("search-without-a-question", "/검색", [ErrorLine]),
    ("exit", "/종료", [Exit]),
    ("model-not-loaded", "/모델", [Output]),
]


@pytest.mark.parametrize("line, kinds", [r[1:] for r in COMMANDS], ids=[r[0] for r in COMMANDS])
def test_commands_yield_typed_events(tmp_path, line, kinds):
    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend())
    assert [type(e) for e in session.handle(line)] == kinds


def test_a_plain_answer_streams_as_text_then_one_answered(tmp_path):
    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend(["서울은 수도입니다."]))
    events = list(session.handle("수도는?"))
    assert [type(e) for e in events] == [Stage, Stage, AnswerText, AnswerText, Answered]
    done = events[-1]
    assert done.text == "서울은 수도입니다." == "".join(e.text for e in events if isinstance(e, AnswerText))
    assert (
        isinstance(done.usage, Usage)
        and done.usage.completion_tokens == 2
        and done.usage.finish_reason == "eos"
    )
    assert done.citations == () and done.footnotes == ""
    assert done.timings.total_s >= 0 and done.timings.first_sentence_s is None
    (_, question, *_), (role, answer, timings, citations) = stored(tmp_path / "h.sqlite")
    assert (question, role, answer, citations) == ("수도는?", "assistant", "서울은 수도입니다.", None)
    assert timings == done.timings.to_json(("first_token_s", "total_s"))


def test_stopping_an_answer_keeps_what_was_said(tmp_path):
    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend(["하나 둘 셋 넷"]))
    events = session.handle("세어 봐")
    for event in events:
        if isinstance(event, AnswerText) and event.text == " 둘":
            events.close()  # what the REPL does on Ctrl-C
            break
    assert [r[1] for r in stored(tmp_path / "h.sqlite")] == ["세어 봐", "하나 둘"]
    assert [m.content for m in session.turns] == ["세어 봐", "하나 둘"]


@pytest.mark.slow
def test_a_search_answer_carries_its_citations_and_footnotes(tmp_path, monkeypatch):
    from korani_cli.search.pipeline import SearchOptions

    monkeypatch.setenv("KORANI_HOME", str(tmp_path / "home"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "sejong.md").write_text(
        "# 세종대왕\n\n세종대왕은 1443년에 훈민정음을 만들었다.\n", encoding="utf-8"
    )
    opts = SearchOptions(providers=("local",), local_dir=docs, embedder="none", use_cache=False)
    session = chat_session(
        History(tmp_path / "h.sqlite"),
        ScriptedBackend(["세종대왕은 1443년에 훈민정음을 만들었다 [1]."]),
        search_options=opts,
    )
    events = list(session.handle("/검색 훈민정음은 누가 만들었나?"))
    assert not [e for e in events if isinstance(e, (ErrorLine, Notice))], events
    done = events[-1]
    assert isinstance(done, Answered) and "만들었다[1]" in done.text
    assert [type(c) for c in done.citations] == [Citation] and done.citations[0].url.endswith("sejong.md")
    assert (
        done.footnotes == f"[1] 세종대왕 — {done.citations[0].url}"  # the file's heading, not its name
        and done.timings.first_sentence_s is not None
    )
    *_, (role, answer, timings, citations) = stored(tmp_path / "h.sqlite")
    assert role == "assistant" and answer == done.text
    assert set(timings) == {"first_token_s", "first_sentence_s", "total_s"}
    assert citations[0]["url"] == done.citations[0].url and citations[0]["n"] == 1
