"""openai backend against OpenAI-compatible servers on 127.0.0.1: llama-cpp-python's own, and
servers written here at the socket level that misbehave as real ones do (ignore max_tokens,
answer without a choice, close a kept-alive connection, drop a request, refuse stream_options)."""

import json
import select
import socket
import threading

import pytest
from support import Terminal, run_korani

from korani_cli.backends import GenerationParams
from korani_cli.backends.openai import MAX_CHARS_PER_TOKEN, normalise_base_url
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, ModelLoadError, UsageError
from korani_cli.models import load_backend, resolve
from korani_cli.template import user

pytestmark = pytest.mark.slow


def connect(url: str, model: str = "", template: str = "korani"):
    settings = Settings(template=template)
    return load_backend(resolve(f"openai:{model}@{url}", settings), settings)


def test_base_url_normalisation():
    assert normalise_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalise_base_url("https://gw.example/api/v1") == "https://gw.example/api/v1"


def test_spec_without_url_needs_one():
    with pytest.raises(UsageError, match="no server URL"):
        resolve("openai:m", Settings())
    assert resolve("openai:m", Settings(openai_base_url="http://x:1/v1")).base_url == "http://x:1/v1"


def test_streaming_and_whole_answers_agree(openai_server):
    backend = connect(openai_server)  # no model name: the first served one is picked
    assert backend.model and backend.info.backend == "openai"
    messages = [user("What is the capital of France?")]
    params = GenerationParams(max_new_tokens=30, temperature=0.0, seed=1)
    streamed = backend.stream(messages, params)
    chunks = list(streamed)
    whole = backend.stream(
        messages, GenerationParams(max_new_tokens=30, temperature=0.0, seed=1, stream=False)
    )
    whole_text = whole.text()
    assert len(chunks) > 1, "the SSE stream should arrive in pieces"
    assert "".join(chunks) == whole_text and "France" in whole_text
    assert whole.usage.prompt_tokens and whole.usage.completion_tokens
    assert whole.usage.finish_reason in ("eos", "length")
    assert streamed.usage.completion_tokens


def test_chat_completions_with_the_models_template(openai_server):
    backend = connect(openai_server, template="model")
    gen = backend.stream([user("Say hello.")], GenerationParams(max_new_tokens=20, temperature=0.0))
    assert gen.text().strip()


def test_unknown_served_model_is_named(openai_server):
    with pytest.raises(ModelLoadError, match="does not serve 'nope'"):
        connect(openai_server, model="nope")


def test_unreachable_server_is_a_model_load_error():
    from support import free_port

    with pytest.raises(ModelLoadError, match="cannot reach"):
        connect(f"http://127.0.0.1:{free_port()}/v1")


@pytest.mark.parametrize("stream", [True, False])
def test_server_error_is_a_generation_error(failing_server, stream):
    backend = connect(failing_server, model="broken")
    with pytest.raises(GenerationError, match="HTTP 500: CUDA out of memory"):
        backend.stream([user("hi")], GenerationParams(stream=stream)).text()


# -- servers that misbehave (issue 20's openai rows, issue 21's resend) --------------------------------


class Peer:
    """An OpenAI-compatible server on 127.0.0.1 written at the socket level, so that it can misbehave
    as real ones do: `handle(peer, conn)` serves one connection. `requests` lists every request it
    read in full (method, path, JSON body); `connections` counts the connections it accepted."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.handle = handle
        self.requests: list[tuple[str, str, dict]] = []
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handle(self, conn)
        except OSError:
            pass  # korani hung up: what a server sees when the client stops reading
        finally:
            conn.close()

    def read(self, conn) -> tuple[str, str, dict] | None:
        """One request, read in full; None when the client closed the connection."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        size = next(
            (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
        )
        while len(body) < size:
            body += conn.recv(65536)
        method, path, _ = lines[0].split(" ", 2)
        request = (method, path, json.loads(body) if body else {})
        self.requests.append(request)
        return request

    @staticmethod
    def send_json(conn, obj, keep_alive: bool = False) -> None:
        data = json.dumps(obj).encode()
        close = b"" if keep_alive else b"Connection: close\r\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (close, len(data), data)
        )

    @staticmethod
    def start_events(conn) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")

    @staticmethod
    def event(conn, obj) -> None:
        conn.sendall(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def posts(self) -> list[dict]:
        return [body for method, _, body in self.requests if method == "POST"]

    def close(self):
        self.stop.set()
        self.sock.close()


MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}
ANSWER = "서울은 대한민국의 수도이다."


def answer(peer: Peer, conn, body: dict, text: str = ANSWER, usage: dict | None = None) -> None:
    """A well-behaved answer to `body`: streamed a few characters an event, or whole."""
    if not body.get("stream"):
        peer.send_json(conn, {"choices": [{"text": text, "finish_reason": "stop"}], "usage": usage or {}})
        return
    peer.start_events(conn)
    for i in range(0, len(text), 4):
        peer.event(conn, {"choices": [{"text": text[i : i + 4], "finish_reason": None}]})
    peer.event(conn, {"choices": [{"text": "", "finish_reason": "stop"}]})
    if usage and body.get("stream_options", {}).get("include_usage"):
        peer.event(conn, {"choices": [], "usage": usage})
    conn.sendall(b"data: [DONE]\n\n")


def serving(respond):
    """A handler: GET /models answered on a kept-alive connection, each POST by respond(peer, conn, body)."""

    def handle(peer: Peer, conn):
        while (request := peer.read(conn)) is not None:
            method, _, body = request
            if method == "GET":
                peer.send_json(conn, MODELS, keep_alive=True)
                continue
            respond(peer, conn, body)
            return

    return handle


def endless_tokens(peer, conn, body):
    """Ignores max_tokens: one token an event, until the client hangs up."""
    peer.start_events(conn)
    for i in range(100_000):
        peer.event(conn, {"choices": [{"text": f" 말{i}", "finish_reason": None}]})


def one_huge_event(peer, conn, body):
    """Ignores max_tokens and sends its answer in one event."""
    peer.start_events(conn)
    peer.event(conn, {"choices": [{"text": "가" * 100_000, "finish_reason": "length"}]})
    conn.sendall(b"data: [DONE]\n\n")


def whole_with_usage(peer, conn, body):
    """Ignores max_tokens, answers whole and says how many tokens it made: 2,000 of 3 characters."""
    peer.send_json(
        conn,
        {
            "choices": [{"text": "나무 " * 2000, "finish_reason": "length"}],
            "usage": {"completion_tokens": 2000},
        },
    )


def whole_without_usage(peer, conn, body):
    peer.send_json(conn, {"choices": [{"text": "가" * 100_000, "finish_reason": "length"}]})


def no_choices(peer, conn, body):
    if body.get("stream"):
        peer.start_events(conn)
        peer.event(conn, {"choices": []})
        conn.sendall(b"data: [DONE]\n\n")
    else:
        peer.send_json(conn, {"choices": []})


def connect_to(peer: Peer, request_timeout: float = 1.0):
    settings = Settings(request_timeout=request_timeout)
    return load_backend(resolve(f"openai:m@{peer.url}", settings), settings)


# name → (respond, stream, max_new_tokens, what korani keeps: text, completion_tokens)
IGNORED_LIMIT = {
    # (white space around an answer is not shown, as with every backend)
    "streamed-token-by-token": (endless_tokens, True, 5, "말0 말1 말2 말3 말4", 5),
    "streamed-in-one-event": (one_huge_event, True, 5, "가" * 5 * MAX_CHARS_PER_TOKEN, 5),
    "whole-with-usage": (whole_with_usage, False, 5, "나무 나무 나무 나무 나무", 5),
    "whole-without-usage": (whole_without_usage, False, 5, "가" * 5 * MAX_CHARS_PER_TOKEN, None),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", IGNORED_LIMIT)
def test_a_server_that_ignores_max_tokens_is_cut_at_koranis_limit(case):
    respond, stream, limit, kept, tokens = IGNORED_LIMIT[case]
    peer = Peer(serving(respond))
    try:
        gen = connect_to(peer).stream([user("hi")], GenerationParams(max_new_tokens=limit, stream=stream))
        text = gen.text()
    finally:
        peer.close()
    assert text == kept
    assert gen.usage.finish_reason == "length" and gen.usage.completion_tokens == tokens
    assert gen.usage.limit_ignored  # the front end says so (below)
    assert [body["max_tokens"] for body in peer.posts()] == [limit]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("made", [5, 8], ids=["exactly", "three-more"])
def test_a_server_that_keeps_the_limit_is_never_cut(stream, made):
    """`made` tokens of four characters, one an event, for max_new_tokens=5: llama-cpp-python goes up
    to three tokens past the limit to finish a character split across byte tokens."""
    text = "가나다라" * made
    usage = {"prompt_tokens": 3, "completion_tokens": made}
    peer = Peer(serving(lambda p, c, b: answer(p, c, b, text, usage)))
    try:
        gen = connect_to(peer).stream([user("hi")], GenerationParams(max_new_tokens=5, stream=stream))
        assert gen.text() == text
    finally:
        peer.close()
    assert gen.usage.finish_reason == "eos" and not gen.usage.limit_ignored
    assert gen.usage.completion_tokens == made


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_without_choices_is_a_generation_error(stream):
    peer = Peer(serving(no_choices))
    try:
        with pytest.raises(GenerationError, match="answered without a choice"):
            connect_to(peer).stream([user("hi")], GenerationParams(stream=stream)).text()
    finally:
        peer.close()


HOSTILE_CLI = [
    # name, respond, argv after --model, exit code, what the one stderr line / the output says
    ("choices-empty", no_choices, ["hi"], 4, "answered without a choice"),
    ("ignores-max-tokens", whole_without_usage, ["--max-new-tokens", "5", "hi"], 0, "ignored max_tokens (5)"),
]


@pytest.mark.parametrize("name, respond, argv, code, said", HOSTILE_CLI, ids=[r[0] for r in HOSTILE_CLI])
def test_hostile_openai_servers_through_ask(name, respond, argv, code, said):
    peer = Peer(serving(respond))
    try:
        proc = run_korani("ask", "--model", f"openai:m@{peer.url}", "--no-log", *argv, timeout=120)
    finally:
        peer.close()
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    if code:
        assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], proc.stderr
    else:
        assert any(said in line for line in lines), proc.stderr
        assert proc.stdout.strip() == "가" * 5 * MAX_CHARS_PER_TOKEN


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["ask", "chat"])
def test_a_terminal_shows_the_cut_answer_then_why(tmp_path, command):
    pytest.importorskip("pyte", reason="pyte draws the screen this test reads")
    peer = Peer(serving(endless_tokens))
    model = ["--model", f"openai:m@{peer.url}", "--max-new-tokens", "5"]
    argv = ["ask", *model, "hi"] if command == "ask" else ["chat", *model, "--no-history"]
    term = Terminal(argv, tmp_path / "home", cols=200)
    try:
        if command == "chat":
            assert term.pump(Terminal.at_prompt, 60), term.text()
            term.type("hi\r")
            assert term.pump(lambda t: t.at_prompt(2), 60), term.text()
            term.type("\x04")
        assert term.wait_exit(60) == 0, term.text()
    finally:
        term.close()
        peer.close()
    lines = term.lines()
    answers = [i for i, line in enumerate(lines) if line == "말0 말1 말2 말3 말4"]
    # ask says it in English, the chat in Korean (one language per chat line, issue 22 §8).
    said = "ignored max_tokens (5)" if command == "ask" else "서버가 max_tokens(5)를 무시하고"
    notes = [i for i, line in enumerate(lines) if said in line]
    # The answer once, on its own line, and the note on a line of its own after it.
    assert len(answers) == 1 and len(notes) == 1 and notes[0] > answers[0], lines
    assert not any("말5" in line for line in lines)


# -- the resend of a request that never reached the server ---------------------------------------


def closes_idle_connections(peer: Peer, conn):
    """Lists its models on a kept-alive connection, then closes that connection as the next request
    arrives, without reading it (a keep-alive timeout crossing the request); answers on a new one."""
    request = peer.read(conn)
    if request is None:
        return
    if request[0] == "GET":
        peer.send_json(conn, MODELS, keep_alive=True)
        select.select([conn], [], [], 30)  # the next request is here: close with it unread
        return
    answer(peer, conn, request[2])


def drops_after_reading(peer: Peer, conn):
    """Lists its models on a kept-alive connection, reads the next request in full, then hangs up."""
    while (request := peer.read(conn)) is not None:
        if request[0] == "GET":
            peer.send_json(conn, MODELS, keep_alive=True)
            continue
        return


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_on_a_connection_the_server_had_closed_is_sent_again_once(stream):
    peer = Peer(closes_idle_connections)
    try:
        gen = connect_to(peer).stream([user("hi")], GenerationParams(stream=stream))
        assert gen.text() == ANSWER
    finally:
        peer.close()
    # The first request met the closed connection unread; the second, on a new one, was answered.
    assert len(peer.posts()) == 1 and peer.connections == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_the_server_read_and_dropped_is_not_sent_again(stream):
    peer = Peer(drops_after_reading)
    try:
        with pytest.raises(GenerationError, match="Server disconnected"):
            connect_to(peer).stream([user("hi")], GenerationParams(stream=stream)).text()
    finally:
        peer.close()
    assert len(peer.posts()) == 1 and peer.connections == 1


# -- usage ----------------------------------------------------------------------------------------


VLLM_REJECTS = {
    "object": "error",
    "message": "[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are "
    "not permitted'}]",
    "type": "BadRequestError",
    "code": 400,
}


def rejects_stream_options(peer, conn, body):
    """An older server whose request schema forbids unknown fields."""
    if "stream_options" in body:
        data = json.dumps(VLLM_REJECTS).encode()
        conn.sendall(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        return
    answer(peer, conn, body)


def test_a_server_that_rejects_stream_options_is_asked_again_without():
    peer = Peer(serving(rejects_stream_options))
    try:
        backend = connect_to(peer)
        first = backend.stream([user("hi")], GenerationParams())
        assert first.text() == ANSWER
        assert backend.stream([user("hi")], GenerationParams()).text() == ANSWER
    finally:
        peer.close()
    # Refused once; from then on this server is not asked for its usage.
    assert ["stream_options" in body for body in peer.posts()] == [True, False, False]
    assert first.usage.prompt_tokens is None and first.usage.completion_tokens == 4  # its events, counted


def test_the_prompt_tokens_of_a_stream_come_from_the_servers_usage():
    usage = {"prompt_tokens": 42, "completion_tokens": 9}
    peer = Peer(serving(lambda p, c, b: answer(p, c, b, usage=usage)))
    try:
        gen = connect_to(peer).stream([user("hi")], GenerationParams())
        assert gen.text() == ANSWER
    finally:
        peer.close()
    assert (gen.usage.prompt_tokens, gen.usage.completion_tokens) == (42, 9)
    assert peer.posts()[0]["stream_options"] == {"include_usage": True}
