"""`data prepare --grounded` with `--tokenizer`: lengths counted by a real tokenizer."""

import json

import pytest

pytestmark = pytest.mark.slow  # Kiwi's BM25 and a tokenizer load


def test_grounded_prepare_counts_with_a_real_tokenizer(tmp_path, tiny_tokenizer_dir):
    """Grounded records are flushed one by one; the final flush then has an empty batch,
    which a real tokenizer refuses (IndexError in transformers) — it must not be sent."""
    from korani_cli.data.prepare import PrepareConfig, prepare

    articles = []
    for a, (title, fact, answer) in enumerate(
        [("서울", "서울은 대한민국의 수도이며 인구는 약 천만 명이다.", "천만 명"),
         ("부산", "부산은 대한민국 제2의 도시이며 큰 항구가 있다.", "항구"),
         ("대전", "대전은 과학 도시로 알려져 있으며 엑스포가 열렸다.", "엑스포")]
    ):  # fmt: skip
        context = f"{fact} {title}에 대한 설명이 이어진다."
        qas = [{"id": f"q{a}", "question": f"{title}에는 무엇이 있는가?",
                "answers": [{"text": answer, "answer_start": context.index(answer)}]}]  # fmt: skip
        articles.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    src = tmp_path / "korquad.json"
    src.write_text(json.dumps({"version": "t", "data": articles}, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    prepare(
        PrepareConfig(
            out,
            grounded=(str(src),),
            tokenizer=str(tiny_tokenizer_dir),
            valid=0.0,
            test=0.0,
            unanswerable=0.0,
        )
    )
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    assert json.loads((out / "stats.json").read_text())["length_measure"].startswith("tokenizer:")
