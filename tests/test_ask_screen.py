"""What `korani ask` and the chat's own lines leave on a terminal's screen (issue 22 §8): ask's answer
wraps at word boundaries, as chat's does, and a footnote marker is never cut in two (`[` / `1]`) by the
terminal's own wrap; the chat's notices, errors and a resumed chat's last exchange wrap at words too.

`ask` runs on a real pty of a known width (tests/support.py's Terminal, drawn by pyte) against an
OpenAI-compatible server on 127.0.0.1 that streams a script a few characters at a time; the source is
a real local document, so the markers go through the footnote check as a user's do.
"""

from __future__ import annotations

import io

import pytest
from support import ScriptServer, Terminal

from korani_cli.console import WordWrap

pytest.importorskip("pyte", reason="pyte (a terminal emulator, in korani[dev]) draws the screen")

DOC = (
    "# 한라산\n\n한라산은 제주도 중앙에 있는 산으로, 높이는 1,947m이다. 남한에서 가장 높은 산이며 "
    "1970년에 국립공원으로 지정되었다.\n"
)
SCRIPT = (
    "한라산은 제주도 중앙에 있는 산으로 높이는 1,947m입니다[{한라산}]. 남한에서 가장 높은 산이며 "
    "1970년에 국립공원으로 지정되었습니다[{한라산}]."
)
SHOWN = SCRIPT.replace("{한라산}", "1")


@pytest.mark.slow
@pytest.mark.parametrize("cols", [40, 33, 29])
def test_ask_wraps_at_words_and_never_splits_a_footnote_marker(tmp_path, cols):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hallasan.md").write_text(DOC, encoding="utf-8")
    server = ScriptServer(SCRIPT)
    argv = ["ask", "--model", f"openai:scripted@{server.url}", "-t", "0", "--local-dir", str(docs)]
    term = Terminal([*argv, "--embedder", "none", "--", "한라산의 높이는?"], tmp_path / "home", cols, 24)
    try:
        assert term.wait_exit(60) == 0, term.text()
    finally:
        term.close()
        server.shutdown()
    lines = term.lines()
    answer = lines[: lines.index("")]
    assert len(answer) > 2, lines  # it did wrap
    # The same words as the answer, none cut: the terminal never had to fold a line itself.
    assert " ".join(answer).split() == SHOWN.split(), "\n".join(lines)
    assert not any(line.endswith("[") or line.lstrip().startswith(("]", "1]")) for line in answer)
    assert lines[lines.index("") + 1].startswith("[1] 한라산")


def test_word_wrap_counts_hangul_as_two_cells_and_keeps_markers_on_their_word():
    out = io.StringIO()
    wrap = WordWrap(out.write, 12)
    for piece in ("가나 다라마[", "1]. 바사 ", "아자차카[2]", ".\n\n끝"):
        wrap.feed(piece)  # chunks end anywhere, mid-word and mid-marker included
    wrap.finish()
    assert out.getvalue() == "가나\n다라마[1].\n바사\n아자차카[2].\n\n끝"
    out = io.StringIO()
    wrap = WordWrap(out.write, 5)
    wrap.feed("abcdefgh ij")  # a word wider than the terminal is written whole; the terminal folds it
    wrap.finish()
    assert out.getvalue() == "abcdefgh\nij"


@pytest.mark.slow
def test_the_chats_error_and_notice_lines_wrap_at_words_on_a_terminal(tmp_path, monkeypatch, scripted):
    """The chat printed its error lines as one soft-wrapped line: the terminal cut them mid-word
    (`your file` / `s`). On a terminal they wrap at words now; piped they stay one line each."""
    from support import REPO
    from typer.testing import CliRunner

    from korani_cli.cli import app

    monkeypatch.chdir(REPO)  # where the terminal's korani runs: the same relative path, the same line
    wanted = "./없는/모델/폴더"
    piped = CliRunner().invoke(app, ["chat", "--model", "scripted:demo"], input=f"/모델 {wanted}\n")
    error = [line for line in piped.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and len(error[0]) > 100, piped.stderr  # one line, longer than the screen

    server = ScriptServer("네.")
    term = Terminal(["chat", "--model", f"openai:scripted@{server.url}"], tmp_path / "home", 60, 30)
    try:
        assert term.pump(Terminal.at_prompt, 60), term.text()
        term.type(f"/모델 {wanted}\r")
        assert term.pump(lambda t: t.at_prompt(2), 60), term.text()
    finally:
        term.close()
        server.shutdown()
    lines = term.lines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("알림:", "나>")))
    shown = lines[start:end]
    assert len(shown) > 1 and all(len(line) <= 60 for line in shown), lines
    assert " ".join(shown).split() == error[0].split(), "\n".join(shown)  # no word cut in two


@pytest.mark.slow
def test_a_resumed_chats_last_exchange_wraps_at_words(tmp_path, home, scripted):
    from typer.testing import CliRunner

    from korani_cli.cli import app

    answer = SHOWN.replace("[1]", "")  # a plain answer, longer than two rows of the screen
    scripted.answers = [answer]
    first = CliRunner().invoke(app, ["chat", "--model", "scripted:demo"], input="한라산의 높이는?\n")
    assert first.exit_code == 0, first.output

    server = ScriptServer("네.")
    term = Terminal(["chat", "--continue", "--model", f"openai:scripted@{server.url}"], home, 50, 30)
    try:
        assert term.pump(Terminal.at_prompt, 60), term.text()
    finally:
        term.close()
        server.shutdown()
    lines = term.lines()
    start = lines.index("── 지난 대화의 마지막 ──")
    block = lines[start + 2 : lines.index("──", start)]  # after the question, the answer's rows
    assert len(block) > 1, lines
    assert " ".join(block).split() == answer.split(), "\n".join(lines)
