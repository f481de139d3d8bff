"""The KoRani conversation format — the one place it is defined.

    [system text]\n\n
    ### User\n{user}\n\n
    ### Bot\n{assistant}<eos>\n\n
    ### User\n...

Every assistant turn ends with the tokenizer's EOS token, so a trained model
learns to stop. The format is a Jinja chat template (`CHAT_TEMPLATE`) that
training stores in the tokenizer of every adapter it saves; its
`{% generation %}` markers wrap assistant content + EOS, which is what
transformers/TRL use to put the loss on those tokens only. This module renders
that same template itself (`render`, `render_with_mask`) with the same Jinja
settings transformers uses, so backends and `data show` need no transformers.

A user turn may carry numbered web/document sources (the RAG form); the
template prints them as `[1] title (url)` blocks before the question so the
answer can cite them as [1], [2]; its instruction also says what to answer when
the sources do not hold the answer (`ABSTAIN_ANSWER`).

Generation stops at EOS (the backends' job) or at the next `###` header
(`StopFilter`, shared by every backend): a header is never printed.

What this module does not know: tokenizers, token ids, models — beyond the
text of polyglot-ko's special tokens and its characters-per-token ratio, the
defaults wherever no tokenizer is at hand (`DEFAULT_EOS`, `PAD_TOKEN`,
`CHARS_PER_TOKEN`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

USER_HEADER = "### User\n"
BOT_HEADER = "### Bot\n"
TURN_SEPARATOR = "\n\n"
# The one answer for a question the sources do not answer: the RAG instruction
# prescribes it, grounded training data teaches it, and `korani eval` and the
# answer core recognise it. (No ASCII quote may appear in the instruction: the
# Jinja template below holds it in a single-quoted string.)
ABSTAIN_ANSWER = "제공된 자료에는 이 질문의 답이 없습니다."
RAG_INSTRUCTION = (
    "다음 자료를 참고해서 질문에 한국어로 답하세요. "
    "각 문장 끝에 그 문장의 근거가 된 자료의 번호를 [1]처럼 표시하세요. "
    f"자료에 답이 없으면 “{ABSTAIN_ANSWER}”라고만 답하세요."
)
RAG_QUESTION_PREFIX = "질문: "

# polyglot-ko's EOS text: closes every Bot turn where no tokenizer says
# otherwise (data prepare without --tokenizer, the openai backend, tiny models).
DEFAULT_EOS = "<|endoftext|>"
# The pad token training adds when the base has none (or pads with EOS, which
# would mask EOS out of the loss); the tiny models carry it too.
PAD_TOKEN = "<|pad|>"
# polyglot-ko averages ~1.5 Korean characters per token: the length estimate
# where the tokenizer is not at hand; it errs towards "too long".
CHARS_PER_TOKEN = 1.5

# transformers renders chat templates with trim_blocks + lstrip_blocks; we
# render with the same settings so both produce identical text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if message['role'] == 'system' %}\n"
    "{{- message['content'] | trim }}{{ '\\n\\n' }}\n"
    "{%- elif message['role'] == 'user' %}\n"
    "{{- '" + USER_HEADER.replace("\n", "\\n") + "' }}\n"
    "{%- if message.get('sources') %}\n"
    "{{- '" + RAG_INSTRUCTION + "\\n\\n' }}\n"
    "{%- for source in message['sources'] %}\n"
    "{{- '[' ~ loop.index ~ '] ' ~ source['title'] ~ ' (' ~ source['url'] ~ ')\\n'"
    " ~ (source['text'] | trim) ~ '\\n\\n' }}\n"
    "{%- endfor %}\n"
    "{{- '" + RAG_QUESTION_PREFIX + "' }}\n"
    "{%- endif %}\n"
    "{{- message['content'] | trim }}{{ '\\n\\n' }}\n"
    "{%- elif message['role'] == 'assistant' %}\n"
    "{{- '" + BOT_HEADER.replace("\n", "\\n") + "' }}"
    "{% generation %}{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}"
    "{{ '\\n\\n' }}\n"
    "{%- else %}\n"
    "{{- raise_exception('unknown role: ' ~ message['role']) }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{ '" + BOT_HEADER.replace("\n", "\\n") + "' }}{% endif %}"
)

ROLES = ("system", "user", "assistant")

# Private-use characters that bracket generation blocks while rendering; they
# are removed from message text first, so they can only come from the tags.
_OPEN, _CLOSE = "\ue000", "\ue001"


@dataclass(frozen=True)
class Source:
    """One numbered source of a RAG user turn."""

    title: str
    url: str
    text: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    sources: tuple[Source, ...] = field(default=())

    def to_dict(self) -> dict:
        out: dict = {"role": self.role, "content": self.content}
        if self.sources:
            out["sources"] = [s.__dict__.copy() for s in self.sources]
        return out


def user(content: str, sources: Iterable[Source] = ()) -> Message:
    return Message("user", content, tuple(sources))


def conversation(question: str, system: str | None = None, history: Sequence[Message] = ()) -> list[Message]:
    """The message list for a new question, optionally after earlier turns."""
    messages = [Message("system", system)] if system else []
    return [*messages, *history, user(question)]


class TemplateError(ValueError):
    """A message list the template cannot render (unknown role, bad order)."""


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError as JinjaTemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationMarkers(Extension):
        """`{% generation %}...{% endgeneration %}`, as transformers understands it."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _OPEN + caller() + _CLOSE

    def raise_exception(message):
        raise JinjaTemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationMarkers, loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _as_dicts(messages: Sequence[Message | dict]) -> list[dict]:
    out = []
    for m in messages:
        d = m.to_dict() if isinstance(m, Message) else dict(m)
        if d.get("role") not in ROLES:
            raise TemplateError(f"unknown role {d.get('role')!r}; expected one of {', '.join(ROLES)}")
        d["content"] = str(d.get("content") or "").replace(_OPEN, "").replace(_CLOSE, "")
        out.append(d)
    return out


def chat_template(bos: bool = False) -> str:
    """The template a trained tokenizer keeps. With `bos`, it opens with the tokenizer's BOS:
    serving encodes the rendered prompt with the tokenizer's special tokens (a BOS first, for
    gemma and llama), while training encodes the template's output without them, so for such a
    tokenizer the template must say BOS itself or the model trains on prompts it is never served."""
    return ("{{- bos_token }}" if bos else "") + CHAT_TEMPLATE


def render_with_mask(
    messages: Sequence[Message | dict],
    eos_token: str,
    *,
    add_generation_prompt: bool = False,
    template: str = CHAT_TEMPLATE,
) -> tuple[str, list[tuple[int, int]]]:
    """Render messages; also return the [start, end) character spans that carry loss.

    The spans are exactly the assistant contents plus their EOS text — what
    training learns. Everything else (headers, user turns, sources) is context.
    """
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    try:
        marked = _compiled(template).render(
            messages=_as_dicts(messages), eos_token=eos_token, add_generation_prompt=add_generation_prompt
        )
    except JinjaTemplateError as exc:
        raise TemplateError(str(exc)) from None
    text, spans, start = [], [], None
    length = 0
    for ch in marked:
        if ch == _OPEN:
            start = length
        elif ch == _CLOSE:
            spans.append((start, length))
        else:
            text.append(ch)
            length += 1
    return "".join(text), spans


def render(
    messages: Sequence[Message | dict],
    eos_token: str,
    *,
    add_generation_prompt: bool = True,
    template: str = CHAT_TEMPLATE,
) -> str:
    """The prompt text for a message list (ending with `### Bot\\n` by default)."""
    return render_with_mask(
        messages, eos_token, add_generation_prompt=add_generation_prompt, template=template
    )[0]


# -- stopping ---------------------------------------------------------------

# A header starts a line; the virtual newline in StopFilter makes a header at
# the very start of the answer match too.
HEADER_STOP = "\n###"


class StopFilter:
    """Turns raw generated chunks into printable text, cutting at a `###` header.

    Text that might be the start of a stop sequence — and trailing whitespace,
    which may turn out to precede a header — is held back until the next chunk
    settles it, so nothing that belongs to a header ever reaches the user.
    Leading whitespace of the answer is dropped.
    """

    def __init__(self, extra_stops: Iterable[str] = ()):
        self.stops = [HEADER_STOP, *(s for s in extra_stops if s)]
        self._text = "\n"  # virtual line start
        self._emitted = 1
        self.stopped = False

    def feed(self, chunk: str) -> str:
        if self.stopped or not chunk:
            return ""
        if self._emitted == len(self._text):
            # Nothing pending: drop leading whitespace of the answer.
            if len(self._text) == 1:
                chunk = chunk.lstrip()
                if not chunk:
                    return ""
        self._text += chunk
        cut = min(
            (i for i in (self._text.find(s, self._emitted - 1) for s in self.stops) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            end = len(self._text[:cut].rstrip())
            out = self._text[self._emitted : max(end, self._emitted)]
            self._emitted = len(self._text)
            return out
        safe = len(self._text)
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._text)), 0, -1):
                if self._text.endswith(stop[:k]):
                    safe = min(safe, len(self._text) - k)
                    break
        safe = min(safe, len(self._text[:safe].rstrip()))
        safe = max(safe, self._emitted)
        out = self._text[self._emitted : safe]
        self._emitted = safe
        return out

    def flush(self) -> str:
        """What is still held back once generation has ended (no stop followed)."""
        if self.stopped:
            return ""
        out = self._text[self._emitted :].rstrip()
        self._emitted = len(self._text)
        return out


@lru_cache(maxsize=16)
def turn_affixes(eos_token: str) -> dict[str, tuple[str, str]]:
    """For each role, the text the template puts before and after a turn's (trimmed) content.

    Derived by rendering a sentinel through the Jinja template itself, so it
    can never drift from it; lets hot paths (length counting over 100k
    conversations) build turn text without a Jinja render per turn.
    """
    sentinel = "\ue002"
    out = {}
    for role in ROLES:
        text = render([Message(role, sentinel)], eos_token, add_generation_prompt=False)
        before, _, after = text.partition(sentinel)
        out[role] = (before, after)
    return out


def turn_text(role: str, content: str, eos_token: str) -> str:
    """One turn exactly as `render` writes it (no sources)."""
    before, after = turn_affixes(eos_token)[role]
    return before + content.strip() + after


def sources_text(sources: Sequence[Source]) -> str:
    """The numbered source blocks of a RAG user turn, exactly as `render` writes them
    (what a context budget counts, often many times per answer: so without a Jinja
    render each time — the text around the sources' fields comes from `_source_frame`)."""
    frame = _source_frame(len(sources))
    out = [frame[0]]
    for i, source in enumerate(sources):
        # The template prints title and url as given and the text trimmed (Jinja's trim is str.strip).
        for j, value in enumerate((source.title, source.url, source.text.strip())):
            out += (value, frame[3 * i + j + 1])
    return "".join(out)


_FIELD = re.compile("\ue010(\\d+)\ue011")


@lru_cache(maxsize=64)
def _source_frame(k: int) -> tuple[str, ...]:
    """The 3k+1 literal pieces of k source blocks around their title, url and text,
    cut out of a real render with placeholders in the fields (so it cannot drift
    from the template): after the instruction's blank line, up to the question."""
    if k == 0:
        return ("",)
    fields = [f"\ue010{n}\ue011" for n in range(3 * k)]
    question = "\ue012"
    sources = [Source(*fields[3 * i : 3 * i + 3]) for i in range(k)]
    text = render([user(question, sources)], eos_token="", add_generation_prompt=False)
    start = text.index(RAG_INSTRUCTION) + len(RAG_INSTRUCTION) + len(TURN_SEPARATOR)
    body = text[start : text.rindex(RAG_QUESTION_PREFIX + question)]
    parts = _FIELD.split(body)
    if [int(n) for n in parts[1::2]] != list(range(3 * k)):
        raise TemplateError(
            "the RAG template no longer prints each source's title, url and text once, in that order"
        )
    return tuple(parts[0::2])


def flatten_sources(message: Message) -> Message:
    """The message with its sources written into its text, as this template prints them.

    For backends that render with a model's own chat template, which knows
    nothing of `sources`: the user still gets the numbered source blocks.
    """
    if not message.sources:
        return message
    text = render([message], eos_token="", add_generation_prompt=False)
    content = text[len(USER_HEADER) : -len(TURN_SEPARATOR)]
    return Message(message.role, content)
