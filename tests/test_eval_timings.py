"""`korani eval`'s timings mean what they say (issue 21, section 4): every item has its first
token and first sentence, and every p50 is taken over the same items, so the first token's p50
can never exceed the total's. Driven by the scripted backend through eval rag's real loop,
ranking, prompt and footnote check; the real server's run is in test_openai_server.py."""

from __future__ import annotations

import io
import json

from rich.console import Console
from support import ScriptedBackend

from korani_cli.eval import rag, report
from korani_cli.eval.run import RunDir
from korani_cli.eval.sets import load_korquad

PARAGRAPHS = {
    "세종대왕": "세종대왕은 조선의 제4대 왕이다. 세종대왕은 1443년에 훈민정음을 창제하였다.",
    "한라산": "한라산은 제주도 중앙에 있는 산이다. 한라산의 높이는 1947미터이다.",
    "부산": "부산은 대한민국 제2의 도시이다. 부산항은 대한민국 최대의 무역항이다.",
}
QUESTIONS = [
    ("q1", "세종대왕", "세종대왕이 훈민정음을 창제한 해는?", "1443년"),
    ("q2", "한라산", "한라산의 높이는 얼마인가?", "1947미터"),
    ("q3", "부산", "대한민국 최대의 무역항은?", "부산항"),
    ("q4", "세종대왕", "세종대왕은 조선의 몇 대 왕인가?", "제4대"),
]
# What the model says, in the run's order: nothing at all (EOS first); only a line echoing the
# prompt (never shown); a sentence; a sentence. Before, the first two had no first token or no
# first sentence, and each p50 was over a different subset of the items.
ANSWERS = ["", "질문: 한라산의 높이는?", "부산항입니다[1].", "세종대왕은 제4대 왕이다[1]."]


def write_set(path):
    data = [
        {
            "title": title,
            "paragraphs": [
                {
                    "context": text,
                    "qas": [
                        {
                            "id": qid,
                            "question": q,
                            "answers": [{"text": gold, "answer_start": text.find(gold)}],
                        }
                        for qid, t, q, gold in QUESTIONS
                        if t == title
                    ],
                }
            ],
        }
        for title, text in PARAGRAPHS.items()
    ]
    path.write_text(json.dumps({"version": "KorQuAD_v1.0_dev", "data": data}, ensure_ascii=False), "utf-8")
    return path


def test_every_item_has_its_moments_and_every_p50_is_over_the_same_items(tmp_path):
    qaset = load_korquad(write_set(tmp_path / "set.json"))
    config = rag.RagConfig(
        set_path=str(qaset.path), set_sha256=qaset.sha256, k=2, embedder="none", unanswerable=0.0
    )
    run = RunDir.open(tmp_path / "run", "eval rag", config.settings())
    summary = rag.run_rag(qaset, ScriptedBackend(ANSWERS), config, run)

    records = [json.loads(line) for line in (run.path / "items.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["answer"] for r in records)[:2] == ["", ""]  # the empty one and the echo-only one
    for r in records:
        t = r["timings"]
        assert 0 <= t["first_token_s"] <= t["first_sentence_s"] <= t["generate_s"] <= t["total_s"], t
    timings = summary["timings"]
    assert {timings[name]["n"] for name in timings} == {len(QUESTIONS)}, timings
    assert timings["first_token_s"]["p50"] <= timings["first_sentence_s"]["p50"] <= timings["total_s"]["p50"]

    screen = io.StringIO()
    Console(file=screen, width=100).print(report.table(report.parse(run.path, summary)))
    rows = [line.split() for line in screen.getvalue().splitlines() if " p50 " in line]
    assert [row[:2] for row in rows] == [["first", "token"], ["first", "sentence"], ["total", "p50"]]
    assert all(row[-1] == f"n={len(QUESTIONS)}" for row in rows), screen.getvalue()


def test_timings_of_older_records_are_taken_over_the_items_that_have_them_all():
    records = [
        {"timings": {"first_token_s": None, "total_s": 1.0}},  # an older record: no first token
        {"timings": {"first_token_s": 3.0, "total_s": 4.0}},
        {"timings": {"first_token_s": 5.0, "total_s": 6.0}},
        {"timings": {"total_s": 0.5}},  # older still: no such key
    ]
    spread = rag.timings(records, ("first_token_s", "total_s"))
    assert spread["first_token_s"]["n"] == spread["total_s"]["n"] == 2
    assert (spread["first_token_s"]["mean"], spread["total_s"]["mean"]) == (4.0, 5.0)
