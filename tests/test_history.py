"""Chat sessions and `korani history`: sessions born with their first message,
resumes that bring back model, template, system text and every message,
git-style id prefixes, --json, full-text search, and an old database file
that keeps every row when a newer korani opens it.

Real SQLite files throughout; the model is the `scripted` backend (tests/conftest.py,
`--model scripted:demo` through the backend registry) only where
a real one would add nothing (what is asserted is what korani sends it)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from korani_cli.chat.history import History
from korani_cli.cli import app
from korani_cli.template import Message

runner = CliRunner()
UNREACHABLE = "openai:x@http://127.0.0.1:1/v1"  # loopback port 1: connection refused


def db_path(home: Path) -> Path:
    return home / "data" / "history.sqlite"


def rows(home: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path(home)) as db:
        return db.execute(sql).fetchall()


def chat(*args: str, input: str = ""):
    return runner.invoke(app, ["chat", *args], input=input)


# -- sessions are born with their first message ---------------------------------


def test_a_failed_start_saves_no_session_and_continue_skips_it(scripted, home):
    first = chat("--model", "scripted:demo", input="내 이름은 민수야\n")
    assert first.exit_code == 0, first.output
    failed = chat("--model", UNREACHABLE, input="안녕\n")
    assert failed.exit_code == 3, failed.output  # the model-load code, as `ask` gives
    assert "cannot reach" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert rows(home, "SELECT COUNT(*) FROM sessions") == [(1,)]  # no empty session left behind
    resumed = chat("--continue", input="내 이름이 뭐야?\n")
    assert resumed.exit_code == 0, resumed.output
    assert scripted.loads[-1] == ("scripted:demo", "korani")  # the session's model, not the failed one
    assert [m.content for m in scripted.prompts[-1]] == ["내 이름은 민수야", "답 1.", "내 이름이 뭐야?"]


def test_a_chat_that_says_nothing_saves_nothing(scripted, home):
    for given in ("", "/도움말\n", "/기록\n/저장\n"):
        result = chat("--model", "scripted:demo", input=given)
        assert result.exit_code == 0, result.output
    assert rows(home, "SELECT COUNT(*) FROM sessions") == [(0,)]


def test_continue_with_nothing_saved_is_one_line_exit_2(scripted, home):
    result = chat("--continue", input="안녕\n")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: there is no saved conversation to continue — start one with korani chat (without --continue)"
    ]


# -- a resume brings back model, template, system text and every message ----------


def test_resume_restores_model_template_system_and_all_messages(scripted, home):
    questions = [f"질문 {i}" for i in range(7)]
    first = chat(
        "--model",
        "scripted:demo",
        "--template",
        "model",
        "--system",
        "너는 코라니야.",
        input="\n".join(questions) + "\n",
    )
    assert first.exit_code == 0, first.output
    listing = runner.invoke(app, ["history", "list"])
    assert "14 messages" in listing.stdout
    resumed = chat("-c", input="마지막 질문\n")
    assert resumed.exit_code == 0, resumed.output
    sid = listing.stdout.split()[0]
    assert f"note: resuming session {sid} (14 messages)" in resumed.stderr
    assert scripted.loads[-1] == ("scripted:demo", "model")
    prompt = scripted.prompts[-1]
    assert prompt[0] == Message("system", "너는 코라니야.")
    assert len(prompt) == 1 + 14 + 1 and prompt[-1].content == "마지막 질문"
    assert rows(home, "SELECT COUNT(*) FROM sessions") == [(1,)]  # stored in the same session


def test_a_model_given_on_the_command_line_wins_and_one_note_says_so(scripted, home):
    assert chat("--model", "scripted:demo", input="안녕\n").exit_code == 0
    resumed = chat("-c", "--model", "scripted:demo-chat", input="또 안녕\n")
    assert resumed.exit_code == 0, resumed.output
    notes = [line for line in resumed.stderr.splitlines() if line.startswith("note:")]
    assert (
        len(notes) == 1 and "--model 'scripted:demo-chat' replaces the session's 'scripted:demo'" in notes[0]
    ), resumed.stderr
    assert scripted.loads[-1][0] == "scripted:demo-chat"


def test_reset_starts_a_new_session_so_a_resume_restores_what_the_model_remembered(scripted, home):
    result = chat("--model", "scripted:demo", input="첫 질문\n둘째 질문\n/초기화\n셋째 질문\n")
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["history", "list", "--json"])
    counts = sorted(s["messages"] for s in json.loads(listed.stdout))
    assert counts == [2, 4]  # nothing lost: the conversation before /초기화 is its own session
    resumed = chat("-c", input="넷째 질문\n")
    assert "(2 messages)" in resumed.stderr
    assert [m.content for m in scripted.prompts[-1]] == ["셋째 질문", "답 3.", "넷째 질문"]


def test_an_old_session_with_a_reset_mark_says_how_many_are_remembered(scripted, home):
    history = History(db_path(home))
    sid = history.new_session("scripted:demo", None)
    for i in range(6):
        history.add(sid, "user" if i % 2 == 0 else "assistant", f"옛 메시지 {i}")
    history.mark_reset(sid)
    history.add(sid, "user", "리셋 뒤 질문")
    history.add(sid, "assistant", "리셋 뒤 답")
    history.close()
    resumed = chat("--session", sid, input="이어서\n")
    assert f"resuming session {sid} (8 messages; the 2 after its /초기화 are remembered)" in resumed.stderr
    assert [m.content for m in scripted.prompts[-1]] == ["리셋 뒤 질문", "리셋 뒤 답", "이어서"]


# -- ids: any unique prefix, as git's ---------------------------------------------


def make_sessions(home: Path, ids: list[str]) -> None:
    history = History(db_path(home))
    for n, sid in enumerate(ids):
        history.db.execute(
            "INSERT INTO sessions (id, created, model) VALUES (?, ?, 'scripted:demo')", (sid, time.time() + n)
        )
        history.db.commit()
        history.add(sid, "user", f"{sid}의 질문")
        history.add(sid, "assistant", f"{sid}의 답")
    history.close()


IDS = ["c895a1b2c3d4", "c8f0e9d8c7b6", "1a2b3c4d5e6f"]


@pytest.mark.parametrize(
    "args, code, expect",
    [
        (["history", "show", "c895"], 0, "c895a1b2c3d4의 질문"),
        (["history", "show", "1"], 0, "1a2b3c4d5e6f의 답"),
        (["history", "export", "c8f"], 0, "c8f0e9d8c7b6의 질문"),
        (["history", "show", "c895a1b2c3d4", "--json"], 0, '"id": "c895a1b2c3d4"'),
        (
            ["history", "show", "c8"],
            2,
            "error: session id c8 is ambiguous: c895a1b2c3d4, c8f0e9d8c7b6 — give more of its characters",
        ),
        (
            ["history", "rm", "c"],
            2,
            "error: session id c is ambiguous: c895a1b2c3d4, c8f0e9d8c7b6 — give more of its characters",
        ),
        (["history", "show", "ffff"], 2, "error: no saved session ffff — see `korani history list`"),
        (
            ["history", "show", "c8%"],
            2,
            "error: no saved session c8% — see `korani history list`",
        ),  # not a LIKE wildcard
        (["history", "export", "c8_"], 2, "error: no saved session c8_ — see `korani history list`"),
        (["history", "show", " "], 2, "error: the session id is empty"),
        (["chat", "--session", "c8"], 2, "error: session id c8 is ambiguous"),
        (["chat", "--session", "zz"], 2, "error: no saved session zz"),
    ],
)
def test_session_prefixes(scripted, home, args, code, expect):
    make_sessions(home, IDS)
    result = runner.invoke(app, args, input="")
    assert result.exit_code == code, result.output
    if code == 0:
        assert expect in result.stdout
    else:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(expect), (
            result.stderr
        )
    assert rows(home, "SELECT COUNT(*) FROM messages") == [(6,)]  # a refused rm deletes nothing


def test_chat_session_prefix_resumes_and_rm_prefix_deletes(scripted, home):
    make_sessions(home, IDS)
    resumed = chat("--session", "c895", input="이어서\n")
    assert resumed.exit_code == 0, resumed.output
    assert [m.content for m in scripted.prompts[-1]] == ["c895a1b2c3d4의 질문", "c895a1b2c3d4의 답", "이어서"]
    removed = runner.invoke(app, ["history", "rm", "1a"])
    assert removed.stdout == "deleted 1a2b3c4d5e6f\n"
    assert rows(home, "SELECT COUNT(*) FROM messages WHERE session_id = '1a2b3c4d5e6f'") == [(0,)]


def test_an_empty_history_lists_nothing_on_stdout_and_says_so_on_stderr(home):
    listed = runner.invoke(app, ["history", "list"])
    assert listed.exit_code == 0 and listed.stdout == ""
    expected = 'note: no saved sessions yet: start one with korani chat, or korani ask "질문"'
    assert listed.stderr.strip() == expected
    as_json = runner.invoke(app, ["history", "list", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == [] and as_json.stderr == ""


# -- --json ---------------------------------------------------------------------


def test_list_and_show_json(scripted, home):
    assert chat("--model", "scripted:demo", "--system", "짧게", input="한국의 수도는?\n").exit_code == 0
    listed = runner.invoke(app, ["history", "list", "--json"])
    assert listed.exit_code == 0 and listed.stderr == ""
    [entry] = json.loads(listed.stdout)
    assert entry["model"] == "scripted:demo" and entry["messages"] == 2 and entry["first"] == "한국의 수도는?"
    assert entry["created"].endswith("+00:00")
    shown = json.loads(runner.invoke(app, ["history", "show", entry["id"][:5], "--json"]).stdout)
    assert shown["id"] == entry["id"] and shown["system"] == "짧게" and shown["template"] == "korani"
    assert [(m["role"], m["content"]) for m in shown["messages"]] == [
        ("user", "한국의 수도는?"),
        ("assistant", "답 1."),
    ]
    assert shown["messages"][1]["model"] == "scripted:demo" and "total_s" in shown["messages"][1]["timings"]


def test_json_strips_control_characters(home):
    history = History(db_path(home))
    sid = history.new_session("demo", None)
    history.add(sid, "user", "안녕\x1b]0;pwned\x07하세요")
    history.close()
    listed = json.loads(runner.invoke(app, ["history", "list", "--json"]).stdout)
    assert listed[0]["first"] == "안녕]0;pwned하세요"


# -- search -----------------------------------------------------------------------


CHATS = [
    ["서울에서 부산까지 기차로 얼마나 걸려?", "KTX로 약 2시간 30분 걸립니다."],
    ["서울의 인구는 몇 명이야?", "서울특별시 인구는 약 940만 명입니다."],
    ["비 오는 날 듣기 좋은 노래 추천해 줘", "아이유의 '비밀의 화원'을 추천합니다."],
]


def fill(home: Path) -> list[str]:
    history = History(db_path(home))
    ids = []
    for pair in CHATS:
        sid = history.new_session("demo", None)
        ids.append(sid)
        history.add(sid, "user", pair[0])
        history.add(sid, "assistant", pair[1])
    history.close()
    return ids


@pytest.mark.slow  # Kiwi takes a couple of seconds to load
@pytest.mark.parametrize(
    "words, found",
    [
        (
            ["서울"],
            {
                "서울에서 부산까지 기차로 얼마나 걸려?",
                "서울의 인구는 몇 명이야?",
                "서울특별시 인구는 약 940만 명입니다.",
            },
        ),
        (["인구"], {"서울의 인구는 몇 명이야?", "서울특별시 인구는 약 940만 명입니다."}),
        (["비"], {"비 오는 날 듣기 좋은 노래 추천해 줘"}),  # rain, not 비밀
        (["노래", "추천"], {"비 오는 날 듣기 좋은 노래 추천해 줘"}),
        (["기차", "인구"], set()),  # every word must occur
        (['"', "AND", "NEAR(", "*"], set()),  # FTS5 syntax is text, never an error
    ],
)
def test_search_finds_korean_by_morphemes(home, words, found):
    fill(home)
    result = runner.invoke(app, ["history", "search", *words, "--json"])
    assert result.exit_code == 0, result.output
    assert {hit["content"] for hit in json.loads(result.stdout)} == found


@pytest.mark.slow
def test_search_text_output_and_a_deleted_session_is_not_found(home):
    ids = fill(home)
    shown = runner.invoke(app, ["history", "search", "기차"])
    assert (
        shown.exit_code == 0
        and shown.stdout.startswith(ids[0])
        and "서울에서 부산까지 기차로" in shown.stdout
    )
    assert runner.invoke(app, ["history", "rm", ids[0]]).exit_code == 0
    again = runner.invoke(app, ["history", "search", "기차"])
    assert again.exit_code == 0 and again.stdout == "" and "no saved message matches '기차'" in again.stderr
    # Messages stored after the index was built are found too.
    history = History(db_path(home))
    history.add(ids[1], "user", "부산행 기차표 예매")
    history.close()
    assert "부산행 기차표 예매" in runner.invoke(app, ["history", "search", "기차표"]).stdout


OLD_SCHEMA = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, created REAL, model TEXT, system TEXT);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT, content TEXT, created REAL, model TEXT, timings TEXT, citations TEXT,
    reset_before INTEGER DEFAULT 0
);
CREATE INDEX messages_session ON messages(session_id, id);
"""


@pytest.mark.slow
def test_an_old_history_file_migrates_without_losing_anything(scripted, home):
    """A database written before the template column and the search index: every
    row survives list, show, search, a resume and new messages, byte for byte."""
    path = db_path(home)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO sessions VALUES ('0ld5e5510n01', 1700000000.0, 'scripted:demo', '너는 코라니야.')"
        )
        db.execute(
            "INSERT INTO sessions VALUES ('3mpty5e5510n', 1700000100.0, 'korani-5.8b', NULL)"
        )  # a failed start
        db.executemany(
            "INSERT INTO messages (session_id, role, content, created, model, timings, citations) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("0ld5e5510n01", "user", "한라산의 높이는?", 1700000001.0, None, None, None),
                (
                    "0ld5e5510n01",
                    "assistant",
                    "한라산은 1947미터입니다 [1].",
                    1700000002.0,
                    "scripted:demo",
                    '{"total_s": 1.5}',
                    '[{"n": 1, "title": "한라산", "url": "http://127.0.0.1/h"}]',
                ),
            ],
        )
    before_sessions = rows(home, "SELECT * FROM sessions ORDER BY id")
    before_messages = rows(home, "SELECT * FROM messages ORDER BY id")

    listed = json.loads(runner.invoke(app, ["history", "list", "--json"]).stdout)
    assert [(s["id"], s["messages"]) for s in listed] == [("3mpty5e5510n", 0), ("0ld5e5510n01", 2)]
    found = runner.invoke(app, ["history", "search", "높이", "--json"])
    assert [h["session"] for h in json.loads(found.stdout)] == ["0ld5e5510n01"]
    shown = json.loads(runner.invoke(app, ["history", "show", "0ld", "--json"]).stdout)
    assert shown["template"] is None and shown["messages"][1]["citations"][0]["url"] == "http://127.0.0.1/h"

    resumed = chat("--continue", input="그럼 백두산은?\n")  # skips the empty session, though it is newer
    assert resumed.exit_code == 0, resumed.output
    assert scripted.loads[-1] == ("scripted:demo", "korani")
    assert scripted.prompts[-1][0] == Message("system", "너는 코라니야.")

    after_sessions = rows(home, "SELECT id, created, model, system FROM sessions ORDER BY id")
    assert after_sessions == before_sessions
    assert rows(home, "SELECT * FROM messages ORDER BY id")[:2] == before_messages
    assert rows(home, "SELECT content FROM messages ORDER BY id")[2:] == [("그럼 백두산은?",), ("답 1.",)]


# -- a model that cannot load ends the chat at once ------------------------------------


@pytest.mark.parametrize(
    "model, fragment",
    [
        (UNREACHABLE, "error: cannot reach the OpenAI-compatible server at http://127.0.0.1:1/v1"),
        ("/nonexistent/model.gguf", "error: GGUF file not found: /nonexistent/model.gguf"),
        ("./no-such-dir/model", "error: no such model file or directory: ./no-such-dir/model"),
    ],
)
def test_piped_chat_with_a_model_that_cannot_load_exits_3(home, model, fragment):
    result = chat("--model", model, input="안녕\n두 번째\n")
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(fragment) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert rows(home, "SELECT COUNT(*) FROM messages") == [(0,)]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_interactive_chat_fails_at_start_when_the_model_cannot_load(tmp_path):
    """A real pty: no prompt is shown, the error is one line, the exit code is 3."""
    import pty
    import select

    from support import REPO

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.environ["KORANI_HOME"] = str(tmp_path)
        os.execv(sys.executable, [sys.executable, "-m", "korani_cli", "chat", "--model", UNREACHABLE])
    screen = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    text = screen.decode("utf-8", "replace")
    assert os.WEXITSTATUS(status) == 3, text
    assert "나> " not in text and "cannot reach the OpenAI-compatible server" in text
    assert (
        not (tmp_path / "data" / "history.sqlite").exists()
        or not sqlite3.connect(tmp_path / "data" / "history.sqlite")
        .execute("SELECT COUNT(*) FROM sessions")
        .fetchone()[0]
    )
