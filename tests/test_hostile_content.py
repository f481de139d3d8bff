"""Hostile content against `korani search`, `ask` and `chat` (issue 15, items 4, 5, 10, 14, 17, 18).

Every web page here is served on 127.0.0.1 by this file; the "model" behind
`ask` is a loopback OpenAI-compatible server that records the prompt it is
sent and answers with a fixed sentence. Each table row is one hostile input
and what a user must see: the exit code, a fragment of the one-line error, and
never a control character, a traceback or a hang.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from support import REPO, Site

# What must never reach a terminal: C0 controls but tab and newline, DEL, C1; bidi controls and
# zero-width characters but ZWNJ/ZWJ (issue 20: they reorder or hide what the terminal draws).
CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)
EVIL = "\x1b]0;PWNED\x07\x1b[2J"  # retitles the window, clears the screen
C1_CSI = "\x9b31m"  # an 8-bit CSI: red text on terminals that obey C1
OVERWRITE = "\rFAKE"  # a bare CR lets what follows overwrite the line
RLO = "\u202e"  # right-to-left override: what follows is drawn backwards
HIDDEN = "\u200b\u2060\ufeff"  # zero-width: invisible, but two equal-looking strings differ
HOSTILE_TEXT = (
    f"서울은 대한민국의 수도{EVIL}이며 가장 큰 도시이다.{OVERWRITE} "
    f"{RLO}한강이 도시를 가로지른다{C1_CSI}\u202c. 인구는{HIDDEN} 약 940만 명이다.\u2067\u200f"
)
HOSTILE_TITLE = f"서울 {EVIL}소개{C1_CSI}{OVERWRITE}{RLO}gnp.exe\u2069{HIDDEN}"
# The same controls written as HTML character references: lxml decodes them
# after any cleaning of the raw HTML could have run.
ENTITIES = "&#x1b;]0;ENTITY&#x7; &#27;[2J"


@dataclass
class Run:
    rc: int
    out: str
    err: str
    seconds: float


def korani(*args: str, env: dict | None = None, timeout: float = 180, stdin: str = "") -> Run:
    """The CLI in a subprocess; output kept as bytes until checked to be UTF-8."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        input=stdin.encode(),
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=timeout,
    )
    return Run(
        proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"), time.monotonic() - start
    )


def assert_no_controls(*texts: str) -> None:
    for text in texts:
        found = CONTROLS.search(text)
        assert found is None, (
            f"control {found.group()!r} reached the terminal: "
            f"{text[max(0, found.start() - 40) : found.end() + 40]!r}"
        )


def error_lines(run: Run) -> list[str]:
    """stderr minus notices: what must be exactly one `error:` line."""
    assert "Traceback" not in run.err and "Exception ignored" not in run.err, run.err
    return [line for line in run.err.splitlines() if line.strip() and not line.startswith("note:")]


# -- a hostile loopback web ------------------------------------------------------


def _searx(base: str, *paths: str) -> tuple[dict, bytes]:
    results = [{"url": base + p, "title": f"결과{EVIL}{C1_CSI}", "content": f"요약{EVIL}"} for p in paths]
    return {"Content-Type": "application/json"}, json.dumps({"results": results}).encode()


@pytest.fixture(scope="module")
def hostile_web():
    """Pages and SearXNG answers full of control characters, long runs and a gzip bomb; yields
    the base URL."""
    site = Site({})
    html = {"Content-Type": "text/html; charset=utf-8"}
    one_run = b"A" * 2_000_000
    routes = {
        "/evil.html": (
            html,
            f"<html><head><title>{HOSTILE_TITLE}</title></head><body><article><p>{HOSTILE_TEXT} "
            f"{ENTITIES}</p>"
            f"<p>{HOSTILE_TEXT}</p></article></body></html>".encode(),
        ),
        "/ok.html": (
            html,
            (
                "<html><head><title>부산</title></head><body><p>부산은 대한민국의 항구 도시이다. 해운대가 "
                "유명하다.</p></body></html>"
            ).encode(),
        ),
        # About 2 MB of one run without whitespace, plain and as a gzip bomb
        # (a few kB on the wire that inflate to the fetcher's byte cap).
        "/run.html": (html, b"<html><body><p>" + one_run + b"</p></body></html>"),
        "/bomb.html": ({**html, "Content-Encoding": "gzip"}, gzip.compress("가".encode() * 3_000_000)),
        "/evil/search": _searx(site.base, "/evil.html"),
        "/runs/search": _searx(site.base, "/ok.html", "/run.html", "/bomb.html"),
        "/empty/search": ({"Content-Type": "application/json"}, b'{"results": []}'),
    }
    site.routes.update({path: (200, headers, body) for path, (headers, body) in routes.items()})
    yield site.base
    site.close()


class FakeModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that records each prompt and answers one sentence."""

    prompts: list = []

    def log_message(self, *a):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.prompts.append(body.get("prompt") or json.dumps(body.get("messages"), ensure_ascii=False))
        answer = "서울은 대한민국의 수도이며 가장 큰 도시이다 [1]."
        self._send(
            {
                "choices": [{"text": answer, "message": {"content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10},
            }
        )


@pytest.fixture(scope="module")
def model_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"openai:m@http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture
def hostile_dir(tmp_path) -> Path:
    """Local files holding the same controls, one of each kind the local provider reads."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "seoul.txt").write_text(f"{HOSTILE_TITLE}\n\n{HOSTILE_TEXT}", encoding="utf-8")
    (d / "seoul.md").write_text(f"# {HOSTILE_TITLE}\n\n{HOSTILE_TEXT}", encoding="utf-8")
    (d / "seoul.html").write_text(
        f"<html><head><title>{HOSTILE_TITLE}</title></head><body><p>{HOSTILE_TEXT} "
        f"{ENTITIES}</p></body></html>",
        encoding="utf-8",
    )
    (d / f"name{EVIL}.txt").write_text(
        "서울은 대한민국의 수도이다.", encoding="utf-8"
    )  # the title is the file name
    return d


# -- 4: no control character reaches the terminal, the prompt or the cache -------------

# HOSTILE_TEXT's first sentence as it must reach a prompt: the controls gone, nothing else.
HOSTILE_VISIBLE = "서울은 대한민국의 수도]0;PWNED[2J이며 가장 큰 도시이다."

SEARCH_ROWS = [
    # id, arguments (WEB and DIR are filled in), where the hostile text is
    ("web-json", ["search", "서울", "-p", "searxng", "--allow-private", "--json"], "web"),
    ("web-human", ["search", "서울", "-p", "searxng", "--allow-private"], "web"),
    ("web-ask", ["ask", "--search", "-p", "searxng", "--allow-private", "서울은 어떤 도시인가?"], "web"),
    (
        "web-ask-json",
        ["ask", "--search", "-p", "searxng", "--allow-private", "--json", "서울은 어떤 도시인가?"],
        "web",
    ),
    ("local-json", ["search", "서울", "--json"], "local"),
    ("local-human", ["search", "서울"], "local"),
    ("local-ask", ["ask", "서울은 어떤 도시인가?"], "local"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,source", [r[1:] for r in SEARCH_ROWS], ids=[r[0] for r in SEARCH_ROWS])
def test_page_and_file_text_reaches_no_terminal_raw(
    args, source, hostile_web, model_url, hostile_dir, tmp_path
):
    env = {"KORANI_SEARXNG_URL": hostile_web + "/evil", "KORANI_HOME": str(tmp_path / "home")}
    full = [*args, "--embedder", "none"]
    if source == "local":
        full += ["--local-dir", str(hostile_dir)]
    if args[0] == "ask":
        full += ["--model", model_url, "-t", "0"]
    FakeModel.prompts.clear()
    run = korani(*full, env=env)
    assert run.rc == 0, run.err
    assert_no_controls(run.out, run.err)
    # The visible text stays: only the control characters are gone.
    if args[0] == "search":
        assert "서울은 대한민국의 수도" in run.out
        assert "PWNED" in run.out and "FAKE" in run.out
    else:
        assert len(FakeModel.prompts) == 1
        prompt = FakeModel.prompts[0]
        assert_no_controls(prompt)
        # Where `ask` puts the page is the prompt: its hostile sentence, controls gone and the
        # rest as written (run.out cannot tell: the fake model's fixed answer says the same words).
        assert HOSTILE_VISIBLE in prompt, prompt
        assert "PWNED" in prompt and "FAKE" in prompt and "한강이 도시를 가로지른다" in prompt
        assert "[1]" in run.out
        if source == "web":
            assert "PWNED" in run.out  # the footnote keeps the page title's visible text
    if source == "web" and args[0] == "search":
        # What the page cache stored is clean too: a later --offline run prints it.
        offline = korani(
            "search",
            "서울",
            "-p",
            "searxng",
            "--offline",
            "--allow-private",
            "--json",
            "--embedder",
            "none",
            env=env,
        )
        assert offline.rc == 0, offline.err
        assert_no_controls(offline.out, offline.err)
        assert "PWNED" in offline.out


TEXT_ROWS = [
    # raw text → what a title (one line) and a page's text become
    (EVIL, "]0;PWNED[2J", "]0;PWNED[2J"),
    (f"a{C1_CSI}b", "a31mb", "a31mb"),
    (f"진짜{OVERWRITE}", "진짜 FAKE", "진짜\nFAKE"),
    ("x\x00y\x7fz\x08", "xyz", "xyz"),
    ("줄\r\n바꿈\t탭", "줄 바꿈 탭", "줄\n바꿈\t탭"),
    ("a\udcffb", "a\ufffdb", "a\ufffdb"),  # a lone surrogate: a file name that is not UTF-8
    # issue 20: bidi controls and zero-width characters are stripped like C0/C1 ...
    ("\u202etxt.exe\u202c", "txt.exe", "txt.exe"),
    ("서\u200b울\u2060시\ufeff", "서울시", "서울시"),
    ("a\u2066b\u2069c\u200ed\u200fe\u061cf\u202ag\u202bh\u202di\u2067j\u2068k", "abcdefghijk", "abcdefghijk"),
    # ... but ZWJ (emoji sequences) and ZWNJ (Persian, Indic scripts) join visible characters: kept
    ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),
    ("می\u200cخواهم", "می\u200cخواهم", "می\u200cخواهم"),
    ("", "", ""),
]


@pytest.mark.parametrize("raw,line,text", TEXT_ROWS)
def test_hits_and_pages_are_clean_whoever_builds_them(raw, line, text):
    """Provider parsers, the fetcher, the page cache and the local reader all
    build Hit and Page values: one place cleans them all."""
    from korani_cli.search.types import Hit, Page

    hit = Hit("https://e.example/" + raw, raw, raw, "test")
    page = Page("https://e.example/" + raw, "https://e.example/" + raw, raw, raw, "text/html", None)
    assert (hit.title, hit.snippet, page.title, page.text) == (line, line, line, text)
    for value in (hit.url, page.url, page.final_url):
        assert_no_controls(value)


def test_a_title_is_one_bounded_line_and_never_a_crash():
    from korani_cli.search.types import TITLE_CHARS, Hit

    assert Hit("https://e.example", "가" * 2_000_000, None, "test").title == "가" * TITLE_CHARS
    assert Hit("https://e.example", 123, "", "test").title == "123"  # a provider's JSON may hold a number


@pytest.mark.parametrize(
    "html",
    [
        f"<html><head><title>{HOSTILE_TITLE}</title></head><body><p>{HOSTILE_TEXT}</p></body></html>",
        f"<html><head><title>{ENTITIES}</title></head><body><p>{ENTITIES} {HOSTILE_TEXT}</p></body></html>",
        '<html><head><meta property="og:title" '
        f'content="{ENTITIES}"></head><body><p>{HOSTILE_TEXT}</p></body></html>',
        "\x00" * 1000 + f"<html><body><p>{HOSTILE_TEXT}</p>\x00</body></html>",
    ],
    ids=["raw", "entities", "og-title", "nul"],
)
def test_extraction_returns_no_controls(html):
    from korani_cli.search.extract import extract

    title, text = extract(html, "https://e.example/")
    assert_no_controls(title, text)
    assert "한강이 도시를 가로지른다" in text and "\ufffd" not in text  # NULs are not turned into junk


def test_footnotes_print_clean_lines():
    from korani_cli.rag.answer import SourcedAnswer
    from korani_cli.search.types import Citation

    footnotes = SourcedAnswer(
        "x [1]", [Citation(1, f"https://e.example/{EVIL}", HOSTILE_TITLE, "p", 1.0)]
    ).footnotes()
    assert_no_controls(footnotes)
    assert footnotes.count("\n") == 0 and "PWNED" in footnotes


@pytest.mark.slow
def test_names_and_queries_that_are_not_utf8_are_read_not_a_crash(tmp_path):
    """A file name and a query in raw bytes that are not UTF-8 (lone surrogates
    once decoded) crashed Kiwi with exit 1; the file was also never opened."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / os.fsdecode(b"raw\xff\xfe.txt")).write_text("부산은 대한민국의 항구 도시이다.", encoding="utf-8")
    (docs / "b.txt").write_text("서울은 대한민국의 수도이다.", encoding="utf-8")
    query = os.fsdecode(b"\xff\xfe" + "부산 항구".encode())
    run = korani(
        "search",
        query,
        "--local-dir",
        str(docs),
        "--embedder",
        "none",
        "--json",
        env={"KORANI_HOME": str(tmp_path / "home")},
    )
    assert run.rc == 0, run.err
    top = json.loads(run.out)["passages"][0]
    assert (
        top["url"].endswith("raw%FF%FE.txt") and "부산" in top["text"] and top["title"] == "raw\ufffd\ufffd"
    )


# -- 5: the local provider stays inside its directory --------------------------------


@pytest.fixture
def linked_dir(tmp_path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("비밀 계정 root:x:0:0", encoding="utf-8")
    (outside / "other.md").write_text("바깥의 문서", encoding="utf-8")
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("서울은 대한민국의 수도이다.", encoding="utf-8")
    (root / "passwd.txt").symlink_to(outside / "secret.txt")  # a file link out
    (root / "sub" / "outlink").symlink_to(outside, target_is_directory=True)  # a directory link out
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # a loop
    (root / "self").symlink_to(Path("..") / "docs", target_is_directory=True)  # another loop, relative
    (root / "inside.txt").symlink_to(root / "a.txt")  # a link that stays inside: the same file
    (root / "dangling.md").symlink_to(tmp_path / "nowhere")
    os.mkfifo(root / "fifo.txt")  # would block a read forever
    return root


LINK_ROWS = [
    (False, {"docs/a.txt"}),
    (True, {"docs/a.txt", "outside/secret.txt", "outside/other.md"}),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("follow,expected", LINK_ROWS, ids=["default", "follow-links"])
def test_local_provider_keeps_inside_its_directory(linked_dir, follow, expected):
    from korani_cli.search.providers import LocalProvider

    hits = LocalProvider(linked_dir, follow_links=follow).search("q", 5)
    found = {
        str(Path(unquote(h.url.removeprefix("file://"))).relative_to(linked_dir.parent.resolve()))
        for h in hits
    }
    assert found == expected


@pytest.mark.slow
@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow-links"])
def test_search_prints_no_file_from_outside_without_follow_links(linked_dir, follow, tmp_path):
    args = ["search", "계정 비밀 서울", "--local-dir", str(linked_dir), "--embedder", "none", "--json"]
    run = korani(
        *args,
        *(["--follow-links"] if follow else []),
        env={"KORANI_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert run.rc == 0, run.err
    assert ("root:x:0:0" in run.out) == follow
    assert "서울은 대한민국의 수도이다" in run.out


# -- 10: no page, however long its runs, holds the search up ------------------------


def test_kiwi_never_sees_a_long_run_or_a_long_input():
    from korani_cli.search.passages import PAGE_CHARS, PIECE_CHARS, RUN_CHARS, _paragraphs, bounded

    text = bounded("A" * 2_000_000)
    assert len(text.replace(" ", "")) == PAGE_CHARS and max(len(w) for w in text.split()) == RUN_CHARS
    pieces = _paragraphs("서울 " * 50_000 + "\n\n" + "가" * 300_000)
    assert pieces and max(len(p) for p in pieces) <= PIECE_CHARS
    assert bounded("서울은 https://example.com/a/b 수도이다.") == "서울은 https://example.com/a/b 수도이다."


def test_pieces_of_an_over_long_sentence_keep_their_terms():
    """Ranking would otherwise analyse every piece again, outside the deadline."""
    from korani_cli.search.passages import MAX_CHARS, analyse, group

    text = "서울은 대한민국의 수도이며 " * 10 + "부산항구도시" * 200 + " 끝."
    chunks = group(analyse([text])[0])
    assert len(chunks) >= 3 and all(terms for _, terms in chunks)
    assert all(len(chunk) <= MAX_CHARS for chunk, _ in chunks)
    assert "서울" in chunks[0][1] and "부산" in chunks[-1][1]


@pytest.mark.slow
def test_long_runs_and_a_gzip_bomb_do_not_hang_the_search(hostile_web, tmp_path):
    """Before the caps, Kiwi took minutes on one 2 MB run; now the search
    answers well inside the subprocess timeout, with the real page first."""
    env = {"KORANI_SEARXNG_URL": hostile_web + "/runs", "KORANI_HOME": str(tmp_path / "home")}
    run = korani(
        "search",
        "부산 항구",
        "-p",
        "searxng",
        "--allow-private",
        "--json",
        "--embedder",
        "none",
        env=env,
        timeout=120,
    )
    assert run.rc == 0, run.err
    data = json.loads(run.out)
    assert data["passages"][0]["url"] == hostile_web + "/ok.html"
    from korani_cli.search.passages import MAX_CHARS

    assert all(len(p["text"]) <= MAX_CHARS for p in data["passages"])
    # The runs still give passages (broken into words of RUN_CHARS), just ranked last.
    assert {p["url"] for p in data["passages"]} == {
        hostile_web + "/ok.html",
        hostile_web + "/run.html",
        hostile_web + "/bomb.html",
    }


@pytest.mark.slow
def test_the_search_deadline_skips_pages_not_yet_analysed(hostile_web, tmp_path):
    env = {
        "KORANI_SEARXNG_URL": hostile_web + "/runs",
        "KORANI_HOME": str(tmp_path / "home"),
        "KORANI_SEARCH_DEADLINE": "0.01",
        "KORANI_SOFT_DEADLINE": "60",  # every page is waited for: this is about the analysis deadline
    }
    run = korani(
        "search",
        "부산 항구",
        "-p",
        "searxng",
        "--allow-private",
        "--json",
        "--embedder",
        "none",
        env=env,
        timeout=120,
    )
    assert run.rc == 0, run.err
    data = json.loads(run.out)
    # The page that arrives first is always analysed (pages are split as they arrive, issue 24);
    # the two after it come too late.
    read = {p["url"] for p in data["passages"]}
    late = {s["url"] for s in data["skipped"] if "search deadline" in s["reason"]}
    assert len(read) == 1 and len(late) == 2, (read, late)
    assert read | late == {hostile_web + p for p in ("/ok.html", "/run.html", "/bomb.html")}
    assert run.err.count("search deadline") == 2


# -- 14, 18: each user error is one line with its documented code ---------------------

ENV_ROWS = [
    # id, environment, arguments, exit code, fragment of the one error line
    (
        "workers-abc",
        {"KORANI_EXTRACT_WORKERS": "abc"},
        ["search", "x", "-p", "searxng"],
        5,
        "KORANI_EXTRACT_WORKERS='abc'",
    ),
    (
        "workers-negative",
        {"KORANI_EXTRACT_WORKERS": "-3"},
        ["search", "x", "-p", "searxng"],
        5,
        "from 0 to 64",
    ),
    (
        "workers-fraction",
        {"KORANI_EXTRACT_WORKERS": "2.5"},
        ["search", "x", "-p", "searxng"],
        5,
        "whole number",
    ),
    (
        "deadline-abc",
        {"KORANI_SEARCH_DEADLINE": "abc"},
        ["search", "x", "-p", "searxng"],
        5,
        "KORANI_SEARCH_DEADLINE='abc'",
    ),
    (
        "deadline-zero",
        {"KORANI_SEARCH_DEADLINE": "0"},
        ["search", "x", "-p", "searxng"],
        5,
        "positive number of seconds",
    ),
    (
        "deadline-nan",
        {"KORANI_SEARCH_DEADLINE": "nan"},
        ["search", "x", "-p", "searxng"],
        5,
        "positive number of seconds",
    ),
    (
        "deadline-inf",
        {"KORANI_SEARCH_DEADLINE": "inf"},
        ["search", "x", "-p", "searxng"],
        5,
        "positive number of seconds",
    ),
    (
        "search-missing-dir",
        {},
        ["search", "x", "--local-dir", "no/such/dir"],
        2,
        "--local-dir no/such/dir does not exist",
    ),
    ("search-file-as-dir", {}, ["search", "x", "--local-dir", "README.md"], 2, "is not a directory"),
    (
        "search-local-provider-missing-dir",
        {},
        ["search", "x", "-p", "local", "--local-dir", "nope"],
        2,
        "does not exist",
    ),
    (
        "ask-missing-dir",
        {},
        ["ask", "--model", "demo", "--local-dir", "nope", "x"],
        2,
        "--local-dir nope does not exist",
    ),
    (
        "chat-missing-dir",
        {},
        ["chat", "--model", "demo", "--local-dir", "nope"],
        2,
        "--local-dir nope does not exist",
    ),
    ("unknown-provider", {}, ["search", "x", "-p", "bing"], 2, "unknown provider 'bing'"),
]


@pytest.mark.parametrize("env,args,code,fragment", [r[1:] for r in ENV_ROWS], ids=[r[0] for r in ENV_ROWS])
def test_user_errors_are_one_line_with_their_code(env, args, code, fragment, hostile_web, tmp_path):
    run = korani(
        *args,
        env={"KORANI_SEARXNG_URL": hostile_web + "/empty", "KORANI_HOME": str(tmp_path / "home"), **env},
        timeout=60,
    )
    lines = error_lines(run)
    assert run.rc == code, run.err
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], run.err
    assert "check the network" not in run.err


@pytest.mark.parametrize("value", ["100000", "65", "-1", "x", "1e3"])
def test_worker_count_is_checked_before_any_pool_starts(value, monkeypatch):
    """Out of range is refused before a ProcessPoolExecutor of that size could be asked for."""
    from korani_cli.errors import ConfigError
    from korani_cli.search import workers

    monkeypatch.setenv("KORANI_EXTRACT_WORKERS", value)
    with pytest.raises(ConfigError, match="KORANI_EXTRACT_WORKERS"):
        workers._size()
    monkeypatch.setenv("KORANI_EXTRACT_WORKERS", "0")
    assert workers._size() == 0


# -- 17: a fast exit after the worker pool started is one line, and prompt ------------------

EXIT_ROWS = [
    ("no-such-provider", ["search", "-p", "no-such-provider", "x"], "", 2),
    ("bing", ["search", "x", "-p", "bing"], "", 2),
    ("no-results", ["search", "x", "-p", "searxng"], "/empty", 7),
    (
        "all-pages-refused",
        ["search", "x", "-p", "searxng"],
        "/runs",
        7,
    ),  # loopback pages without --allow-private
]


@pytest.mark.slow
@pytest.mark.parametrize("args,endpoint,code", [r[1:] for r in EXIT_ROWS], ids=[r[0] for r in EXIT_ROWS])
def test_fast_exits_leave_no_pool_traceback(args, endpoint, code, hostile_web, tmp_path):
    """Several at once, as the race shows under load; a worker pool is forced
    (KORANI_EXTRACT_WORKERS=4) so that one-core machines test it too. The
    default embedder is kept: its loading thread, still busy at exit, is part
    of the race (HF_HUB_OFFLINE: it never looks for the Hub)."""
    env = {
        "KORANI_SEARXNG_URL": hostile_web + endpoint,
        "KORANI_HOME": str(tmp_path / "home"),
        "KORANI_EXTRACT_WORKERS": "4",
        "HF_HUB_OFFLINE": "1",
    }
    with ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(lambda _: korani(*args, env=env, timeout=90), range(6)))
    for run in runs:
        assert run.rc == code, run.err
        lines = error_lines(run)
        assert len(lines) == 1 and lines[0].startswith("error: "), run.err
        assert run.seconds < 60


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_shutdown_ends_a_busy_worker_at_once(monkeypatch):
    """A page of deeply nested tables keeps a worker busy for tens of seconds,
    long after the fetch deadline gave up on it; exit must not wait for it."""
    from korani_cli.search import workers

    monkeypatch.setenv("KORANI_EXTRACT_WORKERS", "2")  # a pool even on one core
    workers.enable()
    try:
        pool = workers.pool()
        assert pool is not None
        busy = pool.submit(
            workers.page_text, b"<table>" + b"<tr><td>" * 250_000, None, False, "http://e.example/"
        )
        time.sleep(3)
        assert not busy.done()
        processes = list(pool._processes.values())
        start = time.monotonic()
        workers.shutdown()
        assert time.monotonic() - start < 10
        assert processes and not any(p.is_alive() for p in processes)
        assert workers._pool is None
    finally:
        workers.enable(False)
        workers.shutdown()
