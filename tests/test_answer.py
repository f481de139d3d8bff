"""The RAG answer core (rag/answer.py, search/segment.py): streamed sentence by
sentence, never showing a marker before it is checked, with the model's Markdown kept.

Unit rows run the core on a scripted backend; the end-to-end tests drive
`korani ask --search` and chat's /검색 through a real pty against an
OpenAI-compatible server on 127.0.0.1 that answers from a script and holds the
rest of the answer back until the first sentence is on the screen.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import sys
import time

import pytest
from support import SEJONG, ScriptedBackend, ScriptServer

from korani_cli.backends import GenerationParams
from korani_cli.search.types import Passage, Ranked
from korani_cli.template import Message

BANPO = ("https://banpo.example", "반포", "훈민정음은 1446년에 반포되었다. 반포를 기념하는 날이 한글날이다.")
PARTHIA = (
    "https://parthia.example",
    "파르티아",
    "파르티아는 고대 이란의 왕국이다. 파르티아인은 기마 궁수로 유명했다.",
)


def _ranked(*pages):
    return [Ranked(Passage(url, title, text, 0), 1.0 - i / 10) for i, (url, title, text) in enumerate(pages)]


# -- segmentation -------------------------------------------------------------------------

ANSWERS = [
    "서울은 수도다. 부산은 항구다 [1]. 대구는 [2] 덥다.[3] 끝",
    "## 세종\n\n- 항목 하나. 둘째 문장[1].\n- 항목 둘\n\n```python\nx = a[1]. b\n```\n1. 번호 "
    "항목입니다.[2]\n\n| a | b |\n|---|---|\n",
    "질문: 무엇인가?\n다음 자료를 참고해서 질문에 한국어로 답하세요.\n답은 이것이다. [1] 그리고 저것.  \n\n",
    "  \n서울은 수도다. [1]",
    "> 인용문입니다. 둘째.\n   1) 들여쓴 항목\n~~~\n코드 [1]\n~~~\n끝? 정말! 네…",
    "`a[1]`은 배열이다. 값은 1.5이다[1].",
]


@pytest.mark.parametrize("text", ANSWERS)
def test_pieces_do_not_depend_on_how_the_answer_was_chunked(text):
    from korani_cli.rag.segment import Segmenter, split

    echo = ["질문:", "다음 자료를 참고"]
    whole = split(text, echo)
    rng = random.Random(0)
    for _ in range(100):
        seg, out, i = Segmenter(echo), [], 0
        while i < len(text):
            j = i + rng.randint(1, 5)
            out += seg.feed(text[i:j])
            i = j
        assert out + seg.finish() == whole
    shown = "".join(p.text for p in whole)
    if not text.startswith("질문"):
        assert shown == text.strip(), "nothing but leading/trailing white space is lost"


def test_pieces_know_code_headings_and_rows():
    from korani_cli.rag.segment import split

    pieces = split(ANSWERS[1])
    kinds = {p.text: p.kind for p in pieces}
    assert kinds["세종"] == "heading" and kinds["| a | b |"] == "row"
    assert kinds["x = a[1]. b\n"] == "verbatim"  # inside a fence: never a sentence
    assert kinds["항목 하나."] == kinds["둘째 문장[1]."] == kinds["번호 항목입니다.[2]"] == "sentence"
    assert kinds["- "] == kinds["1. "] == "verbatim"


# -- the check keeps Markdown ---------------------------------------------------------------

MARKDOWN = [
    # id, pages, model's answer, shown answer, footnote URLs
    (
        "list items keep their lines and markers where written",
        (BANPO, SEJONG),
        "## 세종\n\n- 세종은 1443년에 훈민정음을 창제하였다[2].\n- 훈민정음은 1446년에 반포되었다 [1][9].\n\n"
        "```python\nprint(a[1])\n```\n\n1. 파르티아는 고대 이란의 왕국이다[1].\n",
        "## 세종\n\n- 세종은 1443년에 훈민정음을 창제하였다[1].\n- 훈민정음은 1446년에 반포되었다[2].\n\n"
        "```python\nprint(a[1])\n```\n\n1. 파르티아는 고대 이란의 왕국이다.",
        ["https://sejong.example", "https://banpo.example"],
    ),
    (
        "a marker after the period stays after it",
        (SEJONG,),
        "세종은 1443년에 훈민정음을 창제하였다. [1] 끝.",
        "세종은 1443년에 훈민정음을 창제하였다.[1] 끝.",
        ["https://sejong.example"],
    ),
    (
        "paragraphs stay paragraphs",
        (SEJONG, BANPO),
        "세종은 1443년에 훈민정음을 창제하였다[1].\n\n훈민정음은 1446년에 반포되었다[2].",
        "세종은 1443년에 훈민정음을 창제하였다[1].\n\n훈민정음은 1446년에 반포되었다[2].",
        ["https://sejong.example", "https://banpo.example"],
    ),
    (
        "echoed instruction and question lines are hidden",
        (SEJONG,),
        "다음 자료를 참고해서 질문에 한국어로 답하세요.\n질문: 세종은 무엇을 했나요?\n세종은 1443년에 "
        "훈민정음을 창제하였다[1].",
        "세종은 1443년에 훈민정음을 창제하였다[1].",
        ["https://sejong.example"],
    ),
    (
        "an echoed source header is hidden",
        (SEJONG,),
        "[1] 세종 (https://sejong.example)\n세종은 1443년에 훈민정음을 창제하였다[1].",
        "세종은 1443년에 훈민정음을 창제하였다[1].",
        ["https://sejong.example"],
    ),
    (
        # The demo model at a length limit: "[1] [주간 뉴스타파] 부모를 빼앗긴 아기들, 해외 입양
        # 비즈니스의 그" was shown as an answer sentence (its "[1]" taken for a footnote).
        "an echoed source header cut off by the length limit is hidden",
        (SEJONG,),
        "세종은 1443년에 훈민정음을 창제하였다[1].\n[1] 세",
        "세종은 1443년에 훈민정음을 창제하였다[1].",
        ["https://sejong.example"],
    ),
    (
        "an echoed instruction cut off by the length limit is hidden",
        (SEJONG,),
        "세종은 1443년에 훈민정음을 창제하였다[1].\n다음 자료를",
        "세종은 1443년에 훈민정음을 창제하였다[1].",
        ["https://sejong.example"],
    ),
    (
        "a last line that only starts like an echo and went past it is kept",
        (SEJONG,),
        "세종은 1443년에 훈민정음을 창제하였다[1].\n질문이 좋네요",
        "세종은 1443년에 훈민정음을 창제하였다[1].\n질문이 좋네요",
        ["https://sejong.example"],
    ),
    (
        "a line that only starts like the question label is kept",
        (SEJONG,),
        "질문이 좋네요.\n세종은 1443년에 훈민정음을 창제하였다[1].",
        "질문이 좋네요.\n세종은 1443년에 훈민정음을 창제하였다[1].",
        ["https://sejong.example"],
    ),
    (
        "an index in inline code is not a footnote",
        (SEJONG,),
        "배열 `a[1]`을 보세요. 세종은 1443년에 훈민정음을 창제하였다.",
        "배열 `a[1]`을 보세요. 세종은 1443년에 훈민정음을 창제하였다.[1]",
        ["https://sejong.example"],
    ),
    (
        "a paragraph behind a stray heading mark is checked as prose",
        (SEJONG,),
        "# 세종 세종은 1443년에 훈민정음을 창제하였다. 그리고 이 문장은 아주 길어서 제목일 수가 없습니다",
        "# 세종 세종은 1443년에 훈민정음을 창제하였다.[1] 그리고 이 문장은 아주 길어서 제목일 수가 없습니다",
        ["https://sejong.example"],
    ),
    (
        "a heading gets no footnote of its own",
        (SEJONG,),
        "# 세종은 1443년에 훈민정음을 창제하였다\n\n본문입니다.",
        "# 세종은 1443년에 훈민정음을 창제하였다\n\n본문입니다.",
        [],
    ),
]


@pytest.mark.parametrize("pages,answer,shown,urls", [c[1:] for c in MARKDOWN], ids=[c[0] for c in MARKDOWN])
def test_markdown_survives_the_check(pages, answer, shown, urls):
    from korani_cli.rag.answer import verify

    out = verify(answer, _ranked(*pages))
    assert out.text == shown
    assert [c.url for c in out.citations] == urls


# -- the core, streamed -----------------------------------------------------------------------


def _run(backend, ranked, **kw):
    from korani_cli.rag.answer import stream

    return list(stream(backend, "세종은 무엇을 했나요?", ranked, GenerationParams(max_new_tokens=64), **kw))


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_stream_shows_only_checked_text_and_ends_with_what_verify_gives(chunk):
    from korani_cli.rag.answer import Done, Footnotes, Sentence, Text, verify

    raw = MARKDOWN[0][2]
    ranked = _ranked(BANPO, SEJONG)
    backend = ScriptedBackend([raw], chunk=chunk)
    events = _run(backend, ranked)
    texts = [e.text for e in events if isinstance(e, Text)]
    done = events[-1]
    assert isinstance(done, Done) and done.raw.rstrip() == raw.rstrip()  # StopFilter keeps no final newline
    final = verify(raw, ranked).text
    assert "".join(texts) == final == done.answer.text
    shown = ""
    for text in texts:  # every prefix on the screen is a prefix of the checked answer
        shown += text
        assert final.startswith(shown)
    assert "[9]" not in "".join(texts) and "왕국이다[" not in "".join(texts)
    footnotes = [e for e in events if isinstance(e, Footnotes)]
    assert len(footnotes) == 1 and [c.url for c in footnotes[0].citations] == [
        c.url for c in done.answer.citations
    ]
    sentences = [e for e in events if isinstance(e, Sentence)]
    assert [s.marks for s in sentences] == [(), (1,), (2,), ()]  # heading, two items, the dropped one
    assert (
        done.timings.first_sentence_s is not None and done.timings.first_sentence_s <= done.timings.generate_s
    )


def test_the_first_sentence_is_shown_before_generation_ends():
    from korani_cli.rag.answer import Sentence, stream

    answer = "세종은 1443년에 훈민정음을 창제하였다[1]. " + "그리고 더 많은 이야기가 이어진다. " * 20
    backend = ScriptedBackend([answer], chunk=4)
    total = -(-len(answer) // 4)
    events = stream(backend, "세종?", _ranked(SEJONG), GenerationParams())
    # The first Sentence event, and how many chunks had been pulled when it came;
    # a stream that never yields one fails here rather than passing without a check.
    first, pulled = next(((e, backend.pulled) for e in events if isinstance(e, Sentence)), (None, None))
    events.close()
    assert first is not None, "no Sentence event was emitted"
    assert first.text == "세종은 1443년에 훈민정음을 창제하였다." and first.marks == (1,)
    assert pulled < total / 4, "the sentence waited for the rest of the answer"


def test_the_prompt_is_the_rag_form_with_the_history_and_a_long_history_is_trimmed():
    from korani_cli.rag.answer import Trimmed

    history = [
        Message("user", "질문 " * 200),
        Message("assistant", "답 " * 200),
        Message("user", "최근"),
        Message("assistant", "최근 답"),
    ]
    backend = ScriptedBackend(["세종은 1443년에 훈민정음을 창제하였다[1]."], context_length=900)
    events = _run(backend, _ranked(SEJONG), history=history, system="짧게 답하세요.")
    trimmed = [e for e in events if isinstance(e, Trimmed)]
    assert trimmed == [Trimmed(1, 900)]
    prompt = backend.prompts[0]
    assert prompt[0] == Message("system", "짧게 답하세요.")
    assert [m.content for m in prompt[1:3]] == ["최근", "최근 답"]
    assert (
        prompt[-1].content == "세종은 무엇을 했나요?"
        and prompt[-1].sources[0].url == "https://sejong.example"
    )


def test_closing_the_stream_stops_generation():
    from korani_cli.rag.answer import Text, stream

    backend = ScriptedBackend(["세종은 1443년에 훈민정음을 창제하였다[1]. " * 50], chunk=4)
    events = stream(backend, "세종?", _ranked(SEJONG), GenerationParams())
    for event in events:
        if isinstance(event, Text):
            break
    events.close()
    assert backend.pulled < 20


def test_written_claims_are_the_models_own_sentences_and_markers():
    from korani_cli.rag.answer import written_claims

    claims = written_claims("- 가는 나다 [1][2].\n\n```\nx[3]\n```\n다는 라다.")
    assert claims == [("가는 나다.", [1, 2]), ("다는 라다.", [])]


# -- end to end: an OpenAI-compatible server on loopback, a real pty ----------------------------

SCRIPT = (
    "질문: 세종은 무엇을 했나요?\n## 세종\n\n- 세종은 1443년에 훈민정음을 창제하였다[{세종}].\n"
    "- 훈민정음은 1446년에 반포되었다 [{반포}][9].\n- 파르티아는 고대 이란의 왕국이다[{세종}].\n\n"
    "```\nprint(a[1])\n```\n"
)
SHOWN = (
    "## 세종\n\n- 세종은 1443년에 훈민정음을 창제하였다[1].\n- 훈민정음은 1446년에 반포되었다[2].\n"
    "- 파르티아는 고대 이란의 왕국이다.\n\n```\nprint(a[1])\n```"
)
FIRST = "- 세종은 1443년에 훈민정음을 창제하였다[1]."


@pytest.fixture
def pages(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, (_, title, text) in {"sejong": SEJONG, "banpo": BANPO}.items():
        (docs / f"{name}.md").write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
    return docs


def _pty_run(
    argv: list[str],
    env: dict,
    server: ScriptServer,
    first: str,
    typed: bytes | None = None,
    wait: float = 20,
    timeout: float = 120,
) -> tuple[str, str]:
    """Run argv on a pty; return (the screen when the server held back the rest, the whole screen).
    Fails if the server never held: the first screen would then say nothing."""
    import pty

    from support import REPO

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, "-m", "korani_cli", *argv])
    raw = b""
    at_hold = None
    deadline = time.monotonic() + timeout
    sent = typed is None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                raw += chunk
            screen = _plain(raw)
            if not sent and "나> " in screen:
                os.write(fd, typed)
                sent = True
            if server.reached.is_set() and at_hold is None:
                # Held: what reaches the screen now was shown before generation ended.
                limit = time.monotonic() + wait
                while first not in _plain(raw) and time.monotonic() < limit:
                    if select.select([fd], [], [], 0.1)[0]:
                        raw += os.read(fd, 65536)
                at_hold = _plain(raw)
                server.release.set()
            if typed is not None and server.release.is_set() and screen.count("나> ") >= 2:
                os.write(fd, b"\x04")  # Ctrl-D at the prompt after the answer
                typed = None
    finally:
        server.release.set()
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    whole = raw.decode("utf-8", "replace")
    # Every check on the held screen means something only if the hold was reached:
    # an answer that never streamed through the server's hold point fails here.
    assert at_hold is not None, f"the server never reached its hold point {server.hold!r}: {whole[-500:]!r}"
    return at_hold, whole


def _plain(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)
    return text.replace("\r\n", "\n").replace("\r", "")


@pytest.mark.slow
def test_ask_search_streams_checked_sentences_on_a_terminal(pages, tmp_path):
    server = ScriptServer(SCRIPT, hold="창제하였다[")  # held before the first item's marker is complete
    env = {"KORANI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    at_hold, whole = _pty_run(
        [
            "ask",
            "세종은 무엇을 했나요?",
            "--search",
            "--local-dir",
            str(pages),
            "--embedder",
            "none",
            "--model",
            f"openai:scripted@{server.url}",
            "-t",
            "0",
        ],
        env,
        server,
        FIRST,
        wait=3,
    )
    server.shutdown()
    screen = _plain(whole.encode())
    assert "창제하였다" not in at_hold, "the first item was shown before its marker could be checked"
    assert SHOWN in screen, screen
    assert "[9]" not in whole and "질문:" not in whole and "왕국이다[" not in whole
    footnotes = screen.split(SHOWN, 1)[1]
    # A local .md file is titled by its first heading, not by its file name.
    assert re.search(r"\[1\] 세종 — \S*sejong\.md\n\[2\] 반포 — \S*banpo\.md", footnotes), footnotes


@pytest.mark.slow
def test_ask_search_shows_the_first_sentence_while_the_rest_is_generated(pages, tmp_path):
    server = ScriptServer(SCRIPT, hold="반포되었다")
    env = {"KORANI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    at_hold, whole = _pty_run(
        [
            "ask",
            "세종은 무엇을 했나요?",
            "--search",
            "--local-dir",
            str(pages),
            "--embedder",
            "none",
            "--model",
            f"openai:scripted@{server.url}",
            "-t",
            "0",
        ],
        env,
        server,
        FIRST,
    )
    server.shutdown()
    assert FIRST in at_hold and "반포되었다" not in at_hold
    assert SHOWN in _plain(whole.encode())


@pytest.mark.slow
def test_ask_search_json_is_the_checked_answer(pages, tmp_path):
    from support import run_korani

    server = ScriptServer(SCRIPT)
    proc = run_korani(
        "ask",
        "세종은 무엇을 했나요?",
        "--search",
        "--local-dir",
        str(pages),
        "--embedder",
        "none",
        "--model",
        f"openai:scripted@{server.url}",
        "--json",
        env={"KORANI_HOME": str(tmp_path / "home")},
    )
    server.shutdown()
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == SHOWN
    assert [c["url"].rsplit("/", 1)[-1] for c in data["citations"]] == ["sejong.md", "banpo.md"]
    assert {s["url"].rsplit("/", 1)[-1] for s in data["sources"]} == {"sejong.md", "banpo.md"}
    timings = data["timings"]
    # --json asks the server for the whole answer at once: when its first token was made is not
    # known (and not guessed); the first sentence was checked once the answer arrived.
    assert timings["first_token_s"] is None and 0 < timings["first_sentence_s"] <= timings["generate_s"]


@pytest.mark.slow
def test_chat_search_streams_checked_sentences_on_a_terminal(pages, tmp_path):
    server = ScriptServer(SCRIPT, hold="반포되었다")
    env = {"KORANI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    at_hold, whole = _pty_run(
        [
            "chat",
            "--local-dir",
            str(pages),
            "--embedder",
            "none",
            "--model",
            f"openai:scripted@{server.url}",
            "-t",
            "0",
        ],
        env,
        server,
        "1443년에 훈민정음을 창제하였다[1]",
        typed="/검색 세종은 무엇을 했나요?\r".encode(),
    )
    server.shutdown()
    assert "1443년에 훈민정음을 창제하였다[1]" in at_hold, at_hold[-500:]
    assert "[9]" not in whole and "질문:" not in whole and "왕국이다[" not in whole
    assert "print(a[1])" in whole
    assert re.search(r"\[1\] 세종 — \S*sejong\.md", _plain(whole.encode()))
