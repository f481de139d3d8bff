"""The answer layer (korani_cli/turn/layer.py) as the chat uses it: one memory rule for every turn,
and a /검색 turn that earlier answers cannot drown (issue 22, item 3).

The model is the registered `scripted` backend (tests/conftest.py), reached through
`korani chat --model scripted:NAME` as every model is; the local files, Kiwi and BM25 are real.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from korani_cli import template
from korani_cli.backends import ModelInfo
from korani_cli.cli import app

runner = CliRunner()

HALLASAN = "# 한라산\n\n한라산은 제주도 중앙에 있는 산으로, 높이는 1,947m이다. 남한에서 가장 높은 산이다.\n"


@pytest.fixture
def docs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hallasan.md").write_text(HALLASAN, encoding="utf-8")
    return docs


def chat(*args, input: str):
    return runner.invoke(app, ["chat", "--model", "scripted:x", *args], input=input)


def test_a_search_after_two_poor_plain_answers_is_answered_from_its_sources_alone(scripted, home, docs):
    scripted.answers = ["잘 모르겠어요.", "모르겠어요.", "한라산의 높이는 1,947m이다 [1]."]
    result = chat(
        "--local-dir", str(docs), "--embedder", "none",
        input="한라산 알아?\n높이는?\n/검색 한라산의 높이는 얼마인가요?\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sourced = scripted.prompts[-1]
    # The sourced prompt is the question with its sources: no earlier (poor) answer to copy.
    assert [m.role for m in sourced] == ["user"] and sourced[0].sources
    assert "모르겠어요" not in template.render(sourced, scripted.eos_text)
    assert "1,947m이다[1]" in result.stdout and "[1] 한라산 — " in result.stdout  # the footnote


def test_a_search_answer_no_sentence_of_which_is_supported_says_so_in_the_chat(scripted, home, docs):
    scripted.answers = ["잘 모르겠어요.", "달은 치즈로 만들어졌다 [1]."]
    result = chat(
        "--local-dir", str(docs), "--embedder", "none",
        input="한라산 알아?\n/검색 한라산의 높이는 얼마인가요?\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "달은 치즈로 만들어졌다." in result.stdout and "[1]" not in result.stdout
    notices = [line for line in result.stderr.splitlines() if "출처가 뒷받침하는 문장이 없어" in line]
    assert len(notices) == 1 and notices[0].startswith("알림:"), result.stderr


def test_chat_keeps_what_fits_beside_the_answers_own_room_not_a_fixed_256_tokens(scripted, home):
    # 480 "tokens" (characters) of context and 16 for the answer: the conversation below fits in
    # 480 - 16 but not in 480 - 256, so memory.py's rule keeps all of it where a fixed room of
    # 256 dropped the oldest exchanges.
    scripted.info = ModelInfo("scripted", "scripted", 480, "korani")
    scripted.answers = ["첫째 답은 조금 길게 씁니다, 기억이 넘치도록 말이지요."] * 3 + ["끝."]
    questions = ["첫째 질문은 무엇일까요 하나", "둘째 질문은 무엇일까요 둘", "셋째 질문은 무엇일까요", "넷째"]
    result = chat("-n", "16", input="".join(q + "\n" for q in questions))
    assert result.exit_code == 0, result.output
    last = scripted.prompts[-1]
    size = len(template.render(last, scripted.eos_text))
    assert 480 - 256 < size <= 480 - 16, size  # the case that tells the two rules apart
    assert [m.content for m in last if m.role == "user"] == questions
    assert "기억에서 뺐습니다" not in result.stderr
