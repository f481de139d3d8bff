"""korani outside its checkout: shipped recipe presets by name, `korani train init`,
the wheel's package data, and GGUF quantisation for CPUs (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from korani_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_USAGE

PRESET = "korani-5.8b"
SHIPPED = REPO / "configs" / f"{PRESET}.yaml"


def korani(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it from `cwd` — a directory with no configs/ in it."""
    return subprocess.run([sys.executable, "-m", "korani_cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the repository, as an installed user has."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    return work


# -- presets by name -------------------------------------------------------------------------


def test_preset_resolves_from_outside_the_checkout(elsewhere):
    # The recipe is found (no config error); the run stops at the missing data, exit 6, before any work.
    for args in (["train", PRESET], ["train", "run", PRESET], ["train", f"{PRESET}.yaml"]):
        proc = korani(*args, "--data", "no-data", "--output", "out", cwd=elsewhere)
        line = one_line_error(proc)
        assert proc.returncode == EXIT_DATA, line
        assert "no-data" in line
    assert list(elsewhere.iterdir()) == []


def test_deepspeed_name_is_the_shipped_file_not_a_local_configs_dir(elsewhere, monkeypatch):
    from korani_cli.train.model import resolve_deepspeed

    decoy = elsewhere / "configs" / "ds_zero2.json"
    decoy.parent.mkdir()
    decoy.write_text('{"zero_optimization": {"stage": 3}}')
    monkeypatch.chdir(elsewhere)
    assert resolve_deepspeed("zero2") == (REPO / "configs" / "ds_zero2.json").resolve()


def test_a_local_file_beats_a_preset_of_the_same_name(elsewhere):
    (elsewhere / PRESET).write_text("lora_r: 0\n")
    proc = korani("train", PRESET, "--data", "no-data", cwd=elsewhere)
    assert proc.returncode == EXIT_CONFIG and f"{PRESET}: 'lora_r' is 0" in one_line_error(proc)


def test_resume_before_a_preset_name_is_not_taken_as_its_checkpoint(elsewhere):
    # `--resume korani-5.8b`: the word after --resume is the recipe, not CKPT (".8b" is no recipe suffix).
    proc = korani("train", "--resume", PRESET, "--data", "no-data", "--output", "out", cwd=elsewhere)
    assert proc.returncode == EXIT_DATA, one_line_error(proc)


# -- korani train init -----------------------------------------------------------------------


def test_init_writes_the_preset_and_it_loads(elsewhere):
    from korani_cli.train.config import load_config

    proc = korani("train", "init", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    written = elsewhere / f"{PRESET}.yaml"
    assert written.read_bytes() == SHIPPED.read_bytes()  # comments kept: they explain the reference run
    assert f"korani train {PRESET}.yaml" in proc.stderr
    assert load_config(written) == load_config(SHIPPED) == load_config(Path(PRESET))

    proc = korani("train", "init", PRESET, "-o", "sub/mine.yaml", cwd=elsewhere)  # no sub/: refused, nothing made
    assert proc.returncode == EXIT_USAGE and "does not exist" in one_line_error(proc)
    (elsewhere / "sub").mkdir()
    assert korani("train", "init", PRESET, "-o", "sub/mine.yaml", cwd=elsewhere).returncode == 0
    assert load_config(elsewhere / "sub" / "mine.yaml").base_model == "EleutherAI/polyglot-ko-5.8b"


def test_init_overwrites_only_with_overwrite(elsewhere):
    target = elsewhere / "recipe.yaml"
    target.write_text("lora_r: 64  # my own edits\n")
    proc = korani("train", "init", "-o", str(target), cwd=elsewhere)
    assert proc.returncode == EXIT_USAGE and "--overwrite" in one_line_error(proc)
    assert target.read_text() == "lora_r: 64  # my own edits\n"
    assert korani("train", "init", "-o", str(target), "--overwrite", cwd=elsewhere).returncode == 0
    assert target.read_bytes() == SHIPPED.read_bytes()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["recipe.yaml"]  # no temporary file left


def test_init_through_a_symlink_replaces_its_target(elsewhere):
    real = elsewhere / "real.yaml"
    real.write_text("old\n")
    (elsewhere / "link.yaml").symlink_to(real)
    assert korani("train", "init", "-o", "link.yaml", "--overwrite", cwd=elsewhere).returncode == 0
    assert (elsewhere / "link.yaml").is_symlink() and real.read_bytes() == SHIPPED.read_bytes()


ERROR_CASES = [
    # (id, args, files to create first, exit code, fragment of the one error line)
    ("repo path outside the repo", ["train", "configs/korani-5.8b.yaml"], [], EXIT_CONFIG,
     "the shipped preset of that name runs with: korani train korani-5.8b"),
    ("unknown name", ["train", "korani-13b"], [], EXIT_CONFIG, "shipped presets: korani-5.8b"),
    ("unknown name via run", ["train", "run", "korani-13b"], [], EXIT_CONFIG, "no recipe file korani-13b and no shipped preset"),
    ("missing file path", ["train", "./mine.yaml"], [], EXIT_CONFIG, "korani train init korani-5.8b"),
    ("preset name with a path", ["train", "sub/korani-5.8b"], [], EXIT_CONFIG, "korani train korani-5.8b"),
    ("init unknown preset", ["train", "init", "korani-13b"], [], EXIT_CONFIG, "no shipped preset 'korani-13b'"),
    ("init path as name", ["train", "init", "../configs/korani-5.8b"], [], EXIT_CONFIG, "no shipped preset"),
    ("init existing file", ["train", "init"], ["korani-5.8b.yaml"], EXIT_USAGE, "already exists"),
    ("init onto a directory", ["train", "init", "-o", "d"], ["d/"], EXIT_USAGE, "is a directory"),
    ("init into a missing dir", ["train", "init", "-o", "nope/r.yaml"], [], EXIT_USAGE, "does not exist"),
    ("init onto a FIFO", ["train", "init", "-o", "fifo", "--overwrite"], ["fifo|"], EXIT_USAGE, "FIFO"),
    ("unknown deepspeed name", ["train", PRESET, "--data", "d", "--deepspeed", "zero9"], [], EXIT_USAGE,
     "use one of zero2, zero3"),
]


@pytest.mark.parametrize("args, files, code, fragment", [r[1:] for r in ERROR_CASES], ids=[r[0] for r in ERROR_CASES])
def test_recipe_errors_name_the_presets(elsewhere, args, files, code, fragment):
    for name in files:
        if name.endswith("/"):
            (elsewhere / name).mkdir()
        elif name.endswith("|"):
            os.mkfifo(elsewhere / name[:-1])
        else:
            (elsewhere / name).write_text("mine\n")
    before = snapshot(elsewhere) if not any(n.endswith("|") for n in files) else None
    proc = korani(*args, cwd=elsewhere, timeout=30)
    line = one_line_error(proc)
    assert proc.returncode == code, line
    assert fragment in line, line
    if before is not None:
        assert snapshot(elsewhere) == before


# -- the wheel -------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    """The wheel holds configs/ as korani_cli/configs/, byte for byte (the CI step installs and runs it)."""
    import shutil

    # Built from a copy: setuptools builds in the source tree and would leave build/ in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "setuptools" in proc.stderr:
        pytest.skip("no setuptools in this environment to build the wheel with")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("korani-*.whl")))
    shipped = {p.name: p.read_bytes() for p in (REPO / "configs").iterdir() if p.is_file()}
    packed = {n.split("/")[-1]: wheel.read(n) for n in wheel.namelist() if n.startswith("korani_cli/configs/")}
    assert packed == shipped and "korani-5.8b.yaml" in packed and "ds_zero2.json" in packed
    assert "korani_cli/train/presets.py" in wheel.namelist()
