"""The reference model for real (issue 21): polyglot-ko's own tokenizer through llama.cpp,
and `korani models pull` on a rehearsal of the Hub's repositories (tests/rehearsal.py).

polyglot-ko's pre-tokenizer cuts the text at "ೱ" (U+0CF1) and drops it before GPT-2's byte-level
split; llama.cpp has no such step, so the GGUF carries the literal and korani's llamacpp backend
cuts the text before llama.cpp tokenises it. The comparison against transformers runs on KorQuAD
contexts, the KULLM prompts and edge strings. The rehearsal has the Hub's config (vocab 30080
against 30,003 ids, bos/eos 0) and a 2023 PEFT adapter; its weights make greedy decoding answer
"안녕하세요" through id 0 and a padded id before the tokenizer's <|endoftext|>, in both
special-token layouts (<|endoftext|> = 1 and = 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rehearsal import (
    ADAPTER_ID,
    ANSWER,
    BASE_ID,
    PADDED_ID,
    POLYGLOT_TOKENIZER,
    build_rehearsal,
    hub_cache,
)
from support import SHARED, run_korani

from korani_cli.errors import EXIT_MODEL_LOAD

KORQUAD = SHARED / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"
KULLM = SHARED / "eval" / "chat" / "kullm_user_oriented_instructions_eval.jsonl"
# Beyond pull's own probes: what a byte-level regex or a special-token split could get wrong.
EDGE = [
    "ೱ",
    "ೱೱ가ೱ ೱ나ೱ",
    "  ೱ  \t",
    "🙂ೱ🙂",
    "hello ೱworld, helloೱ world, 123ೱ456",
    "ೱ<|endoftext|>ೱ",
    "<|endoftext|>",
    "a<|pad|>b<|sep|>c<|unk|>d<|acc|><|tel|><|rrn|>",
    "[PAD30050] 패딩 토큰의 이름",
    "ᄀᄁᄂ ᅡᅢ ᆨᆩ 첫가끝",
    "ＡＢＣ１２３　전각　공백 ｶﾀｶﾅ",
    "a   b\t\tc \t d\n\n\n  e",
    "    ",
    "\t",
    "\r\n\r\n",
    "\u200b\u200d\ufeff 보이지 않는 문자",
    "é e\u0301 ﬁ ½",
    "I've 'RE you sure? 3333333 3.3 ……",
    "😀👍🏽 🇰🇷 👨‍👩‍👧 🏳️‍🌈",
    "漢字 韓國語 大韓民國 𠀀",
]

pytestmark = pytest.mark.slow


def _need_shared():
    if not (POLYGLOT_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("../shared/fixtures/tokenizers/polyglot-ko is absent")


def korani(*args: str, home: Path, timeout: float = 600, input: str | None = None, **env):
    """The CLI on a machine without CUDA and without the Hub."""
    return run_korani(
        *args,
        input=input,
        timeout=timeout,
        env={"KORANI_HOME": str(home), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **env},
    )


def one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def _gguf_tokenizer(gguf: Path, rules: bool = True):
    import llama_cpp

    from korani_cli.backends.llamacpp import apply_tokenizer_rules

    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    if rules:
        apply_tokenizer_rules(llm, gguf.name)
    return llm


def _texts() -> list[tuple[str, str]]:
    from korani_cli.pull import TOKENIZER_PROBES

    texts = [("probe", t) for t in TOKENIZER_PROBES] + [("edge", t) for t in EDGE]
    if KORQUAD.is_file():
        data = json.loads(KORQUAD.read_text(encoding="utf-8"))["data"]
        texts += [("korquad", p["context"]) for a in data for p in a["paragraphs"]]
    if KULLM.is_file():
        for line in KULLM.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            inputs = [i["input"] for i in row.get("instances") or [] if i.get("input")]
            texts.append(("kullm", "\n\n".join([row["instruction"], *inputs])))
    return texts


def _mismatches(llm, reference, texts) -> list[str]:
    """Texts the GGUF tokenises unlike transformers (special tokens parsed, as both backends do)."""
    return [
        text
        for _, text in texts
        if llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        != reference(text, add_special_tokens=False)["input_ids"]
    ]


@pytest.fixture(scope="module")
def tinypoly(tmp_path_factory) -> Path:
    """A tiny random GPT-NeoX saved with polyglot-ko's tokenizer, as the issue's report made it."""
    _need_shared()
    from transformers import AutoTokenizer

    from korani_cli.train.smoke import build_model

    out = tmp_path_factory.mktemp("tinypoly") / "tinypoly"
    return build_model(AutoTokenizer.from_pretrained(POLYGLOT_TOKENIZER), out, context=2048)


# -- the tokenizer -----------------------------------------------------------------------------


def test_polyglot_tokenizer_exports_and_tokenises_exactly_as_transformers(tinypoly, tmp_path):
    from transformers import AutoTokenizer

    from korani_cli.backends.llamacpp import SPLIT_KEY

    reference = AutoTokenizer.from_pretrained(POLYGLOT_TOKENIZER)
    texts = _texts()
    for outtype in ("f16", "q8_0", "q4_k_m"):
        gguf = tmp_path / f"tinypoly-{outtype}.gguf"
        proc = korani(
            "train", "export-gguf", str(tinypoly), "-o", str(gguf), "--outtype", outtype, home=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        llm = _gguf_tokenizer(gguf)
        assert llm.metadata[SPLIT_KEY] == json.dumps(["ೱ"])
        assert llm.metadata["tokenizer.ggml.eos_token_id"] == str(reference.eos_token_id)
        # Every text: the KorQuAD contexts and KULLM prompts too on f16, pull's probes and the edges on all.
        checked = texts if outtype == "f16" else [t for t in texts if t[0] in ("probe", "edge")]
        assert _mismatches(llm, reference, checked) == []
        llm.close()
    sources = {kind for kind, _ in texts}
    assert {"korquad", "kullm"} <= sources or not KORQUAD.is_file()
    assert len(texts) >= 1200 or not KORQUAD.is_file()

    # The key is what makes it exact: llama.cpp alone would glue "대한ೱ민국" into "대한민국"'s pieces.
    bare = _gguf_tokenizer(tmp_path / "tinypoly-f16.gguf", rules=False)
    wrong = _mismatches(bare, reference, texts)
    assert wrong and all("ೱ" in text for text in wrong)
    assert reference("대한ೱ민국", add_special_tokens=False)["input_ids"] != reference("대한민국")["input_ids"]
    bare.close()


def test_a_pre_tokenizer_korani_cannot_reproduce_is_still_refused_with_its_hash(tinypoly, tmp_path):
    model = tmp_path / "isolated"
    shutil.copytree(tinypoly, model)
    spec = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Isolated"  # keeps "ೱ" as a piece of its own
    (model / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "isolated.gguf"
    proc = korani("train", "export-gguf", str(model), "-o", str(out), home=tmp_path)
    line = one_line_error(proc)
    assert proc.returncode == EXIT_MODEL_LOAD
    chkhsh = line.split("(chkhsh ")[1].split(")")[0]
    assert len(chkhsh) == 64 and int(chkhsh, 16) >= 0
    assert "Sequence[Split(String 'ೱ', Isolated), ByteLevel]" in line and "--backend hf" in line
    assert not list(tmp_path.glob("*isolated.gguf*"))


# -- the rehearsal: the Hub's layout, pulled ---------------------------------------------------


@pytest.fixture(scope="module", params=["fixture", "hub"])
def rehearsal(request, tmp_path_factory) -> tuple[str, Path]:
    _need_shared()
    root = tmp_path_factory.mktemp(f"rehearsal_{request.param}")
    return request.param, build_rehearsal(root, layout=request.param)


def _eos_id(layout: str) -> int:
    return {"fixture": 1, "hub": 2}[layout]


def test_pull_from_the_rehearsal_then_ask_and_chat_stop_on_the_tokenizers_eos(rehearsal, tmp_path):
    from transformers import AutoTokenizer

    from korani_cli.backends.llamacpp import SPLIT_KEY
    from korani_cli.pull import TOKENIZER_PROBES

    layout, root = rehearsal
    quant = {"fixture": "q4_k_m", "hub": "q8_0"}[layout]  # each quant once, each layout once
    # The Hub's layout, as the rehearsal must have it: a padded vocabulary and bos/eos 0 in the
    # config, <|endoftext|> elsewhere in the tokenizer, rotary settings under 4.2x's keys.
    config = json.loads((root / BASE_ID / "config.json").read_text(encoding="utf-8"))
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (30080, 0, 0)
    assert config["rotary_pct"] == 0.25 and "rope_parameters" not in config
    tokenizer = AutoTokenizer.from_pretrained(root / BASE_ID)
    assert len(tokenizer) == 30003 < PADDED_ID and tokenizer.eos_token_id == _eos_id(layout)

    home = tmp_path / "home"
    home.mkdir()
    proc = korani("models", "pull", "korani-5.8b", "--from", str(root), "--quant", quant, home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = home / "cache" / "models" / "korani-5.8b" / quant
    assert [p.name for p in entry.parent.iterdir()] == [quant]
    record = json.loads((entry / "provenance.json").read_text(encoding="utf-8"))
    assert record["tokenizer_probes"] == len(TOKENIZER_PROBES)
    assert record["verify_answer"] == ANSWER and record["verify_tokens"] == 5
    llm = _gguf_tokenizer(entry / "model.gguf")
    assert llm.metadata[SPLIT_KEY] == json.dumps(["ೱ"])
    assert llm.metadata["tokenizer.ggml.eos_token_id"] == str(_eos_id(layout))
    llm.close()

    # ask: the answer passes id 0 (the config's eos) and a padded id, and ends at <|endoftext|>.
    asked = korani("ask", "-t", "0", "-n", "24", "--json", "서울은 어떤 도시인가요?", home=home)
    assert asked.returncode == 0, asked.stderr[-2000:]
    answer = json.loads(asked.stdout)
    assert answer["backend"] == "llamacpp"
    assert (answer["answer"], answer["finish_reason"], answer["completion_tokens"]) == (ANSWER, "eos", 5)
    # chat, piped: two turns, each answer whole and stopped, the second after the first's EOS text.
    chat = korani(
        "chat", "-t", "0", "-n", "24", "--no-history", home=home, input="서울은?\n한 번 더 말해 줘\n"
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.split() == [ANSWER, ANSWER]


def test_the_rehearsal_through_transformers_and_train_merge(rehearsal, tmp_path):
    """`--backend hf` and `train merge` resolve the adapter and its base by hub id, here from
    huggingface_hub's cache as a download would have left them."""
    layout, root = rehearsal
    home = tmp_path / "home"
    home.mkdir()
    hf_home = hub_cache(root, tmp_path / "hf")
    asked = korani(
        "ask", "--backend", "hf", "-t", "0", "-n", "24", "--json", "서울은?", home=home, HF_HOME=str(hf_home)
    )
    assert asked.returncode == 0, asked.stderr[-2000:]
    answer = json.loads(asked.stdout)
    assert (answer["backend"], answer["answer"], answer["finish_reason"], answer["completion_tokens"]) == (
        "hf",
        ANSWER,
        "eos",
        5,
    )

    merged = tmp_path / "merged"
    proc = korani(
        "train", "merge", str(root / ADAPTER_ID), "-o", str(merged), home=home, HF_HOME=str(hf_home)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The merged model names its tokenizer's ids, not the Hub config's 0.
    for name in ("config.json", "generation_config.json"):
        config = json.loads((merged / name).read_text(encoding="utf-8"))
        assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (
            _eos_id(layout),
            _eos_id(layout),
            0,
        ), name
    again = korani("ask", "--model", str(merged), "-t", "0", "-n", "24", "--json", "서울은?", home=home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["answer"] == ANSWER


def test_data_prepare_counts_tokens_with_the_rehearsal_tokenizer(rehearsal, tmp_path):
    from transformers import AutoTokenizer

    from korani_cli.template import turn_text

    layout, root = rehearsal
    base = root / BASE_ID
    out = tmp_path / "data"
    source = SHARED / "fixtures" / "instruct" / "koalpaca_v1.1a_rows0-1.jsonl"
    proc = korani(
        "data", "prepare", "--koalpaca", str(source), "--tokenizer", str(base), "--valid", "0", "--test", "0",
        "-o", str(out), home=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["eos_token"] == "<|endoftext|>" and stats["length_measure"] == f"tokenizer:{base}"
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = sum(
        len(
            tokenizer(turn_text(m["role"], m["content"], "<|endoftext|>"), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for row in rows
        for m in row["messages"]
    )
    assert stats["splits"]["train"]["tokens"]["total"] == expected


@pytest.mark.parametrize("rehearsal", ["fixture"], indirect=True)  # both layouts are pulled and asked above
def test_training_on_the_rehearsal_base(rehearsal, prepared, tmp_path):
    """The shipped recipe with the Hub-layout base: its tokenizer's EOS is what the labels end on
    and what the health check stops at; the config's 0 and the padded rows play no part."""
    layout, root = rehearsal
    out = tmp_path / "run"
    proc = korani(
        "train", "korani-5.8b", "--data", str(prepared), "--output", str(out),
        f"base_model={root / BASE_ID}", "max_steps=2", "eval_steps=2", "save_steps=2", "health_prompts=2",
        "health_max_new_tokens=12", "per_device_train_batch_size=2", "max_length=256",
        home=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "korani_metadata.json").read_text(encoding="utf-8"))
    assert meta["steps"] == 2 and meta["health"]["eos_share"] == 1.0
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    assert saved.eos_token == "<|endoftext|>" and saved.eos_token_id == _eos_id(layout)
    assert saved.pad_token_id not in (None, saved.eos_token_id)
