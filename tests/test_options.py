"""The options ask, chat, search and eval share (commands/options.py), as a user meets them:
one meaning per short flag across every command, the same flag spelled the same way
everywhere, plain metavars in --help, and every value checked by its config rule (issue 23)."""

import re
from collections import defaultdict

import pytest
import typer.main
from support import ScriptedBackend
from typer.testing import CliRunner

from korani_cli.backends import registry
from korani_cli.cli import app
from korani_cli.errors import EXIT_USAGE

runner = CliRunner()

# What each short flag means, in every command that has it.
SHORT = {
    "-m": "--model",
    "-s": "--system",
    "-n": "--max-new-tokens",
    "-t": "--temperature",
    "-p": "--provider",
    "-k": "--top-k",
    "-c": "--continue",
    "-o": "--output",
}


def commands(group=None, path=()):
    """(path, click command) for every leaf command of the CLI."""
    group = group or typer.main.get_command(app)
    for name, cmd in getattr(group, "commands", {}).items():
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def options():
    """(command path, its long name, its short names) for every option of every command."""
    for path, cmd in commands():
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            names = [*param.opts, *param.secondary_opts]
            longs = [o for o in names if o.startswith("--")]
            yield " ".join(path), longs[0], tuple(o for o in names if not o.startswith("--"))


def test_each_short_flag_means_one_option_in_every_command():
    meanings = defaultdict(set)
    for where, long, shorts in options():
        for short in shorts:
            meanings[short].add((long, where))
    clashes = {s: sorted(uses) for s, uses in meanings.items() if len({long for long, _ in uses}) > 1}
    assert not clashes
    assert {s: next(iter(uses))[0] for s, uses in meanings.items()} == SHORT


def test_an_option_has_the_same_short_flag_wherever_it_is_offered():
    """-n is --max-new-tokens in eval too, and -k --top-k: a flag learnt in one command works in the next."""
    forms = defaultdict(set)
    for where, long, shorts in options():
        forms[long].add(shorts)
    assert {long: sorted(f) for long, f in forms.items() if len(f) > 1} == {}
    assert "--k" not in forms and "--top-p" in forms


def test_chat_and_eval_take_the_generation_group():
    offered = defaultdict(set)
    for where, long, _ in options():
        offered[where].add(long)
    generation = {"--model", "--system", "--max-new-tokens", "--temperature", "--top-p", "--template"}
    for command in ("ask", "chat", "eval rag", "eval chat"):
        assert generation <= offered[command], command
    search = {"--provider", "--local-dir", "--top-k", "--embedder", "--reranker", "--allow-private"}
    for command in ("ask", "chat", "search"):
        assert search <= offered[command], command


# Typer's Python-flavoured type labels, which a user reading --help should not meet.
PYTHON_TYPES = re.compile(r"<(?:str|int|float|path|list\[[^\]]*\]|(?:int|float) range)>|\d<=x<=\d")


@pytest.mark.parametrize("path", [p for p, _ in commands()], ids=" ".join)
def test_help_shows_plain_metavars(path):
    screen = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).stdout
    assert "Usage" in screen
    assert not PYTHON_TYPES.findall(screen), screen


def test_shared_options_show_their_own_metavars():
    screen = runner.invoke(app, ["ask", "--help"], env={"COLUMNS": "400"}).stdout
    for option, metavar in (
        ("--max-new-tokens", "N"),
        ("--top-k", "N"),
        ("--provider", "NAME"),
        ("--local-dir", "DIR"),
        ("--searxng-url", "URL"),
        ("--template", "korani|model"),
        ("--session", "ID"),
    ):
        row = next(line for line in screen.splitlines() if f" {option} " in line)
        assert re.search(rf"\s{re.escape(metavar)}\s", row), row


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["search", "--top-k", "21", "q"], "--top-k must be a whole number from 1 to 20, got 21"),
        (["ask", "-k", "0", "q"], "--top-k must be a whole number from 1 to 20, got 0"),
        (["chat", "--top-p", "1.5"], "--top-p must be a finite number from 0 to 1, got 1.5"),
        (["eval", "rag", "--top-k", "0"], "--top-k must be a whole number from 1 to 20, got 0"),
        (["eval", "chat", "-n", "0"], "--max-new-tokens must be a whole number from 1 to 1000000"),
        (["eval", "chat", "-t", "-1"], "--temperature must be a finite number from 0 to 100, got -1.0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_value_is_its_rules_one_line_and_exit_2(home, argv, fragment):
    result = runner.invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == EXIT_USAGE, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.fixture
def recording():
    backend = ScriptedBackend()  # it keeps the GenerationParams each answer was asked with
    registry.register("recording", backend)
    yield backend
    registry.unregister("recording")


def test_chat_top_p_reaches_the_model(home, recording):
    result = runner.invoke(
        app, ["chat", "--model", "recording:x", "--top-p", "0.25", "--no-history"], input="안녕\n"
    )
    assert result.exit_code == 0, result.output
    assert [p.top_p for p in recording.params] == [0.25]


def test_eval_n_is_max_new_tokens_and_limit_counts_items(home, recording, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "하나"}\n{"instruction": "둘"}\n{"instruction": "셋"}\n', "utf-8")
    result = runner.invoke(
        app,
        ["eval", "chat", "--model", "recording:x", "--prompts", str(prompts), "-n", "7", "--limit", "2"]
        + ["-o", str(tmp_path / "run"), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert [p.max_new_tokens for p in recording.params] == [7, 7]
