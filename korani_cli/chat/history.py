"""Chat history in SQLite (`$KORANI_HOME/data/history.sqlite`, or the platform's data dir).

The user's message is written before generation starts and the answer as
soon as it completes, each in its own transaction, so killing the process
loses at most the answer in progress.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from korani_cli import paths

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL, model TEXT, system TEXT);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT, content TEXT, created REAL, model TEXT, timings TEXT, citations TEXT, reset_before INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, id);
"""


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    created: float
    model: str | None
    timings: dict | None
    citations: list | None


def default_path() -> Path:
    return paths.data_dir() / "history.sqlite"


class History:
    def __init__(self, path: Path | None = None):
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def new_session(self, model: str, system: str | None) -> str:
        sid = uuid.uuid4().hex[:12]
        with self.db:
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (sid, time.time(), model, system))
        return sid

    def add(self, session_id: str, role: str, content: str, model: str | None = None,
            timings: dict | None = None, citations: list | None = None) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO messages (session_id, role, content, created, model, timings, citations) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, role, content, time.time(), model, json.dumps(timings) if timings else None,
                 json.dumps(citations, ensure_ascii=False) if citations else None),
            )

    def mark_reset(self, session_id: str) -> None:
        """/초기화: later `--continue` restores only what came after."""
        with self.db:
            self.db.execute("INSERT INTO messages (session_id, role, content, created, reset_before) VALUES (?, 'reset', '', ?, 1)",
                            (session_id, time.time()))

    def messages(self, session_id: str, since_reset: bool = False) -> list[StoredMessage]:
        rows = self.db.execute(
            "SELECT role, content, created, model, timings, citations FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        out = []
        for role, content, created, model, timings, citations in rows:
            if role == "reset":
                if since_reset:
                    out = []
                continue
            out.append(StoredMessage(role, content, created, model, json.loads(timings) if timings else None,
                                     json.loads(citations) if citations else None))
        return out

    def session(self, session_id: str) -> tuple | None:
        return self.db.execute("SELECT id, created, model, system FROM sessions WHERE id = ?", (session_id,)).fetchone()

    def last_session(self) -> str | None:
        row = self.db.execute("SELECT id FROM sessions ORDER BY created DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def sessions(self, limit: int = 50) -> list[tuple]:
        return self.db.execute(
            "SELECT s.id, s.created, s.model, COUNT(m.id), "
            "(SELECT content FROM messages WHERE session_id = s.id AND role = 'user' ORDER BY id LIMIT 1) "
            "FROM sessions s LEFT JOIN messages m ON m.session_id = s.id AND m.role != 'reset' "
            "GROUP BY s.id ORDER BY s.created DESC LIMIT ?", (limit,)
        ).fetchall()

    def delete(self, session_id: str) -> bool:
        with self.db:
            self.db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            return self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def close(self) -> None:
        self.db.close()


def to_markdown(messages: list[StoredMessage], title: str = "korani chat") -> str:
    lines = [f"# {title}", ""]
    for m in messages:
        who = "**나**" if m.role == "user" else "**코라니**" if m.role == "assistant" else f"**{m.role}**"
        lines += [who, "", m.content, ""]
        if m.citations:
            lines += [f"[{c['n']}] {c['title']} — {c['url']}" for c in m.citations] + [""]
    return "\n".join(lines).rstrip() + "\n"
