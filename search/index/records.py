"""What identifies a row across builds: the sha256 of the text as embedded, and the shard of its id.

A vector depends only on the model, the session settings and the embedded text (one text per
run, see encoder.py), so a row whose embedded text hashes the same as a row of an earlier,
compatible build can take that row's stored vector bit for bit.  Each index keeps the hashes of
its rows in ``text-hashes.npy`` (``(count, 32)`` uint8), so the next build can match without the
old corpus.

Shards: record ``id`` goes to shard ``sha256(id)[:8] mod N``, the same on every machine and in
every read of the corpus; rows keep their corpus line, which orders them again at merge time.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from search.errors import ConfigError

HASH_BYTES = 32
MAX_SHARDS = 10000
SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def text_hash(embedded: str) -> bytes:
    """sha256 of the exact string the encoder embeds (document prefix, title line and text)."""
    return hashlib.sha256(embedded.encode("utf-8")).digest()


def shard_of(record_id: str, shards: int) -> int:
    if shards <= 1:
        return 0
    return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; anything else is a ConfigError naming the value."""
    match = SHARD_RE.match(str(text))
    if not match:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/8 (shard I of N, counted from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N and 1 <= N <= {MAX_SHARDS}")
    return index, count


class HashColumn:
    """Row hashes collected while records stream in; ``array()`` is the ``(count, 32)`` uint8 column."""

    def __init__(self):
        self._buf = bytearray()

    def add(self, digest: bytes) -> None:
        self._buf += digest

    def __len__(self) -> int:
        return len(self._buf) // HASH_BYTES

    def array(self) -> np.ndarray:
        return np.frombuffer(bytes(self._buf), dtype=np.uint8).reshape(-1, HASH_BYTES)


def as_keys(hashes: np.ndarray) -> np.ndarray:
    """``(n, 32)`` uint8 -> ``(n,)`` fixed-width bytes, sortable and comparable as wholes."""
    return np.ascontiguousarray(hashes, dtype=np.uint8).view(f"S{HASH_BYTES}").reshape(-1)


def match_rows(old_hashes: np.ndarray, new_hashes: np.ndarray) -> np.ndarray:
    """For each new row, a row of the old build with the same text hash, or -1."""
    out = np.full(len(new_hashes), -1, dtype=np.int64)
    if len(old_hashes) == 0 or len(new_hashes) == 0:
        return out
    old_keys, new_keys = as_keys(old_hashes), as_keys(new_hashes)
    order = np.argsort(old_keys, kind="stable")
    sorted_keys = old_keys[order]
    pos = np.searchsorted(sorted_keys, new_keys)
    pos_clipped = np.minimum(pos, len(sorted_keys) - 1)
    found = sorted_keys[pos_clipped] == new_keys
    out[found] = order[pos_clipped[found]]
    return out
