"""What `korani chat` leaves on a terminal's screen (issue 12, "Ctrl-C and the screen").

The chat runs on a real pty of a known size; its bytes are fed to pyte, a
VT100 emulator, and the tests compare the screen a person would see
(scrollback included). The model is an OpenAI-compatible server on 127.0.0.1
(test_answer.ScriptServer) that streams a script and holds the rest back at a
known point, so Ctrl-C lands at a known place in the answer.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios
import time

import pytest
from rich.console import Console

from test_answer import ScriptServer

pyte = pytest.importorskip("pyte", reason="pyte (a terminal emulator, in korani[dev]) draws the screen these tests compare")

MARKER = "(답변을 멈췄습니다)"
STORY = "".join(f"{i}번째 줄입니다. 이야기가 계속 이어집니다.\n" for i in range(1, 41))


class Terminal:
    """`korani ARGS` on a pty of cols × rows, its output drawn by pyte."""

    def __init__(self, argv: list[str], home, cols: int = 80, rows: int = 24):
        from conftest import REPO

        self.cols, self.rows = cols, rows
        pid, fd = pty.fork()
        if pid == 0:  # the child: korani on a terminal of this size
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(REPO)
            # An explicit environment: readline, once imported here, exports LINES and COLUMNS
            # behind os.environ's back, and rich would believe them over the pty's size.
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
            env.update({"KORANI_HOME": str(home), "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1"})
            os.execve(sys.executable, [sys.executable, "-m", "korani_cli", *argv], env)
        self.pid, self.fd = pid, fd
        self.screen = pyte.HistoryScreen(cols, rows, history=100_000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.status: int | None = None

    def pump(self, until, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while not until(self):
            if time.monotonic() > deadline:
                return False
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    return until(self)
                self.raw += data
                self.stream.feed(data)
        return True

    def settle(self, quiet: float = 0.5, timeout: float = 20) -> None:
        """Read until nothing has come for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and select.select([self.fd], [], [], quiet)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data
            self.stream.feed(data)

    def lines(self) -> list[str]:
        """Every line a person could read: the scrollback, then the screen, without trailing blank rows."""
        def row(line) -> str:
            return "".join(line[x].data for x in range(self.cols)).rstrip()

        out = [row(line) for line in self.screen.history.top] + [row(self.screen.buffer[y]) for y in range(self.rows)]
        while out and not out[-1]:
            out.pop()
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def at_prompt(self, count: int = 1) -> bool:
        return self.text().endswith("나>") and self.text().count("나>") >= count

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.settle(0.1, 1)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"korani did not exit: {self.text()[-500:]}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def chat_with(tmp_path):
    """Start `korani chat` against a ScriptServer answering `script`; yields (terminal, server)."""
    opened: list = []

    def start(script: str, hold: str | None = None, cols: int = 80, rows: int = 24, extra: tuple = ()):
        server = ScriptServer(script, hold=hold)
        term = Terminal(["chat", "--model", f"openai:scripted@{server.url}", "-t", "0", *extra], tmp_path / "home", cols, rows)
        opened.append((term, server))
        assert term.pump(Terminal.at_prompt), term.text()
        return term, server

    yield start
    for term, server in opened:
        server.release.set()
        term.close()
        server.shutdown()


def _stop_mid_answer(term: Terminal, server: ScriptServer, shown: str) -> tuple[list[str], list[str]]:
    """Ask, wait until the held answer shows `shown`, press Ctrl-C; (screen before, screen after)."""
    term.type("이야기를 들려줘\r")
    assert server.reached.wait(30), "the server never reached its hold point"
    assert term.pump(lambda t: shown in t.text().replace("\n", " ")), term.text()[-800:]
    term.settle()
    before = term.lines()
    term.type("\x03")  # Ctrl-C, as the terminal sends it
    assert term.pump(lambda t: t.at_prompt(2)), term.text()[-800:]
    term.settle()
    return before, term.lines()


@pytest.mark.slow
@pytest.mark.parametrize("rows", [24, 12], ids=["fits-the-screen", "taller-than-the-screen"])
def test_ctrl_c_leaves_what_was_shown_then_the_marker(chat_with, rows):
    term, server = chat_with(STORY, hold="30번째", rows=rows)
    before, after = _stop_mid_answer(term, server, "30번째")
    answer = [line for line in after if "번째" in line or "이어집니다" in line]
    # Every sentence shown once, in order (a redraw that scrolled off must not come back).
    words = " ".join(answer).split()
    numbers = [w for w in words if w.endswith("번째")]
    assert numbers == [f"{i}번째" for i in range(1, 31)], after
    assert after[-2:] == [MARKER, "나>"], after[-4:]
    if rows == 24:  # everything fitted: the screen is exactly what it was, plus the marker
        assert after[:-2] == before, (before, after)
    else:
        assert after[:len(before) - 1] == before[:-1] or after[-3] == before[-1]
    term.type("\x04")
    assert term.wait_exit() == 0


@pytest.mark.slow
def test_ctrl_d_leaves_the_shell_prompt_on_its_own_line(chat_with):
    term, _ = chat_with("안녕하세요.")
    term.type("\x04")
    assert term.wait_exit() == 0
    assert term.raw.endswith(b"\r\n"), term.raw[-40:]
    assert term.screen.cursor.x == 0 and term.lines()[-1] == "나>"


@pytest.mark.slow
def test_a_heading_is_drawn_left_aligned_and_the_text_after_it_too(chat_with):
    term, server = chat_with("# 세종의 업적\n훈민정음을 만들었다.\n\n## 더 보기\n1446년에 반포하였다.\n")
    term.type("세종은?\r")
    assert term.pump(lambda t: t.at_prompt(2)), term.text()
    term.settle()
    lines = term.lines()
    for text in ("세종의 업적", "훈민정음을 만들었다.", "더 보기", "1446년에 반포하였다."):
        assert any(line.startswith(text) for line in lines), (text, lines)
    start = lines.index("세종의 업적")
    # as rich draws the whole document: one blank row between blocks, none doubled
    assert lines[start:start + 7] == ["세종의 업적", "", "훈민정음을 만들었다.", "", "더 보기", "", "1446년에 반포하였다."]


@pytest.mark.slow
def test_blocks_streamed_one_by_one_look_like_the_whole_answer(chat_with):
    answer = "## 세종\n\n- 항목 하나.\n- 항목 둘\n\n1. 첫째\n\n2. 둘째\n\n끝 문단입니다.\n"
    term, _ = chat_with(answer)
    term.type("세종은?\r")
    assert term.pump(lambda t: t.at_prompt(2)), term.text()
    term.settle()
    lines = term.lines()
    start = lines.index("세종")
    assert lines[start:lines.index("나>", start)] == [
        "세종", "", " • 항목 하나.", " • 항목 둘", "", " 1 첫째", "", " 2 둘째", "", "끝 문단입니다."], lines


# -- /출처 ----------------------------------------------------------------------------

LONG = ("훈민정음은 조선의 네 번째 왕인 세종이 1443년에 창제하고 1446년에 반포한 문자이다. " * 6).strip()


def test_sources_wrap_under_their_indent_and_a_cut_passage_ends_at_a_word():
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.chat.session import ChatSession
    from korani_cli.search.types import Passage, Ranked

    session = ChatSession(lambda: None, History.in_memory(), model_name="scripted")
    session.last_sources = [Ranked(Passage("https://sejong.example/" + "a" * 40, "세종", LONG, 0), 0.5)]
    out = io.StringIO()
    run(session, stdin=io.StringIO("/출처\n"), out=Console(file=out, width=60), err=Console(file=io.StringIO(), width=60))
    lines = out.getvalue().rstrip("\n").split("\n")
    assert lines[0] == "[1] 0.5000  세종"
    assert all(line.startswith("    ") and line[4] != " " for line in lines[1:]), lines  # wrapped under the indent
    url_rows = [line for line in lines[1:] if "sejong.example" in line or set(line.strip()) == {"a"}]
    assert "".join(line.strip() for line in url_rows) == "https://sejong.example/" + "a" * 40
    passage = [line for line in lines[1:] if line not in url_rows]
    assert len(passage) >= 3, lines
    shown = " ".join(line.strip() for line in passage)
    assert shown.endswith("…") and len(shown) < len(LONG)
    cut = shown[:-1]
    assert LONG.startswith(cut) and LONG[len(cut)] == " ", "cut inside a word"


@pytest.mark.parametrize("text, limit, expected", [
    ("짧은 문장", 200, "짧은 문장"),
    ("가나다 라마바 사아자 차카타", 10, "가나다 라마바…"),
    ("가나다 라마바 사아자 차카타", 12, "가나다 라마바 사아자…"),
    ("가나다라마바사아자차카타파하", 6, "가나다라마바…"),  # one long word: cut inside it
    ("첫 줄\n둘째   줄", 200, "첫 줄 둘째 줄"),
    ("끝에 마침표. 다음 문장이 이어진다", 8, "끝에 마침표…"),
])
def test_cut_at_word(text, limit, expected):
    from korani_cli.chat.session import cut_at_word

    assert cut_at_word(text, limit) == expected
