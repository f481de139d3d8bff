"""`korani chat` driven like a user would: piped stdin, a test double and the demo model, SQLite history."""

import os
import sqlite3
import sys

import pytest
from support import REPO, ScriptedBackend, drive, run_korani, session_for
from typer.testing import CliRunner

from korani_cli.chat.repl import read_inputs
from korani_cli.cli import app
from korani_cli.template import render

runner = CliRunner()


def test_multiline_input_forms():
    lines = ['"""', "첫 줄", "둘째 줄", '"""', "이어지는 \\", "줄", "한 줄"]
    assert list(read_inputs(iter(lines))) == ["첫 줄\n둘째 줄", "이어지는 \n줄", "한 줄"]


def test_plain_exchange_is_printed_and_logged_before_and_after(tmp_path):
    backend = ScriptedBackend(["서울은 대한민국의 수도입니다."])
    session, history = session_for(tmp_path, backend)
    out, err = drive(session, "수도는 어디야?\n")
    assert "서울은 대한민국의 수도입니다." in out
    rows = (
        sqlite3.connect(tmp_path / "history.sqlite")
        .execute("SELECT role, content FROM messages ORDER BY id")
        .fetchall()
    )
    assert rows == [("user", "수도는 어디야?"), ("assistant", "서울은 대한민국의 수도입니다.")]
    assert backend.prompts[0][-1].content == "수도는 어디야?"


def test_memory_carries_turns_and_reset_clears_it(tmp_path):
    backend = ScriptedBackend(["첫 답.", "둘째 답.", "셋째 답."])
    session, _ = session_for(tmp_path, backend)
    out, _ = drive(session, "첫 질문\n둘째 질문\n/초기화\n셋째 질문\n")
    assert "대화 기억을 지웠습니다" in out
    second, third = backend.prompts[1], backend.prompts[2]
    assert [m.content for m in second] == ["첫 질문", "첫 답.", "둘째 질문"]
    rendered = render(third, "<eos>")
    assert (
        "첫 질문" not in rendered
        and "둘째" not in rendered
        and rendered.endswith("### User\n셋째 질문\n\n### Bot\n")
    )


def test_unknown_command_gets_a_hint_not_a_model_call(tmp_path):
    backend = ScriptedBackend()
    session, _ = session_for(tmp_path, backend)
    _, err = drive(session, "/검섹 오타\n/도움말\n")
    assert "알 수 없는 명령어 /검섹" in err and "/도움말" in err
    assert backend.prompts == []


def test_trimming_keeps_system_and_latest_and_reports_once(tmp_path):
    backend = ScriptedBackend(["가" * 60], context_length=256 + 300)
    session, _ = session_for(tmp_path, backend, system="너는 코라니야.")
    _, err = drive(session, "".join(f"질문 {i} {'나' * 40}\n" for i in range(6)))
    last = backend.prompts[-1]
    assert last[0].role == "system" and last[-1].content.startswith("질문 5")
    assert not any(m.content.startswith("질문 0") for m in last)
    assert err.count("오래된 대화") == 1


def test_save_writes_a_markdown_transcript(tmp_path):
    session, _ = session_for(tmp_path, ScriptedBackend(["답입니다."]))
    target = tmp_path / "out.md"
    drive(session, f"질문입니다\n/저장 {target}\n")
    text = target.read_text(encoding="utf-8")
    assert "**나**\n\n질문입니다" in text and "**코라니**\n\n답입니다." in text


def test_continue_restores_turns_from_sqlite(scripted, home):
    scripted.answers = ["코라니의 답입니다."]
    first = runner.invoke(app, ["chat", "--model", "scripted:demo"], input="기억해 줘: 내 이름은 민수야\n")
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app, ["chat", "--model", "scripted:demo", "--continue"], input="내 이름이 뭐였지?\n"
    )
    assert second.exit_code == 0, second.output
    assert scripted.loads == [("scripted:demo", "korani")] * 2  # through the backend registry, once per chat
    last = scripted.prompts[-1]
    assert [m.content for m in last[:2]] == ["기억해 줘: 내 이름은 민수야", "코라니의 답입니다."]
    listing = runner.invoke(app, ["history", "list"])
    sid = listing.stdout.split()[0]
    assert "4 messages" in listing.stdout
    shown = runner.invoke(app, ["history", "export", sid])
    assert "내 이름이 뭐였지?" in shown.stdout
    assert runner.invoke(app, ["history", "rm", sid]).exit_code == 0
    assert runner.invoke(app, ["history", "show", sid]).exit_code == 2


@pytest.mark.slow
def test_search_command_answers_with_footnotes_and_sources(tmp_path, web, monkeypatch):
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions

    monkeypatch.setenv("KORANI_HOME", str(tmp_path))
    backend = ScriptedBackend(
        ["서울은 대한민국의 수도이며 가장 큰 도시이다 [1]. 달은 치즈다 [4].", "그 도시는 크다."]
    )
    opts = SearchOptions(
        providers=("searxng",),
        searxng_url=web,
        k=3,
        embedder="none",
        fetch=FetchOptions(allow_private=True),
        use_cache=False,
    )
    session, history = session_for(tmp_path, backend, search_options=opts)
    out, err = drive(session, "/검색 서울은 어떤 도시인가요?\n/출처\n")
    assert "서울은 대한민국의 수도이며 가장 큰 도시이다[1]. 달은 치즈다." in out
    assert f"[1] 서울 소개 — {web}/ok.html" in out  # a footnote that resolves to the fetched page
    assert f"{web}/ok.html" in out.split("[1] 서울 소개")[-1]  # /출처 lists it too, with its score
    prompt = render(backend.prompts[0], "<eos>")
    assert (
        f"(http://127.0.0.1:{web.rsplit(':', 1)[1]}/ok.html)" in prompt
        and "질문: 서울은 어떤 도시인가요?" in prompt
    )
    stored = history.messages(session.session_id)
    assert stored[-1].citations[0]["url"] == f"{web}/ok.html"


@pytest.mark.slow
def test_demo_model_exchange_through_the_real_cli():
    proc = run_korani("chat", "--model", "demo", "-n", "16", "-t", "0", input="한국의 수도는?\n/모델\n")
    assert proc.returncode == 0, proc.stderr
    assert "demo · 백엔드 llamacpp" in proc.stdout  # the chat speaks Korean
    assert proc.stdout.split("demo · 백엔드")[0].strip()  # an answer was printed first


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_answer_not_the_chat(tmp_path):
    """A real pty: Ctrl-C mid-answer returns to the prompt; Ctrl-D then exits cleanly."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: korani chat on a terminal
        os.chdir(REPO)
        os.environ["KORANI_HOME"] = str(tmp_path)
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "korani_cli",
                "chat",
                "--model",
                "demo",
                "-n",
                "1500",
                "-t",
                "1.0",
                "--seed",
                "3",
            ],
        )

    def read_until(predicate, timeout):
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                if predicate(buf.decode("utf-8", "replace")):
                    break
        return buf.decode("utf-8", "replace")

    banner = read_until(lambda s: "나> " in s, 60)
    assert "korani chat" in banner
    os.write(fd, "옛날 옛적에 한 마을에 살던 사람들의 긴 이야기를 아주 자세하게 들려주세요\r".encode())
    import re

    def answer_visible(screen: str) -> bool:
        if "들려주세요" not in screen:  # the terminal has not echoed the whole question yet
            return False
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).split("들려주세요")[-1]
        for ui in ("답변 생성 중", "모델 불러오는 중"):
            plain = plain.replace(ui, "")
        return len(re.findall("[가-힣]", plain)) >= 5

    streamed = read_until(answer_visible, 120)  # wait until answer text is on the screen
    os.write(fd, b"\x03")  # Ctrl-C, as the terminal sends it
    after = read_until(lambda s: "나> " in s, 30)
    assert "답변을 멈췄습니다" in after and "나> " in after, (streamed[-300:], after[-300:])
    os.write(fd, b"\x04")  # Ctrl-D at the prompt
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    rows = (
        sqlite3.connect(tmp_path / "data" / "history.sqlite").execute("SELECT role FROM messages").fetchall()
    )
    assert ("user",) in rows, (streamed[-500:], after[-500:])  # written before generation started
    assert ("assistant",) in rows, (streamed[-800:], after[-300:])  # the partial answer is kept
