"""Chat commands of issue 12: `/모델 NAME` switches the model, Tab completes commands,
`/다시` answers the last question again; and a model alias with its own chat
template (demo-chat) is prompted in it unless a template was chosen.

/모델 is driven through the real `korani chat` against two OpenAI-compatible
servers on 127.0.0.1; /다시 through a session on a scripted backend and a real
SQLite history; Tab through a pty (tests/support.py's Terminal).
"""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from rich.console import Console
from support import SEJONG, ScriptedBackend, ScriptServer, Terminal, chat_session, run_korani
from support import drive as drive_at

from korani_cli.chat.history import History
from korani_cli.chat.repl import complete_command


def drive(session, text: str) -> tuple[str, str]:
    return drive_at(session, text, width=200)  # wide: a line of the chat's own text is never wrapped


def rows(db) -> list[tuple]:
    return (
        sqlite3.connect(db)
        .execute("SELECT role, content FROM messages WHERE role != 'reset' ORDER BY id")
        .fetchall()
    )


# -- /모델 NAME ---------------------------------------------------------------------------


@pytest.mark.slow
def test_model_switch_loads_the_new_model_and_the_session_remembers_it(tmp_path):
    first, second = ScriptServer("첫 모델의 답입니다."), ScriptServer("둘째 모델의 답입니다.")
    a, b = f"openai:scripted@{first.url}", f"openai:scripted@{second.url}"
    home = tmp_path / "home"
    try:
        proc = run_korani(
            "chat",
            "--model",
            a,
            "-t",
            "0",
            env={"KORANI_HOME": str(home)},
            input=f"안녕\n/모델 {b}\n다시 안녕\n/모델 {tmp_path}/missing.gguf\n또 안녕\n/모델\n",
        )
    finally:
        first.shutdown()
        second.shutdown()
    assert proc.returncode == 0, proc.stderr
    answers = [line for line in proc.stdout.splitlines() if "답입니다" in line]
    assert answers == ["첫 모델의 답입니다.", "둘째 모델의 답입니다.", "둘째 모델의 답입니다."], proc.stdout
    assert f"모델을 바꿨습니다: {b} · 백엔드 openai" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.gguf" in errors[0], proc.stderr  # one line; the old model stays
    assert f"모델은 그대로 {b} 입니다" in proc.stderr
    assert len(first.prompts) == 1 and len(second.prompts) == 2
    db = sqlite3.connect(home / "data" / "history.sqlite")
    assert db.execute("SELECT model FROM sessions").fetchall() == [(b,)]
    assert [m for (m,) in db.execute("SELECT model FROM messages WHERE role = 'assistant' ORDER BY id")] == [
        a,
        b,
        b,
    ]
    listing = run_korani("history", "list", "--json", env={"KORANI_HOME": str(home)})
    assert json.loads(listing.stdout)[0]["model"] == b  # --continue would resume with it


def test_model_switch_without_a_chooser_says_so(tmp_path):
    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend())
    _, err = drive(session, "/모델 demo\n")
    assert "모델을 바꿀 수 없습니다" in err


# -- Tab --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, begidx, expected",
    [
        ("/도", 0, ["/도움말 "]),
        ("/re", 0, ["/reset ", "/retry "]),
        ("/다", 0, ["/다시 "]),
        ("/", 5, []),  # not the first word: a question may contain a slash
        ("도", 0, []),
    ],
)
def test_complete_command(text, begidx, expected):
    got = []
    while (match := complete_command(text, len(got), begidx)) is not None:
        got.append(match)
    assert got == expected


@pytest.mark.slow
def test_tab_completes_a_command_on_a_terminal(tmp_path):
    pytest.importorskip("pyte", reason="pyte draws the screen this test reads")

    server = ScriptServer("답입니다.")
    term = Terminal(["chat", "--model", f"openai:scripted@{server.url}"], tmp_path / "home")
    try:
        assert term.pump(Terminal.at_prompt), term.text()
        term.type("/도\t")
        assert term.pump(lambda t: "나> /도움말" in t.text(), 10), term.text()
        term.type("\r")
        assert term.pump(lambda t: t.at_prompt(2), 10), term.text()
        assert "/다시" in term.text() and not server.prompts
    finally:
        term.close()
        server.shutdown()


# -- /다시 --------------------------------------------------------------------------------


def test_retry_answers_again_and_replaces_the_last_answer(tmp_path):
    backend = ScriptedBackend(["첫 답.", "다시 만든 답.", "셋째 답."])
    history = History(tmp_path / "h.sqlite")
    session = chat_session(history, backend)
    out, _ = drive(session, "질문\n/다시\n다음 질문\n")
    assert "첫 답." in out and "다시 만든 답." in out
    assert [m.content for m in backend.prompts[1]] == ["질문"]  # the replaced answer is not in the prompt
    assert [m.content for m in backend.prompts[2]] == ["질문", "다시 만든 답.", "다음 질문"]
    assert rows(tmp_path / "h.sqlite") == [
        ("user", "질문"),
        ("replaced", "첫 답."),
        ("assistant", "다시 만든 답."),
        ("user", "다음 질문"),
        ("assistant", "셋째 답."),
    ]
    assert [m.content for m in history.messages(session.session_id)] == [
        "질문",
        "다시 만든 답.",
        "다음 질문",
        "셋째 답.",
    ]
    assert history.count(session.session_id) == 4


def test_retry_with_nothing_asked_yet(tmp_path):
    backend = ScriptedBackend()
    session = chat_session(History(tmp_path / "h.sqlite"), backend)
    out, _ = drive(session, "/다시\n")
    assert "다시 답할 질문이 없습니다" in out and backend.prompts == []


@pytest.mark.slow
def test_retry_of_a_search_answers_from_the_same_sources(tmp_path, monkeypatch):
    from korani_cli.search.pipeline import SearchOptions

    monkeypatch.setenv("KORANI_HOME", str(tmp_path / "home"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "sejong.md").write_text(f"# 세종\n\n{SEJONG[2]}\n", encoding="utf-8")
    backend = ScriptedBackend(
        ["세종은 1443년에 훈민정음을 창제하였다 [1].", "세종은 조선의 네 번째 왕이다 [1]."]
    )
    opts = SearchOptions(providers=("local",), local_dir=docs, embedder="none", use_cache=False)
    history = History(tmp_path / "h.sqlite")
    session = chat_session(history, backend, search_options=opts)
    (docs / "later.md").write_text("# 나중\n\n세종은 나중에 추가된 문서에도 나온다.\n", encoding="utf-8")
    out, err = drive(session, "/검색 세종은 무엇을 했나요?\n/다시\n")
    assert "창제하였다[1]" in out and "네 번째 왕이다[1]" in out, (out, err)
    assert backend.prompts[1] == backend.prompts[0]  # same question, same sources, no old answer
    stored = [(r, c) for r, c in rows(tmp_path / "h.sqlite")]
    assert [r for r, _ in stored] == ["user", "replaced", "assistant"]
    assert history.messages(session.session_id)[-1].citations[0]["url"].endswith("sejong.md")


# -- a model's own template --------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, env, config, flag, expected",
    [
        ("demo-chat", {}, "", None, "model"),  # the alias's own chat template
        ("demo", {}, "", None, "korani"),
        ("korani-5.8b", {}, "", None, "korani"),
        ("demo-chat", {}, "", "korani", "korani"),  # --template wins
        ("demo-chat", {"KORANI_TEMPLATE": "korani"}, "", None, "korani"),
        ("demo-chat", {}, 'template = "korani"\n', None, "korani"),  # and so does the config file
        (None, {}, 'model = "demo-chat"\n', None, "model"),  # the model named by the config file
    ],
)
def test_a_model_with_its_own_chat_template_uses_it_unless_told(
    tmp_path, monkeypatch, model, env, config, flag, expected
):
    from korani_cli.config import load_settings

    monkeypatch.delenv("KORANI_TEMPLATE", raising=False)
    monkeypatch.delenv("KORANI_MODEL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "config.toml"
    path.write_text(config, encoding="utf-8")
    assert load_settings({"model": model, "template": flag}, config_path=path).template == expected


# -- one language per surface -------------------------------------------------------------------

# ASCII words the Korean chat may show: command aliases, program and file names, key names.
ALLOWED = {
    "search",
    "sources",
    "reset",
    "save",
    "history",
    "model",
    "retry",
    "file",  # /file and /system: the English aliases of /파일 and /시스템
    "system",
    "help",
    "exit",
    "quit",
    "korani",
    "list",
    "demo",
    "chat",
    "Markdown",
    "Tab",
    "Ctrl",
    "scripted",
    "test",
    "openai",
    "korani",
    "UTF",
    "https",
    "example",
    "sejong",
    "URL",
}


@pytest.mark.parametrize(
    "typed",
    [
        "/도움말",
        "/출처",
        "/기록",
        "/모델",
        "/저장",
        "/다시",
        "/초기화",
        "/검섹",
        "/검색",
        "/모델 demo-chat",
        "질문\n/기록",
        "질문\n/모델",
        "\udcff 깨진 입력",
    ],
)
def test_the_chat_speaks_korean(tmp_path, typed):
    import re

    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend(["답입니다."]))
    out, err = drive(session, typed + "\n")
    shown = re.sub(r"\b[0-9a-f]{12}\b", "", (out + err).replace("답입니다.", ""))  # session ids
    assert shown.strip()
    english = set(re.findall(r"[A-Za-z]{3,}", shown)) - ALLOWED
    assert not english, shown


def test_history_command_counts_messages_in_korean(tmp_path):
    session = chat_session(History(tmp_path / "h.sqlite"), ScriptedBackend(["답입니다."]))
    out, _ = drive(session, "질문\n/기록\n")
    assert "scripted  메시지 2개  질문" in out


def test_chat_notices_are_korean(tmp_path):
    backend = ScriptedBackend(["가" * 60], context_length=256 + 300)
    session = chat_session(History(tmp_path / "h.sqlite"), backend)
    _, err = drive(session, "".join(f"질문 {i} {'나' * 40}\n" for i in range(6)))
    assert "알림: 대화가 길어져" in err and "note:" not in err


def test_data_prepare_progress_labels_are_english():
    import re

    from rich.progress import Progress

    from korani_cli.commands.data import RichProgress, _progress_columns

    buffer = io.StringIO()
    with Progress(*_progress_columns(), console=Console(file=buffer, width=120, force_terminal=True)) as bars:
        progress = RichProgress(bars)
        for stage in ("read", "clean", "dedup", "write"):
            progress.start(stage, 10)
            progress.advance(stage, 5)
    shown = buffer.getvalue()
    assert all(label in shown for label in ("reading", "cleaning", "deduplicating", "writing")), shown
    assert not re.search("[가-힣]", shown)


# -- /모델 with hostile names: one error line each, the chat and its model go on ------------------------

HOSTILE_MODELS = [
    # name typed after /모델 → a fragment of its one error line
    ("openai:x", "no server URL for 'openai:x'"),
    (
        "tests/../korani_cli",
        "holds no model",
    ),  # a traversal to a directory that exists wherever the checkout is
    ("a" * 3000, "as a model path (File name too long)"),
    ("\x1b[31mred", "no such model file or directory: [31mred"),
    ("/dev/null.gguf", "GGUF file not found"),
    ("openai:scripted@http://[::1", "must be an http:// or https:// URL with a host"),
]


@pytest.fixture(scope="module")
def hostile_switches(tmp_path_factory):
    server = ScriptServer("답입니다.")
    home = tmp_path_factory.mktemp("hostile-models")
    try:
        typed = "".join(f"/모델 {name}\n" for name, _ in HOSTILE_MODELS) + "안녕\n"
        proc = run_korani(
            "chat", "--model", f"openai:scripted@{server.url}", env={"KORANI_HOME": str(home)}, input=typed
        )
    finally:
        server.shutdown()
    return proc, server


@pytest.mark.slow
@pytest.mark.parametrize("row", range(len(HOSTILE_MODELS)), ids=[n[:20] for n, _ in HOSTILE_MODELS])
def test_a_model_that_cannot_be_switched_to_is_one_line(hostile_switches, row):
    proc, server = hostile_switches
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(HOSTILE_MODELS), proc.stderr
    assert HOSTILE_MODELS[row][1] in errors[row] and "\x1b" not in errors[row]
    assert (
        proc.stdout.strip().endswith("답입니다.") and len(server.prompts) == 1
    )  # the chat went on, on its model
