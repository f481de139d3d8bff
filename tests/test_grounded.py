"""`korani data prepare --grounded`: KorQuAD questions → RAG conversations as served, and the abstention rule.

The data are built at test time from a few articles of the shared KorQuAD dev set
(CC BY-ND: nothing derived from it is committed).
"""

import json
import math
import re

import pytest
from support import SHARED, ScriptedBackend
from typer.testing import CliRunner

from korani_cli.cli import app
from korani_cli.data.prepare import PrepareConfig, prepare
from korani_cli.errors import EXIT_USAGE
from korani_cli.template import ABSTAIN_ANSWER, RAG_INSTRUCTION, Message, render

KORQUAD = SHARED / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"
ARTICLES = 4
EOS = "<|endoftext|>"
runner = CliRunner()
_HEADER = re.compile(r"^\[(\d+)\] (.*) \((\S+)\)$")


@pytest.fixture(scope="module")
def korquad(tmp_path_factory):
    if not KORQUAD.is_file():
        pytest.skip(f"shared KorQuAD not found at {KORQUAD}")
    data = json.loads(KORQUAD.read_text(encoding="utf-8"))
    data["data"] = data["data"][:ARTICLES]
    path = tmp_path_factory.mktemp("kq") / "few.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    golds = {
        qa["id"]: ([a["text"] for a in qa["answers"]], a_i)
        for a_i, article in enumerate(data["data"])
        for para in article["paragraphs"]
        for qa in para["qas"]
    }
    return path, golds


def _prepare(korquad, tmp_path_factory, **options):
    path, _ = korquad
    out = tmp_path_factory.mktemp("grounded") / "out"
    stats = prepare(PrepareConfig(out_dir=out, grounded=(str(path),), **options))
    rows = {
        split: [
            json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        for split in ("train", "valid", "test")
    }
    return out, stats, rows


@pytest.fixture(scope="module")
def prepared(korquad, tmp_path_factory):
    return _prepare(korquad, tmp_path_factory)


@pytest.fixture(scope="module")
def retrieval(korquad, tmp_path_factory):
    """--negatives retrieval: the whole file's best passages."""
    return _prepare(korquad, tmp_path_factory, negatives="retrieval")


def _parse(user: str):
    """(question, [(n, title, url, text)]) back out of a rendered RAG user turn."""
    head, _, question = user.rpartition("\n\n질문: ")
    blocks = head.split("\n\n")[1:]  # after the instruction
    sources = []
    for block in blocks:
        first, _, text = block.partition("\n")
        n, title, url = _HEADER.match(first).groups()
        sources.append((int(n), title, url, text))
    return question, sources


def _ranked(sources):
    from korani_cli.search.types import Passage, Ranked

    return [Ranked(Passage(url, title, text, 0), 1.0) for _, title, url, text in sources]


def _article(url: str) -> str:
    return url.rsplit("#p", 1)[1].split(".")[0]


def _all(rows):
    return [r for split in rows.values() for r in split]


def test_the_user_turn_is_the_turn_the_answer_core_sends(prepared):
    """Rendered for training, each user turn is exactly the prompt rag.answer.stream sends a
    model for the same question and sources — and the sources already fit the served budget
    (a model with a large window: 640 tokens by the same character measure), so serving would
    cut nothing more."""
    from korani_cli.backends import GenerationParams
    from korani_cli.rag.answer import stream

    class Backend(ScriptedBackend):
        def count_tokens(self, text):
            return math.ceil(len(text) / 1.5)  # prepare's measure without --tokenizer

    _, _, rows = prepared
    checked = 0
    for row in _all(rows)[::5]:
        user, _ = row["messages"]
        question, sources = _parse(user["content"])
        assert user["content"].startswith(RAG_INSTRUCTION + "\n\n[1] ")
        assert 1 <= len(sources) <= 5 and [n for n, *_ in sources] == list(range(1, len(sources) + 1))
        backend = Backend(answers=["."], context_length=32768)
        list(stream(backend, question, _ranked(sources), GenerationParams(max_new_tokens=64)))
        served = render(backend.prompts[0], EOS)
        trained = render([Message("user", user["content"])], EOS)
        assert trained == served
        checked += 1
    assert checked >= 10


def test_the_marker_points_at_the_passage_that_holds_the_answer(prepared, korquad):
    from korani_cli.eval.metrics import answer_correct, footnotes
    from korani_cli.rag.answer import verify

    _, golds = korquad
    _, _, rows = prepared
    answerable = [r for r in _all(rows) if r["messages"][1]["content"] != ABSTAIN_ANSWER]
    assert len(answerable) > 40
    for row in answerable:
        user, bot = row["messages"]
        answers, _ = golds[row["id"].removeprefix("grounded-")]
        reply = bot["content"]
        question, sources = _parse(user["content"])
        marks = [int(n) for n in re.findall(r"\[(\d+)\]", reply)]
        assert len(marks) == 1 and reply.endswith(f"[{marks[0]}].")
        assert answer_correct(reply, answers), (reply, answers)  # the span is in the sentence
        cited = {n: text for n, _, _, text in sources}
        # The eval's own judge of a footnote: the cited passage holds the answer the sentence states.
        assert footnotes([(reply, marks)], cited, answers).right == 1, (reply, cited[marks[0]][:80])
        # The answer core's check keeps the marker on that passage.
        checked = verify(reply, _ranked(sources))
        assert [c.url for c in checked.citations] == [sources[marks[0] - 1][2]]
    # Positions are shuffled: the gold passage is not always first.
    assert len({int(re.search(r"\[(\d+)\]", r["messages"][1]["content"])[1]) for r in answerable}) >= 3


def _paragraphs(path) -> dict[str, str]:
    """Question id → its paragraph as a source's url names it (`#p<article>.<paragraph>`)."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return {
        qa["id"]: f"{a_i}.{p_i}"
        for a_i, article in enumerate(data)
        for p_i, para in enumerate(article["paragraphs"])
        for qa in para["qas"]
    }


def test_by_default_the_negatives_come_from_other_articles(prepared, korquad):
    _, golds = korquad
    _, stats, rows = prepared
    assert stats["params"]["negatives"] == "other-articles"
    for row in _all(rows):
        answers, article = golds[row["id"].removeprefix("grounded-")]
        _, sources = _parse(row["messages"][0]["content"])
        others = [url for *_, url, _ in sources if _article(url) != str(article)]
        # Every source but the gold one (an abstention has none) is of another article.
        assert len(others) == len(sources) - (row["messages"][1]["content"] != ABSTAIN_ANSWER)


def test_retrieval_negatives_are_what_retrieval_serves_beside_the_answer(retrieval, korquad):
    """`korani eval rag` (and a user's own documents) puts passages of one subject side by side: with
    --negatives retrieval the negatives are the best-ranked passages of the whole file, mostly the
    question's own article, so the model learns to find the passage that says the answer, not the
    one whose title matches."""
    path, golds = korquad
    _, stats, rows = retrieval
    assert stats["params"]["negatives"] == "retrieval"
    paragraph = _paragraphs(path)
    answerable = [r for r in _all(rows) if r["messages"][1]["content"] != ABSTAIN_ANSWER]
    own = 0
    for row in answerable:
        qid = row["id"].removeprefix("grounded-")
        _, sources = _parse(row["messages"][0]["content"])
        urls = [url for _, _, url, _ in sources]
        # At most two passages of a paragraph, the gold's included, as search caps a page.
        assert all(urls.count(u) <= 2 for u in urls)
        own += any(_article(u) == str(golds[qid][1]) and u.rsplit("#p", 1)[1] != paragraph[qid] for u in urls)
    assert own / len(answerable) >= 0.5


@pytest.mark.parametrize("negatives", ["other-articles", "retrieval"])
def test_unanswerable_questions_lose_their_passage_and_abstain(negatives, request, korquad):
    from korani_cli.eval.metrics import abstains

    path, golds = korquad
    paragraph = {qid: f"#p{p}" for qid, p in _paragraphs(path).items()}
    _, stats, rows = request.getfixturevalue("prepared" if negatives == "other-articles" else "retrieval")
    abstaining = [r for r in _all(rows) if r["messages"][1]["content"] == ABSTAIN_ANSWER]
    info = stats["inputs"]["grounded"]
    assert info["unanswerable"] == len(abstaining) >= 5
    # About --unanswerable (0.1) of the questions, give or take the rejected ones.
    assert 0.05 <= len(abstaining) / info["records_in"] <= 0.15
    for row in abstaining:
        answers, _ = golds[row["id"].removeprefix("grounded-")]
        _, sources = _parse(row["messages"][0]["content"])
        assert len(sources) == 5
        # It loses its own paragraph (eval rag drops the gold page) and every passage that says the answer;
        # by default its whole article.
        assert not any(url.endswith(paragraph[row["id"].removeprefix("grounded-")]) for *_, url, _ in sources)
        if negatives == "other-articles":
            assert all(
                _article(url) != str(golds[row["id"].removeprefix("grounded-")][1]) for *_, url, _ in sources
            )
        assert not any(a in text for a in answers for *_, text in sources)
        assert abstains(row["messages"][1]["content"])
    assert not any(abstains(r["messages"][1]["content"]) for r in _all(rows) if r not in abstaining)


def test_splits_are_by_article(prepared, korquad):
    _, golds = korquad
    _, stats, rows = prepared
    seen = {}
    for split, split_rows in rows.items():
        assert split_rows, f"{split} is empty"
        for row in split_rows:
            _, article = golds[row["id"].removeprefix("grounded-")]
            assert seen.setdefault(article, split) == split, f"article {article} is in two splits"
    assert len(seen) == ARTICLES
    assert stats["rejects"] == stats["inputs"]["grounded"]["rejects"]
    # stats.json names each split's articles (file#index), for a held-out `korani eval rag` set.
    named = stats["inputs"]["grounded"]["articles"]
    path, _ = korquad
    assert {split: [int(g.rpartition("#")[2]) for g in groups] for split, groups in named.items()} == {
        split: sorted(a for a, s in seen.items() if s == split) for split in rows
    }
    assert all(g.startswith(f"{path.resolve()}#") for groups in named.values() for g in groups)


def test_rejects_are_written_and_counted(prepared):
    out, stats, rows = prepared
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    info = stats["inputs"]["grounded"]
    assert len(rejects) == sum(info["rejects"].values())
    assert (
        info["records_in"]
        == info["records_out"] + len(rejects)
        == sum(map(len, rows.values())) + len(rejects)
    )
    assert all(r["source"] == "grounded" and r["record"]["question"] for r in rejects)


def test_data_show_renders_a_grounded_conversation_with_its_loss_mask(prepared):
    from korani_cli.data.show import LOSS_STYLE, render_example

    out, _, rows = prepared
    row = rows["train"][0]
    body = render_example(row, EOS, 0, "train").renderables[1]
    learned = [body.plain[s.start : s.end] for s in body.spans if s.style == LOSS_STYLE]
    assert learned == [row["messages"][1]["content"] + EOS]
    assert RAG_INSTRUCTION in body.plain and "[1] " in body.plain
    shown = runner.invoke(app, ["data", "show", str(out), "--index", "0"])
    assert shown.exit_code == 0 and "질문: " in shown.stdout and "carry loss" in shown.stdout


def test_unanswerable_zero_and_the_mix_weight(korquad, tmp_path):
    path, _ = korquad
    stats = prepare(
        PrepareConfig(out_dir=tmp_path / "o", grounded=(str(path),), unanswerable=0.0, mix={"grounded": 0.5})
    )
    info = stats["inputs"]["grounded"]
    assert info["unanswerable"] == 0
    assert 0 < info["mix_dropped"] < info["records_in"]
    text = "".join(
        (tmp_path / "o" / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "valid", "test")
    )
    assert ABSTAIN_ANSWER not in text.replace(RAG_INSTRUCTION, "")


def test_a_bad_unanswerable_share_is_one_line(tmp_path, korquad):
    path, _ = korquad
    out = runner.invoke(
        app, ["data", "prepare", "-o", str(tmp_path / "o"), "--grounded", str(path), "--unanswerable", "1.5"]
    )
    assert out.exit_code == EXIT_USAGE
    assert out.stderr.strip().splitlines() == [
        "error: --unanswerable must be a fraction in [0, 1], got 1.5 — e.g. --unanswerable 0.1"
    ]


def test_a_bad_negatives_choice_is_one_line(tmp_path, korquad):
    path, _ = korquad
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["data", "prepare", "-o", str(out), "--grounded", str(path), "--negatives", "same"]
    )
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.strip().splitlines() == [
        "error: --negatives must be one of other-articles, retrieval, got 'same' — e.g. --negatives retrieval"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    "make, line",
    [
        (lambda d: d / "none.json", "error: --grounded {p}: no such file or directory — pass a local"),
        (lambda d: d / "in", "error: --grounded {p}: no .json file there — pass a local"),
        (
            lambda d: d / "alpaca.json",
            "error: {p} is not in KorQuAD 1.0 format: the top level should be an object — pass a file shaped",
        ),
    ],
    ids=["missing", "no-json-in-dir", "not-korquad"],
)
def test_a_bad_grounded_source_is_one_line_and_exit_6(tmp_path, make, line):
    from korani_cli.errors import EXIT_DATA

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.jsonl").write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    (tmp_path / "alpaca.json").write_text('[{"instruction": "a", "output": "b"}]', encoding="utf-8")
    path = make(tmp_path)
    out = runner.invoke(app, ["data", "prepare", "-o", str(tmp_path / "o"), "--grounded", str(path)])
    assert out.exit_code == EXIT_DATA
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line.format(p=path)), lines


# -- the abstention rule --------------------------------------------------------------------------


def test_the_rag_instruction_prescribes_the_abstention_and_eval_recognises_it():
    from korani_cli.eval.metrics import abstains
    from korani_cli.template import Source, user

    prompt = render([user("질문?", [Source("t", "https://t.example", "본문.")])], EOS)
    assert f"“{ABSTAIN_ANSWER}”" in prompt
    for said in (ABSTAIN_ANSWER, ABSTAIN_ANSWER + " [1]", f"“{ABSTAIN_ANSWER}”", ABSTAIN_ANSWER.rstrip(".")):
        assert abstains(said), said
    assert not abstains("세종은 1443년에 훈민정음을 만들었습니다[1].")


def test_the_abstention_cites_nothing():
    """Even a passage that happens to hold its words gets no footnote from the abstention."""
    from korani_cli.rag.answer import verify
    from korani_cli.search.types import Passage, Ranked

    ranked = [Ranked(Passage("https://a.example", "a", f"안내문: {ABSTAIN_ANSWER}", 0), 1.0)]
    checked = verify(f"{ABSTAIN_ANSWER[:-1]}[1].", ranked)
    assert checked.citations == [] and checked.text == ABSTAIN_ANSWER
    assert checked.claims == [(ABSTAIN_ANSWER, [])]


# -- the recipe -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_korani_rag_recipe_trains_on_grounded_data_with_smoke(prepared, tmp_path):
    """The shipped preset writes out and trains: the smoke run keeps its max_length (1024), so the
    answers at the end of ~700-token RAG conversations are in the rows and the loss is finite."""
    from support import run_korani

    from korani_cli.train.config import load_config

    data, _, _ = prepared
    written = tmp_path / "rag.yaml"
    init = run_korani("train", "init", "korani-rag", "-o", str(written))
    assert init.returncode == 0, init.stderr
    recipe = load_config(written)
    assert recipe.max_length == 1024 and recipe.load_in_4bit and recipe.data == "data/korani-rag"

    out = tmp_path / "run"
    proc = run_korani(
        "train",
        "korani-rag",
        "--data",
        str(data),
        "--output",
        str(out),
        "--smoke",
        "max_steps=3",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "korani_metadata.json").read_text())
    assert meta["steps"] == 3 and meta["smoke"] is True
    assert math.isfinite(meta["train_loss_last"])
    assert load_config(out / "korani_train.yaml").max_length == 1024


def test_grounded_mixes_with_another_source_and_leaves_its_split_alone(korquad, tmp_path):
    """Beside ShareGPT records, grounded conversations keep to their articles' splits; the
    other source is split exactly as without them (same seed, same files)."""
    path, golds = korquad
    sharegpt = SHARED / "fixtures" / "instruct" / "sharegpt_deepl_ko_sample_records.json"
    if not sharegpt.is_file():
        pytest.skip(f"shared fixture not found at {sharegpt}")
    both = prepare(PrepareConfig(out_dir=tmp_path / "both", sharegpt=(str(sharegpt),), grounded=(str(path),)))
    alone = prepare(PrepareConfig(out_dir=tmp_path / "alone", sharegpt=(str(sharegpt),)))
    for split in ("train", "valid", "test"):
        rows = [
            json.loads(line)
            for line in (tmp_path / "both" / f"{split}.jsonl").read_text("utf-8").splitlines()
        ]
        others = [r for r in rows if r["source"] == "sharegpt"]
        expected = (tmp_path / "alone" / f"{split}.jsonl").read_text("utf-8").splitlines()
        assert [json.dumps(r, ensure_ascii=False) for r in others] == expected
        assert (
            both["splits"][split]["by_source"].get("sharegpt", 0) == alone["splits"][split]["conversations"]
        )
    articles = {}
    for split in ("train", "valid", "test"):
        for line in (tmp_path / "both" / f"{split}.jsonl").read_text("utf-8").splitlines():
            row = json.loads(line)
            if row["source"] == "grounded":
                article = golds[row["id"].removeprefix("grounded-")][1]
                assert articles.setdefault(article, split) == split
    assert len(articles) == ARTICLES


def test_grounded_with_a_real_tokenizer_fits_its_budget(korquad, tmp_path):
    """--tokenizer prices the sources with that tokenizer (the budget asks it about empty text too)."""
    from transformers import AutoTokenizer

    tokenizer_dir = SHARED / "fixtures" / "tokenizers" / "polyglot-ko"
    if not tokenizer_dir.is_dir():
        pytest.skip(f"shared tokenizer not found at {tokenizer_dir}")
    path, _ = korquad
    stats = prepare(
        PrepareConfig(
            out_dir=tmp_path / "o", grounded=(str(path),), tokenizer=str(tokenizer_dir), max_tokens=640
        )
    )
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [json.loads(line) for line in (tmp_path / "o" / "train.jsonl").read_text("utf-8").splitlines()]
    assert rows and stats["length_measure"] == f"tokenizer:{tokenizer_dir}"
    for row in rows[:20]:
        _, sources = _parse(row["messages"][0]["content"])
        blocks = "".join(f"[{n}] {title} ({url})\n{text}\n\n" for n, title, url, text in sources)
        # --max-tokens 640 leaves the sources budget.default_tokens(640, 128) = 352 polyglot-ko tokens.
        assert len(tok(blocks, add_special_tokens=False)["input_ids"]) <= 352
