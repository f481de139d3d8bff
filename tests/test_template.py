"""The KoRani format: rendering, loss spans, the RAG form, stopping at headers."""

import pytest

from korani_cli.template import (
    RAG_INSTRUCTION,
    Message,
    Source,
    StopFilter,
    TemplateError,
    flatten_sources,
    render,
    render_with_mask,
    turn_text,
    user,
)

EOS = "<|endoftext|>"


def test_render_single_turn_ends_with_bot_header():
    assert render([user("안녕?")], EOS) == "### User\n안녕?\n\n### Bot\n"


def test_render_multi_turn_with_system_and_eos_after_every_bot_turn():
    msgs = [
        Message("system", "너는 친절한 비서야."),
        user("안녕?"),
        Message("assistant", "안녕하세요!"),
        user("이름이 뭐야?"),
        Message("assistant", "코라니예요."),
    ]
    text = render(msgs, EOS, add_generation_prompt=False)
    assert text == (
        "너는 친절한 비서야.\n\n"
        "### User\n안녕?\n\n"
        f"### Bot\n안녕하세요!{EOS}\n\n"
        "### User\n이름이 뭐야?\n\n"
        f"### Bot\n코라니예요.{EOS}\n\n"
    )


def test_mask_spans_cover_exactly_assistant_content_and_eos():
    msgs = [
        user("질문 하나"),
        Message("assistant", "답 하나"),
        user("질문 둘"),
        Message("assistant", "답 둘"),
    ]
    text, spans = render_with_mask(msgs, EOS)
    assert [text[a:b] for a, b in spans] == [f"답 하나{EOS}", f"답 둘{EOS}"]
    outside = "".join(text[i] for i in range(len(text)) if not any(a <= i < b for a, b in spans))
    assert "### Bot" in outside and "답" not in outside


def test_rag_user_turn_numbers_its_sources():
    msg = user(
        "수도는?",
        [
            Source("위키", "https://ko.wikipedia.org/wiki/서울", "서울은 수도다."),
            Source("뉴스", "https://news.example/a", "부산은 항구다."),
        ],
    )
    text = render([msg], EOS)
    assert "[1] 위키 (https://ko.wikipedia.org/wiki/서울)\n서울은 수도다." in text
    assert "[2] 뉴스 (https://news.example/a)\n부산은 항구다." in text
    assert text.index("[2]") < text.index("질문: 수도는?") < text.index("### Bot\n")
    # The flattened form (for models' own templates) carries the same text.
    flat = flatten_sources(msg)
    assert not flat.sources and flat.content in text and flat.content.startswith(RAG_INSTRUCTION)


def test_unknown_role_is_a_clear_error():
    with pytest.raises(TemplateError, match="unknown role 'tool'"):
        render([{"role": "tool", "content": "x"}], EOS)


def feed_all(chunks, extra=()):
    f = StopFilter(extra)
    out = "".join(f.feed(c) for c in chunks)
    return out + f.flush(), f.stopped


@pytest.mark.parametrize(
    "chunks",
    [
        ["답변입니다.\n\n### User\n다음 질문"],
        ["답변입", "니다.", "\n", "\n#", "##", " User"],
        ["답변입니다.\n", "#", "#", "#", "Bot"],
    ],
)
def test_stop_filter_cuts_at_next_header_whatever_the_chunking(chunks):
    assert feed_all(chunks) == ("답변입니다.", True)


def test_stop_filter_header_at_answer_start_prints_nothing():
    assert feed_all(["  ", "##", "# User\n"]) == ("", True)


def test_stop_filter_keeps_hashes_that_are_not_headers():
    assert feed_all(["C# ", "언어와 #태그 ", "그리고 ## 두 개\n끝"]) == (
        "C# 언어와 #태그 그리고 ## 두 개\n끝",
        False,
    )


def test_stop_filter_streams_without_waiting_for_the_end():
    f = StopFilter()
    assert f.feed("첫 문장. ") == "첫 문장."  # trailing space held back
    assert f.feed("둘째") == " 둘째"


def test_stop_filter_extra_stop_string():
    assert feed_all(["답<e", "os>쓰레기"], extra=["<eos>"]) == ("답", True)


def test_transformers_renders_the_same_text_and_assistant_mask(tiny_tokenizer_dir):
    """Training (TRL) goes through transformers; it must see exactly our format and spans."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    msgs = [
        Message("system", "시스템"),
        user("안녕?"),
        Message("assistant", "안녕하세요!"),
        user("또?"),
        Message("assistant", "네."),
    ]
    ours, spans = render_with_mask(msgs, tok.eos_token)
    dicts = [m.to_dict() for m in msgs]
    assert tok.apply_chat_template(dicts, tokenize=False) == ours
    out = tok.apply_chat_template(dicts, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "".join(ours[a:b] for a, b in spans) == f"안녕하세요!{tok.eos_token}네.{tok.eos_token}"


@pytest.mark.parametrize("content", ["짧은 글", "  앞뒤 공백  \n", "여러\n\n줄", ""])
def test_turn_text_matches_the_jinja_rendering(content):
    msgs = [Message("system", content), user(content), Message("assistant", content)]
    whole = render(msgs, EOS, add_generation_prompt=False)
    assert "".join(turn_text(m.role, m.content, EOS) for m in msgs) == whole
