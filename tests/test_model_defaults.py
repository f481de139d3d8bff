"""Which model and generation settings a command runs with when the user names none (issue 22):
each alias's own generation defaults, below everything the user sets; `korani models default`,
which keeps the default model in the config file without harming the rest of it.

In-process rows use the `scripted` backend (tests/conftest.py) or no model at all; the
subprocess rows run the PyPI demo models through llama.cpp, as a user would.
"""

from __future__ import annotations

import os

import pytest
from support import REPO, ScriptedBackend, run_korani
from typer.testing import CliRunner

from korani_cli import config
from korani_cli.backends import registry
from korani_cli.cli import app
from korani_cli.config import GenerationDefaults, explain_settings

runner = CliRunner()


# -- each alias's generation defaults ----------------------------------------------------------------


@pytest.mark.parametrize(
    "model, env, file, flags, key, value, origin",
    [
        ("demo-chat", {}, "", {}, "temperature", 0.0, "demo-chat's default"),
        ("demo-chat", {}, "", {}, "template", "model", "demo-chat's default"),
        # A value the user wrote wins over the alias's, even when it equals korani's own default.
        ("demo-chat", {}, "temperature = 0.7\n", {}, "temperature", 0.7, "config file"),
        ("demo-chat", {"KORANI_TEMPLATE": "korani"}, "", {}, "template", "korani", "KORANI_TEMPLATE"),
        ("demo-chat", {}, "temperature = 0.5\n", {"temperature": 0.3}, "temperature", 0.3, "--temperature"),
        ("demo-chat", {}, "max_new_tokens = 99\n", {}, "max_new_tokens", 99, "config file"),
        # The model the config file or the environment names brings its defaults too.
        (None, {}, 'model = "demo-chat"\n', {}, "temperature", 0.0, "demo-chat's default"),
        (None, {"KORANI_MODEL": "demo-chat"}, "", {}, "template", "model", "demo-chat's default"),
        ("demo", {}, "", {}, "temperature", 0.7, "demo's default"),
        ("some/model", {}, "", {}, "temperature", 0.7, "built-in default"),
        (None, {}, "", {}, "top_p", 0.9, "korani-5.8b's default"),
    ],
)
def test_alias_defaults_sit_below_everything_the_user_sets(
    tmp_path, monkeypatch, model, env, file, flags, key, value, origin
):
    for name in ("KORANI_MODEL", "KORANI_TEMPLATE"):
        monkeypatch.delenv(name, raising=False)
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    path = tmp_path / "config.toml"
    path.write_text(file, encoding="utf-8")
    settings, origins = explain_settings({"model": model, **flags}, config_path=path)
    assert getattr(settings, key) == value
    assert origins[key].startswith(origin)


def test_models_resolve_shows_the_generation_settings_and_where_they_come_from(home):
    (home / "config.toml").write_text("top_p = 0.8\n", encoding="utf-8")
    out = runner.invoke(app, ["models", "resolve", "demo-chat"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.stdout.splitlines()}
    assert rows["template"].split()[0] == "model" and "(demo-chat's default)" in rows["template"]
    assert rows["temperature"].split()[0] == "0" and "(demo-chat's default)" in rows["temperature"]
    assert rows["top_p"].split()[0] == "0.8" and f"(config file {home / 'config.toml'})" in rows["top_p"]
    assert rows["max_new_tokens"].split()[0] == "256"


def test_switching_models_in_a_chat_brings_the_new_aliases_defaults(home, monkeypatch):
    backend = ScriptedBackend()
    registry.register("recording", backend)
    monkeypatch.setitem(
        config.ALIAS_DEFAULTS, "recording:b", GenerationDefaults(temperature=0.0, max_new_tokens=5)
    )
    try:
        result = runner.invoke(
            app,
            ["chat", "--model", "recording:a", "--no-history"],
            input="안녕\n/모델 recording:b\n또 안녕\n",
        )
    finally:
        registry.unregister("recording")
    assert result.exit_code == 0, result.output
    (first, second) = [(p.temperature, p.max_new_tokens) for p in backend.params]
    assert first == (0.7, 256) and second == (0.0, 5)


@pytest.mark.slow
def test_readmes_demo_chat_line_answers_as_readme_says(tmp_path):
    """README: echo "What is 12 times 10?" | korani ask --model demo-chat -  →  12 times 10 is 120.
    At 0.7 the 135M model got it wrong three times in three; its own default is greedy."""
    env = {"KORANI_HOME": str(tmp_path)}
    for seed in ("1", "2"):
        proc = run_korani(
            "ask", "--model", "demo-chat", "--seed", seed, "-", input="What is 12 times 10?\n", env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "12 times 10 is 120.\n"
    shown = run_korani("models", "resolve", "demo-chat", env=env)
    assert "temperature    0 " in shown.stdout, shown.stdout


# -- korani models default ---------------------------------------------------------------------------


def models(*args: str, env: dict | None = None):
    return runner.invoke(app, ["models", *args], env=env)


def one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


HAND_WRITTEN = (
    "# my korani settings\n"
    "\n"
    "temperature   = 0.3      # cooler\n"
    "model = 'korani-5.8b'   # the big one\n"
    # a value that reads like the key (an API key is one line of printable ASCII, so a
    # multi-line string can no longer stand in a valid config: config.RULES refuses it)
    'openai_api_key = "model=inside-a-string"\n'
    "n_ctx=4096\n"
)


def test_models_default_sets_the_model_and_keeps_everything_else_byte_for_byte(home):
    path = home / "config.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    result = models("default", "demo-chat")
    assert result.exit_code == 0, result.output
    assert f"default model: demo-chat (saved in {path})" in result.stderr
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN.replace(
        "model = 'korani-5.8b'   # the big one", 'model = "demo-chat" # the big one'
    )
    shown = models("default")
    assert shown.stdout == "demo-chat\n" and f"set in config file {path}" in shown.stderr
    listing = models("list")
    assert f"default: demo-chat (set in config file {path}" in " ".join(listing.stdout.split())
    assert [line.split()[0] for line in listing.stdout.splitlines() if "✓" in line] == ["demo-chat"]
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]  # no temporary or lock file left

    unset = models("default", "--unset")
    assert unset.exit_code == 0 and "default model: korani-5.8b (built-in)" in unset.stderr
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN.replace(
        "model = 'korani-5.8b'   # the big one\n", ""
    )
    assert models("default").stdout == "korani-5.8b\n"


def test_models_default_adds_the_line_when_the_file_has_none_in_its_own_line_ends(home):
    path = home / "config.toml"
    path.write_bytes(b'openai_api_key = "model=no"\r\ntop_p = 0.5')  # no final line end
    assert models("default", "demo").exit_code == 0
    assert path.read_bytes() == b'openai_api_key = "model=no"\r\ntop_p = 0.5\r\nmodel = "demo"\r\n'


def test_models_default_creates_the_config_file_and_its_directory(tmp_path, monkeypatch):
    home = tmp_path / "not" / "yet"
    monkeypatch.setenv("KORANI_HOME", str(home))
    monkeypatch.delenv("KORANI_MODEL", raising=False)
    result = models("default", "demo")
    assert result.exit_code == 0, result.output
    assert (home / "config.toml").read_text(encoding="utf-8") == 'model = "demo"\n'


def test_models_default_shows_where_the_default_comes_from(home):
    built_in = models("default")
    assert built_in.stdout == "korani-5.8b\n" and "built-in default" in built_in.stderr
    (home / "config.toml").write_text('model = "demo"\n', encoding="utf-8")
    from_env = models("default", env={"KORANI_MODEL": "demo-chat"})
    assert from_env.stdout == "demo-chat\n" and "set by KORANI_MODEL" in from_env.stderr
    setting = models("default", "demo", env={"KORANI_MODEL": "demo-chat"})
    assert "KORANI_MODEL=demo-chat is set, and wins over the config file" in setting.stderr


def test_models_default_refuses_a_name_that_does_not_resolve(home):
    path = home / "config.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    for name in ("dmeo", "./missing.gguf", "openai:served", " "):
        result = models("default", name)
        assert result.exit_code == 2, (name, result.output)
        assert "pass an alias (korani-5.8b, demo, demo-chat)" in one_error(result)
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN


def test_models_default_keeps_a_local_model_as_an_absolute_path(home, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # the working directory is tmp_path
    assert models("default", "m.gguf").exit_code == 0
    assert (home / "config.toml").read_text(encoding="utf-8") == f'model = "{tmp_path / "m.gguf"}"\n'


def test_models_default_repairs_a_bad_model_value_but_not_another_bad_setting(home):
    path = home / "config.toml"
    path.write_text('model = ""\n', encoding="utf-8")
    assert models("default", "demo").exit_code == 0
    assert path.read_text(encoding="utf-8") == 'model = "demo"\n'
    path.write_text('model = "demo"\ntemperature = "hot"\n', encoding="utf-8")
    result = models("default", "demo-chat")
    assert result.exit_code == 5 and "'temperature' must be a finite number" in one_error(result)
    assert path.read_text(encoding="utf-8") == 'model = "demo"\ntemperature = "hot"\n'


BROKEN = [
    ("not TOML", b'model = "demo\ntemperature = 0.2\n', "is not valid TOML"),
    ("not UTF-8", b'model = "demo"\n# caf\xe9\n', "is not UTF-8 text"),
    ("unknown key", b'model = "demo"\ntemprature = 0.2\n', "unknown setting 'temprature'"),
]


@pytest.mark.parametrize("data, fragment", [row[1:] for row in BROKEN], ids=[row[0] for row in BROKEN])
def test_models_default_leaves_a_broken_config_file_alone(home, data, fragment):
    path = home / "config.toml"
    path.write_bytes(data)
    for args in (["default", "demo-chat"], ["default", "--unset"], ["default"]):
        result = models(*args)
        assert result.exit_code == 5, result.output
        assert fragment in one_error(result)
    assert path.read_bytes() == data
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]


def test_models_default_refuses_a_read_only_config_file_even_for_root(home):
    path = home / "config.toml"
    path.write_text("top_p = 0.5\n", encoding="utf-8")
    path.chmod(0o444)
    result = models("default", "demo")
    assert result.exit_code == 5 and "is read-only" in one_error(result)
    assert path.read_text(encoding="utf-8") == "top_p = 0.5\n" and (path.stat().st_mode & 0o777) == 0o444


def test_models_default_refuses_a_directory_in_the_config_files_place(home):
    (home / "config.toml").mkdir()
    (home / "config.toml" / "keep").write_text("x")
    result = models("default", "demo")
    assert result.exit_code == 5 and "is a directory" in one_error(result)
    assert (home / "config.toml" / "keep").read_text() == "x"


def test_models_default_writes_through_a_symlink_and_keeps_it(home, tmp_path):
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "korani.toml").write_text("# shared\ntop_p = 0.5\n", encoding="utf-8")
    (dotfiles / "korani.toml").chmod(0o600)
    (home / "config.toml").symlink_to(dotfiles / "korani.toml")
    assert models("default", "demo").exit_code == 0
    assert (home / "config.toml").is_symlink()
    assert (dotfiles / "korani.toml").read_text(encoding="utf-8") == '# shared\ntop_p = 0.5\nmodel = "demo"\n'
    assert ((dotfiles / "korani.toml").stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in dotfiles.iterdir()) == ["korani.toml"]


@pytest.mark.slow
def test_two_korani_models_default_at_once_leave_a_whole_file(tmp_path):
    """Eight processes set the default at the same moment: each takes its turn, the file always
    parses, the last one's model stays, and the user's comments and settings are untouched."""
    import subprocess
    import sys
    import tomllib

    home = tmp_path / "home"
    home.mkdir()
    path = home / "config.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    env = {**os.environ, "KORANI_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "korani_cli", "models", "default", ("demo", "demo-chat")[i % 2]],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(8)
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    text = path.read_text(encoding="utf-8")
    assert tomllib.loads(text)["model"] in ("demo", "demo-chat")
    model_line = next(line for line in text.splitlines() if line.startswith("model ="))
    assert text == HAND_WRITTEN.replace("model = 'korani-5.8b'   # the big one", model_line)
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]


@pytest.mark.slow
def test_the_exit_3_line_says_how_to_make_the_demo_the_default(tmp_path):
    proc = run_korani("ask", "안녕?", env={"KORANI_HOME": str(tmp_path)})
    assert proc.returncode == 3, proc.stderr
    assert "korani models default demo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_models_default_refuses_a_fifo_and_follows_a_dangling_link(home, tmp_path):
    fifo = home / "config.toml"
    os.mkfifo(fifo)
    result = models("default", "demo")  # must not block on the FIFO
    assert result.exit_code == 5 and "is not a regular file" in one_error(result)
    fifo.unlink()
    fifo.symlink_to(tmp_path / "elsewhere.toml")  # a link to a file not yet made
    assert models("default", "demo").exit_code == 0
    assert fifo.is_symlink() and (tmp_path / "elsewhere.toml").read_text() == 'model = "demo"\n'
