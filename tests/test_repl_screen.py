"""What `korani chat` leaves on a terminal's screen (issue 12, "Ctrl-C and the screen").

The chat runs on a real pty of a known size; its bytes are fed to pyte, a
VT100 emulator, and the tests compare the screen a person would see
(scrollback included). The model is an OpenAI-compatible server on 127.0.0.1
(tests/support.py's ScriptServer) that streams a script and holds the rest back at a
known point, so Ctrl-C lands at a known place in the answer.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from support import ScriptServer, Terminal, chat_session

pyte = pytest.importorskip(
    "pyte", reason="pyte (a terminal emulator, in korani[dev]) draws the screen these tests compare"
)

MARKER = "(답변을 멈췄습니다)"
STORY = "".join(f"{i}번째 줄입니다. 이야기가 계속 이어집니다.\n" for i in range(1, 41))


@pytest.fixture
def chat_with(tmp_path):
    """Start `korani chat` against a ScriptServer answering `script`; yields (terminal, server)."""
    opened: list = []

    def start(script: str, hold: str | None = None, cols: int = 80, rows: int = 24, extra: tuple = ()):
        server = ScriptServer(script, hold=hold)
        term = Terminal(
            ["chat", "--model", f"openai:scripted@{server.url}", "-t", "0", *extra],
            tmp_path / "home",
            cols,
            rows,
        )
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
        assert after[: len(before) - 1] == before[:-1] or after[-3] == before[-1]
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
    assert lines[start : start + 7] == [
        "세종의 업적",
        "",
        "훈민정음을 만들었다.",
        "",
        "더 보기",
        "",
        "1446년에 반포하였다.",
    ]


@pytest.mark.slow
def test_blocks_streamed_one_by_one_look_like_the_whole_answer(chat_with):
    answer = "## 세종\n\n- 항목 하나.\n- 항목 둘\n\n1. 첫째\n\n2. 둘째\n\n끝 문단입니다.\n"
    term, _ = chat_with(answer)
    term.type("세종은?\r")
    assert term.pump(lambda t: t.at_prompt(2)), term.text()
    term.settle()
    lines = term.lines()
    start = lines.index("세종")
    assert lines[start : lines.index("나>", start)] == [
        "세종",
        "",
        " • 항목 하나.",
        " • 항목 둘",
        "",
        " 1 첫째",
        "",
        " 2 둘째",
        "",
        "끝 문단입니다.",
    ], lines


# -- /출처 ----------------------------------------------------------------------------

LONG = ("훈민정음은 조선의 네 번째 왕인 세종이 1443년에 창제하고 1446년에 반포한 문자이다. " * 6).strip()


def test_sources_wrap_under_their_indent_and_a_cut_passage_ends_at_a_word():
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.search.types import Passage, Ranked

    session = chat_session(History.in_memory())
    session.last_sources = [Ranked(Passage("https://sejong.example/" + "a" * 40, "세종", LONG, 0), 0.5)]
    out = io.StringIO()
    run(
        session,
        stdin=io.StringIO("/출처\n"),
        out=Console(file=out, width=60),
        err=Console(file=io.StringIO(), width=60),
    )
    lines = out.getvalue().rstrip("\n").split("\n")
    assert lines[0] == "[1] 0.5000  세종"
    assert all(line.startswith("    ") and line[4] != " " for line in lines[1:]), (
        lines
    )  # wrapped under the indent
    url_rows = [line for line in lines[1:] if "sejong.example" in line or set(line.strip()) == {"a"}]
    assert "".join(line.strip() for line in url_rows) == "https://sejong.example/" + "a" * 40
    passage = [line for line in lines[1:] if line not in url_rows]
    assert len(passage) >= 3, lines
    shown = " ".join(line.strip() for line in passage)
    assert shown.endswith("…") and len(shown) < len(LONG)
    cut = shown[:-1]
    assert LONG.startswith(cut) and LONG[len(cut)] == " ", "cut inside a word"


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("짧은 문장", 200, "짧은 문장"),
        ("가나다 라마바 사아자 차카타", 10, "가나다 라마바…"),
        ("가나다 라마바 사아자 차카타", 12, "가나다 라마바 사아자…"),
        ("가나다라마바사아자차카타파하", 6, "가나다라마바…"),  # one long word: cut inside it
        ("첫 줄\n둘째   줄", 200, "첫 줄 둘째 줄"),
        ("끝에 마침표. 다음 문장이 이어진다", 8, "끝에 마침표…"),
    ],
)
def test_cut_at_word(text, limit, expected):
    from korani_cli.chat.session import cut_at_word

    assert cut_at_word(text, limit) == expected
