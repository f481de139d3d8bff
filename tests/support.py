"""Helpers the test modules share, for what a test calls directly: paths, the CLI in
a subprocess, the scripted backend, chat-session drivers, loopback servers and a
terminal. Fixtures are conftest.py's (it builds several of them from these);
test modules import from here, never from each other or from conftest.

Everything that listens binds 127.0.0.1 only.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Union

from korani_cli.backends import Generation, ModelInfo, apply_stops
from korani_cli.template import Message

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

# A source page (url, title, text) the RAG tests cite.
SEJONG = (
    "https://sejong.example",
    "세종",
    "세종은 1443년에 훈민정음을 창제하였다. 세종은 조선의 네 번째 왕이다.",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_korani(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 300):
    """Run the installed CLI in a subprocess, as a user's shell would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


# -- the scripted backend ---------------------------------------------------------------------------


class ScriptedBackend:
    """A backend that answers from a script and records what it was sent (llm's MockModel).

    conftest's `scripted` fixture registers one as the `scripted` backend, so that
    `--model scripted:NAME` reaches it the way every model is reached (models.resolve →
    the backend registry → `load`); chat_session below loads one the same way.
    Each answer is taken from `answers` in turn, the last one repeating; `{n}` in it
    becomes the number of the prompt it answers. It streams word by word (or in pieces of
    `chunk` characters, as a tokenizer cuts mid-word) through apply_stops, as the real
    backends do; `pulled` counts the pieces generation was asked for.
    """

    def __init__(self, answers=("답 {n}.",), context_length: int = 4096, chunk: int | None = None):
        self.answers = list(answers)
        self.chunk = chunk
        self.pulled = 0
        self.prompts: list[list[Message]] = []
        self.params: list = []  # the GenerationParams of each answer
        self.loads: list[tuple[str, str]] = []  # (--model as given, template) of each load
        self.info = ModelInfo("scripted", "scripted", context_length, "korani")
        self.eos_text = "<eos>"

    def load(self, spec, settings, notify) -> "ScriptedBackend":
        """What the backend registry calls to load a `scripted:NAME` model."""
        self.loads.append((spec.name, settings.template))
        return self

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, messages, params):
        self.prompts.append(list(messages))
        self.params.append(params)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        answer = answer.replace("{n}", str(len(self.prompts)))

        if self.chunk:
            pieces = [answer[i : i + self.chunk] for i in range(0, len(answer), self.chunk)]
        else:
            pieces = re.findall(r"\s*\S+", answer) or [answer]  # each word with the space before it

        def run(usage):
            usage.completion_tokens = 0
            for piece in pieces:
                self.pulled += 1
                usage.completion_tokens += 1
                yield piece
            usage.finish_reason = "eos"

        return Generation(lambda usage: apply_stops(run(usage), usage))


DOUBLE = "double"  # the backend name chat_session registers a test's model under while it loads


class _Serves:
    """A registry loader that hands over an already-built test double (one with no `load` of its own)."""

    def __init__(self, backend):
        self.backend = backend

    def load(self, spec, settings, notify):
        return self.backend


def chat_session(history, backend=None, session_id=None, *, model_name: str = "scripted", **kw):
    """The one place tests build a ChatSession (a change to its constructor is one edit here).

    Its model loads the way `korani chat --model NAME:SOURCE` loads one: load_settings →
    models.resolve → the backend registry → the backend's `load` → models.load_backend, with
    `backend` registered as the `double` backend for the length of that load. `backend` None:
    a session whose model is never loaded (what a test of slash commands alone needs)."""
    from korani_cli.backends import registry
    from korani_cli.chat.session import ChatSession
    from korani_cli.config import load_settings
    from korani_cli.models import load_backend, resolve

    def load():
        if backend is None:
            raise AssertionError("this test's chat session has no model to load")
        registry.register(DOUBLE, backend if callable(getattr(backend, "load", None)) else _Serves(backend))
        try:
            settings = load_settings({"model": f"{DOUBLE}:{model_name}"})
            return load_backend(resolve(settings.model, settings), settings)
        finally:
            registry.unregister(DOUBLE)

    return ChatSession(load, history, session_id, model_name=model_name, **kw)


def session_for(tmp_path, backend, **kw):
    """A ChatSession on `backend` with a real SQLite history in tmp_path, its session row written;
    (session, history)."""
    from korani_cli.chat.history import History

    history = History(tmp_path / "history.sqlite")
    sid = history.new_session("scripted", kw.get("system"))
    return chat_session(history, backend, sid, **kw), history


def drive(session, text: str, width: int = 100) -> tuple[str, str]:
    """Feed `text` to the chat loop as piped stdin; (what it printed to stdout, to stderr)."""
    from rich.console import Console

    from korani_cli.chat.repl import run

    out, err = io.StringIO(), io.StringIO()
    run(
        session,
        stdin=io.StringIO(text),
        out=Console(file=out, width=width),
        err=Console(file=err, width=width),
    )
    return out.getvalue(), err.getvalue()


# -- loopback servers ---------------------------------------------------------------------------------

# What a Site answers for a path: (status, headers, body) or (status, headers, body, seconds to wait
# first), or a function of the request handler that returns one.
Route = Union[tuple, Callable[[BaseHTTPRequestHandler], tuple]]


class Site:
    """A loopback web server: routes path → Route; records (path, Host) of each request."""

    def __init__(self, routes: dict[str, Route]):
        site = self
        self.routes = routes
        self.seen: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                site.seen.append((path, self.headers.get("Host", "")))
                route = site.routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, headers, body, *delay = route(self) if callable(route) else route
                if delay and delay[0]:
                    time.sleep(delay[0])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ScriptServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 (started at once; `shutdown()` stops it) that answers
    every completion from `script`, with {title} replaced by the number the prompt gave that source
    (the local provider titles a file by its first heading); streams it a few characters at a time and holds
    everything after `hold` until `release` is set. `prompts` lists what it was sent."""

    daemon_threads = True

    def __init__(self, script: str, hold: str | None = None):
        super().__init__(("127.0.0.1", 0), ScriptHandler)
        self.script, self.hold = script, hold
        self.reached, self.release = threading.Event(), threading.Event()
        self.prompts: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def answer(self, prompt: str) -> str:
        numbers = {title: n for n, title in re.findall(r"^\[(\d+)\] (.+?) \(", prompt, re.M)}
        return re.sub(r"\{(.+?)\}", lambda m: numbers.get(m.group(1), "9"), self.script)


class ScriptHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        server: ScriptServer = self.server
        server.prompts.append(body.get("prompt", ""))
        text = server.answer(body.get("prompt", ""))
        if not body.get("stream"):
            self._json({"choices": [{"text": text, "finish_reason": "stop"}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        held = text.index(server.hold) + len(server.hold) if server.hold else len(text)
        for i in range(0, len(text), 3):
            if i >= held and not server.reached.is_set():
                server.reached.set()
                server.release.wait(30)
            self.wfile.write(f"data: {json.dumps({'choices': [{'text': text[i : i + 3]}]})}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.005)
        self.wfile.write(b'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')


# -- a terminal ---------------------------------------------------------------------------------------


class Terminal:
    """`korani ARGS` on a pty of cols × rows, its output drawn by pyte."""

    def __init__(self, argv: list[str], home, cols: int = 80, rows: int = 24):
        import pyte  # in korani[dev]; the tests that use a Terminal skip without it

        self.cols, self.rows = cols, rows
        pid, fd = pty.fork()
        if pid == 0:  # the child: korani on a terminal of this size
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(REPO)
            # An explicit environment: readline, once imported here, exports LINES and COLUMNS
            # behind os.environ's back, and rich would believe them over the pty's size.
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
            env.update({"KORANI_HOME": str(home), "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1"})
            os.execve(sys.executable, [sys.executable, "-m", "korani_cli", *argv], env)
        self.pid, self.fd = pid, fd
        self.screen = pyte.HistoryScreen(cols, rows, history=100_000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.status: int | None = None

    def pump(self, until, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while not until(self):
            if time.monotonic() > deadline:
                return False
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    return until(self)
                self.raw += data
                self.stream.feed(data)
        return True

    def settle(self, quiet: float = 0.5, timeout: float = 20) -> None:
        """Read until nothing has come for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and select.select([self.fd], [], [], quiet)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data
            self.stream.feed(data)

    def lines(self) -> list[str]:
        """Every line a person could read: the scrollback, then the screen, without trailing blank rows."""

        def row(line) -> str:
            return "".join(line[x].data for x in range(self.cols)).rstrip()

        out = [row(line) for line in self.screen.history.top] + [
            row(self.screen.buffer[y]) for y in range(self.rows)
        ]
        while out and not out[-1]:
            out.pop()
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def at_prompt(self, count: int = 1) -> bool:
        return self.text().endswith("나>") and self.text().count("나>") >= count

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.settle(0.1, 1)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"korani did not exit: {self.text()[-500:]}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


# -- training ------------------------------------------------------------------------------------------

RECIPE = REPO / "configs" / "korani-5.8b.yaml"


def smoke_config(prepared: Path, output: Path, **overrides):
    """The shipped recipe on the `prepared` data set, writing to `output`, with `overrides`."""
    from dataclasses import replace

    from korani_cli.train.config import load_config

    return replace(load_config(RECIPE), data=str(prepared), output=str(output), **overrides)


class QuietProgress:
    """A training progress reporter that shows nothing."""

    def notice(self, m):
        pass

    def start(self, *a):
        pass

    def step(self, *a):
        pass

    def finish(self):
        pass
