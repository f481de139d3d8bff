"""korani against a real OpenAI-compatible server (issue 21, section 3): llama-cpp-python's own
`llama_cpp.server` on 127.0.0.1 serving the SmolLM2 demo GGUF (conftest's `openai_server`, one
for the session; it answers one request at a time). `ask` through completions (the KoRani
template) and chat completions (`--template model`), streamed on a pty and whole with --json;
`ask --search --local-dir`; `chat` with a plain turn, /검색 and /다시; `eval rag -n 5`.

What is asserted is what a user sees: the exit code, the answer on the screen and in --json
(greedy, so the streamed and the whole answer are the same text), the history rows, the eval
summary. The tiny model's Korean is poor; no test judges it."""

from __future__ import annotations

import json
import sqlite3

import pytest
from support import Terminal, run_korani

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GREEDY = ["--temperature", "0", "--seed", "1", "--max-new-tokens", "12"]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    (root / "sejong.md").write_text(
        "# 세종\n\n세종은 1443년에 훈민정음을 창제하였다. 세종은 조선의 네 번째 왕이다.\n", encoding="utf-8"
    )
    (root / "busan.md").write_text(
        "# 부산\n\n부산은 대한민국 제2의 도시이며 큰 항구가 있다.\n", encoding="utf-8"
    )
    return root


def model(url: str) -> list[str]:
    return ["--model", f"openai:@{url}"]  # no name: the one model the server lists


@pytest.fixture(scope="module", params=["korani", "model"], ids=["completions", "chat-completions"])
def whole(request, openai_server, tmp_path_factory):
    """`ask --json` with stdout a pipe: the answer asked for whole."""
    home = tmp_path_factory.mktemp("home")
    proc = run_korani(
        "ask",
        *model(openai_server),
        "--template",
        request.param,
        *GREEDY,
        "--json",
        QUESTION,
        env={"KORANI_HOME": str(home)},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return request.param, json.loads(proc.stdout)


def test_ask_whole_with_json(whole):
    _, data = whole
    assert data["backend"] == "openai" and data["answer"].strip()
    # Whole answers carry the server's own usage; when it made its first token is not known.
    assert isinstance(data["prompt_tokens"], int) and data["prompt_tokens"] > 0
    assert 0 < data["completion_tokens"] <= 12 and data["finish_reason"] in ("eos", "stop", "length")
    assert data["timings"]["first_token_s"] is None


def test_ask_streamed_on_a_terminal_shows_the_same_answer(whole, openai_server, tmp_path):
    pytest.importorskip("pyte", reason="pyte draws the screen this test reads")
    template, data = whole
    term = Terminal(
        ["ask", *model(openai_server), "--template", template, *GREEDY, QUESTION], tmp_path / "home", cols=200
    )
    try:
        assert term.wait_exit(240) == 0, term.text()
    finally:
        term.close()
    screen = term.text()
    assert "Traceback" not in screen and "error:" not in screen, screen
    for line in data["answer"].splitlines():
        assert line.strip() in screen, (line, screen)


def test_ask_search_over_a_local_directory(openai_server, pages, tmp_path):
    proc = run_korani(
        "ask",
        *model(openai_server),
        *GREEDY,
        "--search",
        "--local-dir",
        str(pages),
        "--embedder",
        "none",
        "--json",
        "세종은 무엇을 창제했나요?",
        env={"KORANI_HOME": str(tmp_path / "home")},
        timeout=240,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert data["search"]["provider"] == "local" and data["backend"] == "openai"
    assert any(s["url"].endswith("sejong.md") for s in data["sources"]), data["sources"]
    assert data["completion_tokens"] and data["finish_reason"] in ("eos", "stop", "length")


def test_chat_search_a_plain_turn_and_retry(openai_server, pages, tmp_path):
    home = tmp_path / "home"
    proc = run_korani(
        "chat",
        *model(openai_server),
        "--template",
        "model",  # SmolLM2's own chat template: the KoRani one makes it echo the prompt
        *GREEDY[:4],
        "-n",
        "12",
        "--local-dir",
        str(pages),
        "--embedder",
        "none",
        env={"KORANI_HOME": str(home)},
        input="/검색 세종은 무엇을 창제했나요?\n/출처\n안녕하세요\n/다시\n",
        timeout=240,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr
    assert "sejong.md" in proc.stdout  # /출처: the /검색 answer was given the local page
    rows = (
        sqlite3.connect(home / "data" / "history.sqlite")
        .execute("SELECT role, content FROM messages ORDER BY id")
        .fetchall()
    )
    assert [c for role, c in rows if role == "user"] == ["세종은 무엇을 창제했나요?", "안녕하세요"], rows
    # /다시 replaced the plain turn's answer; greedy, so with the same text.
    (replaced, old), (last, new) = rows[-2:]
    assert (replaced, last) == ("replaced", "assistant") and old.strip() and old == new, rows
    assert proc.stdout.count(new.strip()) == 2, proc.stdout


KORQUAD = {
    "세종대왕": "세종대왕은 조선의 제4대 왕이다. 세종대왕은 1443년에 훈민정음을 창제하였다.",
    "한라산": "한라산은 제주도 중앙에 있는 산이다. 한라산의 높이는 1947미터이다.",
    "부산": "부산은 대한민국 제2의 도시이다. 부산항은 대한민국 최대의 무역항이다.",
    "김치": "김치는 배추를 소금에 절여 양념한 한국의 발효 음식이다.",
    "이순신": "이순신은 조선 중기의 무신이다. 이순신은 1592년 한산도 대첩에서 승리하였다.",
}
GOLD = {"세종대왕": "1443년", "한라산": "1947미터", "부산": "부산항", "김치": "배추", "이순신": "1592년"}


def test_eval_rag_against_the_server(openai_server, tmp_path):
    data = [
        {
            "title": title,
            "paragraphs": [
                {
                    "context": text,
                    "qas": [
                        {
                            "id": title,
                            "question": f"{title}에 대해 알려진 것은?",
                            "answers": [{"text": GOLD[title], "answer_start": text.find(GOLD[title])}],
                        }
                    ],
                }
            ],
        }
        for title, text in KORQUAD.items()
    ]
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"version": "KorQuAD_v1.0_dev", "data": data}, ensure_ascii=False), "utf-8")
    proc = run_korani(
        "eval",
        "rag",
        *model(openai_server),
        "--set",
        str(path),
        "--limit",
        "5",
        "--top-k",
        "1",
        "--embedder",
        "none",
        "--max-new-tokens",
        "8",
        "-o",
        str(tmp_path / "run"),
        "--json",
        env={"KORANI_HOME": str(tmp_path / "home")},
        timeout=240,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["items"] == 5 and summary["model"]["backend"] == "openai"
    # Every request streamed: every item has its first token and first sentence, every p50 is over
    # the same five items, so they come in order.
    timings = summary["timings"]
    assert {t["n"] for t in timings.values()} == {5}, timings
    assert timings["first_token_s"]["p50"] <= timings["first_sentence_s"]["p50"] <= timings["total_s"]["p50"]
    records = [
        json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text("utf-8").splitlines()
    ]
    for r in records:
        assert r["timings"]["first_token_s"] <= r["timings"]["first_sentence_s"] <= r["timings"]["total_s"]
        # This server ignores stream_options.include_usage: the prompt's tokens stay unknown, never guessed.
        assert r["usage"]["prompt_tokens"] is None and r["usage"]["finish_reason"] in (
            "eos",
            "stop",
            "length",
        )
