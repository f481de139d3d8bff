"""RawRecord → Conversation: field mapping per source, then the cleaning rules.

Every rule is counted (the counts go to stats.json) and every rule can be
switched off (`korani data prepare --no-clean RULE`). Text rules run on each
turn; turn rules on the list of turns.

The DeepL artifact rule strips a lone lowercase Latin letter or two that
DeepL left glued to the start of Korean text ("rm자, 보세요!" → "자, 보세요!",
"n Java에서" → "Java에서") and leaves legitimate starts alone ("C언어",
"iPhone", "pH가", "x 값은").
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from korani_cli.data.readers import printable
from korani_cli.data.records import Conversation, RawRecord, Reject, Turn

TEXT_RULES = ("nfc", "crlf", "deepl_prefix", "trim")
TURN_RULES = (
    "koalpaca_followups",  # split KoAlpaca's "덧붙이는 답변:" follow-ups into their own turns
    "drop_empty_turns",
    "merge_same_role",
    "drop_midway_system",  # a system turn after the first (the template would print it mid-conversation)
    "drop_leading_assistant",
    "unglue_answer",  # a user turn with the next answer glued on
    "drop_trailing_user",  # a last user turn nobody answered carries no loss
)
RULES = TEXT_RULES + TURN_RULES

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}
FOLLOWUP = re.compile(r"\n\s*덧붙이는 답변:\s*")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Lowercase letters glued to Hangul, or one lowercase letter + space before a capitalised word.
_DEEPL = re.compile(r"^(?:[a-z]{1,2}(?=[\uac00-\ud7a3])|[a-z] (?=[A-Z][a-z]))")
_SURROGATE = re.compile("[\ud800-\udfff]")
UNGLUE_MIN = 20  # shortest glued answer we trust to be a real duplicate


@dataclass
class Cleaner:
    disabled: frozenset[str] = frozenset()
    counts: Counter = field(default_factory=Counter)

    def on(self, rule: str) -> bool:
        return rule not in self.disabled

    def text(self, value: str) -> str:
        if self.on("nfc"):
            normal = unicodedata.normalize("NFC", value)
            if normal != value:
                self.counts["nfc"] += 1
                value = normal
        if self.on("crlf") and "\r" in value:
            self.counts["crlf"] += 1
            value = value.replace("\r\n", "\n").replace("\r", "\n")
        if self.on("deepl_prefix"):
            stripped = value.lstrip()
            match = _DEEPL.match(stripped)
            if match and _HANGUL.search(stripped[:80]):
                self.counts["deepl_prefix"] += 1
                value = stripped[match.end() :]
        if self.on("trim"):
            trimmed = value.strip()
            if trimmed != value:
                self.counts["trim"] += 1
                value = trimmed
        return value

    def turns(self, turns: list[Turn]) -> list[Turn]:
        if self.on("drop_empty_turns"):
            kept = [t for t in turns if t.content.strip()]
            self.counts["drop_empty_turns"] += len(turns) - len(kept)
            turns = kept
        if self.on("merge_same_role"):
            merged: list[Turn] = []
            for t in turns:
                if merged and merged[-1].role == t.role:
                    merged[-1] = Turn(t.role, f"{merged[-1].content}\n\n{t.content}")
                    self.counts["merge_same_role"] += 1
                else:
                    merged.append(t)
            turns = merged
        # System text belongs first; a system turn later on is dropped (switched off, it stays
        # where it is, as context the template prints in place).
        system = [turns[0]] if turns and turns[0].role == "system" else []
        rest = turns[len(system) :]
        midway = [t for t in rest if t.role == "system"]
        if midway and self.on("drop_midway_system"):
            self.counts["drop_midway_system"] += len(midway)
            rest = [t for t in rest if t.role != "system"]
        if self.on("drop_leading_assistant"):
            while rest and rest[0].role == "assistant":
                rest = rest[1:]
                self.counts["drop_leading_assistant"] += 1
        if self.on("unglue_answer"):
            for i in range(len(rest) - 1):
                user, answer = rest[i], rest[i + 1]
                tail = answer.content.strip()
                if (
                    user.role == "user"
                    and answer.role == "assistant"
                    and len(tail) >= UNGLUE_MIN
                    and user.content.endswith(tail)
                    and user.content[: -len(tail)].strip()
                ):
                    rest[i] = Turn("user", user.content[: -len(tail)].rstrip())
                    self.counts["unglue_answer"] += 1
        if self.on("drop_trailing_user"):
            while rest and rest[-1].role == "user":
                rest = rest[:-1]
                self.counts["drop_trailing_user"] += 1
        return system + rest


def _koalpaca_turns(record: RawRecord, cleaner: Cleaner) -> list[Turn] | Reject:
    p = record.payload
    if not isinstance(p, dict):
        return Reject(
            record.source,
            record.file,
            record.position,
            "wrong_field_type",
            f"a record must be an object, got {type(p).__name__}",
            kind="input",
        )
    instruction, output = p.get("instruction"), p.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if name not in p:
            return Reject(
                record.source,
                record.file,
                record.position,
                "missing_field",
                f"no '{name}' field",
                kind="input",
            )
        if value is None:
            return Reject(
                record.source,
                record.file,
                record.position,
                "null_field",
                f"'{name}' is null (expected a string)",
                kind="input",
            )
        if not isinstance(value, str):
            return Reject(
                record.source,
                record.file,
                record.position,
                "wrong_field_type",
                f"'{name}' must be a string, got {type(value).__name__}",
                kind="input",
            )
    extra = p.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    turns = [Turn("user", instruction)]
    parts = FOLLOWUP.split(output) if cleaner.on("koalpaca_followups") else [output]
    turns.append(Turn("assistant", parts[0]))
    for part in parts[1:]:
        question, sep, answer = part.strip().partition("\n\n")
        if sep and answer.strip():
            cleaner.counts["koalpaca_followups"] += 1
            turns += [Turn("user", question), Turn("assistant", answer)]
        else:  # no answer after the follow-up question: keep the text where it was
            turns[-1] = Turn("assistant", f"{turns[-1].content}\n\n덧붙이는 답변: {part}")
    return turns


def _sharegpt_turns(record: RawRecord) -> list[Turn] | Reject:
    p = record.payload
    where = (record.source, record.file, record.position)
    if not isinstance(p, dict):
        return Reject(
            *where, "wrong_field_type", f"a record must be an object, got {type(p).__name__}", kind="input"
        )
    conversations = p.get("conversations")
    if "conversations" not in p:
        return Reject(*where, "missing_field", "no 'conversations' field", _short(p), kind="input")
    if conversations is None:
        return Reject(
            *where,
            "null_field",
            "'conversations' is null (expected a list of turns)",
            _short(p),
            kind="input",
        )
    if not isinstance(conversations, list):
        return Reject(
            *where,
            "wrong_field_type",
            f"'conversations' must be a list, got {type(conversations).__name__}",
            _short(p),
            kind="input",
        )
    turns = []
    for i, item in enumerate(conversations):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("value", ""), str)
            or not isinstance(item.get("from"), str)
        ):
            return Reject(
                *where,
                "wrong_field_type",
                f"turn {i} must be {{from: str, value: str}}",
                _short(p),
                kind="input",
            )
        role = ROLE_MAP.get(item["from"].strip().lower())
        if role is None:
            return Reject(*where, "unknown_role", f"turn {i} has role '{item['from']}'", _short(p))
        turns.append(Turn(role, item.get("value") or ""))
    return turns


def _short(payload) -> str:
    import json

    try:
        text = printable(json.dumps(payload, ensure_ascii=False, default=str))
    except (RecursionError, ValueError):
        return "<record too deeply nested to show>"
    return text if len(text) <= 2000 else text[:2000] + "…"


def _unpaired(turns: list[Turn], rid) -> str | None:
    """Which text holds an unpaired UTF-16 surrogate (JSON "\\ud800"), which
    UTF-8 cannot store; None when all is well."""
    for i, t in enumerate(turns):
        if _SURROGATE.search(t.content):
            return f"turn {i}"
    if isinstance(rid, str) and _SURROGATE.search(rid):
        return "the id"
    return None


def to_conversation(record: RawRecord, cleaner: Cleaner) -> Conversation | Reject:
    if record.source == "koalpaca":
        turns = _koalpaca_turns(record, cleaner)
        rid = None
    else:
        turns = _sharegpt_turns(record)
        rid = record.payload.get("id") if isinstance(record.payload, dict) else None
    if isinstance(turns, Reject):
        return turns
    where = _unpaired(turns, rid)
    if where is not None:
        return Reject(
            record.source,
            record.file,
            record.position,
            "lone_surrogate",
            f"{where} holds an unpaired surrogate escape (like \\ud800), which is not text",
            _short(record.payload),
            kind="input",
        )
    turns = [Turn(t.role, cleaner.text(t.content)) for t in turns]
    turns = cleaner.turns(turns)
    body = [t for t in turns if t.role != "system"]
    if not any(a.role == "user" and b.role == "assistant" for a, b in zip(body, body[1:])):
        return Reject(
            record.source,
            record.file,
            record.position,
            "no_exchange",
            "no user → assistant exchange left after cleaning",
            _short(record.payload),
        )
    if any(a.role == b.role for a, b in zip(body, body[1:])):
        # Only reachable with merge_same_role switched off.
        return Reject(
            record.source,
            record.file,
            record.position,
            "roles_not_alternating",
            "consecutive turns of the same role",
            _short(record.payload),
        )
    if rid is None or not isinstance(rid, (str, int)):
        # printable(): a file name may hold bytes that are not UTF-8.
        rid = printable(f"{record.source}:{_basename(record.file)}:{record.position.replace(' ', '')}")
    return Conversation(str(rid), record.source, tuple(turns))


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
