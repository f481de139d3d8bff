"""The values that flow between search stages.

`Hit` and `Page` are where outside text enters korani — whatever built them (a
provider's parser, the fetcher, an extraction worker, the page cache, a local
file): their text is cleaned of control characters on construction
(`untrusted.clean`), so no later stage can store, print or prompt with an
escape sequence a page or a search engine sent. Titles and snippets are one
line, and no longer than TITLE_CHARS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from korani_cli.untrusted import clean, clean_line

# A <title> is a line; 2 MB of one would only cost time in every later stage.
TITLE_CHARS = 300


class Said(str):
    """A search notice as `korani search` and `ask` print it (English), that also carries its
    Korean wording for the chat, whose every line is Korean."""

    ko: str

    def __new__(cls, en: str, ko: str) -> "Said":
        said = super().__new__(cls, en)
        said.ko = ko
        return said


def _text(value) -> str:
    # A provider's JSON may hold a number or null where a string belongs.
    return "" if value is None else value if isinstance(value, str) else str(value)


def _line(value, limit: int = TITLE_CHARS) -> str:
    return clean_line(_text(value)[: limit * 4])[:limit]


@dataclass(frozen=True)
class Hit:
    url: str
    title: str
    snippet: str
    provider: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", clean_line(_text(self.url)))
        object.__setattr__(self, "title", _line(self.title))
        object.__setattr__(self, "snippet", _line(self.snippet, 4 * TITLE_CHARS))


@dataclass(frozen=True)
class Page:
    url: str  # as requested
    final_url: str  # after redirects
    title: str
    text: str  # extracted main text
    content_type: str
    encoding: str | None
    from_cache: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", clean_line(_text(self.url)))
        object.__setattr__(self, "final_url", clean_line(_text(self.final_url)))
        object.__setattr__(self, "title", _line(self.title))
        object.__setattr__(self, "text", clean(_text(self.text)))


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
class Skipped:
    """A result page left out, and why (`korani search --json` lists them as "skipped").
    The reason can quote a server or an exception: one clean line, like the URL."""

    url: str
    reason: str  # "late" and "timeout" for pages that did not arrive in time (with a `detail`)
    detail: str = ""  # what the reason means here, e.g. "timed out after 8 s"

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", clean_line(_text(self.url)))
        object.__setattr__(self, "reason", clean_line(_text(self.reason)))
        object.__setattr__(self, "detail", clean_line(_text(self.detail)))

    def said(self) -> str:
        """The reason as a notice says it."""
        return f"{self.reason} ({self.detail})" if self.detail else self.reason

    def to_json(self) -> dict:
        return {"url": self.url, "reason": self.reason, **({"detail": self.detail} if self.detail else {})}


LATE, TIMEOUT = "late", "timeout"  # Skipped reasons: still loading when korani stopped waiting; out of time


@dataclass(frozen=True)
class Citation:
    n: int
    url: str
    title: str
    passage: str
    score: float

    def to_json(self) -> dict:
        """As `ask --json` prints it and the history stores it."""
        return {
            "n": self.n,
            "url": self.url,
            "title": self.title,
            "passage": self.passage,
            "score": self.score,
        }


@dataclass
class Timings:
    stages: dict = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = round(self.stages.get(stage, 0.0) + seconds, 4)
