"""`/파일 PATH` and `/시스템 TEXT` in the chat (issue 22 §9), and Tab completes them.

/파일 is attacked with what a path can be: a directory, a FIFO (no writer: opening it must not
hang), /dev/zero, a file past the limit, a binary file, text that is neither UTF-8 nor CP949, a
missing file. Each is one line and the chat goes on; nothing reaches the model.
"""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
from support import ScriptedBackend, drive, session_for

from korani_cli.chat.attach import LIMIT
from korani_cli.chat.repl import complete_command


def test_a_file_goes_before_the_next_question_once(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("회의록: 다음 회의는 금요일이다.\n", encoding="utf-8")
    backend = ScriptedBackend(["금요일입니다.", "둘째 답."])
    session, _ = session_for(tmp_path, backend)
    out, err = drive(session, f"/파일 {notes}\n다음 회의는 언제야?\n그다음 질문\n")
    assert "파일을 붙였습니다" in out and not err
    assert backend.prompts[0][-1].content == "회의록: 다음 회의는 금요일이다.\n\n다음 회의는 언제야?"
    assert backend.prompts[1][-1].content == "그다음 질문"  # attached to one question only
    stored = sqlite3.connect(tmp_path / "history.sqlite").execute(
        "SELECT content FROM messages WHERE role = 'user' ORDER BY id"
    )
    assert [row[0] for row in stored][0].startswith("회의록:")  # what the model saw is what is kept


def test_a_cp949_file_is_read_as_korean(tmp_path):
    notes = tmp_path / "euckr.txt"
    notes.write_bytes("제주도는 대한민국에서 가장 큰 섬이다.".encode("cp949"))
    backend = ScriptedBackend(["네."])
    session, _ = session_for(tmp_path, backend)
    out, _ = drive(session, f"/파일 {notes}\n요약해 줘\n")
    assert "CP949" in out
    assert backend.prompts[0][-1].content.startswith("제주도는 대한민국에서")


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _huge(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("가" * (LIMIT // 3 + 10), encoding="utf-8")
    return path


def _binary(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    return path


def _latin1(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café déjà vu, naïve façade".encode("latin-1"))
    return path


BAD = [
    ("directory", lambda tmp: tmp, "디렉터리"),
    ("fifo", _fifo, "FIFO"),
    ("dev-zero", lambda tmp: "/dev/zero", "장치 파일"),
    ("huge", _huge, "너무 큽니다"),
    ("binary", _binary, "바이너리"),
    ("not-utf8", _latin1, "UTF-8 텍스트가 아닙니다"),
    ("missing", lambda tmp: tmp / "no-such.txt", "파일이 없습니다"),
    ("empty-arg", lambda tmp: "", "붙일 파일을 적어 주세요"),
]


@pytest.mark.parametrize("case, make, said", BAD, ids=[c for c, _, _ in BAD])
def test_what_cannot_be_attached_is_one_line_and_the_chat_goes_on(tmp_path, case, make, said):
    target = make(tmp_path)
    backend = ScriptedBackend(["답."])
    result: dict = {}

    def chat():  # the session is made in the thread that uses it (sqlite3 connections stay in theirs)
        session, _ = session_for(tmp_path, backend)
        result["out"], result["err"] = drive(session, f"/파일 {target}\n질문\n")

    # A FIFO without a writer blocks a plain open() forever: run it where a hang shows as a failure.
    worker = threading.Thread(target=chat)
    worker.daemon = True
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"/파일 {case} hung"
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and said in lines[0], lines
    assert backend.prompts[0][-1].content == "질문"  # nothing was attached


def test_system_text_is_shown_set_cleared_and_kept_for_continue(tmp_path):
    backend = ScriptedBackend(["하나.", "둘."])
    session, history = session_for(tmp_path, backend)
    out, _ = drive(session, "/시스템\n첫 질문\n/시스템 너는 해적처럼 말한다.\n둘째 질문\n/시스템\n")
    assert "시스템 글이 없습니다" in out and "시스템 글: 너는 해적처럼 말한다." in out
    assert backend.prompts[0][0].role == "user"
    assert backend.prompts[1][0].role == "system" and backend.prompts[1][0].content == "너는 해적처럼 말한다."
    assert history.session(session.session_id).system == "너는 해적처럼 말한다."
    out, _ = drive(session, "/시스템 -\n")
    assert "지웠습니다" in out and history.session(session.session_id).system is None


@pytest.mark.parametrize(
    "typed, completed", [("/파", "/파일 "), ("/시", "/시스템 "), ("/fi", "/file "), ("/sy", "/system ")]
)
def test_tab_completes_the_new_commands(typed, completed):
    assert complete_command(typed, 0) == completed
