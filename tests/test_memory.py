"""korani_cli/memory.py: what of a conversation stays when it outgrows the context window,
and the wall it moved for (search reaches into neither chat nor train)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from korani_cli import template
from korani_cli.backends import ModelInfo
from korani_cli.memory import fit, trim

S, U, A = "system", "user", "assistant"


def conversation(*turns: tuple[str, str]) -> list[template.Message]:
    return [template.Message(role, content) for role, content in turns]


def chars(text: str) -> int:  # one token a character: budgets below are in characters of the rendered prompt
    return len(text)


LONG = [
    (S, "너는 코라니야."),
    (U, "가" * 50),
    (A, "나" * 50),
    (U, "다" * 50),
    (A, "라" * 50),
    (U, "마지막 질문"),
]
WHOLE = len(template.render(conversation(*LONG), "<eos>"))
WITHOUT_FIRST = len(template.render(conversation(LONG[0], *LONG[3:]), "<eos>"))

TRIM = [
    # id, turns, budget → contents kept, exchanges dropped
    ("fits-whole", LONG, WHOLE, [t[1] for t in LONG], 0),
    (
        "oldest-exchange-goes-first",
        LONG,
        WHOLE - 1,
        ["너는 코라니야.", "다" * 50, "라" * 50, "마지막 질문"],
        1,
    ),
    (
        "exact-fit-after-one-drop",
        LONG,
        WITHOUT_FIRST,
        ["너는 코라니야.", "다" * 50, "라" * 50, "마지막 질문"],
        1,
    ),
    ("system-and-latest-always-stay", LONG, 1, ["너는 코라니야.", "마지막 질문"], 2),
    ("no-system-text", LONG[1:], 1, ["마지막 질문"], 2),
    ("one-exchange-is-never-dropped", [(U, "가" * 500)], 1, ["가" * 500], 0),
    (
        "an-answer-without-its-question-goes-with-the-oldest",
        [(A, "인사말"), (U, "질문"), (A, "답"), (U, "끝")],
        1,
        ["끝"],
        2,
    ),
]


@pytest.mark.parametrize("turns, budget, kept, dropped", [r[1:] for r in TRIM], ids=[r[0] for r in TRIM])
def test_trim(turns, budget, kept, dropped):
    messages, n = trim(conversation(*turns), chars, budget, "<eos>")
    assert [m.content for m in messages] == kept
    assert n == dropped


class Window:
    """A backend as far as fitting goes: a context length and a tokenizer (one token a character)."""

    def __init__(self, context_length):
        self.info = ModelInfo("window", "test", context_length, "korani")
        self.eos_text = "<eos>"

    def count_tokens(self, text: str) -> int:
        return len(text)


@pytest.mark.parametrize(
    "context_length, answer_room, dropped",
    [
        (None, 0, 0),  # a backend that does not know its window: nothing is trimmed
        (WHOLE + 100, 100, 0),
        (WHOLE + 100, 101, 1),  # the answer's room comes out of the window
        (10, 256, 2),  # a window smaller than the room: the latest exchange still goes in
    ],
)
def test_fit_uses_the_backends_window_less_the_answers_room(context_length, answer_room, dropped):
    messages, n = fit(conversation(*LONG), Window(context_length), answer_room)
    assert n == dropped and messages[-1].content == "마지막 질문" and messages[0].role == S


def _imports(path: Path) -> set[str]:
    """Every korani module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("korani_cli")}


SEARCH = sorted((Path(__file__).resolve().parents[1] / "korani_cli" / "search").glob("*.py"))


@pytest.mark.parametrize("path", SEARCH, ids=[p.name for p in SEARCH])
def test_search_imports_neither_chat_nor_train(path):
    walled = {name for name in _imports(path) if name.split(".")[1:2] in (["chat"], ["train"])}
    assert not walled, f"{path.name} imports {sorted(walled)}"
