"""The values that flow between search stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hit:
    url: str
    title: str
    snippet: str
    provider: str


@dataclass(frozen=True)
class Page:
    url: str  # as requested
    final_url: str  # after redirects
    title: str
    text: str  # extracted main text
    content_type: str
    encoding: str | None
    from_cache: bool = False


@dataclass(frozen=True)
class Passage:
    url: str
    title: str
    text: str
    position: int  # index of the passage within its page
    # The text's content morphemes when the passage stage already has them
    # (ranking and the citation check reuse them); None: analyse on demand.
    terms: tuple | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Ranked:
    passage: Passage
    score: float  # fused score used for ordering
    bm25: float | None = None
    dense: float | None = None
    rerank: float | None = None  # cross-encoder score, when a reranker is configured


@dataclass(frozen=True)
class Citation:
    n: int
    url: str
    title: str
    passage: str
    score: float


@dataclass
class Timings:
    stages: dict = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = round(self.stages.get(stage, 0.0) + seconds, 4)
