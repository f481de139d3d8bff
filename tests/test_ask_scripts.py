"""`korani ask` in shell scripts: piped text joined before the question (llm's rule),
hostile and empty stdin, exchanges logged to the chat history, `ask -c` / `--session`.

The model is the `scripted` backend (tests/conftest.py, loaded through the backend
registry as `--model scripted:demo`) where what is asserted is what korani
sends it (the prompt); real SQLite files throughout; the subprocess rows use
the demo model and compare its real prompt token counts.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from support import REPO
from typer.testing import CliRunner

from korani_cli import piped
from korani_cli.chat.history import History
from korani_cli.cli import app

runner = CliRunner()
MiB = 1 << 20


def ask(*args: str, input: bytes | str | None = None, env: dict | None = None):
    return runner.invoke(app, ["ask", *args], input=input, env=env)


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def sessions(home: Path) -> list[dict]:
    return json.loads(runner.invoke(app, ["history", "list", "--json"]).stdout)


# -- piped text + a question: text first, then the question ------------------------------------------

NOTES = "회의록: 다음 회의는 금요일 3시, 장소는 2층 회의실."
MULTIBYTE_PAST_LIMIT = ("가" * (MiB // 3 + 10)).encode()  # 3-byte characters: the limit falls inside one

STDIN_ROWS = [
    # (argv question, stdin bytes, expected exit, expected user prompt or error/notice fragment)
    ("요약해 줘", NOTES.encode(), 0, f"{NOTES}\n\n요약해 줘"),
    ("요약해 줘", b"", 0, "요약해 줘"),  # an empty pipe (CliRunner, /dev/null) changes nothing
    ("요약해 줘", b" \n\t\n", 0, "요약해 줘"),
    ("요약해 줘", b"\xef\xbb\xbf" + NOTES.encode() + b"\n", 0, f"{NOTES}\n\n요약해 줘"),  # BOM dropped
    ("  요약해 줘  ", b"\n" + NOTES.encode() + b"\n\n", 0, f"{NOTES}\n\n요약해 줘"),
    ("-", NOTES.encode(), 0, NOTES),  # `-` alone: stdin is the question
    (None, NOTES.encode(), 0, NOTES),
    (
        "요약해 줘",
        b"\x89PNG\r\n\x1a\n\x00\x00",
        2,
        "error: stdin is not UTF-8 text (byte 0x89 at offset 0) — pipe UTF-8 text, or run with </dev/null",
    ),
    ("요약해 줘", "메모\x00바이너리".encode(), 2, "error: stdin holds NUL bytes (binary data?)"),
    ("", NOTES.encode(), 2, "error: the question is empty"),
    ("요약해 줘", b"a" * (MiB + 5000), 0, "note: stdin holds more than 1 MiB; only its first 1 MiB is used"),
    ("요약해 줘", MULTIBYTE_PAST_LIMIT, 0, "note: stdin holds more than 1 MiB; only its first 1 MiB is used"),
]


@pytest.mark.parametrize(
    "question, data, code, expected",
    STDIN_ROWS,
    ids=[
        "joined",
        "empty",
        "blank",
        "bom",
        "stripped",
        "dash",
        "no-question",
        "png",
        "nul",
        "empty-question",
        "over-limit",
        "over-limit-mid-character",
    ],
)
def test_piped_text_goes_before_the_question(scripted, home, question, data, code, expected):
    result = ask("--model", "scripted:demo", *([question] if question is not None else []), input=data)
    assert result.exit_code == code, result.output
    if code:
        assert notes(result.stderr) and notes(result.stderr)[0].startswith(expected), result.stderr
        assert len(notes(result.stderr)) == 1 and not scripted.prompts
        return
    sent = scripted.prompts[-1][-1]
    assert sent.role == "user"
    if expected.startswith("note:"):
        assert notes(result.stderr)[0].startswith(expected), result.stderr
        body = sent.content.removesuffix("\n\n요약해 줘")
        assert sent.content.endswith("\n\n요약해 줘") and "\ufffd" not in body
        assert MiB - 3 <= len(body.encode()) <= MiB  # cut at the limit, at a character boundary
    else:
        assert sent.content == expected
        assert result.stderr == ""
    assert result.stdout == "답 1.\n"  # stdout is the answer only


def test_help_says_how_piped_text_and_the_question_are_joined():
    result = runner.invoke(app, ["ask", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    assert 'cat notes.txt | korani ask "요약해 줘"' in text
    assert "--continue" in text and "--no-log" in text and "KORANI_LOG=0" in text


def test_a_pipe_left_open_gets_one_waiting_note_then_its_text_is_used(monkeypatch):
    """An `ssh` or a parent that keeps stdin open: korani says it is waiting instead of hanging silently."""
    monkeypatch.setattr(piped, "WAIT_NOTICE_S", 0.2)
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(open(read_end, "rb")))
    said: list[str] = []

    def writer():
        time.sleep(0.6)
        os.write(write_end, "늦게 온 메모".encode())
        os.close(write_end)

    threading.Thread(target=writer).start()
    assert piped.read(said.append, waiting="waiting", fix="-") == "늦게 온 메모"
    assert said == ["waiting"]


def _demo_prompt_tokens(*, stdin, preexec=None, input: bytes | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "KORANI_LOG": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "korani_cli",
            "ask",
            "--model",
            "demo",
            "-t",
            "0",
            "-n",
            "1",
            "--json",
            "안녕?",
        ],
        stdin=stdin,
        input=input,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=180,
        preexec_fn=preexec,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["prompt_tokens"], proc.stderr.decode(), proc.stdout.decode()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_model_sees_the_same_prompt_from_devnull_a_closed_stdin_or_no_input():
    """/dev/null (CI), a closed descriptor (`<&-`) and `subprocess.run` without input: the question alone."""
    alone, _, _ = _demo_prompt_tokens(stdin=subprocess.DEVNULL)
    closed, err, _ = _demo_prompt_tokens(stdin=None, preexec=lambda: os.close(0))
    inherited, _, _ = _demo_prompt_tokens(
        stdin=None
    )  # pytest's own stdin: /dev/null under capture, or a terminal
    empty, _, _ = _demo_prompt_tokens(stdin=None, input=b"")
    assert alone == closed == inherited == empty, (alone, closed, inherited, empty)
    assert "error" not in err
    joined, _, _ = _demo_prompt_tokens(stdin=None, input=NOTES.encode())
    assert joined > alone + 10


# -- exchanges are logged; -c continues ----------------------------------------------------------------


def test_an_ask_is_logged_as_an_ask_session_that_history_shows(scripted, home):
    result = ask("--model", "scripted:demo", "--json", "한국의 수도는?")
    assert result.exit_code == 0, result.output
    listed = sessions(home)
    assert [(s["kind"], s["model"], s["messages"], s["first"]) for s in listed] == [
        ("ask", "scripted:demo", 2, "한국의 수도는?")
    ]
    assert json.loads(result.stdout)["session"] == listed[0]["id"]
    line = runner.invoke(app, ["history", "list"]).stdout.splitlines()[0]
    assert line.split()[3:5] == ["ask", "scripted:demo"], line
    shown = runner.invoke(app, ["history", "show", listed[0]["id"][:4]]).stdout
    assert (
        shown.startswith(f"# korani ask {listed[0]['id']}") and "한국의 수도는?" in shown and "답 1." in shown
    )


LOG_ROWS = [
    # (extra argv, environment, exit code, sessions stored, stderr fragment)
    (["--no-log"], {}, 0, 0, ""),
    ([], {"KORANI_LOG": "0"}, 0, 0, ""),
    ([], {"KORANI_LOG": "off"}, 0, 0, ""),
    ([], {"KORANI_LOG": "1"}, 0, 1, ""),
    ([], {"KORANI_LOG": ""}, 0, 1, ""),
    (
        [],
        {"KORANI_LOG": "maybe"},
        5,
        0,
        "error: KORANI_LOG must be 0 or 1, got 'maybe' — set KORANI_LOG=0 (off) or KORANI_LOG=1 (on)",
    ),
]


@pytest.mark.parametrize(
    "args, env, code, stored, fragment",
    LOG_ROWS,
    ids=["--no-log", "LOG=0", "LOG=off", "LOG=1", "LOG-empty", "LOG-bad"],
)
def test_no_log_and_korani_log_switch_logging(scripted, home, args, env, code, stored, fragment):
    result = ask("--model", "scripted:demo", *args, "안녕?", env=env)
    assert result.exit_code == code, result.output
    assert len(sessions(home)) == stored
    if fragment:
        assert notes(result.stderr) == [notes(result.stderr)[0]] and notes(result.stderr)[0].startswith(
            fragment
        )
        assert not scripted.prompts
    else:
        assert result.stdout == "답 1.\n" and result.stderr == ""


def _dir_in_place(home: Path) -> None:
    (home / "data" / "history.sqlite").mkdir(parents=True)


def _garbage(home: Path) -> None:
    (home / "data").mkdir(parents=True)
    (home / "data" / "history.sqlite").write_bytes(b"not a database " * 100)


def _home_is_a_file_for_data(home: Path) -> None:
    assert home.is_dir()  # the fixture made it
    (home / "data").write_text("a file where the data directory goes")


UNUSABLE_ROWS = [
    # (damage, fragment of the one notice)
    (_dir_in_place, "is a directory, not a database file"),
    (_garbage, "is damaged"),
    (_home_is_a_file_for_data, "not saved to the history"),
]


@pytest.mark.parametrize("damage, fragment", UNUSABLE_ROWS, ids=["directory", "garbage", "data-is-a-file"])
def test_an_unusable_history_costs_one_notice_not_the_answer(scripted, home, damage, fragment):
    damage(home)
    result = ask("--model", "scripted:demo", "안녕?")
    assert result.exit_code == 0, result.output
    assert result.stdout == "답 1.\n"
    said = notes(result.stderr)
    assert (
        len(said) == 1
        and said[0].startswith("note: this answer was not saved to the history")
        and fragment in said[0]
    ), said
    assert "--no-log or KORANI_LOG=0" in said[0]


def test_continue_puts_the_last_exchange_into_the_prompt_and_stores_in_the_same_session(scripted, home):
    assert ask("--model", "scripted:demo", "--system", "짧게 답해.", "내 이름은 민수야").exit_code == 0
    result = ask("-c", "내 이름이 뭐지?")
    assert result.exit_code == 0, result.output
    assert result.stdout == "답 2.\n"  # notes go to stderr only
    assert [(m.role, m.content) for m in scripted.prompts[-1]] == [
        ("system", "짧게 답해."),
        ("user", "내 이름은 민수야"),
        ("assistant", "답 1."),
        ("user", "내 이름이 뭐지?"),
    ]
    assert scripted.loads == [("scripted:demo", "korani")] * 2  # the session's model
    listed = sessions(home)
    assert len(listed) == 1 and listed[0]["messages"] == 4
    assert notes(result.stderr) == [f"note: resuming session {listed[0]['id']} (2 messages)"]


def test_session_prefix_and_piped_text_with_continue(scripted, home):
    assert ask("--model", "scripted:demo", "첫 질문").exit_code == 0
    assert ask("--model", "scripted:demo", "다른 질문").exit_code == 0
    first = [s for s in sessions(home) if s["first"] == "첫 질문"][0]["id"]
    result = ask("--session", first[:6], "이어서", input="붙인 글")
    assert result.exit_code == 0, result.output
    assert [m.content for m in scripted.prompts[-1]] == ["첫 질문", "답 1.", "붙인 글\n\n이어서"]


def test_ask_continues_a_chat_and_a_chat_continues_an_ask(scripted, home):
    chatted = runner.invoke(app, ["chat", "--model", "scripted:demo"], input="채팅 질문\n")
    assert chatted.exit_code == 0, chatted.output
    assert ask("-c", "후속 질문").exit_code == 0
    assert [m.content for m in scripted.prompts[-1]] == ["채팅 질문", "답 1.", "후속 질문"]
    assert [(s["kind"], s["messages"]) for s in sessions(home)] == [("chat", 4)]
    assert runner.invoke(app, ["chat", "-c"], input="채팅으로 돌아와서\n").exit_code == 0
    assert [m.content for m in scripted.prompts[-1]][-3:] == ["후속 질문", "답 2.", "채팅으로 돌아와서"]


def test_continue_without_log_reads_but_does_not_write(scripted, home):
    assert ask("--model", "scripted:demo", "첫 질문").exit_code == 0
    assert ask("-c", "--no-log", "둘째").exit_code == 0
    assert [m.content for m in scripted.prompts[-1]] == ["첫 질문", "답 1.", "둘째"]
    assert sessions(home)[0]["messages"] == 2


def test_a_long_conversation_is_trimmed_to_the_context_window_with_one_note(scripted, home):
    scripted.info = replace(scripted.info, context_length=400)  # count_tokens is len(text)
    assert ask("--model", "scripted:demo", "-n", "64", "가" * 150).exit_code == 0
    assert ask("-c", "-n", "64", "나" * 150).exit_code == 0
    result = ask("-c", "-n", "64", "다음")
    assert result.exit_code == 0, result.output
    assert [m.content for m in scripted.prompts[-1]] == ["나" * 150, "답 2.", "다음"]
    assert any("its 1 oldest exchanges were left out of the prompt" in n for n in notes(result.stderr)), (
        result.stderr
    )


CONTINUE_ERROR_ROWS = [
    # (argv, damage before, exit code, fragment)
    (
        ["-c", "뭐?"],
        None,
        2,
        "error: there is no saved conversation to continue — "
        'ask a first question without -c: korani ask "질문"',
    ),
    (["--session", "zz", "뭐?"], None, 2, "error: no saved session zz — see `korani history list`"),
    (["--session", " ", "뭐?"], None, 2, "error: --session is empty"),
    (["-c", "뭐?"], _dir_in_place, 5, "or ask without continuing (drop -c/--session)"),
    (["-c", "뭐?"], _garbage, 5, "is damaged"),
]


@pytest.mark.parametrize(
    "args, damage, code, fragment",
    CONTINUE_ERROR_ROWS,
    ids=["nothing-saved", "no-such-session", "empty-session", "history-is-a-dir", "history-garbage"],
)
def test_continue_errors_are_one_line(scripted, home, args, damage, code, fragment):
    if damage:
        damage(home)
    result = ask(*args)
    assert result.exit_code == code, result.output
    said = notes(result.stderr)
    assert len(said) == 1 and said[0].startswith("error: ") and fragment in said[0], said
    assert "chat --no-history" not in said[0]  # a way out that ask has
    assert not scripted.prompts and result.stdout == ""


def test_search_answers_get_the_conversation_too(scripted, home, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "sejong.txt").write_text(
        "세종대왕은 1443년에 한글을 창제했습니다. 세종은 조선의 네 번째 왕입니다.", encoding="utf-8"
    )
    assert ask("--model", "scripted:demo", "세종은 누구야?").exit_code == 0
    # A follow-up carries the exchange it leans on (a question that stands alone is prompted with its
    # sources only: turn.layer.sourced_history, tests/test_turn.py).
    follow_up = "그럼 한글은 언제 만들었어?"
    result = ask("-c", "--search", "--local-dir", str(pages), "--embedder", "none", follow_up)
    assert result.exit_code == 0, result.output
    contents = [m.content for m in scripted.prompts[-1]]
    assert contents[:2] == ["세종은 누구야?", "답 1."] and follow_up in contents[-1]
    assert any(
        "1443" in source.text for source in scripted.prompts[-1][-1].sources
    )  # the last turn carries the sources
    assert sessions(home)[0]["messages"] == 4


def test_an_old_database_without_kind_lists_its_sessions_as_chats(home):
    path = home / "data" / "history.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, created REAL, model TEXT, system TEXT);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, role TEXT, "
            "content TEXT, created REAL,"
            " model TEXT, timings TEXT, citations TEXT, reset_before INTEGER DEFAULT 0);"
            "INSERT INTO sessions VALUES ('abc123', 1.0, 'demo', NULL);"
            "INSERT INTO messages (session_id, role, content, created) "
            "VALUES ('abc123', 'user', '옛 질문', 1.0);"
        )
    listed = sessions(home)
    assert [(s["id"], s["kind"], s["messages"]) for s in listed] == [("abc123", "chat", 1)]
    assert History(path).session("abc123").kind == "chat"
