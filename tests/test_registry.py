"""The backend registry (korani_cli/backends/registry.py): every backend, built-in or added,
is found by name and imported only when a model of it is loaded; an unknown name is one
line and exit 3, never a KeyError. And the process policy (runtime.py) is imported from
there, not from console.py or a backend."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from support import REPO
from typer.testing import CliRunner

from korani_cli.backends import ModelSpec, registry
from korani_cli.cli import app
from korani_cli.config import Settings
from korani_cli.errors import EXIT_MODEL_LOAD, ModelLoadError, UsageError
from korani_cli.models import load_backend, resolve

runner = CliRunner()


def test_the_built_in_backends_are_registered_by_module_and_class():
    assert registry.names()[:3] == ("hf", "llamacpp", "openai")
    assert registry.BUILTIN["hf"] == "korani_cli.backends.hf:HFBackend"
    from korani_cli.backends.llamacpp import LlamaCppBackend

    assert registry.loader("llamacpp") is LlamaCppBackend


def test_no_backend_module_is_imported_until_a_model_is_loaded():
    code = (
        "import sys, korani_cli.cli, korani_cli.models\n"
        "print(sorted(m for m in sys.modules if m.startswith('korani_cli.backends.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['korani_cli.backends.registry']"


def test_an_unknown_backend_is_one_line_naming_the_known_ones():
    with pytest.raises(ModelLoadError) as caught:
        load_backend(ModelSpec("x", "nope", "x"), Settings())
    line = caught.value.one_line()
    assert "\n" not in line and "no backend named 'nope' (known: hf, llamacpp, openai)" in line


def test_a_target_that_cannot_be_imported_fails_at_load_not_at_register():
    registry.register("broken", "korani_cli.no_such_module:Backend")  # nothing is imported yet
    try:
        with pytest.raises(ModelLoadError, match="cannot import the broken backend"):
            load_backend(ModelSpec("broken:x", "broken", "x"), Settings())
    finally:
        registry.unregister("broken")


@pytest.mark.parametrize(
    "name, target, fragment",
    [
        ("hf", "korani_cli.backends.hf:HFBackend", "already registered"),  # a built-in one is never replaced
        ("Bad Name", "m:C", "lower-case letters"),
        ("plain", "no-colon", "'module:Class'"),
        ("plain", object(), r"has a load\(spec, settings, notify\) method"),
    ],
)
def test_register_refuses_what_would_break_the_table(name, target, fragment):
    with pytest.raises(ValueError, match=fragment):
        registry.register(name, target)
    assert "plain" not in registry.names()


def test_built_in_backends_cannot_be_removed():
    with pytest.raises(ValueError):
        registry.unregister("openai")


def test_an_added_backend_is_reached_as_name_colon_source(scripted):
    settings = Settings()
    spec = resolve("scripted:anything/at:all", settings)
    assert (spec.backend, spec.source) == ("scripted", "anything/at:all")
    assert load_backend(spec, settings) is scripted
    assert scripted.loads == [("scripted:anything/at:all", "korani")]
    with pytest.raises(UsageError, match="--backend hf cannot load"):
        resolve("scripted:x", Settings(backend="hf"))


def test_without_the_registration_the_same_spec_is_a_missing_path(home):
    """Only a backend someone added is reached by NAME:SOURCE: for the CLI as shipped it stays a path."""
    result = runner.invoke(app, ["ask", "--model", "scripted:x", "안녕"])
    assert result.exit_code == EXIT_MODEL_LOAD
    assert result.stderr.startswith("error: no such model file or directory: scripted:x")


# -- process policy lives in runtime.py ------------------------------------------------------------

POLICY = {"quiet_libraries", "debug_enabled", "set_debug", "hub_reachable"}


def _policy_imports() -> list[str]:
    """`module: from X import NAME` for every import of a policy name from anywhere but runtime."""
    found = []
    for path in sorted((REPO / "korani_cli").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "korani_cli.runtime":
                names = POLICY & {alias.name for alias in node.names}
                if names:
                    found.append(f"{relative}: from {node.module} import {', '.join(sorted(names))}")
    return found


def test_process_policy_is_imported_from_runtime_only():
    assert _policy_imports() == []
