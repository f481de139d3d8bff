"""A follow-up question → a search query that stands on its own.

In a chat, `/검색 그럼 그 사람은 몇 살이야?` after `/검색 손흥민 소속팀` means
"손흥민 나이": the web search engines see only the query, not the chat. So a
question that reads as a follow-up (it opens with 그럼, 그건, 거기, … or is very
short) is rewritten before it is searched:

- `model_rewrite` asks the chat's model for a standalone query and keeps its
  answer only when it is a usable one: one short line, no template text, and
  mostly the words of the previous query and the question (Kiwi morphemes), so
  a model that wanders off cannot send the search elsewhere;
- `rewrite_query` is the deterministic fallback: the previous query followed
  by the question.

`standalone` puts the two together. This module knows nothing of the chat
(which previous query there was, how a model is loaded, what is shown): the
chat session keeps those and asks here.
"""

from __future__ import annotations

import re

from korani_cli import template
from korani_cli.backends import Backend, GenerationParams
from korani_cli.errors import KoraniError

# A question that opens with one of these leans on what was asked before.
FOLLOW_UP = re.compile(
    r"^(그럼|그러면|그리고|또|그건|그게|그 |그녀|그분|거기|저기|이건|저건|그것|이것|걔|그 사람)"
)
SHORT = 12  # characters: a question shorter than this rarely names its own subject
REWRITE_PROMPT = (
    "이전 검색어: {previous}\n새 질문: {question}\n"
    "새 질문을 이전 검색어의 맥락을 넣어 혼자서도 뜻이 통하는 검색어 한 줄로 다시 쓰세요. 검색어만 쓰세요."
)
# The prompt's labels: a small model often answers by echoing the prompt ("이전 검색어: …"),
# which can pass the word check below while sending the label words to the search engine.
PROMPT_LABELS = tuple(line.split(":")[0] for line in REWRITE_PROMPT.splitlines()[:2])
REWRITE_TOKENS = 32  # a query is a line, not an answer
MAX_QUERY_CHARS = 80
MAX_NEW_WORDS = 0.5  # share of the rewrite's words found in neither the previous query nor the question


def is_follow_up(question: str, previous: str | None) -> bool:
    """Does `question` lean on the previous query (there is one, and the question opens like a
    follow-up or is short)?"""
    return bool(previous) and (bool(FOLLOW_UP.match(question)) or len(question) < SHORT)


def rewrite_query(question: str, previous: str | None) -> str:
    """The deterministic standalone query: a follow-up carries the previous query along."""
    return f"{previous} {question}" if is_follow_up(question, previous) else question


def model_rewrite(backend: Backend, question: str, previous: str) -> str | None:
    """Ask the model for a standalone query; None when its answer is not a usable query
    (generation failed, empty, too long, template or prompt text, or mostly words from elsewhere)."""
    from korani_cli.search.rank import morphemes

    params = GenerationParams(max_new_tokens=REWRITE_TOKENS, temperature=0.0)
    try:
        text = backend.stream(
            [template.user(REWRITE_PROMPT.format(previous=previous, question=question))], params
        ).text()
    except KoraniError:
        return None
    text = text.strip().splitlines()[0].strip().strip('"“”') if text.strip() else ""
    if (
        not 2 <= len(text) <= MAX_QUERY_CHARS
        or "###" in text
        or "[" in text
        or any(label in text for label in PROMPT_LABELS)
    ):
        return None
    # A usable rewrite carries the previous query's subject and is mostly made of known words.
    words, before, asked = (set(m) for m in morphemes([text, previous, question]))
    if not words or not words & before or len(words - before - asked) / len(words) > MAX_NEW_WORDS:
        return None
    return text


def standalone(question: str, previous: str | None, backend: Backend | None) -> str:
    """The query to search for `question`: itself, unless it is a follow-up of `previous`;
    then the model's rewrite when `backend` gives a usable one, else `rewrite_query`."""
    if not is_follow_up(question, previous):
        return question
    if backend is not None:
        rewritten = model_rewrite(backend, question, previous)
        if rewritten is not None:
            return rewritten
    return rewrite_query(question, previous)
