"""The conversation, trimmed to fit the model's context window.

Oldest exchanges go first; the system text and the latest exchange always
stay. The budget is the context length minus room for the answer.

Chat, `ask -c` and the RAG answer core (rag/answer.py) all trim the same
way, so this module sits beside the template, below all three: it knows the
conversation format and a backend's token counter, and nothing of chats,
searches or what the caller shows when exchanges are dropped.
"""

from __future__ import annotations

from typing import Callable, Sequence

from korani_cli import template
from korani_cli.backends import Backend

MIN_BUDGET = 64  # tokens: a context window smaller than the answer's room still gets the latest exchange


def trim(
    messages: Sequence[template.Message], count_tokens: Callable[[str], int], budget: int, eos_token: str = ""
) -> tuple[list[template.Message], int]:
    """(messages that fit, number of exchanges dropped)."""
    system = [m for m in messages[:1] if m.role == "system"]
    body = list(messages[len(system) :])
    # Exchanges: a user turn with whatever follows it up to the next user turn.
    exchanges: list[list[template.Message]] = []
    for m in body:
        if m.role == "user" or not exchanges:
            exchanges.append([m])
        else:
            exchanges[-1].append(m)
    dropped = 0
    while len(exchanges) > 1:
        text = template.render([*system, *[m for ex in exchanges for m in ex]], eos_token)
        if count_tokens(text) <= budget:
            break
        exchanges.pop(0)
        dropped += 1
    return [*system, *[m for ex in exchanges for m in ex]], dropped


def fit(
    messages: Sequence[template.Message], backend: Backend, answer_room: int
) -> tuple[list[template.Message], int]:
    """`trim` to `backend`'s context window less `answer_room` tokens, counted by its tokenizer;
    unchanged when the backend does not know its context length."""
    limit = backend.info.context_length
    if not limit:
        return list(messages), 0
    return trim(
        messages, backend.count_tokens, max(limit - answer_room, MIN_BUDGET), getattr(backend, "eos_text", "")
    )
