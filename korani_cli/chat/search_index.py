"""Full-text search over stored chat messages: SQLite FTS5, kept beside `messages`.

Two ways to cut Korean text into searchable terms, both measured by
`bench/history_search.py` on a small Korean chat set:

- `kiwi` (the default): Kiwi's content morphemes (nouns, verb and adjective
  stems, …) are stored space-joined in an FTS5 table with the unicode61
  tokenizer, and the query is analysed the same way. `서울에서`, `서울의`
  and `서울` all become `서울`; `먹었어` and `먹은` both hold `먹`.
- `trigram`: SQLite's own trigram tokenizer over the raw text. It needs no
  analyser, but a term shorter than three characters matches nothing, and
  most Korean words are one or two syllables (`서울`, `인구`, `날씨`, `비`).

The index is a derived table: it is filled lazily by `history search`
(messages newer than its last row), so a chat never waits for Kiwi and an
old history database gains the index on its first search without any of its
rows being rewritten. Deleting a session deletes its index rows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

KINDS = ("kiwi", "trigram")
DEFAULT_KIND = "kiwi"
_TABLE = {"kiwi": "messages_fts_kiwi", "trigram": "messages_fts_trigram"}
_CREATE = {
    "kiwi": "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts_kiwi USING fts5(terms, tokenize='unicode61')",
    "trigram": (
        "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts_trigram USING fts5(content, tokenize='trigram')"
    ),
}
BATCH = 256  # messages analysed per Kiwi call while catching up


@dataclass(frozen=True)
class Hit:
    session_id: str
    message_id: int
    role: str
    created: float
    content: str


def table(kind: str) -> str:
    return _TABLE[kind]


def terms(texts: Sequence[str]) -> list[list[str]]:
    """Kiwi content morphemes of each text (Kiwi is imported here, not at module top)."""
    from korani_cli.search.rank import morphemes

    return morphemes(list(texts))


def existing(db: sqlite3.Connection) -> list[str]:
    """The index tables this database already has."""
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in _TABLE.values() if t in names]


def update(db: sqlite3.Connection, kind: str = DEFAULT_KIND) -> int:
    """Create the index if missing and add every message newer than its last row; how many were added."""
    name = table(kind)
    with db:
        db.execute(_CREATE[kind])
    last = db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {name}").fetchone()[0]
    added = 0
    while True:
        rows = db.execute(
            "SELECT id, content FROM messages "
            "WHERE id > ? AND role IN ('user', 'assistant') ORDER BY id LIMIT ?",
            (last, BATCH),
        ).fetchall()
        if not rows:
            return added
        if kind == "kiwi":
            values = [(mid, " ".join(t)) for (mid, _), t in zip(rows, terms([c or "" for _, c in rows]))]
        else:
            values = [(mid, c or "") for mid, c in rows]
        with db:
            db.executemany(
                f"INSERT INTO {name} (rowid, {'terms' if kind == 'kiwi' else 'content'}) VALUES (?, ?)",
                values,
            )
        last = rows[-1][0]
        added += len(rows)


def match_expression(words: str, kind: str = DEFAULT_KIND) -> str | None:
    """The FTS5 query for what the user typed: every term must occur (AND).
    None when nothing searchable is left (only particles, or only short words for trigram)."""
    if kind == "kiwi":
        parts = terms([words])[0]
    else:
        parts = [w for w in words.split() if len(w) >= 3]  # trigram: shorter terms match nothing
    if not parts:
        return None
    # Each term quoted, so FTS5 syntax in the words (AND, NEAR, *, ") is text, not an operator.
    # A Kiwi term of two or more characters also matches as a prefix: Kiwi keeps compounds
    # whole (`서울특별시`, `분석기`), and `서울`, `분석` should find them; a one-syllable
    # term stays exact, or `비` (rain) would find every `비밀`.
    return " AND ".join(
        '"' + p.replace('"', '""') + '"' + ("*" if kind == "kiwi" and len(p) >= 2 else "")
        for p in dict.fromkeys(parts)
    )


def search(db: sqlite3.Connection, words: str, kind: str = DEFAULT_KIND, limit: int = 20) -> list[Hit]:
    expression = match_expression(words, kind)
    if expression is None:
        return []
    name = table(kind)
    rows = db.execute(
        "SELECT m.session_id, m.id, m.role, m.created, m.content "
        f"FROM {name} f JOIN messages m ON m.id = f.rowid "
        f"WHERE {name} MATCH ? ORDER BY f.rank, m.id DESC LIMIT ?",
        (expression, limit),
    ).fetchall()
    return [Hit(*row) for row in rows]


def forget(db: sqlite3.Connection, session_id: str) -> None:
    """Remove a session's messages from every index (inside the caller's transaction)."""
    for name in existing(db):
        db.execute(
            f"DELETE FROM {name} WHERE rowid IN (SELECT id FROM messages WHERE session_id = ?)", (session_id,)
        )
