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

from korani_cli.data.records import Conversation

SHINGLE = 5
SHINGLE_CHARS = 2000
NUM_PERM = 64
LSH_MAX_THRESHOLD = 0.95  # the highest datasketch can band with NUM_PERM
DEFAULT_THRESHOLD = 0.8
_WS = re.compile(r"\s+")


def normalised(conv: Conversation) -> str:
    text = "\n".join(f"{t.role}:{t.content}" for t in conv.turns)
    return _WS.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def shingle_hashes(text: str):
    """32-bit hashes of every SHINGLE-character window, computed with numpy
    (a polynomial rolling hash over code points): no Python loop per shingle."""
    import numpy as np

    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(points) - SHINGLE + 1
    if n <= 0:
        points = np.pad(points, (0, SHINGLE - len(points)))
        n = 1
    h = np.zeros(n, dtype=np.uint64)
    for k in range(SHINGLE):
        h = (h * np.uint64(1_000_003) + points[k : k + n]) & np.uint64(0xFFFFFFFF)
    return np.unique(h)


_MERSENNE = (1 << 61) - 1


def _permutations():
    """(a, b) of NUM_PERM universal hash functions (a·x + b) mod (2^61 − 1).

    a and b stay below 2^32 so that a·x + b never overflows uint64 for the
    32-bit shingle hashes: the mod is exact, no wrap-around.
    """
    import numpy as np

    rng = np.random.RandomState(1)
    a = rng.randint(1, 1 << 32, size=NUM_PERM, dtype=np.uint64)
    b = rng.randint(0, 1 << 32, size=NUM_PERM, dtype=np.uint64)
    return a, b


def signature_values(hashes, perms):
    """The MinHash signature: per permutation, the minimum permuted shingle hash."""
    import numpy as np

    a, b = perms
    permuted = (hashes[:, None] * a + b) % np.uint64(_MERSENNE) & np.uint64(0xFFFFFFFF)
    return permuted.min(axis=0)


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

            raise UsageError(
                "near-duplicate removal needs datasketch", "pip install 'korani[data]', or pass --no-near-dup"
            ) from None

        if self._lsh is None:
            # datasketch cannot band 64 permutations for a threshold above ~0.96 (at 1.0 it
            # raises "the number of bands are too small"). A lower LSH threshold only returns
            # more candidates; each is still confirmed against the user's threshold below.
            self._lsh = MinHashLSH(threshold=min(self.threshold, LSH_MAX_THRESHOLD), num_perm=NUM_PERM)
            self._perms = _permutations()
        # `text` is normalised: whitespace is already single spaces.
        compact = text.replace(" ", "")[:SHINGLE_CHARS]
        # The signature is computed here, vectorised; datasketch holds it and
        # does the banded LSH indexing and the Jaccard estimate.
        values = signature_values(shingle_hashes(compact), self._perms)
        sig = MinHash(hashvalues=values, permutations=self._perms, scheme="legacy")
        # LSH returns candidates as a set, whose order follows Python's per-process
        # string hash; taking them oldest first names the same original every run.
        for key in sorted(self._lsh.query(sig), key=int):
            # Confirm each candidate with the estimated Jaccard similarity.
            if sig.jaccard(self._signatures[key]) >= self.threshold:
                return self._ids[key]
        key = str(len(self._ids))
        self._lsh.insert(key, sig)
        self._signatures[key] = sig
        self._ids[key] = conv.id
        return None
