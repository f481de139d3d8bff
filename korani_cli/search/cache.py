"""Fetched pages and their extracted text in an SQLite file, with a time to live.

One table keyed by URL. Written after each successful fetch; read before
fetching (fresh entries only) and, with --offline, instead of fetching.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from korani_cli.search.types import Page

DEFAULT_TTL = 24 * 3600


class PageCache:
    def __init__(self, path: Path, ttl: float = DEFAULT_TTL):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.db = sqlite3.connect(path, timeout=10, check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, final_url TEXT, title TEXT, text TEXT,"
            " content_type TEXT, encoding TEXT, fetched_at REAL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS searches (query TEXT PRIMARY KEY, hits TEXT, fetched_at REAL)")
        self.db.commit()

    def put_hits(self, query: str, hits: list) -> None:
        import json

        rows = [[h.url, h.title, h.snippet, h.provider] for h in hits]
        self.db.execute("INSERT OR REPLACE INTO searches VALUES (?, ?, ?)", (query, json.dumps(rows, ensure_ascii=False), time.time()))
        self.db.commit()

    def get_hits(self, query: str) -> list:
        import json

        from korani_cli.search.types import Hit

        row = self.db.execute("SELECT hits FROM searches WHERE query = ?", (query,)).fetchone()
        return [Hit(*r) for r in json.loads(row[0])] if row else []

    def get(self, url: str, any_age: bool = False) -> Page | None:
        row = self.db.execute(
            "SELECT final_url, title, text, content_type, encoding, fetched_at FROM pages WHERE url = ?", (url,)
        ).fetchone()
        if row is None or (not any_age and time.time() - row[5] > self.ttl):
            return None
        return Page(url, row[0], row[1], row[2], row[3], row[4], from_cache=True)

    def put(self, page: Page) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?, ?)",
            (page.url, page.final_url, page.title, page.text, page.content_type, page.encoding, time.time()),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
