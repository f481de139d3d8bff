"""search/query.py: a chat's follow-up question becomes a query that stands on its own.

Each row: the question, the previous query, what the model answers when asked
for a rewrite (None: no model at hand) → the query searched, and whether the
model was asked at all.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from support import chat_session

from korani_cli import template
from korani_cli.backends import Generation, ModelInfo
from korani_cli.errors import GenerationError
from korani_cli.search.query import is_follow_up, model_rewrite, rewrite_query, standalone

Q = "그럼 그 사람은 몇 살이야?"
PREV = "손흥민 소속팀"
GLUED = f"{PREV} {Q}"  # the deterministic rewrite


class Says:
    """A stand-in for the chat's model: answers a rewrite request with fixed text (or fails),
    records the prompts."""

    def __init__(self, *answers: str | Exception):
        self.answers = list(answers)
        self.prompts: list[list[template.Message]] = []
        self.info = ModelInfo("says", "test", 4096, "korani")

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, messages, params):
        self.prompts.append(list(messages))
        answer = self.answers.pop(0)

        def run(usage):
            if isinstance(answer, Exception):
                raise answer
            yield answer

        return Generation(run)


STANDALONE = [
    # id, question, previous, the model says, expected query, model asked
    ("no-previous-query", Q, None, "손흥민 나이", Q, False),
    (
        "a-question-of-its-own",
        "한라산의 높이는 얼마인가요?",
        "손흥민",
        "손흥민 나이",
        "한라산의 높이는 얼마인가요?",
        False,
    ),
    ("opens-like-a-follow-up", Q, PREV, "손흥민 나이", "손흥민 나이", True),
    ("short-is-a-follow-up", "나이는?", PREV, "손흥민 나이", "손흥민 나이", True),
    (
        "opens-with-거기",
        "거기 날씨는 오늘 어떤지 알려 주세요",
        "제주도 여행",
        "제주도 날씨",
        "제주도 날씨",
        True,
    ),
    ("first-line-without-quotes", Q, PREV, '"손흥민 나이"\n이렇게 검색하세요', "손흥민 나이", True),
    ("no-model-at-hand", Q, PREV, None, GLUED, False),
    ("template-text", Q, PREV, "### User 무엇이든", GLUED, True),
    ("echoes-the-prompt", Q, PREV, f"이전 검색어: {PREV}", GLUED, True),  # what the demo model answers
    ("echoes-the-question-label", Q, PREV, "새 질문: 손흥민 나이", GLUED, True),
    ("a-footnote-marker", Q, PREV, "손흥민 [1] 나이", GLUED, True),
    ("unrelated-words", Q, PREV, "오늘 날씨 맑음 서울 비 소식 여행 추천", GLUED, True),
    ("the-subject-among-new-words", Q, PREV, "손흥민 오늘 날씨 맑음 서울 여행 추천", GLUED, True),
    ("drops-the-subject", Q, PREV, "사람 나이", GLUED, True),
    ("too-long", Q, PREV, "손흥민 " * 30, GLUED, True),
    ("one-character", Q, PREV, "손", GLUED, True),
    ("nothing", Q, PREV, "", GLUED, True),
    ("generation-fails", Q, PREV, GenerationError("the server went away", "retry"), GLUED, True),
]


@pytest.mark.parametrize(
    "question, previous, says, expected, asked", [r[1:] for r in STANDALONE], ids=[r[0] for r in STANDALONE]
)
def test_standalone_query(question, previous, says, expected, asked):
    backend = Says(says) if says is not None else None
    assert standalone(question, previous, backend) == expected
    if backend is not None:
        assert len(backend.prompts) == (1 if asked else 0)
    if asked:
        prompt = backend.prompts[0][-1].content
        assert f"이전 검색어: {previous}" in prompt and f"새 질문: {question}" in prompt


@pytest.mark.parametrize(
    "question, previous, expected",
    [
        (Q, PREV, True),
        ("이건 얼마나 오래 걸리는 일인가요 정말로?", PREV, True),  # long, but opens with 이건
        ("짧은 질문", PREV, True),  # under 12 characters
        ("한라산의 높이는 얼마인가요?", PREV, False),
        (Q, None, False),
        (Q, "", False),
    ],
)
def test_is_follow_up(question, previous, expected):
    assert is_follow_up(question, previous) is expected


def test_rewrite_query_carries_the_previous_query_only_for_a_follow_up():
    assert rewrite_query(Q, PREV) == GLUED
    assert rewrite_query("한라산의 높이는 얼마인가요?", PREV) == "한라산의 높이는 얼마인가요?"


def test_model_rewrite_says_none_rather_than_a_bad_query():
    assert model_rewrite(Says("### Bot"), Q, PREV) is None
    assert model_rewrite(Says("손흥민 나이"), Q, PREV) == "손흥민 나이"


@pytest.mark.slow
def test_the_chat_searches_the_rewritten_follow_up(tmp_path, monkeypatch):
    """/검색 twice in a chat: the second, a follow-up, is searched as the model's standalone rewrite."""
    from korani_cli.chat.history import History
    from korani_cli.chat.repl import run
    from korani_cli.search.pipeline import SearchOptions

    monkeypatch.setenv("KORANI_HOME", str(tmp_path / "home"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "sejong.md").write_text(
        "# 세종대왕\n\n세종대왕은 1443년에 훈민정음을 만들었다. 세종대왕은 조선의 네 번째 왕이다.\n",
        encoding="utf-8",
    )
    backend = Says(
        "세종대왕은 조선의 네 번째 왕이다 [1].",
        "세종대왕 무엇을 만들었나",
        "세종대왕은 훈민정음을 만들었다 [1].",
    )
    opts = SearchOptions(providers=("local",), local_dir=docs, embedder="none", use_cache=False)
    session = chat_session(History(tmp_path / "h.sqlite"), backend, model_name="says", search_options=opts)
    out, err = io.StringIO(), io.StringIO()
    run(
        session,
        stdin=io.StringIO("/검색 세종대왕\n/검색 그럼 그분은 무엇을 만들었어?\n"),
        out=Console(file=out, width=100),
        err=Console(file=err, width=100),
    )
    assert "검색어: 세종대왕 무엇을 만들었나" in err.getvalue(), err.getvalue()
    assert "이전 검색어: 세종대왕" in backend.prompts[1][-1].content
    assert "훈민정음을 만들었다[1]" in out.getvalue(), (out.getvalue(), err.getvalue())
    assert session.last_query == "세종대왕 무엇을 만들었나"
