"""The RAG context budget (search/budget.py): what a passage keeps when the sources must fit.

Hand-made Korean passages; budgets counted by a small deterministic tokenizer-like
counter (runs of up to three letters or digits, each other mark one token) and, in
one slow test, by the demo model's own gemma tokenizer.
"""

from __future__ import annotations

import re

import pytest

from korani_cli.eval.metrics import answer_in_context
from korani_cli.rag.budget import (
    DEFAULT_TOKENS,
    ELLIPSIS,
    MIN_TOKENS,
    PROMPT_ALLOWANCE,
    default_tokens,
    fit,
)
from korani_cli.search.types import Passage, Ranked
from korani_cli.template import RAG_QUESTION_PREFIX, Source, render, sources_text, user

_PIECE = re.compile(r"\w{1,3}|[^\w\s]")


def count(text: str) -> int:
    return len(_PIECE.findall(text))


def ranked(*texts: str, urls=None) -> list[Ranked]:
    urls = urls or [f"https://ko.example/{i}" for i in range(len(texts))]
    return [
        Ranked(Passage(url, f"문서 {i}", text, i, terms=("x",)), 1.0 - i / 10)
        for i, (url, text) in enumerate(zip(urls, texts))
    ]


def sources_tokens(items: list[Ranked], counter=count) -> int:
    return counter(
        sources_text([Source(r.passage.title or r.passage.url, r.passage.url, r.passage.text) for r in items])
    )


FILLER = [
    "이 마을은 오래전부터 사람들이 모여 살던 곳이다.",
    "봄이 되면 들판에 꽃이 가득 피어난다.",
    "마을 사람들은 대부분 농사를 지으며 살아간다.",
    "여름에는 강가에서 아이들이 물놀이를 즐긴다.",
    "가을에는 추수를 마치고 큰 잔치를 연다.",
    "겨울이면 눈이 많이 내려 길이 자주 막힌다.",
]
ANSWER = "마을 북쪽의 돌다리는 1592년에 승려 혜안이 처음 놓았다."
BEFORE = "돌다리 옆에는 작은 절이 하나 있었다."
AFTER = "그 뒤로 돌다리는 세 번 고쳐 지어졌다."
QUESTION = "마을 북쪽 돌다리를 처음 놓은 승려는 누구인가?"
# The answer sentence far from the start, between its neighbours, amid filler.
FAR = " ".join(FILLER[:5] + [BEFORE, ANSWER, AFTER] + FILLER[5:])
OTHER = (
    "강 건너 이웃 마을에는 큰 시장이 선다. 시장에는 사람들이 많이 모인다. 장날이면 멀리서도 상인들이 "
    "찾아온다."
)


def sentences_of(text: str) -> list[str]:
    return re.findall(r"\S.*?[.!?](?=\s|$)", text)


def test_answer_far_from_the_start_is_kept_and_filler_cut():
    items = ranked(FAR, OTHER)
    out = fit(QUESTION, items, 90, count)
    assert sources_tokens(out) <= 90
    top = out[0].passage.text
    assert ANSWER in top
    assert FILLER[0] not in top and len(top) < len(FAR)
    assert answer_in_context([r.passage.text for r in out], ["혜안"])
    # A cut to the first characters, as before, would have lost it.
    assert "혜안" not in FAR[: len(top)]


def test_neighbours_are_kept_when_there_is_room_and_order_is_kept():
    out = fit(QUESTION, ranked(FAR, OTHER), 120, count)
    kept = sentences_of(out[0].passage.text)
    assert [BEFORE, ANSWER, AFTER] == [s for s in kept if s in (BEFORE, ANSWER, AFTER)]
    # In their original order, neighbours joined exactly as written.
    original = sentences_of(FAR)
    assert kept == [s for s in original if s in kept]
    assert f"{BEFORE} {ANSWER} {AFTER}" in out[0].passage.text


def test_with_little_room_the_best_sentence_goes_before_its_neighbours():
    need = sources_tokens(ranked(ANSWER))
    out = fit(QUESTION, ranked(FAR), need, count)
    assert out[0].passage.text == ANSWER


@pytest.mark.parametrize("tokens", [40, 60, 80, 100, 130, 160, 200])
def test_budget_is_respected_and_passages_keep_their_identity(tokens):
    items = ranked(FAR, OTHER, " ".join(FILLER), FAR.replace("1592", "1600"))
    assert sources_tokens(items) > 200
    out = fit(QUESTION, items, tokens, count)
    assert sources_tokens(out) <= tokens
    assert out == fit(QUESTION, items, tokens, count)  # deterministic
    assert len(out) >= 1
    for got, was in zip(out, items):  # the passages that stay are the top ones, in rank order
        assert (got.passage.url, got.passage.title, got.passage.position, got.score) == (
            was.passage.url,
            was.passage.title,
            was.passage.position,
            was.score,
        )
        assert got.passage.terms is None
        # Whole sentences of the passage, in order (no sentence is cut at these sizes but the tiniest).
        if ELLIPSIS not in got.passage.text:
            kept = sentences_of(got.passage.text)
            assert kept == [s for s in sentences_of(was.passage.text) if s in kept]


def test_everything_fits_returns_the_input_unchanged():
    items = ranked(FAR, OTHER)
    assert fit(QUESTION, items, sources_tokens(items), count) is items


def test_empty_ranked_is_empty():
    assert fit(QUESTION, [], 100, count) == []


def test_one_sentence_longer_than_its_share_is_cut_at_a_word_boundary():
    words = [f"낱말{i}" for i in range(60)]
    words[40:43] = ["북쪽", "돌다리를", "혜안이"]
    long = " ".join(words) + "."
    out = fit(QUESTION, ranked(long), 40, count)
    text = out[0].passage.text
    assert sources_tokens(out) <= 40
    assert text.startswith(ELLIPSIS) and text.endswith(ELLIPSIS)
    inner = text.strip(ELLIPSIS).split()
    # Whole words, contiguous in the original, around the question's words.
    start = words.index(inner[0])
    assert inner == words[start : start + len(inner)]
    assert "돌다리를" in inner and "혜안이" in inner


def test_too_small_a_budget_keeps_the_top_passage_best_sentence():
    assert count(ANSWER) <= MIN_TOKENS
    out = fit(QUESTION, ranked(FAR, OTHER), 1, count)
    assert [r.passage.text for r in out] == [ANSWER]
    # A longer best sentence is cut to MIN_TOKENS of text: the one case where the
    # result is over the budget (a prompt without any source would be worse).
    long = (
        "마을 북쪽의 오래된 돌다리는 임진왜란이 일어난 1592년 봄에 이 고장 출신의 젊은 승려 혜안이 마을 "
        "사람들과 함께 처음 놓았다고 전한다."
    )
    out = fit(QUESTION, ranked(FAR.replace(ANSWER, long), OTHER), 1, count)
    assert len(out) == 1 and out[0].passage.url == "https://ko.example/0"
    assert ELLIPSIS in out[0].passage.text and "돌다리는" in out[0].passage.text
    assert count(out[0].passage.text) <= MIN_TOKENS


def test_lower_passages_are_dropped_last_and_from_the_bottom():
    items = ranked(FAR, OTHER, " ".join(FILLER), OTHER.replace("시장", "장터"), FAR.replace("1592", "1600"))
    headers = sources_tokens([Ranked(Passage(r.passage.url, r.passage.title, "", 0), 0.0) for r in items])
    roomy = fit(QUESTION, items, headers + 5 * MIN_TOKENS + 20, count)
    assert len(roomy) == 5
    tight = fit(QUESTION, items, headers, count)
    assert 1 <= len(tight) < 5
    assert [r.passage.url for r in tight] == [r.passage.url for r in items[: len(tight)]]


def test_rare_question_words_outweigh_common_ones():
    # 마을 and 사람 are in every passage; 혜안 only in one sentence of the top one.
    common = "마을 사람들이 모여 사는 마을에는 사람이 많다."
    rare = "혜안은 돌다리를 놓았다."
    items = ranked(
        " ".join([common] * 4 + [rare]), "마을 사람들이 산다. " + OTHER, "마을 사람들. " + " ".join(FILLER)
    )
    out = fit("혜안은 마을 사람들에게 무엇을 놓았나?", items, 60, count)
    assert rare in out[0].passage.text


def test_overlap_between_passages_of_one_page_is_offered_once():
    first = " ".join(FILLER[:4] + [ANSWER])
    second = " ".join([ANSWER, AFTER] + FILLER[4:])  # the next passage repeats the last sentence
    items = ranked(
        first, second, OTHER, urls=["https://ko.example/p", "https://ko.example/p", "https://ko.example/q"]
    )
    out = fit(QUESTION, items, 110, count)
    texts = [r.passage.text for r in out]
    assert sum(t.count(ANSWER) for t in texts) == 1


def test_sources_text_is_what_the_template_renders():
    sources = [Source("제목", "https://a/1", "  본문.\n "), Source("", "https://b", "{{ x }} [1]")]
    rendered = render([user("질문", sources)], "<eos>")
    assert sources_text(sources) in rendered
    assert rendered.index(sources_text(sources)) + len(sources_text(sources)) == rendered.index(
        RAG_QUESTION_PREFIX + "질문"
    )
    assert sources_text([]) == ""


@pytest.mark.parametrize(
    "window, answer, expected",
    [
        (None, 256, DEFAULT_TOKENS),  # an openai: server: window unknown
        (2048, 256, min(DEFAULT_TOKENS, 2048 - 256 - PROMPT_ALLOWANCE)),
        (32768, 256, DEFAULT_TOKENS),
        (512, 256, 512 - 256 - PROMPT_ALLOWANCE),
        (300, 256, MIN_TOKENS),  # no room: fit keeps the top passage's best sentence anyway
    ],
)
def test_default_tokens(window, answer, expected):
    assert default_tokens(window, answer) == expected


@pytest.mark.parametrize(
    "texts, golds, expected",
    [
        (["그는 《임꺽정》을 썼다."], ["임꺽정"], True),
        (["총 1,947미터이다."], ["1,947미터"], True),
        (["The 'Beatles' came."], ["the beatles"], True),
        (["돌다리를 놓았다."], ["혜안"], False),
        ([], ["혜안"], False),
    ],
)
def test_answer_in_context(texts, golds, expected):
    assert answer_in_context(texts, golds) is expected


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_budget_holds_with_the_demo_models_tokenizer():
    llama_cpp = pytest.importorskip("llama_cpp")
    from korani_cli.demo_models import demo_gguf
    from korani_cli.errors import ModelLoadError

    try:
        path = demo_gguf()
    except ModelLoadError as exc:
        pytest.skip(f"demo model not installed: {exc}")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def gemma(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    items = ranked(FAR, OTHER, " ".join(FILLER), FAR.replace("1592", "1600"), OTHER + " " + FILLER[0])
    assert sources_tokens(items, gemma) > 300
    for tokens in (60, 100, 150, 200, 300):
        out = fit(QUESTION, items, tokens, gemma)
        assert sources_tokens(out, gemma) <= tokens
        assert "돌다리" in out[0].passage.text
        # Five [n] lines take about 75 of these tokens; from 200 on the top passage's share holds the answer
        # whole.
        assert ANSWER in out[0].passage.text or tokens < 200


@pytest.mark.parametrize(
    "text",
    [
        "가" * 600,  # one word, no punctuation: cut inside the word, the only way
        " ".join(["가나다라마바사아자차카타파하" * 4] * 20),  # 56-character runs, as passages.py leaves them
        "... !!! ??? " * 40,  # punctuation only
        "萬瀑洞表訓寺普德庵" * 50,  # characters a tokenizer may spell in bytes
        "",
        "   \n ",
    ],
)
@pytest.mark.parametrize("question", [QUESTION, "", "???"])
def test_hostile_passages_fit_or_keep_only_the_minimum(text, question):
    items = ranked(text, OTHER)
    header = sources_tokens(ranked(""))
    for tokens in (-5, 0, header + MIN_TOKENS, 60, 120):
        out = fit(question, items, tokens, count)
        assert out and out[0].passage.url == items[0].passage.url
        if tokens >= header + MIN_TOKENS:
            assert sources_tokens(out) <= tokens
        else:  # below the minimum: the top passage and at most MIN_TOKENS of it
            assert len(out) == 1 and count(out[0].passage.text) <= MIN_TOKENS
