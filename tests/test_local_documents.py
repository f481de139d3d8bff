"""Local documents (issue 22): a .md/.txt file's footnote title is its first heading, its passages
do not start with the heading's `#` marks, and text piped to `korani ask` in CP949 (EUC-KR) is read
as `--local-dir` reads the same file.

The model is the `scripted` backend (tests/conftest.py), so what is asserted is what korani sends it
and prints; the files, Kiwi and BM25 are real.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from korani_cli.cli import app
from korani_cli.search.plaintext import title_and_text

runner = CliRunner()

HALLASAN = """# 한라산

한라산은 제주도 중앙에 있는 산으로, 높이는 1,947m이다. 남한에서 가장 높은 산이며 1970년에 \
국립공원으로 지정되었다.

## 등산로

한라산에는 성판악, 관음사, 어리목, 영실, 돈내코 등 다섯 개의 탐방로가 있다.
"""
JEJU = "제주도\n\n제주도는 대한민국에서 가장 큰 섬이다. 섬의 중앙에는 한라산이 있다.\n"


@pytest.mark.parametrize(
    "text, markdown, title, body",
    [
        (HALLASAN, True, "한라산", "한라산은 제주도"),
        (
            "---\ntitle: 사내 규정\n---\n# 연차\n\n연차는 **15일**이다.\n",
            True,
            "사내 규정",
            "연차\n\n연차는 15일이다.",
        ),
        ("소개가 먼저 온다.\n\n제목\n====\n\n본문.\n", True, "제목", "소개가 먼저 온다.\n\n본문."),
        (
            "소개 문단.\n\n## 절\n\n본문.\n",
            True,
            "",
            "소개 문단.\n\n절\n\n본문.",
        ),  # no heading leads, none is level 1
        (JEJU, False, "제주도", "제주도는 대한민국에서"),  # a plain note's short first line
        (
            "부산은 항구 도시이다.\n\n해운대가 유명하다.\n",
            False,
            "",
            "부산은 항구 도시이다.",
        ),  # a sentence is no title
        ("[링크](http://x.example) 와 ![그림](a.png), `a[1]`\n", True, "", "링크 와 그림, `a[1]`"),
        ("```\n# 코드 속 주석\n```\n본문\n", True, "", "```\n# 코드 속 주석\n```\n본문"),
    ],
    ids=["atx", "front-matter", "setext", "no-title", "plain-note", "plain-sentence", "links", "code"],
)
def test_a_documents_title_is_its_first_heading_and_leaves_the_text(text, markdown, title, body):
    got_title, got_body = title_and_text(text, markdown)
    assert got_title == title
    assert got_body.startswith(body)
    assert not any(line.startswith("#") for line in got_body.splitlines() if not line.startswith("# 코드"))


@pytest.fixture
def docs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hallasan.md").write_text(HALLASAN, encoding="utf-8")
    (docs / "jeju.txt").write_bytes(JEJU.encode("cp949"))
    return docs


def test_footnotes_and_passages_of_local_documents(scripted, home, docs):
    import json

    scripted.answers = ["한라산의 높이는 1,947m이다 [1]."]
    result = runner.invoke(
        app,
        ["ask", "--model", "scripted:demo", "--local-dir", str(docs), "--embedder", "none", "--json",
         "한라산의 높이는?"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [c["title"] for c in data["citations"]] == ["한라산"]
    assert {s["title"] for s in data["sources"]} == {"한라산", "제주도"}
    offered = {s.title: s.text for s in scripted.prompts[-1][-1].sources}
    assert offered["한라산"].startswith("한라산은 제주도 중앙에") and "#" not in offered["한라산"]
    assert offered["제주도"].startswith("제주도는 대한민국에서")  # the CP949 file, read as such


def test_cp949_text_piped_to_ask_is_read_as_korean(scripted, home, docs):
    result = runner.invoke(
        app, ["ask", "--model", "scripted:demo", "요약해 줘"], input=(docs / "jeju.txt").read_bytes()
    )
    assert result.exit_code == 0, result.output
    assert scripted.prompts[-1][-1].content == JEJU.strip() + "\n\n요약해 줘"
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("note: stdin is not UTF-8; it was read as CP949"), said


@pytest.mark.parametrize(
    "data",
    ["こんにちは、世界。日本語のテキストです。".encode("shift_jis"), b"\x82\xa0\x82\xa2 kana"],
    ids=["shift-jis", "kana-that-cp949-reads-as-rare-hangul"],
)
def test_other_encodings_on_stdin_are_refused_with_the_iconv_line(scripted, home, data):
    result = runner.invoke(app, ["ask", "--model", "scripted:demo", "요약해 줘"], input=data)
    assert result.exit_code == 2, result.output
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("error: stdin is not UTF-8 text (byte 0x")
    assert "iconv -f ENCODING -t UTF-8" in said[0] and not scripted.prompts
