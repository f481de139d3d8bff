"""Loading a library is not a reason to talk to the Hub, nor to print.

Every command that loads a heavy library (transformers, peft, bitsandbytes, TRL,
sentence-transformers, llama.cpp's converter) runs twice: once with the Hub
pointed at a loopback server that records every request it receives (no request
may arrive: nothing here names a Hub id), and once offline, as the rest of the
suite runs. Both times every stderr line must be one of korani's own. A library
release that starts phoning home (transformers 5.25's kernel publisher check,
TRL's telemetry, huggingface_hub's agent registry) or adds a line to stderr
fails here, not on a user's machine.

The models are real and local: the tiny GPT-NeoX of `train --smoke`, merged, a
tiny BERT bi-encoder and cross-encoder built with a tokenizer trained here.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import KOREAN_CORPUS, REPO, run_korani

RECIPE = REPO / "configs" / "korani-5.8b.yaml"

# korani's own stderr lines: its notes, errors and warnings, and the summary lines the
# commands below print (train's progress and report, merge's and export's result).
KORANI_LINES = (
    "note:",
    "error:",
    "warning:",
    "WARNING: under 90 %",
    "train ",
    "trained ",
    "eval loss",
    "health",
    "adapter, tokenizer",
    "try it:",
    "merged ",
    "wrote ",
    "exported ",
    "prepared ",
    "tensors: ",
    "splits (lengths by ",
)


class RecordingHub:
    """A stand-in Hub on 127.0.0.1 that answers 404 to everything and remembers what it was asked."""

    def __init__(self):
        hub = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                hub.requests.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = do_PUT = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _bert_pieces(out: Path):
    """A WordPiece vocabulary trained on Korean sentences, and a tiny BERT config for it."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=False, strip_accents=False)  # accents: keep Hangul whole
    wordpiece.train_from_iterator(KOREAN_CORPUS * 3, vocab_size=300, min_frequency=1)
    out.mkdir(parents=True)
    wordpiece.save_model(str(out))
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=False, strip_accents=False)
    config = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return tokenizer, BertConfig, config


def _tiny_bi_encoder(out: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertModel

    tokenizer, BertConfig, config = _bert_pieces(out / "bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**config)).save_pretrained(out / "bert")
    tokenizer.save_pretrained(out / "bert")
    word = modules.Transformer(str(out / "bert"), max_seq_length=64)
    model = SentenceTransformer(modules=[word, modules.Pooling(word.get_embedding_dimension())])
    model.save(str(out / "st"))
    return out / "st"


def _tiny_cross_encoder(out: Path) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    tokenizer, BertConfig, config = _bert_pieces(out)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=1, **config)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """The inputs every command below works on: a training set, two local sentence-transformers
    models, a folder of Korean notes and a KoAlpaca file."""
    pytest.importorskip("sentence_transformers")
    root = tmp_path_factory.mktemp("no-hub")
    data = root / "data"
    data.mkdir()
    corpus = sorted({s for s in KOREAN_CORPUS if "###" not in s})
    for split, n in (("train", 40), ("valid", 4), ("test", 4)):
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"{split} 질문 {i}: {corpus[i % len(corpus)]}"},
                    {"role": "assistant", "content": f"{corpus[(i + 3) % len(corpus)]} 번호 {i}."},
                ]
            }
            for i in range(n)
        ]
        (data / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    docs = root / "docs"
    docs.mkdir()
    for i, city in enumerate(("서울", "부산", "제주")):
        (docs / f"{i}.md").write_text(f"{city}은 큰 도시이다. {city}에는 바다가 있다.", encoding="utf-8")
    koalpaca = root / "koalpaca.jsonl"
    koalpaca.write_text(
        "".join(
            json.dumps({"instruction": f"{s} 설명해 줘 {i}", "output": f"{s} 번호 {i}."}, ensure_ascii=False)
            + "\n"
            for i, s in enumerate(corpus)
        ),
        encoding="utf-8",
    )
    return {
        "data": data,
        "docs": docs,
        "koalpaca": koalpaca,
        "embedder": _tiny_bi_encoder(root / "embedder"),
        "reranker": _tiny_cross_encoder(root / "reranker"),
    }


def _commands(m: dict, work: Path) -> list[tuple[str, list[str]]]:
    """(label, arguments) in the order they depend on each other: train → merge → ask, export."""
    adapter, merged = work / "adapter", work / "merged"
    return [
        (
            "train --smoke",
            ["train", str(RECIPE), "--data", str(m["data"]), "--output", str(adapter), "--smoke"]
            + ["load_in_4bit=false", "max_steps=2", "health_prompts=2"],
        ),
        ("train merge", ["train", "merge", str(adapter), "-o", str(merged)]),
        ("ask (hf, adapter)", ["ask", "--model", str(adapter), "--max-new-tokens", "4", "서울은?"]),
        ("ask (hf, merged)", ["ask", "--model", str(merged), "--max-new-tokens", "4", "--json", "서울은?"]),
        ("train export-gguf", ["train", "export-gguf", str(merged), "-o", str(work / "m.gguf")]),
        (
            "search --embedder --reranker",
            ["search", "큰 도시", "--local-dir", str(m["docs"]), "--embedder", str(m["embedder"])]
            + ["--reranker", str(m["reranker"]), "--json"],
        ),
        (
            "data prepare --tokenizer",
            ["data", "prepare", "--koalpaca", str(m["koalpaca"]), "-o", str(work / "prepared")]
            + ["--tokenizer", str(merged), "--valid", "0.2", "--test", "0.2"],
        ),
    ]


def _report_lines(prepared: Path) -> set[str]:
    """The lines of the summary `data prepare` prints, rendered here by korani's own report
    module from the stats.json it wrote: korani's lines, however wide the table."""
    from io import StringIO

    from rich.console import Console

    from korani_cli.data import report

    out = StringIO()
    stats = report.load_stats(prepared / "stats.json")
    Console(file=out, width=200, color_system=None).print(report.summary(stats))
    return {line.strip() for line in out.getvalue().splitlines() if line.strip()}


def _foreign_lines(stderr: str, own: set[str] = frozenset()) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(KORANI_LINES) and line.strip() not in own
    ]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["hub-on-loopback", "offline"])
def test_loading_libraries_sends_no_request_and_prints_only_korani_lines(mode, local_models, tmp_path):
    hub = RecordingHub()
    env = {"HF_HOME": str(tmp_path / "hf"), "COLUMNS": "200"}  # no cached agent registry, kernel or token
    if mode == "hub-on-loopback":
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url)
    else:
        env.update(HF_HUB_OFFLINE="1")
    seen = []
    try:
        for label, args in _commands(local_models, tmp_path):
            proc = run_korani(*args, env=env, timeout=600)
            assert proc.returncode == 0, f"{label}: {proc.stderr[-2000:]}"
            own = set()
            if args[:2] == ["data", "prepare"]:
                own = _report_lines(Path(args[args.index("-o") + 1]))
            seen.append((label, _foreign_lines(proc.stderr, own), list(hub.requests)))
            hub.requests.clear()
    finally:
        hub.close()
    foreign = [f"{label}: {line}" for label, lines, _ in seen for line in lines]
    assert not foreign, "lines that are not korani's:\n" + "\n".join(foreign)
    asked = [f"{label}: {request}" for label, _, requests in seen for request in requests]
    assert not asked, "requests to the Hub nobody asked for:\n" + "\n".join(asked)


def test_the_policy_is_the_libraries_own_switches_and_the_user_s_values_win(monkeypatch):
    """What no_unasked_requests sets, and that it adds to a LOCAL_KERNELS the user set instead
    of replacing it (kernels reads repo=path pairs separated by ':')."""
    from korani_cli import runtime

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_UPDATE_CHECK", raising=False)
    monkeypatch.setenv("LOCAL_KERNELS", "org/relu=/opt/relu")
    runtime.no_unasked_requests()
    import os

    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"  # the user's word
    assert os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] == "1"
    assert os.environ["LOCAL_KERNELS"] == f"org/relu=/opt/relu:{runtime.NO_HUB_KERNEL}={os.devnull}"
    runtime.no_unasked_requests()  # idempotent
    assert os.environ["LOCAL_KERNELS"].count(runtime.NO_HUB_KERNEL) == 1
    monkeypatch.setenv("LOCAL_KERNELS", f"{runtime.NO_HUB_KERNEL}=/my/build")
    runtime.no_unasked_requests()
    assert os.environ["LOCAL_KERNELS"] == f"{runtime.NO_HUB_KERNEL}=/my/build"  # the user's own build wins
