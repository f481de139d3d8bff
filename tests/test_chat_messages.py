"""Messages (issue 22 §8): one language per line in the chat, "the network is unreachable" when no
provider could be reached, one refusal line with a count instead of eight of the same, fixes said with
the chat's own commands inside the chat, an aligned `history list` and `history show last`.

Only loopback servers are dialled: the search engines live behind the stub network of
test_hostile_net (no name resolves, no packet leaves), the result pages on a loopback Site.
"""

from __future__ import annotations

import json

import pytest
from support import Site
from test_hostile_net import OTHER, Net
from typer.testing import CliRunner

from korani_cli.cli import app

runner = CliRunner()


@pytest.fixture
def offline_net(monkeypatch):
    """A machine whose network is down: the search engines' names lead to an address no packet
    reaches (the stub refuses the dial as a real connect() would: httpcore.ConnectError)."""
    stub = Net(monkeypatch)
    for name in ("html.duckduckgo.com", "www.google.com"):
        stub.name(name, [OTHER])
    yield stub
    assert not stub.escapes, stub.escapes


def test_search_without_a_network_says_the_network_is_unreachable(offline_net, home):
    result = runner.invoke(app, ["search", "서울 인구", "--embedder", "none"])
    assert result.exit_code == 7, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "the network is unreachable (duckduckgo, google could not be reached)" in last
    assert "no search results" not in result.stderr and "--offline" in last
    assert {ip for ip, _ in offline_net.dials} == {OTHER}  # the stub was asked; no packet left


def test_chat_without_a_network_speaks_korean_and_names_what_the_chat_can_do(offline_net, home, scripted):
    result = runner.invoke(
        app, ["chat", "--model", "scripted:demo", "--embedder", "none"], input="/검색 서울 인구\n"
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    notices = [line for line in lines if line.startswith("알림:")]
    assert notices and all("trying the next provider" not in line for line in notices), lines
    assert "알림: duckduckgo에 연결할 수 없습니다 (ConnectError) — 다음 검색 엔진으로" in lines
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and "the network is unreachable" in error[0]
    assert "restart with korani chat --local-dir DIR" in error[0] and scripted.prompts == []


@pytest.fixture
def loopback_results():
    """A SearXNG on loopback whose eight results are pages on loopback too (refused without
    --allow-private)."""
    pages = Site({})
    serp = Site({})
    urls = [f"{pages.base}/p{i}.html" for i in range(8)]
    serp.routes["/search"] = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"results": [{"url": u, "title": "t", "content": ""} for u in urls]}).encode(),
    )
    yield serp
    serp.close()
    pages.close()


def test_eight_pages_refused_for_one_reason_are_one_line_with_a_count(home, loopback_results):
    args = ["search", "부산", "-p", "searxng", "--searxng-url", loopback_results.base, "--embedder", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 7, result.output
    refused = [line for line in result.stderr.splitlines() if "loopback address" in line]
    assert len(refused) == 1, result.stderr
    assert refused[0].startswith("note: skipped 8 pages (http://127.0.0.1:")
    assert "--allow-private" in refused[0]


def test_the_chat_says_the_refusal_once_in_korean(home, scripted, loopback_results):
    args = ["chat", "--model", "scripted:demo", "-p", "searxng", "--searxng-url", loopback_results.base]
    result = runner.invoke(app, [*args, "--embedder", "none"], input="/검색 부산\n")
    refused = [line for line in result.stderr.splitlines() if "건너뜀" in line]
    assert len(refused) == 1 and refused[0].startswith("알림: 페이지 8개 건너뜀 ("), result.stderr
    # All of it Korean: the reason too, and the fix is how to restart the chat (no flag can be given in it).
    assert refused[0].endswith(
        "등): 루프백 주소(127.0.0.1)는 읽지 않습니다 — 믿을 수 있는 망이면 korani chat --allow-private 로 "
        "다시 시작하세요"
    ), refused[0]
    assert "refused" not in refused[0] and "address" not in refused[0]


@pytest.mark.parametrize(
    "reason, korean",
    [
        (
            "refused: 10.0.0.7 is a private address; pass --allow-private for trusted networks",
            "사설 주소(10.0.0.7)는 읽지 않습니다 — 믿을 수 있는 망이면 korani chat --allow-private 로 "
            "다시 시작하세요",
        ),
        (
            "refused: intranet.example resolves to 192.168.1.2, a private address; pass --allow-private for "
            "trusted networks",
            "사설 주소(intranet.example(192.168.1.2))는 읽지 않습니다 — 믿을 수 있는 망이면 korani chat "
            "--allow-private 로 다시 시작하세요",
        ),
        ("timed out after 8 s", "8초 안에 응답이 없음"),
        ("past the 20 s deadline", "검색 제한 시간 20초를 넘김"),
        ("HTTP 404", "HTTP 404 응답"),
        ("no readable text", "읽을 수 있는 글이 없음"),
        ("not in the cache (--offline)", "캐시에 없음 (--offline)"),
        ("ReadError: connection reset", "읽지 못함 (ReadError: connection reset)"),
    ],
    ids=["private", "resolves-to", "timeout", "deadline", "http", "no-text", "offline", "other"],
)
def test_a_skipped_pages_reason_is_said_in_korean_in_the_chat(reason, korean):
    from korani_cli.search.pipeline import ko_reason

    assert ko_reason(reason) == korean


def test_a_model_that_cannot_load_in_the_chat_suggests_the_chat_command(home, scripted, tmp_path):
    result = runner.invoke(
        app, ["chat", "--model", "scripted:demo"], input=f"/모델 {tmp_path / 'no-such-model'}\n"
    )
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no such model file or directory" in error[0], result.stderr
    assert "/모델 demo" in error[0] and "--model" not in error[0]


def test_history_list_aligns_its_columns_and_show_takes_last(home, scripted):
    scripted.answers = ["답."]
    for name, said in (("scripted:a", "첫 질문"), ("scripted:a-much-longer-name", "둘째 질문")):
        assert runner.invoke(app, ["chat", "--model", name], input=said + "\n").exit_code == 0
    rows = runner.invoke(app, ["history", "list"]).stdout.splitlines()
    assert len(rows) == 2
    assert rows[0].index(" messages") == rows[1].index(" messages")  # the questions start in one column
    last = runner.invoke(app, ["history", "show", "last"])
    assert last.exit_code == 0, last.output
    assert "둘째 질문" in last.stdout and "첫 질문" not in last.stdout
    assert runner.invoke(app, ["history", "rm", "last"]).exit_code == 2  # a deletion names its session
