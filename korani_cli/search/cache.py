"""Fetched pages and their extracted text in an SQLite file, with a time to live.

One table keyed by URL. Written after each successful fetch; read before
fetching (fresh entries only) and, with --offline, instead of fetching.
Each page's passage-head embeddings are kept with it (table `vectors`, keyed
by the page's final URL, the embedder and the head), so a page read again
from the cache is not embedded again; a page fetched afresh drops its old
ones. Each page keeps its redirect chain — every URL requested and the addresses
its host resolved to — so that a reader can put the whole chain through
today's SSRF guard (search/safety.py) before serving it.

The cache is a convenience, never a reason to fail: a damaged file is
rebuilt, one that cannot be used (a directory in its place, a read-only
home) is bypassed; either way with one notice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from korani_cli.search.safety import Hop
from korani_cli.search.types import Hit, Page, Said

DEFAULT_TTL = 24 * 3600
# 2: pages carry their redirect chain. Older files hold pages whose origin is
# unknown, so their pages table is dropped rather than trusted.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class CachedPage:
    page: Page
    hops: tuple[Hop, ...]


class PageCache:
    def __init__(self, path: Path, ttl: float = DEFAULT_TTL, notify: Callable[[str], None] = lambda m: None):
        self.ttl = ttl
        self.path = path
        self.notify = notify
        self.db: sqlite3.Connection | None = None
        try:
            self.db = self._open()
        except (sqlite3.Error, OSError) as exc:
            self.db = self._rebuild(exc)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS pages")
            db.execute(
                "CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, final_url TEXT, title TEXT,"
                " text TEXT, content_type TEXT, encoding TEXT, fetched_at REAL, hops TEXT NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS searches (query TEXT PRIMARY KEY, hits TEXT, fetched_at REAL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (url TEXT, embedder TEXT, head TEXT, vector BLOB,"
                " PRIMARY KEY (url, embedder, head))"
            )
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _rebuild(self, exc: Exception) -> sqlite3.Connection | None:
        """A damaged cache file is korani's own: start a new one; anything else is bypassed."""
        why = getattr(exc, "strerror", None) or str(exc)
        if self.path.is_file() and not self.path.is_symlink():
            try:
                self.path.unlink()
                db = self._open()
            except (sqlite3.Error, OSError):
                pass
            else:
                self.notify(
                    Said(
                        f"the search cache {self.path} was unreadable ({why}); started a new one",
                        f"검색 캐시 {self.path} 를 읽을 수 없어 ({why}) 새로 만들었습니다",
                    )
                )
                return db
        self.notify(
            Said(
                f"the search cache {self.path} cannot be used ({why}); searching without it",
                f"검색 캐시 {self.path} 를 쓸 수 없어 ({why}) 캐시 없이 검색합니다",
            )
        )
        return None

    def _failed(self, exc: sqlite3.Error) -> None:
        """A cache that breaks mid-run (disk full, file made read-only) is dropped for the rest of it."""
        self.notify(
            Said(
                f"the search cache {self.path} failed ({exc}); searching without it",
                f"검색 캐시 {self.path} 에 오류가 나서 ({exc}) 캐시 없이 검색합니다",
            )
        )
        self.close()

    def put_hits(self, query: str, hits: list[Hit]) -> None:
        if self.db is None:
            return
        rows = [[h.url, h.title, h.snippet, h.provider] for h in hits]
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO searches VALUES (?, ?, ?)",
                (query, json.dumps(rows, ensure_ascii=False), time.time()),
            )
            self.db.commit()
        except sqlite3.Error as exc:
            self._failed(exc)

    def get_hits(self, query: str) -> list[Hit]:
        if self.db is None:
            return []
        try:
            row = self.db.execute("SELECT hits FROM searches WHERE query = ?", (query,)).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return []
        try:
            rows = json.loads(row[0]) if row else []
            return [Hit(*(str(v) for v in r)) for r in rows if isinstance(r, list) and len(r) == 4]
        except (ValueError, TypeError):
            return []  # a damaged row: as if never searched

    def get(self, url: str, any_age: bool = False) -> CachedPage | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(
                "SELECT final_url, title, text, content_type, encoding, fetched_at, hops "
                "FROM pages WHERE url = ?",
                (url,),
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        if row is None or (not any_age and time.time() - row[5] > self.ttl):
            return None
        try:
            hops = tuple(Hop(str(u), tuple(str(a) for a in addresses)) for u, addresses in json.loads(row[6]))
        except (ValueError, TypeError):
            hops = ()  # unknown origin: the guard refuses it
        return CachedPage(Page(url, row[0], row[1], row[2], row[3], row[4], from_cache=True), hops)

    def put(self, page: Page, hops: list[Hop]) -> None:
        if self.db is None:
            return
        chain = json.dumps([[h.url, list(h.addresses)] for h in hops])
        try:
            self.db.execute("DELETE FROM vectors WHERE url = ?", (page.final_url,))
            self.db.execute(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    page.url,
                    page.final_url,
                    page.title,
                    page.text,
                    page.content_type,
                    page.encoding,
                    time.time(),
                    chain,
                ),
            )
            self.db.commit()
        except sqlite3.Error as exc:
            self._failed(exc)

    def put_vectors(self, rows: list[tuple[str, str, str, object]]) -> None:
        """(passage URL, embedder name, passage head, float32 vector) rows."""
        if self.db is None or not rows:
            return
        try:
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                [(url, name, head, vector.astype("float32").tobytes()) for url, name, head, vector in rows],
            )
            self.db.commit()
        except sqlite3.Error as exc:
            self._failed(exc)

    def get_vectors(self, url: str) -> dict:
        """The page's kept vectors: (embedder name, passage head) → vector, as rank()'s Index keeps them."""
        if self.db is None:
            return {}
        import numpy as np

        try:
            rows = self.db.execute(
                "SELECT embedder, head, vector FROM vectors WHERE url = ?", (url,)
            ).fetchall()
        except sqlite3.Error as exc:
            self._failed(exc)
            return {}
        return {(name, head): np.frombuffer(blob, dtype="float32") for name, head, blob in rows}

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            finally:
                self.db = None
