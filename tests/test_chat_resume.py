"""Resuming a chat brings it back (issue 22 §4): the last exchange is shown, /출처 lists the sources
of the last sourced answer, and the chat's search flags (--local-dir, --provider, …) are kept with
the session, so /검색 after `--continue` searches where it searched before; a flag on the command
line wins, and the resume notice says so.

The model is the `scripted` backend (tests/conftest.py); the local documents, Kiwi, BM25 and the
SQLite history are real.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from korani_cli.cli import app

runner = CliRunner()

HALLASAN = "# 한라산\n\n한라산은 제주도 중앙에 있는 산으로, 높이는 1,947m이다.\n"
BUSAN = "# 부산\n\n부산은 대한민국 제2의 도시이며 항구 도시이다.\n"


@pytest.fixture
def docs(tmp_path):
    first, second = tmp_path / "docs", tmp_path / "other"
    first.mkdir()
    second.mkdir()
    (first / "hallasan.md").write_text(HALLASAN, encoding="utf-8")
    (second / "busan.md").write_text(BUSAN, encoding="utf-8")
    return first, second


def _chat(*args, input: str):
    argv = ["chat", "--model", "scripted:demo", "--embedder", "none", *args]
    result = runner.invoke(app, argv, input=input)
    assert result.exit_code == 0, result.output
    return result


def test_continue_shows_the_last_exchange_and_restores_sources_and_search_flags(scripted, home, docs):
    first, _ = docs
    scripted.answers = ["한라산의 높이는 1,947m이다 [1].", "성판악 탐방로가 있다 [1]."]
    _chat("--local-dir", str(first), input="/검색 한라산의 높이는?\n")

    resumed = _chat("--continue", input="/출처\n/검색 한라산 등산로는?\n")
    # The last exchange, with its footnote, is on the screen before the first prompt.
    assert "나> 한라산의 높이는?" in resumed.stderr
    assert "한라산의 높이는 1,947m이다[1]." in resumed.stderr
    assert "[1] 한라산 — " in resumed.stderr
    # /출처 lists the last sourced answer's passage, not "아직 출처가 없습니다".
    assert "아직 출처가 없습니다" not in resumed.stdout
    assert "[1]" in resumed.stdout and "한라산은 제주도 중앙에" in resumed.stdout
    # The session's --local-dir is kept: the second /검색 reads the same documents, and the notice says so.
    assert f"searching as before: --local-dir {first}" in resumed.stderr
    assert {s.title for s in scripted.prompts[-1][-1].sources} == {"한라산"}


def test_a_search_flag_on_the_command_line_wins_and_the_notice_says_so(scripted, home, docs):
    first, second = docs
    scripted.answers = ["한라산의 높이는 1,947m이다 [1].", "부산은 항구 도시이다 [1]."]
    _chat("--local-dir", str(first), input="/검색 한라산의 높이는?\n")
    resumed = _chat("--continue", "--local-dir", str(second), input="/검색 부산은 어떤 도시야?\n")
    assert f"--local-dir '{second}' replaces the session's '{first}'" in resumed.stderr
    assert {s.title for s in scripted.prompts[-1][-1].sources} == {"부산"}
