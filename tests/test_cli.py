"""The CLI as a user meets it: help, import weight, `korani ask`, errors and exit codes."""

import json
import re
import subprocess
import sys

import pytest
from support import run_korani
from typer.testing import CliRunner

from korani_cli.cli import app
from korani_cli.errors import EXIT_CONFIG, EXIT_GENERATION, EXIT_MODEL_LOAD, EXIT_USAGE

HEAVY = ("torch", "transformers", "peft", "llama_cpp", "sentence_transformers", "deepspeed", "bitsandbytes")
runner = CliRunner()


def all_command_paths(group=None, prefix=()):
    import typer.main

    group = group or typer.main.get_command(app)
    yield prefix
    for name, cmd in getattr(group, "commands", {}).items():
        yield from all_command_paths(cmd, (*prefix, name)) if hasattr(cmd, "commands") else [(*prefix, name)]


def test_importing_the_cli_loads_no_heavy_library():
    code = "import sys, korani_cli.cli; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("path", list(all_command_paths()), ids=lambda p: " ".join(p) or "korani")
def test_every_help_exits_zero_without_heavy_imports(path):
    code = (
        "import sys\nfrom korani_cli.cli import app\n"
        "try:\n    app([*sys.argv[1:], '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in %r if m in sys.modules]\n"
        "sys.stderr.write('HEAVY:' + ','.join(heavy))\nsys.exit(code)\n" % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", code, *path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    assert out.stderr.strip().endswith("HEAVY:"), out.stderr


@pytest.mark.slow
def test_ask_demo_json_has_every_field():
    result = runner.invoke(
        app, ["ask", "--model", "demo", "-t", "0", "-n", "20", "--json", "한국의 수도는 어디인가요?"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "demo" and data["backend"] == "llamacpp"
    # Greedy, the base model repeats the question and then opens a "### " header: the answer
    # is cut there, before the 20-token limit, and the JSON says why it ended.
    assert data["finish_reason"] == "stop" and data["completion_tokens"] < 20
    assert data["prompt_tokens"] > 0 and data["completion_tokens"] >= 0
    assert set(data["timings"]) >= {"load_s", "first_token_s", "total_s"}
    assert "###" not in data["answer"]


@pytest.mark.slow
def test_ask_hf_model_directory(tiny_neox_dir):
    result = runner.invoke(
        app, ["ask", "--model", str(tiny_neox_dir), "-t", "0", "-n", "8", "--json", "안녕하세요?"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "hf" and data["prompt_tokens"] > 0


@pytest.mark.slow
def test_ask_subprocess_stdout_is_only_the_answer():
    plain = run_korani("ask", "--model", "demo", "-t", "0", "-n", "20", "한국의 수도는?")
    assert plain.returncode == 0, plain.stderr
    js = run_korani("ask", "--model", "demo", "-t", "0", "-n", "20", "--json", "한국의 수도는?")
    answer = json.loads(js.stdout)["answer"]
    # Same greedy answer; stdout holds it and a newline, nothing else.
    assert plain.stdout == answer + "\n"
    assert "Traceback" not in plain.stderr


@pytest.mark.slow
def test_ask_reads_the_question_from_stdin():
    piped = run_korani(
        "ask", "-", "--model", "demo", "-t", "0", "-n", "20", "--json", input="한국의 수도는?\n"
    )
    direct = run_korani("ask", "--model", "demo", "-t", "0", "-n", "20", "--json", "한국의 수도는?")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["answer"] == json.loads(direct.stdout)["answer"]
    implicit = run_korani("ask", "--model", "demo", "-t", "0", "-n", "20", "--json", input="한국의 수도는?\n")
    assert json.loads(implicit.stdout)["answer"] == json.loads(direct.stdout)["answer"]


def one_error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and " — " in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def test_missing_gguf_path_is_one_line_and_exit_3(tmp_path):
    proc = run_korani("ask", "--model", str(tmp_path / "nope.gguf"), "hi")
    assert proc.returncode == EXIT_MODEL_LOAD
    assert "GGUF file not found" in one_error_line(proc)


def test_missing_relative_path_names_the_ways_forward():
    proc = run_korani("ask", "--model", "./models/none", "hi")
    assert proc.returncode == EXIT_MODEL_LOAD
    assert "--model demo" in one_error_line(proc)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "hub refuses connections"])
def test_default_model_unreachable_offline_points_to_demo(how):
    from support import free_port

    env = (
        {"HF_HUB_OFFLINE": "1"}
        if how == "HF_HUB_OFFLINE"
        else {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )
    proc = run_korani("ask", "안녕?", env=env)
    assert proc.returncode == EXIT_MODEL_LOAD
    line = one_error_line(proc)
    assert "ChaeMs/KoRani-5.8b" in line and "--model demo" in line and "--model PATH" in line


def test_empty_question_is_a_usage_error():
    proc = run_korani("ask", "-", "--model", "demo", input="  \n")
    assert proc.returncode == EXIT_USAGE
    assert "empty" in one_error_line(proc)


def test_bad_option_is_exit_2():
    proc = run_korani("ask", "--temperature", "hot", "hi")
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr


def test_unknown_config_key_is_exit_5(tmp_path):
    (tmp_path / "config.toml").write_text('modle = "demo"\n')
    proc = run_korani("ask", "hi", env={"KORANI_HOME": str(tmp_path)})
    assert proc.returncode == EXIT_CONFIG
    line = one_error_line(proc)
    assert "unknown setting 'modle'" in line and "model" in line


def test_generation_failure_is_exit_4(failing_server):
    proc = run_korani("ask", "--model", f"openai:broken@{failing_server}", "hi")
    assert proc.returncode == EXIT_GENERATION
    assert "CUDA out of memory" in one_error_line(proc)


def test_debug_shows_the_traceback(tmp_path):
    proc = run_korani("--debug", "ask", "--model", str(tmp_path / "nope.gguf"), "hi")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_config_file_and_env_choose_the_default_model(tmp_path):
    (tmp_path / "config.toml").write_text('model = "demo"\ntemperature = 0.0\nmax_new_tokens = 8\n')
    env = {"KORANI_HOME": str(tmp_path)}
    from_file = run_korani("ask", "--json", "안녕?", env=env)
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["model"] == "demo"
    from_env = run_korani("ask", "--json", "안녕?", env={**env, "KORANI_MODEL": "demo-chat"})
    assert json.loads(from_env.stdout)["model"] == "demo-chat"


def test_models_resolve_shows_the_backend(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    out = runner.invoke(app, ["models", "resolve", str(tmp_path / "m.gguf")])
    assert out.exit_code == 0 and "llamacpp" in out.stdout
    listing = runner.invoke(app, ["models", "list"])
    assert "korani-5.8b" in listing.stdout and "demo-chat" in listing.stdout


def _help_screen(path) -> str:
    wide = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})  # one row per option
    assert wide.exit_code == 0, wide.output
    return wide.stdout


@pytest.mark.parametrize("path", list(all_command_paths()), ids=lambda p: " ".join(p) or "korani")
def test_every_option_is_described_and_shows_its_default(path):
    """Each option has a description; each option that takes a value shows its default
    (typer's own `[default: X]`, or the help's when the default is looked up at run time);
    a flag (which takes no value) shows no `<bool>`."""
    import re

    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    screen = _help_screen(path)
    assert "<bool>" not in screen
    problems = []
    for param in command.params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        flag = max(param.opts, key=len)
        names = [o for o in param.opts if o.startswith("--")]
        row = next(
            (
                line
                for line in screen.splitlines()
                if re.match(r"│ (?:\*)? *(?:%s)[ ,]" % "|".join(map(re.escape, names)), line)
            ),
            "",
        )
        assert row, (flag, screen)
        if not (param.help or "").strip():
            problems.append(f"{flag}: no description")
        if not (param.is_flag or param.count or param.required) and "default:" not in row:
            problems.append(f"{flag}: no default shown")
    assert not problems, problems


def test_train_help_lists_its_run_form():
    screen = _help_screen(("train",))
    commands = screen.split("Commands")[1]
    assert re.search(r"│ run +Train a LoRA adapter", commands), screen


def test_help_format_survives_a_typer_without_the_hooks_it_wraps():
    """A Typer whose option class lacks display_type_rich (typer>=0.15 allows such) must not stop
    korani starting; found on a GPU machine whose Typer differed: `korani` died at import with
    AttributeError."""
    from korani_cli import helpfmt

    class BareOption:  # an option class as an older Typer builds it: no display_type_rich
        def __init__(self, help=None):
            self.help = help

    helpfmt.install(BareOption)
    helpfmt.install(BareOption)  # twice, as two imports would: wrapped once
    assert not hasattr(BareOption, "display_type_rich")
    assert BareOption(help="Tokens to keep [default: 256]").help == "Tokens to keep \\[default: 256]"
