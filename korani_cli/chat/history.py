"""Chat history in SQLite (`$KORANI_HOME/data/history.sqlite`, or the platform's data dir).

The user's message is written before generation starts and the answer as
soon as it completes, each in its own transaction, so killing the process
loses at most the answer in progress.

A session row is written with its first message, never empty, and keeps the
model, template and system text the chat uses (`/모델 NAME` updates them), so
`--continue` resumes the same conversation. An answer that `/다시` replaced
stays in the file with role `replaced` and is left out of the conversation.
Session ids may be shortened to any unique prefix, as git's may. A session's
`kind` says which command began it: `chat`, or `ask` (one-shot answers are
logged too, and `ask -c` continues either). Databases written before the
`template`, `kind` or `search` column get it (NULL: the default template; a
chat; the default search flags) when opened; nothing else is rewritten. A chat's
search flags are kept so `--continue` searches where it searched before.

A database korani cannot use — corrupt, not a database at all, a directory
in its place, locked by another process past the busy timeout — is a
`HistoryError` (exit 5) that names the file and the way out, including
`korani chat --no-history`, which keeps the chat's history in memory only.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from korani_cli import paths
from korani_cli.errors import ConfigError, UsageError
from korani_cli.untrusted import clean, clean_line

BUSY_TIMEOUT_S = 10  # how long a write waits for another chat's transaction


class HistoryError(ConfigError):
    """The history database cannot be used; exit 5, like other state under KORANI_HOME."""


class NoSuchSession(UsageError):
    """No session, or more than one, has the id or prefix the user gave; exit 2."""


SCHEMA = (
    "\n"
    "CREATE TABLE IF NOT EXISTS sessions "
    "(id TEXT PRIMARY KEY, created REAL, model TEXT, system TEXT, template TEXT, kind TEXT, search TEXT);\n"
    "CREATE TABLE IF NOT EXISTS messages (\n"
    "    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,\n"
    "    role TEXT, content TEXT, created REAL, model TEXT, timings TEXT, citations TEXT, "
    "reset_before INTEGER DEFAULT 0\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, id);\n"
)


@dataclass(frozen=True)
class StoredSession:
    id: str
    created: float
    model: str | None
    system: str | None
    template: str | None  # None: written before korani stored it (the default template)
    kind: str = "chat"  # which command began it: chat or ask
    search: dict | None = None  # the chat's search flags (provider, local_dir, …); None: the defaults


@dataclass(frozen=True)
class SessionSummary:
    id: str
    created: float
    model: str | None
    messages: int  # user and assistant messages
    first: str | None  # the first thing the user said
    kind: str = "chat"  # which command began it: chat or ask


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


WITHOUT_CHAT = "or chat without saving: korani chat --no-history"


def _problem(path: Path | str, exc: Exception, without: str = WITHOUT_CHAT) -> HistoryError:
    """What went wrong with the database, in words, and the way out (`without`: how
    the command that hit it goes on without the history)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc):
        return HistoryError(
            f"the chat history {path} is locked by another process (waited {BUSY_TIMEOUT_S} s)",
            f"finish the other korani chat or history command and retry, {without}",
        )
    if Path(path).is_dir():
        return HistoryError(
            f"the chat history {path} is a directory, not a database file",
            f"move it away (mv {path} {path}.bak), {without}",
        )
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or isinstance(exc, UnicodeDecodeError):
        return HistoryError(
            f"the chat history {path} is damaged ({exc})",
            f"move it aside to start a new history (mv {path} {path}.broken; `sqlite3 FILE .recover` may "
            f"save old sessions), {without}",
        )
    detail = getattr(exc, "strerror", None) or str(exc)
    return HistoryError(
        f"cannot use the chat history {path} ({detail})", f"check the file and its directory, {without}"
    )


class History:
    """Sessions and their messages. `History.in_memory()` saves nothing (--no-history)."""

    def __init__(self, path: Path | None = None, *, without: str = WITHOUT_CHAT):
        """`without` ends every error's fix: how the calling command goes on without a history."""
        self.path = path or default_path()
        self.without = without
        if str(self.path) != ":memory:":
            paths.ensure_dir(self.path.parent)
            if self.path.exists() and not self.path.is_file() and not self.path.is_dir():
                # SQLite would read (and write) a device or FIFO as if it were the database.
                raise HistoryError(
                    f"the chat history {self.path} is not a regular file",
                    f"remove it to start a new history, {without}",
                )
        with self._guard():
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.executescript(SCHEMA)
            self._migrate()
            self.db.commit()

    def _migrate(self) -> None:
        """Bring a database from an older korani up to SCHEMA by adding columns; no row is rewritten."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(sessions)")}
        if "template" not in columns:
            self.db.execute("ALTER TABLE sessions ADD COLUMN template TEXT")
        if "kind" not in columns:
            self.db.execute("ALTER TABLE sessions ADD COLUMN kind TEXT")
        if "search" not in columns:
            self.db.execute("ALTER TABLE sessions ADD COLUMN search TEXT")

    @classmethod
    def in_memory(cls) -> "History":
        return cls(Path(":memory:"))

    @property
    def persistent(self) -> bool:
        return str(self.path) != ":memory:"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite3's exceptions (and text that is not UTF-8) become one HistoryError."""
        try:
            yield
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _problem(self.path, exc, self.without) from None

    def check(self) -> None:
        """Raise HistoryError if SQLite finds the file damaged (a lookup that found
        nothing must not be reported as "no such session" when the file is broken)."""
        with self._guard():
            result = self.db.execute("PRAGMA integrity_check(1)").fetchone()
        if result and result[0] != "ok":
            raise _problem(self.path, _Corrupt(result[0]), self.without)

    def new_session(
        self,
        model: str,
        system: str | None,
        template: str | None = None,
        kind: str = "chat",
        search: dict | None = None,
    ) -> str:
        """A session row; callers create it with its first message (ChatSession._store).
        `search`: the search flags the chat was given, so `--continue` searches the same way."""
        sid = uuid.uuid4().hex[:12]
        with self._guard(), self.db:
            self.db.execute(
                "INSERT INTO sessions (id, created, model, system, template, kind, search) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    time.time(),
                    model,
                    system,
                    template,
                    kind,
                    json.dumps(search, ensure_ascii=False) if search else None,
                ),
            )
        return sid

    def add(
        self,
        session_id: str,
        role: str,
        content: str,
        model: str | None = None,
        timings: dict | None = None,
        citations: list | None = None,
    ) -> None:
        with self._guard(), self.db:
            self.db.execute(
                "INSERT INTO messages (session_id, role, content, created, model, timings, citations) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    role,
                    content,
                    time.time(),
                    model,
                    json.dumps(timings) if timings else None,
                    json.dumps(citations, ensure_ascii=False) if citations else None,
                ),
            )

    def set_model(self, session_id: str, model: str, template: str | None) -> None:
        """/모델 NAME: the session goes on with another model (and its template)."""
        with self._guard(), self.db:
            self.db.execute(
                "UPDATE sessions SET model = ?, template = ? WHERE id = ?", (model, template, session_id)
            )

    def set_system(self, session_id: str, system: str | None) -> None:
        """/시스템 TEXT: the session goes on with another system text."""
        with self._guard(), self.db:
            self.db.execute("UPDATE sessions SET system = ? WHERE id = ?", (system, session_id))

    def replace_last_answer(self, session_id: str) -> None:
        """/다시: the last answer is kept, as role 'replaced', out of the conversation."""
        with self._guard(), self.db:
            self.db.execute(
                "UPDATE messages SET role = 'replaced' WHERE id = (SELECT id FROM messages "
                "WHERE session_id = ? AND role = 'assistant' ORDER BY id DESC LIMIT 1)",
                (session_id,),
            )

    def mark_reset(self, session_id: str) -> None:
        """/초기화: later `--continue` restores only what came after."""
        with self._guard(), self.db:
            self.db.execute(
                "INSERT INTO messages (session_id, role, content, created, reset_before) "
                "VALUES (?, 'reset', '', ?, 1)",
                (session_id, time.time()),
            )

    def messages(self, session_id: str, since_reset: bool = False) -> list[StoredMessage]:
        with self._guard():
            rows = self.db.execute(
                "SELECT role, content, created, model, timings, citations FROM messages "
                "WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        out = []
        for role, content, created, model, timings, citations in rows:
            if role == "reset":
                if since_reset:
                    out = []
                continue
            if role == "replaced":  # an answer /다시 replaced: kept in the file, not in the conversation
                continue
            try:
                out.append(
                    StoredMessage(
                        role,
                        content,
                        created,
                        model,
                        json.loads(timings) if timings else None,
                        json.loads(citations) if citations else None,
                    )
                )
            except (ValueError, TypeError) as exc:
                raise _problem(
                    self.path, _Corrupt(f"a stored message is unreadable: {exc}"), self.without
                ) from None
        return out

    def session(self, session_id: str) -> StoredSession | None:
        with self._guard():
            row = self.db.execute(
                "SELECT id, created, model, system, template, kind, search FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            self.check()
            return None
        try:
            search = json.loads(row[6]) if row[6] else None
        except ValueError:
            search = None  # unreadable search flags: the chat searches with the defaults
        return StoredSession(
            *row[:5], kind=row[5] or "chat", search=search if isinstance(search, dict) else None
        )

    def resolve(self, prefix: str) -> str:
        """The full id of the one session whose id starts with `prefix` (git's short ids).
        NoSuchSession (exit 2) when none does, or when several do (they are listed)."""
        prefix = prefix.strip()
        if not prefix:
            raise NoSuchSession(
                "the session id is empty", "pass an id (or its first characters) from `korani history list`"
            )
        # A range over the primary key's index, not LIKE: % and _ in the prefix stay literal,
        # and a damaged index shows as "not found" here, which check() then reports as damage.
        with self._guard():
            ids = [
                row[0]
                for row in self.db.execute(
                    "SELECT id FROM sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT 11",
                    (prefix, prefix + "\U0010ffff"),
                )
            ]
        if len(ids) == 1:
            return ids[0]
        shown = clean_line(prefix)[:40]
        if not ids:
            self.check()
            raise NoSuchSession(f"no saved session {shown}", "see `korani history list`")
        more = ", …" if len(ids) > 10 else ""
        raise NoSuchSession(
            f"session id {shown} is ambiguous: {', '.join(ids[:10])}{more}", "give more of its characters"
        )

    def last_session(self) -> str | None:
        """The session with the most recent message (empty sessions of older korani versions are skipped)."""
        with self._guard():
            row = self.db.execute(
                "SELECT session_id FROM messages WHERE role IN ('user', 'assistant') ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def count(self, session_id: str) -> int:
        """User and assistant messages stored in the session (what `history list` shows)."""
        with self._guard():
            return self.db.execute(
                "SELECT COUNT(*) FROM messages WHERE session_id = ? AND role IN ('user', 'assistant')",
                (session_id,),
            ).fetchone()[0]

    def sessions(self, limit: int = 50) -> list[SessionSummary]:
        with self._guard():
            rows = self.db.execute(
                "SELECT s.id, s.created, s.model, COUNT(m.id), "
                "(SELECT content FROM messages WHERE session_id = s.id AND role = 'user' "
                "ORDER BY id LIMIT 1), s.kind "
                "FROM sessions s LEFT JOIN messages m "
                "ON m.session_id = s.id AND m.role IN ('user', 'assistant') "
                "GROUP BY s.id ORDER BY s.created DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [SessionSummary(*row[:5], kind=row[5] or "chat") for row in rows]

    def search(self, words: str, limit: int = 20, kind: str | None = None) -> list:
        """Messages matching `words` (every term), best first; brings the FTS5 index up to date first."""
        from korani_cli.chat import search_index

        kind = kind or search_index.DEFAULT_KIND
        with self._guard():
            search_index.update(self.db, kind)
            return search_index.search(self.db, words, kind, limit)

    def delete(self, session_id: str) -> bool:
        from korani_cli.chat import search_index

        with self._guard(), self.db:
            search_index.forget(self.db, session_id)
            self.db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            return self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


class _Corrupt(sqlite3.DatabaseError):
    """A damage report of our own (quick_check's finding, an unreadable row)."""

    sqlite_errorname = "SQLITE_CORRUPT"


def to_markdown(messages: list[StoredMessage], title: str = "korani chat") -> str:
    """A transcript for people: control characters (from the model, the web or a
    pasted line) are stripped, so printing or viewing it cannot drive a terminal."""
    lines = [f"# {title}", ""]
    for m in messages:
        who = "**나**" if m.role == "user" else "**코라니**" if m.role == "assistant" else f"**{m.role}**"
        lines += [who, "", m.content or "", ""]
        if m.citations:
            lines += [
                f"[{c.get('n', '?')}] {c.get('title', '')} — {c.get('url', '')}"
                for c in m.citations
                if isinstance(c, dict)
            ] + [""]
    return clean("\n".join(lines).rstrip() + "\n")
