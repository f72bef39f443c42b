"""The searcher: encoder + index + a small query-embedding cache, shared by the CLI, the
local server and the Lambda handler.  Loaded once per process; every method is thread-safe."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .encoder import QUERY, Encoder
from .errors import QueryError
from .index import SearchIndex


class EmbeddingCache:
    """LRU of query text -> vector; size 0 turns it off.  Vectors are read-only so sharing is safe."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        if not self.size:
            return None
        with self._lock:
            vec = self._data.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, key: str, vec: np.ndarray) -> None:
        if not self.size:
            return
        vec.flags.writeable = False
        with self._lock:
            self._data[key] = vec
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class Result:
    hits: list[dict]
    timing_ms: dict[str, float] = field(default_factory=dict)


class Searcher:
    def __init__(self, encoder: Encoder, index: SearchIndex, *, cache_size: int = 1024):
        self.encoder = encoder
        self.index = index
        self.cache = EmbeddingCache(cache_size)

    @classmethod
    def open(cls, model_dir, index_dir, *, threads: int | None = None, cache_size: int = 1024) -> "Searcher":
        encoder = Encoder.load(model_dir, threads=threads)
        index = SearchIndex.open(index_dir, model_fingerprint=encoder.fingerprint, dimension=encoder.dimension)
        return cls(encoder, index, cache_size=cache_size)

    def embed_query(self, text: str) -> np.ndarray:
        vec = self.cache.get(text)
        if vec is None:
            vec = self.encoder.embed_query(text)
            self.cache.put(text, vec)
        return vec

    def search(self, query: str, *, k: int = 10, offset: int = 0, min_score: float | None = None,
               filters: Mapping[str, Sequence[str]] | None = None, index: SearchIndex | None = None) -> Result:
        index = index or self.index  # callers pin one index version for the whole request
        t0 = time.perf_counter()
        vec = self.embed_query(query)
        t1 = time.perf_counter()
        hits = index.search(vec, k=k, offset=offset, min_score=min_score, filters=filters)
        t2 = time.perf_counter()
        results = self.describe(hits, index)
        t3 = time.perf_counter()
        return Result(results, {"embed": _ms(t1 - t0), "search": _ms(t2 - t1), "fetch": _ms(t3 - t2),
                                "total": _ms(t3 - t0)})

    def similar(self, item_id: str, *, k: int = 10, offset: int = 0, min_score: float | None = None,
                filters: Mapping[str, Sequence[str]] | None = None, index: SearchIndex | None = None) -> Result | None:
        index = index or self.index
        t0 = time.perf_counter()
        row = index.metadata.row_of(item_id)
        if row is None:
            return None
        hits = index.search(index.vector(row), k=k, offset=offset, min_score=min_score, filters=filters,
                            exclude_rows=[row])
        t1 = time.perf_counter()
        results = self.describe(hits, index)
        t2 = time.perf_counter()
        return Result(results, {"embed": 0.0, "search": _ms(t1 - t0), "fetch": _ms(t2 - t1), "total": _ms(t2 - t0)})

    def item(self, item_id: str, index: SearchIndex | None = None) -> dict | None:
        index = index or self.index
        row = index.metadata.row_of(item_id)
        if row is None:
            return None
        return index.metadata.rows([row])[row]

    @staticmethod
    def describe(hits, index: SearchIndex) -> list[dict]:
        records = index.metadata.rows([h.row for h in hits])
        out = []
        for h in hits:
            rec = records.get(h.row)
            if rec is None:
                raise QueryError(f"row {h.row} missing from the metadata store")
            out.append({"id": rec["id"], "score": round(h.score, 6), "title": rec["title"], "fields": rec["fields"]})
        return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
