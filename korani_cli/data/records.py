"""The values that flow between the data stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOURCES = ("koalpaca", "sharegpt", "grounded")


@dataclass(frozen=True)
class RawRecord:
    """One record as read: which source, which file, where in it."""

    source: str
    file: str
    position: str  # "line 12" (JSONL) or "element 7" (JSON array) or "row 3" (parquet)
    payload: Any


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Conversation:
    id: str
    source: str
    turns: tuple[Turn, ...]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "messages": [{"role": t.role, "content": t.content} for t in self.turns],
        }


@dataclass(frozen=True)
class Reject:
    source: str
    file: str
    position: str
    reason: str  # a short code, counted in stats ("malformed_json", "no_exchange", ...)
    detail: str = ""  # the specifics, for the user
    record: Any = None  # the offending record or line (truncated), for the user to inspect
    kind: str = "filter"  # "input": unreadable/malformed (what --strict stops on); "filter": a cleaning rule

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "file": self.file,
            "position": self.position,
            "reason": self.reason,
            "detail": self.detail,
            "kind": self.kind,
            "record": self.record,
        }
