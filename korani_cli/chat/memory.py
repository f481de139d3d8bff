"""The conversation, trimmed to fit the model's context window.

Oldest exchanges go first; the system text and the latest exchange always
stay. The budget is the context length minus room for the answer.
"""

from __future__ import annotations

from typing import Callable, Sequence

from korani_cli import template as tpl


def trim(
    messages: Sequence[tpl.Message], count_tokens: Callable[[str], int], budget: int, eos_token: str = ""
) -> tuple[list[tpl.Message], int]:
    """(messages that fit, number of exchanges dropped)."""
    system = [m for m in messages[:1] if m.role == "system"]
    body = list(messages[len(system):])
    # Exchanges: a user turn with whatever follows it up to the next user turn.
    exchanges: list[list[tpl.Message]] = []
    for m in body:
        if m.role == "user" or not exchanges:
            exchanges.append([m])
        else:
            exchanges[-1].append(m)
    dropped = 0
    while len(exchanges) > 1:
        text = tpl.render([*system, *[m for ex in exchanges for m in ex]], eos_token)
        if count_tokens(text) <= budget:
            break
        exchanges.pop(0)
        dropped += 1
    return [*system, *[m for ex in exchanges for m in ex]], dropped
