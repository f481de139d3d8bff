"""Hostile inputs and conditions for `korani eval` (issue 20): files nested 100,000 deep, a set with
no text, a server that fails half its requests, two runs in one directory, runs on different sets.

Each row is what a user (or a bad file, or a bad server) can do to the real CLI, with the
documented exit code and a fragment of the one line it must get. The servers are loopback
OpenAI-compatible ones written here; backoff is tested with a fake clock, and the CLI rows
that retry for real wait a few seconds at most.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import REPO

from korani_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_GENERATION, EXIT_USAGE, GenerationError

pytestmark = pytest.mark.timeout(300)

# Twelve one-sentence paragraphs, one question each: (title, context, question, gold answer).
TOPICS = [
    (
        "세종대왕",
        "세종대왕은 1443년에 훈민정음을 창제하였다.",
        "세종대왕이 훈민정음을 창제한 해는?",
        "1443년",
    ),
    ("한라산", "한라산의 높이는 1947미터이다.", "한라산의 높이는?", "1947미터"),
    ("부산항", "부산항은 대한민국 최대의 무역항이다.", "대한민국 최대의 무역항은?", "부산항"),
    (
        "김장",
        "김장 문화는 2013년 유네스코 인류무형문화유산에 등재되었다.",
        "김장 문화가 등재된 해는?",
        "2013년",
    ),
    ("2호선", "서울 지하철 2호선은 1984년에 전 구간이 개통되었다.", "2호선이 전 구간 개통된 해는?", "1984년"),
    ("한산도", "이순신은 1592년 한산도 대첩에서 승리하였다.", "한산도 대첩이 있었던 해는?", "1592년"),
    ("백두산", "백두산의 높이는 2744미터이다.", "백두산의 높이는?", "2744미터"),
    ("경주", "경주는 신라의 수도였다.", "신라의 수도는?", "경주"),
    ("독도", "독도는 경상북도 울릉군에 속한다.", "독도가 속한 군은?", "울릉군"),
    ("한강", "한강은 서울을 가로지르는 강이다.", "서울을 가로지르는 강은?", "한강"),
    ("태극기", "태극기의 가운데에는 태극 문양이 있다.", "태극기 가운데의 문양은?", "태극"),
    ("훈민정음", "훈민정음은 1446년에 반포되었다.", "훈민정음이 반포된 해는?", "1446년"),
]
GOLD = {question: gold for _, _, question, gold in TOPICS}


def write_set(path: Path, topics=TOPICS) -> Path:
    data = [
        {
            "title": title,
            "paragraphs": [
                {
                    "context": context,
                    "qas": [{"id": f"q{i:02d}", "question": question, "answers": [{"text": gold}]}],
                }
            ],
        }
        for i, (title, context, question, gold) in enumerate(topics)
    ]
    path.write_text(json.dumps({"data": data}, ensure_ascii=False), encoding="utf-8")
    return path


def korani(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI as a user's shell runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "KORANI_HOME": str(cwd / "home"),
    }
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def popen(*args, cwd: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "KORANI_HOME": str(cwd / "home"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "korani_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The run's one error line: the last line on stderr, and the only `error:` line, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and " — " in lines[-1], proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr[-2000:]
    return lines[-1]


def item_ids(run: Path) -> list[str]:
    items = run / "items.jsonl"
    if not items.exists():
        return []
    return [json.loads(line)["id"] for line in items.read_text(encoding="utf-8").splitlines()]


# -- a loopback OpenAI-compatible server that fails on purpose -----------------------------------


class Server:
    """/v1/models and streaming /v1/completions. `fail(question, attempt)` says how the
    attempt-th request (1-based) for a question fails: None (it answers), "500", "reset"
    (the connection is cut with no answer) or "garbage" (200 with an event that is not JSON).
    It answers the gold answer with a footnote for every other question, else "모르겠습니다."."""

    def __init__(self, fail=lambda question, attempt: None, delay: float = 0.0):
        self.fail, self.delay = fail, delay
        self.asked: list[str] = []
        self.failures = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self):
                self._send(
                    200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                )

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = request["prompt"].rsplit("질문: ", 1)[-1].split("\n\n### Bot")[0]
                with owner.lock:
                    owner.asked.append(question)
                    attempt = owner.asked.count(question)
                how = owner.fail(question, attempt)
                if how:
                    with owner.lock:
                        owner.failures += 1
                if how == "500":
                    return self._send(500, b'{"error": {"message": "worker overloaded"}}')
                if how == "reset":
                    # SO_LINGER 0: close() sends RST, as a crashed worker's socket does.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if how == "garbage":
                    return self._send(200, b"data: {this is not json\n\n", "text/event-stream")
                time.sleep(owner.delay)
                index = list(GOLD).index(question) if question in GOLD else 1
                text = f"{GOLD[question]}입니다[1]." if index % 2 == 0 else "모르겠습니다."
                events = [
                    {"choices": [{"text": text, "finish_reason": None}]},
                    {
                        "choices": [{"text": "", "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 5},
                    },
                ]
                body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events)
                self._send(200, (body + "data: [DONE]\n\n").encode(), "text/event-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # the cut connections, on purpose
        self.model = f"openai:m@http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(**kwargs) -> Server:
        made.append(Server(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def rag(server: Server, set_file: Path, out: Path, *extra) -> list:
    return [
        "eval",
        "rag",
        "--model",
        server.model,
        "--set",
        set_file,
        "--embedder",
        "none",
        "--top-k",
        "2",
        "--unanswerable",
        "0",
        "-o",
        out,
        "--json",
        *extra,
    ]


# -- one line and the documented code: files nested 100,000 deep, a set with no text ---------------

DEEP = "[" * 100_000 + "]" * 100_000
UNREACHABLE = "openai:m@http://127.0.0.1:9/v1"  # the discard port on loopback: nothing answers


def _run_dir(t: Path, summary: str) -> Path:
    from korani_cli.outputs import write_marker

    run = t / f"run{len(list(t.glob('run*')))}"
    run.mkdir()
    write_marker(run, "eval rag", settings={})
    (run / "summary.json").write_text(summary, encoding="utf-8")
    return run


def _file(t: Path, name: str, text: str) -> Path:
    (t / name).write_text(text, encoding="utf-8")
    return t / name


def _resumed_with_items(t: Path, items: str) -> Path:
    """A run directory the CLI made (its model could not load) whose items.jsonl is then `items`."""
    out = t / "run"
    made = korani("eval", "rag", "--set", write_set(t / "s.json"), "--model", UNREACHABLE, "-o", out, cwd=t)
    assert made.returncode == 3, made.stderr
    (out / "items.jsonl").write_text(items, encoding="utf-8")
    return out


def _empty_contexts(t: Path) -> Path:
    return write_set(t / "empty.json", [(title, "", q, g) for title, _, q, g in TOPICS[:3]])


FILE_ROWS = [
    # (id, argv builder, exit code, fragment) — all refused before any model is loaded
    (
        "set 100,000 deep",
        lambda t: ["rag", "--set", _file(t, "deep.json", DEEP)],
        EXIT_DATA,
        "nested too deeply",
    ),
    (
        "prompts line 100,000 deep",
        lambda t: ["chat", "--prompts", _file(t, "p.jsonl", '{"instruction": "안녕"}\n' + DEEP + "\n")],
        EXIT_DATA,
        "p.jsonl line 2 is nested too deeply",
    ),
    (
        "summary 100,000 deep: show",
        lambda t: ["show", _run_dir(t, DEEP)],
        EXIT_DATA,
        "summary.json is not JSON",
    ),
    (
        "summary 100,000 deep: compare",
        lambda t: ["compare", _run_dir(t, DEEP), _run_dir(t, DEEP)],
        EXIT_DATA,
        "summary.json is not JSON",
    ),
    (
        "items.jsonl line 100,000 deep: resume",
        lambda t: ["rag", "--set", t / "s.json", "-o", _resumed_with_items(t, DEEP + "\n")],
        EXIT_DATA,
        "items.jsonl line 1 is not an item korani wrote",
    ),
    (
        "every context empty",
        lambda t: ["rag", "--set", _empty_contexts(t)],
        EXIT_DATA,
        "every paragraph's context is empty",
    ),
    (
        "config.toml 10,000 deep",
        lambda t: (
            (t / "home").mkdir(exist_ok=True),
            (t / "home" / "config.toml").write_text("model = " + "[" * 10_000 + "]" * 10_000 + "\n"),
            ["rag", "--set", write_set(t / "s.json")],
        )[-1],
        EXIT_CONFIG,
        "is nested too deeply to be korani's config",
    ),
]


@pytest.mark.parametrize("argv, code, fragment", [r[1:] for r in FILE_ROWS], ids=[r[0] for r in FILE_ROWS])
def test_hostile_files_are_one_line_with_their_code(tmp_path, argv, code, fragment):
    args = argv(tmp_path)
    if args[0] in ("rag", "chat"):
        args += ["--model", UNREACHABLE]  # every row is refused before a model would load
    proc = korani("eval", *args, cwd=tmp_path)
    line = error_line(proc)
    assert proc.returncode == code, line
    assert fragment in line
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_a_question_whose_pool_is_empty_is_asked_without_sources(tmp_path, servers):
    """A one-paragraph set with --unanswerable 1 leaves nothing to rank (numpy warnings and
    `max() arg is an empty sequence` before): the model is asked with no sources."""
    server = servers()
    set_file = write_set(tmp_path / "one.json", TOPICS[:1])
    args = rag(server, set_file, tmp_path / "run")
    args[args.index("--unanswerable") + 1] = "1"
    proc = korani(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["items"] == 1 and summary["unanswerable"] == 1 and summary["complete"]


# -- a server that fails: retried with backoff, finished items kept, a rerun makes progress --------


def _rotating(question: str, attempt: int):
    """Every question's first try fails, every other question's second try too: a 500, a reset
    connection and a non-JSON answer in turn — about half of all requests fail."""
    index = list(GOLD).index(question)
    if attempt == 1 or (attempt == 2 and index % 2):
        return ("500", "reset", "garbage")[(index + attempt) % 3]
    return None


@pytest.mark.slow
def test_a_server_failing_half_its_requests_loses_no_item(tmp_path, servers):
    """Issue 20: with --concurrency 8 this exited 4 with "kept 0 finished items" on every rerun."""
    server = servers(fail=_rotating)
    out = tmp_path / "run"
    proc = korani(*rag(server, write_set(tmp_path / "set.json"), out, "--concurrency", "8"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["items"] == len(TOPICS)
    assert sorted(item_ids(out)) == [f"q{i:02d}" for i in range(len(TOPICS))]  # each once
    assert server.failures >= len(TOPICS) and len(server.asked) == len(TOPICS) + server.failures


@pytest.mark.slow
def test_an_item_that_fails_every_try_is_left_for_the_rerun(tmp_path, servers):
    """The others finish and are kept as they finish; exit 4 names what failed; the rerun asks
    only the failed item."""
    broken = TOPICS[3][2]
    server = servers(fail=lambda question, attempt: "500" if question == broken else None, delay=0.2)
    set_file, out = write_set(tmp_path / "set.json"), tmp_path / "run"
    proc = korani(*rag(server, set_file, out, "--concurrency", "4"), cwd=tmp_path)
    line = error_line(proc)
    assert proc.returncode == EXIT_GENERATION, line
    assert f"1 of {len(TOPICS)} items failed, each after 4 tries" in line and "HTTP 500" in line
    assert f"kept {len(TOPICS) - 1} finished items in {out}" in line and "rerun with the same -o" in line
    assert sorted(item_ids(out)) == sorted(f"q{i:02d}" for i in range(len(TOPICS)) if i != 3)
    assert server.asked.count(broken) == 4
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["complete"] is False

    server.fail, server.asked = (lambda question, attempt: None), []  # the same server, mended
    again = korani(*rag(server, set_file, out, "--concurrency", "4"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert server.asked == [broken]
    assert sorted(item_ids(out)) == [f"q{i:02d}" for i in range(len(TOPICS))]


class FakeClock:
    def __init__(self):
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


def _evaluate(tmp_path, todo, work, **retry):
    from korani_cli.eval.run import Retry, RunDir, evaluate

    clock = FakeClock()
    with RunDir.open(tmp_path / "run", "eval rag", {}) as run:
        try:
            evaluate(todo, work, run, retry=Retry(sleep=clock.sleep, **retry))
            error = None
        except GenerationError as exc:
            error = exc
    return run, clock, error


def test_backoff_doubles_up_to_its_cap_and_stops_after_the_last_try(tmp_path):
    calls = []

    def work(item):
        calls.append(item)
        raise GenerationError("the server answered HTTP 500: worker overloaded", "check the server")

    run, clock, error = _evaluate(
        tmp_path, ["a"], work, attempts=5, first_delay=1.0, max_delay=3.0, jitter=lambda: 1.0
    )
    assert calls == ["a"] * 5 and clock.pauses == [1.0, 2.0, 3.0, 3.0]
    assert error is not None and error.exit_code == EXIT_GENERATION and "1 of 1 items failed" in error.what
    assert run.done == {}
    _, clock, _ = _evaluate(tmp_path, ["a"], work, attempts=3, first_delay=1.0, jitter=lambda: 0.0)
    assert clock.pauses == [0.5, 1.0]  # the jitter scales each pause by 0.5 to 1


def test_a_flaky_item_is_kept_once_it_answers_and_the_others_go_on(tmp_path):
    tries: dict[str, int] = {}

    def work(item):
        tries[item] = tries.get(item, 0) + 1
        if item == "b" and tries[item] < 3:
            raise GenerationError("the stream broke off", "check that the server is up")
        if item == "c":
            raise GenerationError("the server answered HTTP 500", "check the server")
        return {"id": item}

    run, clock, error = _evaluate(tmp_path, ["a", "b", "c", "d"], work, attempts=3, jitter=lambda: 1.0)
    assert sorted(run.done) == ["a", "b", "d"] and tries == {"a": 1, "b": 3, "c": 3, "d": 1}
    assert clock.pauses == [0.5, 1.0, 0.5, 1.0]
    assert "1 of 4 items failed, each after 3 tries" in error.what and "kept 3 finished items" in error.fix
    assert item_ids(run.path) == ["a", "b", "d"]


def test_items_failing_in_a_row_stop_the_run(tmp_path):
    calls = []

    def work(item):
        calls.append(item)
        if item == 1:
            return {"id": str(item)}
        raise GenerationError("the request failed (connection refused)", "check that the server is up")

    # 0 fails, 1 answers, then 2, 3 and 4 fail: three in a row (of four failed in all) stop the run.
    run, clock, error = _evaluate(tmp_path, list(range(20)), work, attempts=2, give_up=3)
    assert "stopped after 3 items in a row failed, each after 2 tries" in error.what
    assert "check that the server is up" in error.fix and "kept 1 finished item in" in error.fix
    assert calls == [0, 0, 1, 2, 2, 3, 3, 4, 4] and sorted(run.done) == ["1"]


# -- two runs in one directory -----------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused_with_the_pid(tmp_path):
    from korani_cli.errors import UsageError
    from korani_cli.eval.run import RunDir

    first = RunDir.open(tmp_path / "run", "eval rag", {})
    with pytest.raises(UsageError) as refused:
        RunDir.open(tmp_path / "run", "eval rag", {})
    assert refused.value.exit_code == EXIT_USAGE
    assert f"is in use by another korani run (PID {os.getpid()})" in refused.value.what
    first.close()
    with RunDir.open(tmp_path / "run", "eval rag", {}) as again:
        assert again.path == tmp_path / "run"


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_is_refused_and_a_killed_one_blocks_nothing(tmp_path, servers):
    """Issue 20: two runs with the same -o both exited 0 and items.jsonl held every id twice."""
    server = servers(delay=2.0)  # 24 s for the whole set: the second run comes well before its end
    set_file, out = write_set(tmp_path / "set.json"), tmp_path / "run"
    args = rag(server, set_file, out)
    first = popen(*args, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(item_ids(out)) < 1 and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = korani(*args, cwd=tmp_path)
        line = error_line(second)
        assert second.returncode == EXIT_USAGE, line
        assert f"{out} is in use by another korani run (PID {first.pid})" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert 1 <= len(item_ids(out)) < len(TOPICS)
    third = korani(*args, cwd=tmp_path)  # the kernel dropped the killed run's lock
    assert third.returncode == 0, third.stderr[-2000:]
    ids = item_ids(out)
    assert sorted(ids) == [f"q{i:02d}" for i in range(len(TOPICS))] and len(ids) == len(set(ids))


# -- comparing runs on other questions ---------------------------------------------------------------


@pytest.mark.slow
def test_compare_refuses_runs_on_different_sets_and_says_when_it_uses_common_items(tmp_path, servers):
    server = servers()
    full, one = write_set(tmp_path / "set.json"), write_set(tmp_path / "one.json", TOPICS[:1])
    for out, set_file, extra in (("a", full, []), ("b", one, []), ("c", full, ["--limit", "3"])):
        proc = korani(*rag(server, set_file, tmp_path / out, *extra), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]

    other = korani("eval", "compare", tmp_path / "a", tmp_path / "b", cwd=tmp_path)
    line = error_line(other)
    assert other.returncode == EXIT_USAGE, line
    assert "cannot compare runs on different sets" in line and "set.json" in line and "one.json" in line
    assert "12 items" in line and "1 item)" in line

    common = korani("eval", "compare", tmp_path / "a", tmp_path / "c", "--json", cwd=tmp_path)
    assert common.returncode == 0, common.stderr
    assert "compared on the 3 items all runs share (a: 12, c: 3)" in common.stderr
    a, c = json.loads(common.stdout)
    assert a["items"] == c["items"] == 3
    assert a["metrics"] == c["metrics"]  # the same server on the same questions: no Δ to invent
    full_summary = json.loads((tmp_path / "a" / "summary.json").read_text(encoding="utf-8"))
    assert full_summary["metrics"]["answer_correct"] != c["metrics"]["answer_correct"]
    table = korani("eval", "compare", tmp_path / "a", tmp_path / "c", cwd=tmp_path)
    assert table.returncode == 0 and "+0.0pt" in table.stdout and "compared on the 3 items" in table.stderr
