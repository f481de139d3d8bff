"""Duplicate removal across both sources: exact, then near-duplicate.

Exact: a conversation's text normalised (NFC, lowercase, whitespace
collapsed) and hashed; the first occurrence wins.

Near-duplicate: MinHash over character 5-gram shingles of the normalised
text (whitespace removed — Korean spacing varies between copies of the same
answer), indexed with LSH (datasketch). A candidate counts as a duplicate
when its estimated Jaccard similarity reaches the threshold (default 0.8;
`--near-dup-threshold`). Because the later copy is removed before splitting,
near-duplicates can never straddle train and valid/test.

Only the first `SHINGLE_CHARS` characters are shingled: two conversations
that agree on that much are the same conversation for our purposes, and it
bounds the cost of very long ShareGPT threads.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

from korani_cli.data.records import Conversation

SHINGLE = 5
SHINGLE_CHARS = 2000
NUM_PERM = 64
DEFAULT_THRESHOLD = 0.8
_WS = re.compile(r"\s+")


def normalised(conv: Conversation) -> str:
    text = "\n".join(f"{t.role}:{t.content}" for t in conv.turns)
    return _WS.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def _crc32(data: bytes) -> int:
    return zlib.crc32(data)


class Deduplicator:
    def __init__(self, threshold: float = DEFAULT_THRESHOLD, near: bool = True):
        if not 0.0 < threshold <= 1.0:
            raise ValueError("the near-duplicate threshold must be in (0, 1]")
        self.threshold = threshold
        self.near = near
        self._seen: dict[bytes, str] = {}
        self._lsh = None
        self._signatures: dict[str, object] = {}
        self._ids: dict[str, str] = {}  # LSH key → conversation id (ids may repeat across sources)

    def exact_of(self, conv: Conversation, text: str) -> str | None:
        """The id this conversation exactly duplicates, or None (and remember it)."""
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = conv.id
        return first

    def near_of(self, conv: Conversation, text: str) -> str | None:
        """The id this conversation nearly duplicates, or None (and index it)."""
        if not self.near:
            return None
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            from korani_cli.errors import UsageError

            raise UsageError("near-duplicate removal needs datasketch", "pip install 'korani[data]', or pass --no-near-dup") from None

        if self._lsh is None:
            self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)
        compact = _WS.sub("", text)[:SHINGLE_CHARS]
        shingles = {compact[i:i + SHINGLE] for i in range(max(len(compact) - SHINGLE + 1, 1))}
        sig = MinHash(num_perm=NUM_PERM, hashfunc=_crc32)
        sig.update_batch([s.encode("utf-8") for s in shingles])
        for key in self._lsh.query(sig):
            # LSH returns candidates; confirm with the estimated Jaccard similarity.
            if sig.jaccard(self._signatures[key]) >= self.threshold:
                return self._ids[key]
        key = str(len(self._ids))
        self._lsh.insert(key, sig)
        self._signatures[key] = sig
        self._ids[key] = conv.id
        return None
