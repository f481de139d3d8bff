"""Hostile inputs to config, ask, chat, history and models, through the real CLI.

Each table row is one thing a careless or hostile user (or a hostile model or
server) can do; the row says what the user must see: the exit code and a
fragment of the single `error: … — …` line, and what must still be true of
their files afterwards. Servers here listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import REPO
from typer.testing import CliRunner

from korani_cli.chat.history import History
from korani_cli.cli import app
from korani_cli.errors import EXIT_CONFIG, EXIT_MODEL_LOAD, EXIT_USAGE

runner = CliRunner()
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))] + [
    # issue 20: bidi controls and zero-width characters (ZWNJ/ZWJ join visible text and stay)
    *"\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
]


def one_line(stderr: str) -> str:
    """The single error line a failure prints (no traceback, nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and " — " in lines[0], stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


def korani(
    *args: str,
    input: bytes | str | None = None,
    env: dict | None = None,
    cwd: Path = REPO,
    timeout: float = 120,
):
    """The CLI in a subprocess (bytes in, text out): what a shell user gets."""
    proc = subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=cwd,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


# -- 13, 15, 14: one validation for the config file (exit 5), environment (exit 5) and flags (exit 2) --------

CONFIG_FILE_ROWS = [
    # (config.toml content, fragment of the error)
    (b"max_new_tokens = -5\n", "'max_new_tokens' must be a whole number from 1"),
    (b"max_new_tokens = 0\n", "'max_new_tokens' must be a whole number from 1"),
    (b"max_new_tokens = true\n", "'max_new_tokens' must be a whole number"),
    (b"max_new_tokens = inf\n", "got inf"),
    (b"max_new_tokens = 5.5\n", "'max_new_tokens' must be a whole number"),
    (b"max_new_tokens = 10000000000\n", "'max_new_tokens' must be a whole number from 1 to 1000000"),
    (b'max_new_tokens = "many"\n', "'max_new_tokens' must be a whole number"),
    (b"temperature = nan\n", "'temperature' must be a finite number"),
    (b"temperature = -1\n", "'temperature' must be a finite number from 0"),
    (b"temperature = false\n", "'temperature' must be a finite number"),
    (b"top_p = 7\n", "'top_p' must be a finite number from 0 to 1"),
    (b"top_p = -inf\n", "'top_p' must be a finite number from 0 to 1"),
    (b"threads = 100000\n", "'threads' must be a whole number from 1 to"),
    (b"threads = 0\n", "'threads' must be a whole number from 1 to"),
    (b"n_ctx = 0\n", "'n_ctx' must be a whole number from 16"),
    (b"n_ctx = 100000000000\n", "'n_ctx' must be a whole number from 16"),
    (b'model = ""\n', "'model' must be non-empty text"),
    (b"model = 5\n", "'model' must be non-empty text"),
    (b"[model]\nname = 1\n", "'model' must be non-empty text"),
    (b'template = "chatml"\n', "'template' must be one of korani, model"),
    (b'openai_base_url = "ftp://x"\n', "'openai_base_url' must be an http:// or https:// URL"),
    (b'openai_base_url = "http://[::1"\n', "'openai_base_url' must be an http:// or https:// URL"),
    (b'model = "demo"\n\xff\xfe = 1\n', "is not UTF-8 text (byte 0xff at offset 15)"),
    (b"model = \n", "is not valid TOML"),
    (b'modle = "demo"\n', "unknown setting 'modle'"),
    # Issue 20: tomllib reads arrays recursively (RecursionError, exit 1 before) and digits with int().
    (b"model = " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "is nested too deeply to be korani's config"),
    (b"temperature = " + b"9" * 5000 + b"\n", "holds an integer of more than 4,300 digits"),
    # A value is quoted in a bounded excerpt, never whole.
    (b"model = [" + b"1, " * 10_000 + b"1]\n", "got [1, 1, 1, 1, ...]"),
]


@pytest.mark.parametrize(
    "content, fragment",
    CONFIG_FILE_ROWS,
    ids=[r[0].decode("utf-8", "replace")[:30] for r in CONFIG_FILE_ROWS],
)
@pytest.mark.parametrize("command", [["ask", "안녕?"], ["chat"], ["models", "resolve"]])
def test_a_bad_config_file_value_is_exit_5(home, content, fragment, command):
    (home / "config.toml").write_bytes(content)
    result = runner.invoke(app, command, input="")
    assert result.exit_code == EXIT_CONFIG, result.output
    line = one_line(result.stderr)
    assert fragment in line and str(home / "config.toml") in line
    assert len(line) < 400 + len(str(home)) * 2  # a value is quoted in an excerpt, never whole


@pytest.mark.timeout(60)  # reading a FIFO nobody writes to would block forever
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda path: path.mkdir(), "is a directory, not a config file"),
        (lambda path: os.mkfifo(path), "is not a regular file"),
        (lambda path: path.symlink_to("/dev/zero"), "is not a regular file"),
    ],
    ids=["directory", "fifo", "link to /dev/zero"],
)
def test_a_config_file_that_is_no_file_is_exit_5(home, make, fragment):
    make(home / "config.toml")
    result = runner.invoke(app, ["ask", "안녕?"])
    assert result.exit_code == EXIT_CONFIG
    assert fragment in one_line(result.stderr)


ENV_ROWS = [
    # (variable, value, fragment)
    ("KORANI_THREADS", "100000", "KORANI_THREADS must be a whole number from 1 to"),
    ("KORANI_THREADS", "0", "KORANI_THREADS must be a whole number from 1"),
    ("KORANI_THREADS", "-1", "KORANI_THREADS must be a whole number from 1"),
    ("KORANI_THREADS", "abc", "got 'abc'"),
    ("KORANI_THREADS", "4.5", "KORANI_THREADS must be a whole number"),
    ("KORANI_THREADS", "nan", "KORANI_THREADS must be a whole number"),
    ("KORANI_TEMPLATE", "chatml", "KORANI_TEMPLATE must be one of korani, model"),
    ("KORANI_OPENAI_BASE_URL", "gpu-box", "KORANI_OPENAI_BASE_URL must be an http:// or https:// URL"),
    ("OPENAI_BASE_URL", "http://h:99999/v1", "OPENAI_BASE_URL must be an http:// or https:// URL"),
]


@pytest.mark.parametrize("name, value, fragment", ENV_ROWS)
def test_a_bad_environment_value_is_exit_5(name, value, fragment, tmp_path):
    """In a subprocess: before this fix, KORANI_THREADS=100000 aborted llama.cpp
    (std::bad_alloc and a gdb dump), which would take the test runner with it."""
    code, out, err = korani(
        "ask",
        "--model",
        "demo",
        "-n",
        "2",
        "안녕?",
        env={"KORANI_HOME": str(tmp_path), name: value},
        timeout=120,
    )
    assert code == EXIT_CONFIG, err
    assert fragment in one_line(err) and "unset it" in err
    assert out == ""


def test_a_sane_thread_count_from_the_environment_still_works(home, monkeypatch):
    monkeypatch.setenv("KORANI_THREADS", " 2 ")
    from korani_cli.config import load_settings

    assert load_settings().threads == 2


FLAG_ROWS = [
    # (arguments, fragment): bad values on the command line are usage errors, in one line
    (["ask", "-n", "0", "q"], "--max-new-tokens must be a whole number from 1"),
    (["ask", "-n", "-5", "q"], "--max-new-tokens must be a whole number from 1"),
    (["ask", "-n", "99999999999", "q"], "--max-new-tokens must be a whole number from 1 to 1000000"),
    (["ask", "-t", "nan", "q"], "--temperature must be a finite number"),
    (["ask", "-t", "inf", "q"], "--temperature must be a finite number"),
    (["ask", "-t", "-1", "q"], "--temperature must be a finite number from 0"),
    (["ask", "--top-p", "7", "q"], "--top-p must be a finite number from 0 to 1"),
    (["ask", "--top-p", "nan", "q"], "--top-p must be a finite number from 0 to 1"),
    (["ask", "--seed", "-1", "q"], "--seed must be a whole number from 0 to 4294967295"),
    (["ask", "--seed", str(2**70), "q"], "--seed must be a whole number from 0 to 4294967295"),
    (["ask", "--template", "chatml", "q"], "--template must be one of korani, model"),
    (["ask", "--model", "", "q"], "--model must be non-empty text"),
    (["ask", "--model", "openai:m@http://[::1", "q"], "must be an http:// or https:// URL"),
    (["ask", "--model", "openai:m@:::", "q"], "must be an http:// or https:// URL"),
    (["chat", "-n", "0"], "--max-new-tokens must be a whole number from 1"),
    (["chat", "-t", "nan"], "--temperature must be a finite number"),
    (["chat", "--seed", "-1"], "--seed must be a whole number from 0"),
    (["history", "list", "--limit", "0"], "--limit must be a whole number from 1"),
    (["history", "list", "--limit", str(10**30)], "--limit must be a whole number from 1"),
    # issue 20: nothing to look for is a mistake, not "no saved message matches ''" and exit 0
    (["history", "search", ""], "history search was given no words"),
    (["history", "search", " ", "\t"], "history search was given no words"),
]


@pytest.mark.parametrize("args, fragment", FLAG_ROWS, ids=[" ".join(r[0])[:40] for r in FLAG_ROWS])
def test_a_bad_flag_value_is_one_line_and_exit_2(home, args, fragment):
    result = runner.invoke(app, args, input="")
    assert result.exit_code == EXIT_USAGE, result.output
    assert fragment in one_line(result.stderr)


# -- issue 20: what Typer itself refuses (before any korani code runs) is one line and exit 2 too -----------

PARSE_ROWS = [
    # (arguments, fragment of what was wrong, the command whose --help is the fix)
    (["ask", "-n", "abc", "q"], "invalid value for '--max-new-tokens'", "korani ask"),
    (["ask", "--temperature", "hot", "q"], "invalid value for '--temperature'", "korani ask"),
    (["ask", "--bogus", "q"], "no such option: --bogus", "korani ask"),
    (["history", "show"], "missing argument", "korani history show"),
    (["history", "list", "--limit", "x"], "invalid value for '--limit'", "korani history list"),
    (["data", "show", "d", "--random", "0"], "invalid value for '--random'", "korani data show"),
    (["bogus"], "no such command 'bogus'", "korani"),
    (["--bogus"], "no such option: --bogus", "korani"),
    (["train", "recipe.yaml", "--bogus"], "no such option: --bogus", "korani train run"),
    (["eval", "rag", "--limit", "many"], "invalid value for '--limit'", "korani eval rag"),
]


@pytest.mark.parametrize("args, fragment, command", PARSE_ROWS, ids=[" ".join(r[0]) for r in PARSE_ROWS])
def test_a_parse_error_is_one_line_and_exit_2(home, args, fragment, command):
    """Before: Typer's 5-6 line box (usage, "Try …", a bordered panel)."""
    result = runner.invoke(app, args, input="")
    assert result.exit_code == EXIT_USAGE, result.output
    line = one_line(result.stderr)
    assert fragment in line and line.endswith(f"see `{command} --help`"), line
    assert result.stdout == "" and "╭" not in result.stderr


def test_a_parse_error_in_a_real_shell_names_the_command_as_run(tmp_path):
    code, out, err = korani("ask", "--max-new-tokens", "abc", "q", env={"KORANI_HOME": str(tmp_path)})
    assert code == EXIT_USAGE and out == ""
    assert one_line(err).endswith("-m korani_cli ask --help`"), err


def test_korani_alone_still_shows_its_help():
    result = runner.invoke(app, [])
    assert result.exit_code == EXIT_USAGE and "Commands" in result.output and "error:" not in result.output


# -- issue 20: the hints of `korani eval` offer only what that command accepts --------------------------

EVAL_HINT_ROWS = [
    # (arguments, exit code, fragment, what the hint must not offer)
    (["eval", "rag", "--set", "nope.json"], 6, "pass --set korquad-dev or a path to a KorQuAD", "kullm"),
    (
        ["eval", "chat", "--prompts", "nope.jsonl"],
        6,
        "pass --prompts kullm or a path to a JSONL",
        "korquad-dev",
    ),
    (["eval", "rag", "--set", "kullm"], EXIT_USAGE, "kullm is the set of `korani eval chat --prompts`", None),
    (
        ["eval", "chat", "--prompts", "korquad-dev"],
        EXIT_USAGE,
        "korquad-dev is the set of `korani eval rag --set`",
        None,
    ),
]


@pytest.mark.parametrize(
    "args, code, fragment, absent", EVAL_HINT_ROWS, ids=[" ".join(r[0]) for r in EVAL_HINT_ROWS]
)
def test_an_eval_hint_offers_what_its_command_accepts(home, args, code, fragment, absent):
    """Before: the --set hint offered kullm (then "not JSON"), the --prompts hint korquad-dev."""
    result = runner.invoke(app, [*args, "--model", "demo"])
    assert result.exit_code == code, result.output
    line = one_line(result.stderr)
    assert fragment in line and (absent is None or absent not in line), line


# -- 14: KORANI_HOME that cannot hold korani's files ---------------------------------------------


def _home_is_a_file(tmp_path: Path) -> str:
    (tmp_path / "afile").write_text("x")
    return str(tmp_path / "afile")


def _home_under_a_file(tmp_path: Path) -> str:
    (tmp_path / "afile").write_text("x")
    return str(tmp_path / "afile" / "korani")


HOME_ROWS = [
    # (how KORANI_HOME is broken, command, fragment)
    (_home_is_a_file, ["history", "list"], "is not a directory"),
    (_home_is_a_file, ["chat", "--model", "demo"], "is not a directory"),
    (_home_is_a_file, ["ask", "--model", "demo", "q"], "is not a directory"),
    (_home_is_a_file, ["models", "resolve", "demo"], "is not a directory"),
    (_home_under_a_file, ["history", "list"], "which is not a directory"),
    (_home_under_a_file, ["ask", "--model", "demo", "q"], "which is not a directory"),
    (lambda _tmp: "/sys/korani-home", ["history", "list"], "cannot create /sys/korani-home"),
]


@pytest.mark.parametrize(
    "make, args, fragment", HOME_ROWS, ids=[f"{r[0].__name__}-{' '.join(r[1])}" for r in HOME_ROWS]
)
def test_an_unusable_korani_home_is_exit_5(home, tmp_path, monkeypatch, make, args, fragment):
    value = make(tmp_path)
    if value.startswith("/sys") and not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    monkeypatch.setenv("KORANI_HOME", value)
    result = runner.invoke(app, args, input="")
    assert result.exit_code == EXIT_CONFIG, result.output
    line = one_line(result.stderr)
    assert fragment in line and "KORANI_HOME" in line


def test_a_read_only_korani_home_is_exit_5(home, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        pytest.skip(
            "running as root: permission bits do not stop root (the /sys row covers a home korani cannot "
            "write)"
        )
    monkeypatch.setenv("KORANI_HOME", str(ro))
    result = runner.invoke(app, ["history", "list"])
    assert result.exit_code == EXIT_CONFIG
    assert "KORANI_HOME" in one_line(result.stderr)


# -- 14: what `korani ask` reads on stdin or argv ----------------------------------------------------

STDIN_ROWS = [
    # (stdin bytes, fragment)
    (os.urandom(1000).replace(b"\x00", b"\xff")[:999] + b"\xff", "stdin is not UTF-8 text"),
    (b"\xed\xa0\x80 lone surrogate", "stdin is not UTF-8 text (byte 0xed at offset 0)"),
    ("한국의 수도는?".encode() + b"\x00\x01binary", "NUL bytes"),
    (b"\xef\xbb\xbf  \n", "the question is empty"),
]


@pytest.mark.parametrize("data, fragment", STDIN_ROWS, ids=["urandom", "surrogate", "nul", "bom-only"])
def test_binary_stdin_to_ask_is_exit_2(tmp_path, data, fragment):
    code, out, err = korani("ask", "--model", "demo", "-", input=data, env={"KORANI_HOME": str(tmp_path)})
    assert code == EXIT_USAGE, err
    assert fragment in one_line(err)


def test_a_question_argument_that_is_not_utf8_is_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "korani_cli", "ask", "--model", "demo", b"\xff\xfe?"],
        capture_output=True,
        env={**os.environ, "KORANI_HOME": str(tmp_path)},
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "not UTF-8 text" in one_line(proc.stderr.decode())


# -- 18: a missing local path is a missing path, not a Hub failure; a broken model directory says what is
# wrong --


def _model_files(tmp: Path) -> None:
    (tmp / "runs" / "a").mkdir(parents=True)
    (tmp / "empty").mkdir()
    (tmp / "dir.gguf").mkdir()
    (tmp / "list-adapter").mkdir()
    (tmp / "list-adapter" / "adapter_config.json").write_text("[1, 2]")
    (tmp / "number-base").mkdir()
    (tmp / "number-base" / "adapter_config.json").write_text('{"base_model_name_or_path": 5}')
    (tmp / "binary-adapter").mkdir()
    (tmp / "binary-adapter" / "adapter_config.json").write_bytes(b"\xff\xfe{")
    (tmp / "garbage.gguf").write_bytes(os.urandom(4096))
    (tmp / "long-base").mkdir()
    (tmp / "long-base" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "x" * 5000})
    )
    (tmp / "long-part-base").mkdir()
    (tmp / "long-part-base" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "org/" + "y" * 300})
    )


MODEL_SPEC_ROWS = [
    # (--model, exit code, fragment); run in a directory made by _model_files
    ("runs/x", EXIT_MODEL_LOAD, "runs/x (the path does not exist; runs/ holds: a/"),
    ("./nope", EXIT_MODEL_LOAD, "./nope (the path does not exist)"),
    ("runs/a/missing", EXIT_MODEL_LOAD, "the path does not exist"),
    ("~/korani-no-such-model", EXIT_MODEL_LOAD, "the path does not exist"),
    ("empty", EXIT_MODEL_LOAD, "holds no model (neither config.json nor adapter_config.json)"),
    ("dir.gguf", EXIT_MODEL_LOAD, "is a directory, not a GGUF file"),
    ("list-adapter", EXIT_MODEL_LOAD, "adapter_config.json is not a JSON object"),
    ("number-base", EXIT_MODEL_LOAD, "does not name its base model"),
    ("binary-adapter", EXIT_MODEL_LOAD, "cannot read"),
    ("garbage.gguf", EXIT_MODEL_LOAD, "llama.cpp could not load garbage.gguf"),
    ("nothing.gguf", EXIT_MODEL_LOAD, "GGUF file not found"),
    # issue 20: a base no path or hub id can be (before: the Hub's validation quoting all 5,000 characters)
    ("long-base", EXIT_MODEL_LOAD, "which cannot be a path or a Hub id (it is 5000 characters long"),
    ("long-part-base", EXIT_MODEL_LOAD, "a part of it is 300 bytes long"),
]


@pytest.mark.parametrize("spec, code, fragment", MODEL_SPEC_ROWS, ids=[r[0] for r in MODEL_SPEC_ROWS])
def test_a_missing_or_broken_model_path_says_what_is_wrong(home, tmp_path, spec, code, fragment):
    _model_files(tmp_path)
    result = runner.invoke(app, ["ask", "--model", spec, "q"])
    assert result.exit_code == code, result.output
    line = one_line(result.stderr)
    assert fragment in line and ("Hub" not in line or "cannot be a path or a Hub id" in line)
    assert len(line) < 400  # a name from a file is quoted by its start only


@pytest.mark.slow  # the hf backend imports torch before it reads the adapter
def test_a_hub_adapter_naming_a_base_no_path_can_be_is_one_short_line(tmp_path):
    """The same check for an adapter found in the Hugging Face cache (before: the Hub's validation
    error quoted all 5,000 characters of the name)."""
    snapshot = tmp_path / "hub" / "models--org--adapter" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x" * 5000}))
    (tmp_path / "hub" / "models--org--adapter" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--adapter" / "refs" / "main").write_text("a" * 40)
    code, out, err = korani(
        "ask",
        "--model",
        "org/adapter",
        "q",
        env={
            "KORANI_HOME": str(tmp_path / "home"),
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HUB_OFFLINE": "1",
        },
        timeout=300,
    )
    assert code == EXIT_MODEL_LOAD, err
    line = one_line(err)
    assert "the adapter 'org/adapter' names the base model 'xxxx" in line and len(line) < 400, line


def test_an_empty_session_id_is_a_usage_error(home):
    result = runner.invoke(app, ["chat", "--model", "demo", "--session", " "], input="")
    assert result.exit_code == EXIT_USAGE
    assert "--session is empty" in one_line(result.stderr)


# -- 7: /저장 and history export -o never replace a special file ---------------------------------------


def _seed_session(home: Path) -> str:
    history = History(home / "data" / "history.sqlite")
    sid = history.new_session("demo", None)
    history.add(sid, "user", "저장할 질문")
    history.add(sid, "assistant", "저장할 답")
    history.close()
    return sid


def _symlink(tmp: Path) -> tuple[Path, Path]:
    target = tmp / "real.md"
    target.write_text("old\n")
    (tmp / "link.md").symlink_to(target)
    return tmp / "link.md", target


def _dangling(tmp: Path) -> tuple[Path, Path]:
    (tmp / "link.md").symlink_to(tmp / "made-by-korani.md")
    return tmp / "link.md", tmp / "made-by-korani.md"


def _fifo(tmp: Path) -> tuple[Path, Path]:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe", tmp / "pipe"


def _link_to_fifo(tmp: Path) -> tuple[Path, Path]:
    os.mkfifo(tmp / "pipe")
    (tmp / "link").symlink_to(tmp / "pipe")
    return tmp / "link", tmp / "pipe"


def _dev_full(tmp: Path) -> tuple[Path, Path]:
    """A private twin of /dev/full (char 1:7) where the test may make one, so a
    regression replaces that node and never the system's /dev/full. Without
    the right to make device nodes, the real /dev/full is safe from this user too."""
    node = tmp / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except (PermissionError, OSError):
        if os.access("/dev", os.W_OK):
            pytest.skip(
                "cannot make a device node, and /dev is writable: never aim a test at the real /dev/full"
            )
        return Path("/dev/full"), Path("/dev/full")
    return node, node


def _missing_dir(tmp: Path) -> tuple[Path, Path]:
    return tmp / "no-such-dir" / "out.md", tmp / "no-such-dir" / "out.md"


def _a_directory(tmp: Path) -> tuple[Path, Path]:
    (tmp / "adir").mkdir()
    return tmp / "adir", tmp / "adir"


SAVE_ROWS = [
    # (target maker, written?, error fragment, what the target must still be)
    (_symlink, True, None, "regular"),
    (_dangling, True, None, "regular"),
    (_dev_full, False, "is a device, not a regular file; refusing to replace it", "char"),
    (_fifo, False, "is a FIFO (named pipe), not a regular file", "fifo"),
    (_link_to_fifo, False, "is a FIFO (named pipe), not a regular file", "fifo"),
    (_missing_dir, False, "does not exist", "missing"),
    (_a_directory, False, "is a directory, not a regular file", "dir"),
]


def _kind(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    return (
        "char"
        if stat.S_ISCHR(mode)
        else "fifo"
        if stat.S_ISFIFO(mode)
        else "dir"
        if stat.S_ISDIR(mode)
        else "regular"
        if stat.S_ISREG(mode)
        else "other"
    )


@pytest.mark.timeout(60)  # writing into a FIFO with nobody reading would block forever
@pytest.mark.parametrize("how", ["history export -o --overwrite", "/저장!"])
@pytest.mark.parametrize(
    "make, written, fragment, kind_after", SAVE_ROWS, ids=[r[0].__name__.strip("_") for r in SAVE_ROWS]
)
def test_saving_a_transcript_never_replaces_a_special_file(
    home, tmp_path, how, make, written, fragment, kind_after
):
    sid = _seed_session(home)
    given, target = make(tmp_path)
    was_link = given.is_symlink()
    # Asked to replace (/저장!, --overwrite): a special file is still never replaced.
    if how == "/저장!":
        result = runner.invoke(app, ["chat", "--model", "demo", "--session", sid], input=f"/저장! {given}\n")
        assert result.exit_code == 0, result.output  # the chat goes on; the error is one line
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    else:
        result = runner.invoke(app, ["history", "export", sid, "-o", str(given), "--overwrite"])
        assert result.exit_code == (0 if written else EXIT_USAGE), result.output
        errors = [one_line(result.stderr)] if not written else []
    assert _kind(target) == kind_after
    assert given.is_symlink() == was_link  # a link stays a link
    if written:
        assert errors == []
        assert "저장할 질문" in target.read_text(encoding="utf-8")
    else:
        assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")
    ]  # no temp left


# -- 20: nothing lost — an existing file only when asked, korani's own files never -----------------------

SAVE_HOW = ["history export -o", "history export -o --overwrite", "/저장", "/저장!"]


def _save(how: str, sid: str, target: Path):
    """Write session `sid` to `target` the way `how` says; (exit code, its error lines, stdout)."""
    if how.startswith("/"):
        result = runner.invoke(
            app, ["chat", "--model", "scripted:s", "--session", sid], input=f"{how} {target}\n"
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) <= 1 and "Traceback" not in result.output, result.output
    else:
        extra = ["--overwrite"] if how.endswith("--overwrite") else []
        result = runner.invoke(app, ["history", "export", sid, "-o", str(target), *extra])
        errors = [one_line(result.stderr)] if result.exit_code else []
    return result.exit_code, errors, result.stdout


def _own_history(home: Path, tmp: Path) -> Path:
    return home / "data" / "history.sqlite"


def _own_history_dotdot(home: Path, tmp: Path) -> Path:
    return home / "data" / ".." / "data" / "history.sqlite"


def _own_history_symlink(home: Path, tmp: Path) -> Path:
    (tmp / "notes.md").symlink_to(home / "data" / "history.sqlite")
    return tmp / "notes.md"


def _own_history_linked_dir(home: Path, tmp: Path) -> Path:
    (tmp / "elsewhere").symlink_to(home / "data")
    return tmp / "elsewhere" / "history.sqlite"


def _own_history_hard_link(home: Path, tmp: Path) -> Path:
    os.link(home / "data" / "history.sqlite", tmp / "backup.sqlite")
    return tmp / "backup.sqlite"


def _own_config(home: Path, tmp: Path) -> Path:
    (home / "config.toml").write_text("max_new_tokens = 64\n")
    return home / "config.toml"


def _own_search_cache(home: Path, tmp: Path) -> Path:
    (home / "cache").mkdir()
    (home / "cache" / "search.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    return home / "cache" / "search.sqlite"


def _new_file_in_the_cache(home: Path, tmp: Path) -> Path:
    (home / "cache" / "models").mkdir(parents=True)
    return home / "cache" / "models" / "chat.md"


def _new_file_in_a_run(home: Path, tmp: Path) -> Path:
    from korani_cli.outputs import MARKER

    (tmp / "run").mkdir()
    (tmp / "run" / MARKER).write_text('{"tool": "korani", "command": "eval rag"}\n')
    return tmp / "run" / "chat.md"


OWN_ROWS = [
    # (the path as the user spells it, fragment of the one error line)
    (_own_history, "is korani's history database"),
    (_own_history_dotdot, "is korani's history database"),
    (_own_history_symlink, "is korani's history database"),
    (_own_history_linked_dir, "is korani's history database"),
    (_own_history_hard_link, "is a hard link to korani's history database"),
    (_own_config, "is korani's config file"),
    (_own_search_cache, "is korani's search cache"),
    (_new_file_in_the_cache, "is inside korani's cache"),
    (_new_file_in_a_run, "is inside an output directory korani wrote"),
]


def _files(*roots: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("how", SAVE_HOW)
@pytest.mark.parametrize("spell, fragment", OWN_ROWS, ids=[r[0].__name__.strip("_") for r in OWN_ROWS])
def test_korani_own_files_are_never_a_save_target(home, tmp_path, scripted, how, spell, fragment):
    """Before: `history export ID -o $KORANI_HOME/data/history.sqlite` exited 0 and replaced the whole
    history with Markdown (`history list` → exit 5), and `/저장` there answered 저장했습니다."""
    sid = _seed_session(home)
    target = spell(home, tmp_path)
    before = _files(home, tmp_path)
    code, errors, _ = _save(how, sid, target)
    assert code == (0 if how.startswith("/") else EXIT_USAGE)
    assert len(errors) == 1 and fragment in errors[0], errors
    assert "korani never writes over its own files" in errors[0]
    assert _files(home, tmp_path) == before  # not a byte changed, nothing added
    listed = runner.invoke(app, ["history", "list"])
    assert listed.exit_code == 0 and sid in listed.stdout


MY_NOTES = "# 내 메모\n" + "지우면 안 되는 내용입니다.\n" * 60  # 1.5 KB of the user's own


@pytest.mark.parametrize("how", SAVE_HOW)
def test_an_existing_file_is_replaced_only_when_asked(home, tmp_path, scripted, how):
    """Before: /저장 notes.md and history export -o notes.md replaced notes.md without asking."""
    sid = _seed_session(home)
    notes = tmp_path / "notes.md"
    notes.write_text(MY_NOTES, encoding="utf-8")
    code, errors, _ = _save(how, sid, notes)
    if how in ("/저장!", "history export -o --overwrite"):
        assert code == 0 and errors == []
        assert "저장할 질문" in notes.read_text(encoding="utf-8")
        return
    assert code == (0 if how == "/저장" else EXIT_USAGE)
    assert len(errors) == 1 and f"{notes} already exists" in errors[0], errors
    assert ("/저장! " if how == "/저장" else "pass --overwrite") in errors[0]
    assert notes.read_text(encoding="utf-8") == MY_NOTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notes.md"]  # no temp file left


@pytest.mark.parametrize("command", ["/저장", "/저장!", "/save"])
@pytest.mark.parametrize("existing", [True, False], ids=["over an existing file", "a new file"])
def test_save_with_nothing_said_says_so_and_writes_nothing(home, tmp_path, scripted, command, existing):
    """Before: a fresh `korani chat --no-history`, then `/저장 notes.md` over a 1.5 KB transcript,
    left 14 bytes (`# korani chat`)."""
    notes = tmp_path / "notes.md"
    if existing:
        notes.write_text(MY_NOTES, encoding="utf-8")
    typed = f"{command} {notes}\n/초기화\n{command}\n"
    result = runner.invoke(app, ["chat", "--no-history", "--model", "scripted:s"], input=typed)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("저장할 대화가 아직 없습니다") == 2, result.stdout
    assert "저장했습니다" not in result.stdout and "error:" not in result.stderr
    assert (notes.read_text(encoding="utf-8") == MY_NOTES) if existing else not notes.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"] + (["notes.md"] if existing else [])


def test_help_shows_how_to_replace_a_file(home, scripted):
    result = runner.invoke(app, ["chat", "--no-history", "--model", "scripted:s"], input="/도움말\n")
    assert "/저장! 파일" in result.stdout and "덮어" in result.stdout


# -- 20: an API key is a secret: checked when read, never shown, never written ----------------------------

KEY = "sk-korani-TEST-4f9c2e7d1b"  # what must appear nowhere korani writes

KEY_ROWS = [
    # (where the key comes from, its value, fragment of the one error line)
    ("KORANI_OPENAI_API_KEY", KEY + "\r", "KORANI_OPENAI_API_KEY must be printable ASCII with no spaces"),
    ("OPENAI_API_KEY", KEY + "\r", "OPENAI_API_KEY must be printable ASCII with no spaces"),
    ("KORANI_OPENAI_API_KEY", "sk-키" + KEY, "KORANI_OPENAI_API_KEY must be printable ASCII"),
    ("KORANI_OPENAI_API_KEY", KEY[:6] + " " + KEY[6:] + " " + KEY, "KORANI_OPENAI_API_KEY must be printable"),
    ("config.toml", KEY + "\r", "config.toml: 'openai_api_key' must be printable ASCII with no spaces"),
    ("config.toml", "sk-키" + KEY, "config.toml: 'openai_api_key' must be printable ASCII"),
]


def _with_key(where: str, value: str, home: Path) -> dict:
    """The environment of a run whose API key is `value`, set in `where`."""
    if where == "config.toml":
        (home / "config.toml").write_text(f"openai_api_key = {json.dumps(value)}\n", encoding="utf-8")
        return {"KORANI_HOME": str(home)}
    return {"KORANI_HOME": str(home), where: value}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "--debug"])
@pytest.mark.parametrize(
    "where, value, fragment", KEY_ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(KEY_ROWS)]
)
def test_an_unusable_key_is_exit_5_and_never_shown(tmp_path, where, value, fragment, debug):
    """Before: `KORANI_OPENAI_API_KEY=$'sk-SECRET\r'` was exit 3 with `Illegal header value b'Bearer
    sk-SECRET\r'` (the key in full on stderr); `sk-키` a UnicodeEncodeError, exit 1. Port 9 on
    127.0.0.1 is never dialled: the key is refused when the settings are read."""
    env = _with_key(where, value, tmp_path)
    code, out, err = korani(
        *(["--debug"] if debug else []), "ask", "--model", "openai:x@http://127.0.0.1:9/v1", "안녕?", env=env
    )
    assert KEY not in out + err and KEY[:12] not in out + err
    if not debug:
        assert code == EXIT_CONFIG, err
        line = one_line(err)
        assert fragment in line and "its value is not shown" in line
    else:  # --debug shows the traceback (exit 1), which ends in the same message
        assert code != 0 and "ConfigError" in err and "its value is not shown" in " ".join(err.split())


class KeyServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that wants KEY, and whose error messages quote the request's
    Authorization header back (some gateways do): korani must not pass that quote on."""

    def log_message(self, *args):
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> bool:
        given = self.headers.get("Authorization", "")
        self.server.seen.append(given)
        if given != f"Bearer {KEY}":
            self._json(401, {"error": {"message": f"invalid credentials: {given}"}})
            return False
        return True

    def do_GET(self):
        if self._auth():
            self._json(200, {"object": "list", "data": [{"id": "keyed", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._auth():
            return
        prompt = body.get("prompt") or json.dumps(body.get("messages"), ensure_ascii=False)
        if "고장" in prompt:
            auth = self.headers["Authorization"]
            self._json(500, {"error": {"message": f"upstream failed for {auth}"}})
            return
        if not body.get("stream"):
            self._json(200, {"choices": [{"text": "서울입니다.", "finish_reason": "stop"}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(
            b'data: {"choices": [{"text": "\xec\x84\x9c\xec\x9a\xb8.", "finish_reason": "stop"}]}\n\n'
        )
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_key_appears_nowhere_korani_writes(tmp_path):
    """Every run a user could make with a known key — answers, a chat with its history and /저장, an
    eval run, failures with and without --debug, refused keys — and then every byte korani wrote
    (stdout, stderr, every file under KORANI_HOME, the eval run, the saved transcript) is searched
    for the key."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeyServer)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model = f"openai:keyed@http://127.0.0.1:{server.server_address[1]}/v1"
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "prompts.jsonl").write_text(
        "".join(json.dumps({"instruction": q}, ensure_ascii=False) + "\n" for q in ("수도는?", "인사해 줘")),
        encoding="utf-8",
    )
    good = {"KORANI_HOME": str(home), "KORANI_OPENAI_API_KEY": KEY}
    runs = [
        (good, ["ask", "--model", model, "수도는?"], None),
        (good, ["ask", "--model", model, "--json", "수도는?"], None),
        (good, ["chat", "--model", model], "수도는?\n/저장 saved.md\n"),
        (good, ["eval", "chat", "--model", model, "--prompts", "prompts.jsonl", "-o", "evalrun"], None),
        (good, ["ask", "--model", model, "고장 났나요?"], None),
        (good, ["--debug", "ask", "--model", model, "고장 났나요?"], None),
        (good, ["--debug", "chat", "--model", model], "고장 났나요?\n"),
        ({**good, "KORANI_OPENAI_API_KEY": KEY + "-revoked"}, ["ask", "--model", model, "수도는?"], None),
        (
            {**good, "KORANI_OPENAI_API_KEY": KEY + "\r"},
            ["--debug", "ask", "--model", model, "수도는?"],
            None,
        ),
        ({**good, "OPENAI_API_KEY": "sk-키" + KEY}, ["ask", "--model", model, "수도는?"], None),
    ]
    try:
        shown = []
        for env, args, typed in runs:
            code, out, err = korani(*args, input=typed, env=env, cwd=work)
            shown.append((args, code, out + err))
    finally:
        server.shutdown()
    assert f"Bearer {KEY}" in server.seen  # the key was really used
    assert [code for _, code, _ in shown][:4] == [0, 0, 0, 0], shown
    assert "서울" in shown[0][2] and (work / "saved.md").exists() and (work / "evalrun").is_dir()
    for args, _code, text in shown:
        assert KEY not in text, (args, text)
    for root in (home, work):
        for path in root.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path


# -- 20: the chat's line editor: bytes that are not UTF-8 ---------------------------------------------------

FILTER_ROWS = [
    # (bytes as typed, what readline is given, how many broken sequences were replaced)
    (b"a\xe3\r", "a\ufffd\r", 1),  # a lead byte, then Enter: Enter must survive
    (b"a\xe3\x81b\r", "a\ufffdb\r", 1),  # a 3-byte character cut short by a letter
    (b"\xe3\xe3\x81\x82", "\ufffd\u3042", 1),  # the byte that breaks a sequence may start the next
    (b"\xff\xfeok", "\ufffd\ufffdok", 2),  # bytes that never occur in UTF-8
    (b"\x80x", "\ufffdx", 1),  # a stray continuation byte
    (b"\xc0\xaf", "\ufffd\ufffd", 2),  # an overlong '/'
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd", 3),  # a surrogate written as UTF-8 (the break byte counts too)
    ("한국어 😀 ぁ\r".encode(), "한국어 😀 ぁ\r", 0),  # valid text passes untouched
    (b"a\xe3", "a\ufffd", 1),  # the rest never comes: not waited for
]


@pytest.mark.parametrize("typed, given, replaced", FILTER_ROWS, ids=[ascii(r[0])[2:-1] for r in FILTER_ROWS])
def test_the_line_editor_is_given_valid_utf8_only(typed, given, replaced):
    from korani_cli.chat.utf8input import Filter

    queue, pushed = list(typed), []
    keys = Filter(read=lambda: queue.pop(0) if queue else -1, ready=lambda: bool(queue), push=pushed.append)
    out = []
    while queue:
        out.append(keys.next_key())
        out += pushed
        pushed.clear()
    assert bytes(out).decode("utf-8") == given
    assert keys.take() == replaced and keys.take() == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "keys",
    [[b"a", b"\xe3", b"\r"], [b"a\xe3\r"], [b"a", b"\xe3\x81", b"b", b"\r"]],
    ids=["typed key by key", "in one write", "cut short by a letter"],
)
def test_a_line_that_is_not_utf8_is_one_notice_and_the_next_line_is_intact(tmp_path, keys):
    """Before: `a`, the byte 0xE3, Enter at the chat prompt was answered as `a` (the byte vanished
    without a word; line editors differ, and some also ate the next line's first character).
    Driven on a real pty against a loopback model that records what it is asked."""
    pytest.importorskip("pyte", reason="pyte (in korani[dev]) draws the terminal's screen")
    from support import ScriptServer, Terminal

    server = ScriptServer("답입니다.")
    term = Terminal(["chat", "--model", f"openai:scripted@{server.url}", "-t", "0"], tmp_path / "home")
    try:
        assert term.pump(Terminal.at_prompt), term.text()
        for chunk in keys:
            os.write(term.fd, chunk)
            term.settle(0.2)
        assert term.pump(lambda t: t.at_prompt(2)), term.text()
        term.settle()
        assert server.prompts == []  # nothing was answered
        notices = [line for line in term.lines() if "UTF-8" in line]
        assert notices == ["입력이 UTF-8 텍스트가 아닙니다 — UTF-8로 입력하세요"], term.lines()
        term.type("hello\r")
        assert term.pump(lambda t: t.at_prompt(3)), term.text()
        term.type("한국어\x7f\r")  # multibyte editing still works: backspace takes one whole character
        assert term.pump(lambda t: t.at_prompt(4)), term.text()
        assert [p.split("### User\n")[-1].split("\n")[0] for p in server.prompts] == ["hello", "한국"]
        term.type("\x04")
        assert term.wait_exit() == 0
    finally:
        term.close()
        server.shutdown()


# -- 14, 18: a damaged, misplaced or locked history database ---------------------------------------


def _history_with_sessions(path: Path, n: int = 8) -> list[str]:
    """A real history of several pages (sessions, messages and their indexes)."""
    history = History(path)
    sids = []
    for i in range(n):
        sid = history.new_session("demo", None)
        for j in range(4):
            history.add(sid, "user", f"질문 {i} {j} " + "내용 " * 200)
        sids.append(sid)
    history.close()
    return sids


def _garbage(path: Path, _sids) -> None:
    path.write_bytes(b"this is not an SQLite database at all\n" * 200)


def _truncated(path: Path, _sids) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _index_entry_damaged(path: Path, sids) -> None:
    """Flip one byte of the last session's id inside the sessions index only:
    the lookup then finds nothing, and only an integrity check tells why."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_sessions_1'"
    ).fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    page = slice((root - 1) * page_size, root * page_size)
    where = bytes(data[page]).find(sids[-1].encode())
    assert where >= 0
    at = page.start + where
    data[at] = ord("z") if data[at] != ord("z") else ord("y")
    path.write_bytes(bytes(data))


def _a_directory_in_its_place(path: Path, _sids) -> None:
    path.unlink()
    path.mkdir()
    (path / "keep").write_text("mine")


def _a_fifo_in_its_place(path: Path, _sids) -> None:
    path.unlink()
    os.mkfifo(path)


def _a_link_to_a_device(path: Path, _sids) -> None:
    path.unlink()
    path.symlink_to("/dev/null")


DAMAGE_ROWS = [
    # (damage, command (SID = the last session), fragment)
    (_garbage, ["history", "list"], "is damaged (file is not a database)"),
    (_garbage, ["history", "show", "SID"], "is damaged"),
    (_garbage, ["history", "rm", "SID"], "is damaged"),
    (_garbage, ["chat", "--model", "demo"], "korani chat --no-history"),
    (_garbage, ["chat", "--model", "demo", "--continue"], "is damaged"),
    (_truncated, ["history", "list"], "is damaged (database disk image is malformed)"),
    (_truncated, ["history", "show", "SID"], "is damaged"),
    (_truncated, ["history", "export", "SID"], "is damaged"),
    (_index_entry_damaged, ["history", "show", "SID"], "is damaged"),
    (_index_entry_damaged, ["chat", "--model", "demo", "--session", "SID"], "is damaged"),
    (_a_directory_in_its_place, ["history", "list"], "is a directory, not a database file"),
    (_a_directory_in_its_place, ["chat", "--model", "demo"], "korani chat --no-history"),
    (_a_fifo_in_its_place, ["history", "list"], "is not a regular file"),
    (_a_link_to_a_device, ["chat", "--model", "demo"], "is not a regular file"),
]


@pytest.mark.parametrize(
    "damage, args, fragment",
    DAMAGE_ROWS,
    ids=[f"{r[0].__name__.strip('_')}-{' '.join(r[1][:2])}" for r in DAMAGE_ROWS],
)
def test_a_damaged_history_is_one_line_exit_5_and_never_no_saved_session(home, damage, args, fragment):
    db = home / "data" / "history.sqlite"
    sids = _history_with_sessions(db)
    damage(db, sids)
    before = sorted((p.name, p.stat().st_size) for p in db.parent.rglob("*"))
    result = runner.invoke(app, [sids[-1] if a == "SID" else a for a in args], input="안녕\n")
    assert result.exit_code == EXIT_CONFIG, result.output
    line = one_line(result.stderr)
    assert fragment in line and str(db) in line and "no saved session" not in line
    assert (
        sorted((p.name, p.stat().st_size) for p in db.parent.rglob("*")) == before
    )  # nothing of it was touched


def test_chat_without_history_works_beside_a_damaged_database(home, tmp_path):
    db = home / "data" / "history.sqlite"
    _history_with_sessions(db, 2)
    _garbage(db, None)
    # Something said first: /저장 of a chat with nothing in it writes nothing (issue 20).
    result = runner.invoke(
        app,
        ["chat", "--model", "demo", "--no-history", "--max-new-tokens", "4"],
        input=f"안녕\n/기록\n/저장 {tmp_path / 't.md'}\n",
    )
    assert result.exit_code == 0, result.output
    assert "기록 없이 메모리에서만" in result.stdout and "안녕" in (tmp_path / "t.md").read_text()
    assert "--no-history" in result.stderr and "error" not in result.stderr
    resumed = runner.invoke(app, ["chat", "--model", "demo", "--no-history", "--continue"], input="")
    assert resumed.exit_code == EXIT_USAGE
    assert "--no-history cannot resume" in one_line(resumed.stderr)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [["history", "list"], ["chat", "--model", "demo"]])
def test_a_history_locked_by_another_process_is_one_line(home, args):
    db = home / "data" / "history.sqlite"
    _history_with_sessions(db, 1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = runner.invoke(app, args, input="")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == EXIT_CONFIG, result.output
    line = one_line(result.stderr)
    assert "is locked by another process" in line and "--no-history" in line


# -- 4: model text is data: no control sequence reaches the terminal or the history ---------------------

EVIL = "\x1b]0;PWNED\x07\x1b[2J서울은 수도입니다.\r\n\x9b31m\u202e끝\u200b\x00"
# Streamed in pieces that split an escape sequence and a CRLF across events.
EVIL_PIECES = ["\x1b", "]0;PWNED\x07", "\x1b[2J서울은 ", "수도입니다.\r", "\n\x9b31m\u202e끝\u200b", "\x00"]


class EvilServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose model answers with terminal escape sequences."""

    def log_message(self, *args):
        pass

    def _json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "evil", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not body.get("stream"):
            self._json(
                {
                    "choices": [{"text": EVIL, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 9},
                }
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in EVIL_PIECES:
            self.wfile.write(f"data: {json.dumps({'choices': [{'text': piece}]})}\n\n".encode())
        self.wfile.write(b'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')


@pytest.fixture
def evil_model():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EvilServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"openai:evil@http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _ask_on_a_terminal(model: str, home: Path) -> str:
    """`korani ask` with stdout on a pseudo-terminal, so it streams; returns what the terminal got."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "korani_cli", "ask", "--model", model, "안녕?"],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "KORANI_HOME": str(home)},
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    return seen.decode("utf-8", "replace").replace("\r\n", "\n")  # the tty's own ONLCR


MODEL_OUTPUT_ROWS = [
    "ask (whole answer)",
    "ask --json",
    "ask on a terminal (streamed)",
    "chat (streamed) and its history",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", MODEL_OUTPUT_ROWS)
def test_model_output_cannot_drive_the_terminal(home, evil_model, how):
    if how == "ask (whole answer)":
        result = runner.invoke(app, ["ask", "--model", evil_model, "안녕?"])
        shown = result.stdout
    elif how == "ask --json":
        result = runner.invoke(app, ["ask", "--model", evil_model, "--json", "안녕?"])
        shown = json.loads(result.stdout)["answer"]
    elif how == "ask on a terminal (streamed)":
        result, shown = None, _ask_on_a_terminal(evil_model, home)
    else:
        result = runner.invoke(app, ["chat", "--model", evil_model], input="안녕?\n")
        shown = result.stdout
        stored = (
            sqlite3.connect(home / "data" / "history.sqlite")
            .execute("SELECT content FROM messages WHERE role = 'assistant'")
            .fetchall()
        )
        assert len(stored) == 1 and not any(c in stored[0][0] for c in CONTROL) and "\r" not in stored[0][0]
        exported = runner.invoke(
            app, ["history", "show", runner.invoke(app, ["history", "list"]).stdout.split()[0]]
        )
        assert "수도입니다" in exported.stdout and not any(c in exported.stdout for c in CONTROL)
    if result is not None:
        assert result.exit_code == 0, result.output
    assert "수도입니다.\n" in shown and "끝" in shown
    assert not any(c in shown for c in CONTROL), repr(shown)
    assert (
        "\r" not in shown and "수도입니다.\n\n" not in shown
    )  # a CRLF split across events is one line break


def test_a_hostile_server_error_message_is_cleaned_too(home):
    import contextlib
    import io

    from korani_cli.console import print_error

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        print_error("error: the server answered HTTP 500: \x1b]0;PWNED\x07boom — check the server")
    assert "\x1b" not in buf.getvalue() and "\x07" not in buf.getvalue() and "boom" in buf.getvalue()


def test_a_history_that_breaks_mid_chat_leaves_the_chat_going_in_memory(tmp_path):
    from support import ScriptedBackend, drive, session_for

    session, history = session_for(tmp_path, ScriptedBackend(["첫 답.", "둘째 답."]))
    drive(session, "첫 질문\n")
    with open(tmp_path / "history.sqlite", "r+b") as fh:  # damaged in place, under the open connection
        fh.write(b"garbage!" * 512)
    out, err = drive(session, f"둘째 질문\n/저장 {tmp_path / 'kept.md'}\n")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is damaged" in errors[0] and "Traceback" not in err
    assert "메모리에만" in err and "둘째 답." in out
    kept = (tmp_path / "kept.md").read_text(encoding="utf-8")
    assert all(text in kept for text in ("첫 질문", "첫 답.", "둘째 질문", "둘째 답."))


# -- 14: closed stdin, a reader that went away ----------------------------------------------------------

STREAM_ROWS = [
    # (arguments, what happens to stdin/stdout, exit code, stderr fragment or "" for no error at all)
    (["history", "list"], "reader gone", 141, ""),
    (["history", "show", "SID"], "reader gone", 141, ""),
    (["chat", "--model", "demo", "--session", "SID"], "reader gone", 141, ""),
    (["chat", "--model", "demo"], "stdin closed", EXIT_USAGE, "stdin is closed"),
    (["ask", "--model", "demo"], "stdin closed", EXIT_USAGE, "stdin is closed"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, how, code, fragment", STREAM_ROWS, ids=[f"{' '.join(r[0][:2])}-{r[1]}" for r in STREAM_ROWS]
)
def test_closed_streams_are_not_internal_errors(tmp_path, args, how, code, fragment):
    home = tmp_path / "home"
    sid = _seed_session(home)
    cmd = [sys.executable, "-m", "korani_cli", *[sid if a == "SID" else a for a in args]]
    env = {**os.environ, "KORANI_HOME": str(home)}
    if how == "stdin closed":
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            preexec_fn=lambda: os.close(0),
        )
    else:  # stdout's reader closes its end before korani writes a byte (`korani … | head -c 0`)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO
        )
        proc.stdout.close()
        proc.stdin.write("/출처\n/기록\n".encode())
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=100)
    assert proc.returncode == code, err
    if fragment:
        assert fragment in one_line(err)
    else:  # quiet, like any tool whose reader went away: no error line, no traceback
        assert "error" not in err and "Traceback" not in err


# -- issue 20: every command that writes to stdout honours a reader that went away: 141, nothing said ----


def _prepared_data(root: Path) -> Path:
    """A real `korani data prepare` output with 30 conversations (24 in train)."""
    source = root / "k.jsonl"
    rows = [
        {"instruction": f"질문 {i}: 한국의 산 {i}은?", "output": f"답변 {i}: 높은 산입니다 {i * 7}."}
        for i in range(30)
    ]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = runner.invoke(app, ["data", "prepare", "--koalpaca", str(source), "-o", str(root / "data")])
    assert result.exit_code == 0, result.output
    return root / "data"


READER_GONE_ROWS = [
    # arguments (DATA = a prepared data set, SID = a saved session). Before, --help, --version and the
    # data tables exited 1 (click's and rich's own answer to a closed pipe); the two history rows
    # already gave 141 and stay as controls, since every exit now passes through the root's last flush.
    ["--help"],
    ["ask", "--help"],
    ["history", "--help"],
    ["--version"],
    ["data", "show", "DATA", "--random", "20"],
    ["data", "stats", "DATA"],
    ["history", "export", "SID"],
    ["history", "show", "SID", "--json"],
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", READER_GONE_ROWS, ids=[" ".join(r) for r in READER_GONE_ROWS])
def test_a_reader_that_went_away_is_exit_141_and_silence(tmp_path, args):
    home = tmp_path / "home"
    sid = _seed_session(home)
    data = _prepared_data(tmp_path) if "DATA" in args else None
    cmd = [
        sys.executable,
        "-m",
        "korani_cli",
        *[sid if a == "SID" else str(data) if a == "DATA" else a for a in args],
    ]
    # The reader closes its end before korani writes a byte (`korani … | head -c 0`, deterministically).
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "KORANI_HOME": str(home)},
        cwd=REPO,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=100)
    assert proc.returncode == 141, err
    assert err == ""  # no error line, no traceback, no "Exception ignored" from the interpreter


def test_a_reader_that_stays_sees_everything(tmp_path):
    """The control: the same commands with a reader exit 0 and print in full."""
    data = _prepared_data(tmp_path)
    code, out, err = korani("data", "show", str(data), "--random", "20", env={"KORANI_HOME": str(tmp_path)})
    assert code == 0 and out.count("### User") >= 20, err
    code, out, _ = korani("--help")
    assert code == 0 and "Commands" in out
