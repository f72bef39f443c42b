"""The searcher: encoder + index + a small query-embedding cache, shared by the CLI, the
local server and the Lambda handler.  Loaded once per process; every method is thread-safe."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from search.errors import QueryError
from search.hybrid import (
    KEYWORD,
    SEMANTIC,
    SENTENCE_SHARE,
    Fused,
    coverage,
    keyword_style,
    keyword_weight_for,
    promote_exact,
    weighted_fuse,
)
from search.index.keyword import LexicalUnavailable, lexical_for
from search.index.reader import Hit, SearchIndex
from search.model.encoder import Encoder
from search.scoring.kernels import rowwise_dot

MODES = ("semantic", "keyword", "hybrid")
DEFAULT_MODE = "hybrid"
HYBRID_CANDIDATES = 100  # each side's top N that hybrid fuses (SEARCH_HYBRID_CANDIDATES)
KEYWORD_THREADS = 2  # hybrid runs its keyword side here while the query is embedded


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
    mode: str = SEMANTIC  # the mode that answered: hybrid falls back to semantic without a keyword index
    note: str | None = None  # why it fell back, for the response and the readiness check


class Searcher:
    def __init__(
        self,
        encoder: Encoder,
        index: SearchIndex,
        *,
        cache_size: int = 1024,
        hybrid_candidates: int = HYBRID_CANDIDATES,
        sentence_share: float = SENTENCE_SHARE,
    ):
        self.encoder = encoder
        self.index = index
        self.cache = EmbeddingCache(cache_size)
        self.hybrid_candidates = hybrid_candidates
        self.sentence_share = sentence_share  # of the keyword weight, for queries that are not keyword-style

    @classmethod
    def open(
        cls,
        model_dir,
        index_dir,
        *,
        threads: int | None = None,
        cache_size: int = 1024,
        hybrid_candidates: int = HYBRID_CANDIDATES,
        sentence_share: float = SENTENCE_SHARE,
    ) -> Searcher:
        encoder = Encoder.load(model_dir, threads=threads)
        index = SearchIndex.open(index_dir, model_fingerprint=encoder.fingerprint, dimension=encoder.dimension)
        return cls(
            encoder, index, cache_size=cache_size, hybrid_candidates=hybrid_candidates, sentence_share=sentence_share
        )

    def keyword_status(self, index: SearchIndex | None = None) -> str | None:
        """None when keyword and hybrid search work on this index, else why not (for readiness)."""
        try:
            lexical_for(index or self.index)
            return None
        except LexicalUnavailable as exc:
            return exc.reason

    def embed_query(self, text: str) -> np.ndarray:
        vec = self.cache.get(text)
        if vec is None:
            vec = self.encoder.embed_query(text)
            self.cache.put(text, vec)
        return vec

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        offset: int = 0,
        min_score: float | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        index: SearchIndex | None = None,
        mode: str = DEFAULT_MODE,
    ) -> Result:
        """The ``k`` results after ``offset``, best first, each with the ``signals`` that found it.

        ``min_score`` drops results scoring below it, and what a score is depends on the mode:
        semantic: cosine similarity (-1..1); keyword: coverage, the item's BM25 over half the
        query's ideal BM25, capped at 1 (0..1]; hybrid: (cosine + w x coverage) / (1 + w),
        w = 0.4 for keyword-style queries, 0.4 x sentence_share for sentences of up to 5 words,
        less for longer ones (-0.71..1), see hybrid.py.
        In keyword and hybrid mode an exact name match comes first with score 1.0."""
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}")
        if k < 1 or offset < 0:
            raise QueryError("k must be >= 1 and offset >= 0")
        index = index or self.index  # callers pin one index version for the whole request
        note = None
        if mode != SEMANTIC:
            try:
                lexical = lexical_for(index)
            except LexicalUnavailable as exc:
                if mode == KEYWORD:
                    raise QueryError(f"keyword search is unavailable: {exc.reason}") from None
                mode, note = SEMANTIC, f"hybrid search fell back to semantic: {exc.reason}"
        if mode == SEMANTIC:
            result = self._semantic(query, k, offset, min_score, filters, index)
        elif mode == KEYWORD:
            result = self._keyword(lexical, query, k, offset, min_score, filters, index)
        else:
            result = self._hybrid(lexical, query, k, offset, min_score, filters, index)
        result.note = note
        return result

    def _semantic(self, query, k, offset, min_score, filters, index) -> Result:
        t0 = time.perf_counter()
        vec = self.embed_query(query)
        t1 = time.perf_counter()
        hits = index.search(vec, k=k, offset=offset, min_score=min_score, filters=filters)
        t2 = time.perf_counter()
        results = self.describe(hits, index)
        t3 = time.perf_counter()
        return Result(
            results,
            {"embed": _ms(t1 - t0), "search": _ms(t2 - t1), "fetch": _ms(t3 - t2), "total": _ms(t3 - t0)},
            mode=SEMANTIC,
        )

    def _keyword(self, lexical, query, k, offset, min_score, filters, index) -> Result:
        t0 = time.perf_counter()
        mask = index.filter_mask(filters)
        exact = _allowed(lexical.exact_matches(query), mask)
        need = offset + k
        hits, ideal = lexical.ranked(query, limit=need + sum(map(len, exact)), mask=mask)
        fused = promote_exact([Fused(h.row, coverage(h.score, ideal), [KEYWORD]) for h in hits], exact)
        t1 = time.perf_counter()
        results = self._page(fused, offset, need, min_score, index)
        t2 = time.perf_counter()
        return Result(
            results, {"embed": 0.0, "keyword": _ms(t1 - t0), "fetch": _ms(t2 - t1), "total": _ms(t2 - t0)}, mode=KEYWORD
        )

    def _hybrid(self, lexical, query, k, offset, min_score, filters, index) -> Result:
        t0 = time.perf_counter()
        need = offset + k
        n = max(self.hybrid_candidates, need)  # a page past the candidates still has a full list
        terse = keyword_style(query)
        # SQLite and onnxruntime both release the GIL: the keyword side costs no wall time
        # when a second core is free, and little more than a thread hand-off when not.
        keyword_side = _keyword_pool().submit(_keyword_side, lexical, index, query, n, filters)
        vec = self.embed_query(query)
        t1 = time.perf_counter()
        semantic = index.search(vec, k=semantic_candidates(terse, n, need), filters=filters)
        t2 = time.perf_counter()
        exact, keyword, ideal, keyword_ms = keyword_side.result()
        t3 = time.perf_counter()
        cosine = {h.row: h.score for h in semantic}
        missing = [h.row for h in keyword if h.row not in cosine]
        if missing:  # keyword-only candidates: their exact cosine, from the stored vectors
            cosine.update(zip(missing, _cosines(index, missing, vec).tolist()))
            keyword = [h for h in keyword if index.guard.plausible(h.row, cosine[h.row])]  # damaged rows out
        if terse:  # terse queries: the better of document and title cosine (hybrid.py)
            cosine = _with_titles(index, cosine, vec)
        fused = weighted_fuse(
            [h.row for h in semantic],
            [(h.row, h.score) for h in keyword],
            cosine,
            exact,
            ideal=ideal,
            keyword_weight=keyword_weight_for(query, self.sentence_share),
        )
        results = self._page(fused, offset, need, min_score, index)
        t4 = time.perf_counter()
        return Result(
            results,
            {
                "embed": _ms(t1 - t0),
                "search": _ms(t2 - t1),
                "keyword": keyword_ms,
                "keyword_wait": _ms(t3 - t2),
                "fetch": _ms(t4 - t3),
                "total": _ms(t4 - t0),
            },
            mode="hybrid",
        )

    def _page(self, fused: list[Fused], offset: int, need: int, min_score, index) -> list[dict]:
        if min_score is not None:
            fused = [f for f in fused if f.score >= min_score]
        page = fused[offset:need]
        return self.describe([Hit(f.row, f.score) for f in page], index, [f.signals for f in page])

    def similar(
        self,
        item_id: str,
        *,
        k: int = 10,
        offset: int = 0,
        min_score: float | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        index: SearchIndex | None = None,
    ) -> Result | None:
        index = index or self.index
        t0 = time.perf_counter()
        row = index.metadata.row_of(item_id)
        if row is None:
            return None
        hits = index.search(
            index.vector(row), k=k, offset=offset, min_score=min_score, filters=filters, exclude_rows=[row]
        )
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
    def describe(hits, index: SearchIndex, signals: list[list[str]] | None = None) -> list[dict]:
        records = index.metadata.rows([h.row for h in hits])
        out = []
        for i, h in enumerate(hits):
            rec = records.get(h.row)
            if rec is None:
                raise QueryError(f"row {h.row} missing from the metadata store")
            out.append(
                {
                    "id": rec["id"],
                    "score": round(h.score, 6),
                    "title": rec["title"],
                    "fields": rec["fields"],
                    "signals": list(signals[i]) if signals is not None else [SEMANTIC],
                }
            )
        return out


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _keyword_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(KEYWORD_THREADS, thread_name_prefix="search-keyword")
        return _pool


def semantic_candidates(terse: bool, n: int, need: int) -> int:
    """How many semantic rows hybrid fuses: the top ``n`` for a terse query, only the page's ``need``
    for a sentence.  A sentence scores by the document cosine alone, so a semantic row below the top
    ``need`` that the keyword side did not propose scores cosine / (1 + w), no more than each of the
    ``need`` rows above it, and can never reach the page (the rows the keyword side did propose are
    fused with their exact cosine either way): the page is the one the top ``n`` gives, for a
    shorter scan.  A terse query's title cosine can lift any row, so it keeps the top ``n``."""
    return n if terse else need


def _keyword_side(lexical, index: SearchIndex, query: str, n: int, filters):
    """Exact name matches and the keyword top ``n``, both within the filters; and its ms."""
    t0 = time.perf_counter()
    mask = index.filter_mask(filters)
    exact = _allowed(lexical.exact_matches(query), mask)
    keyword, ideal = lexical.ranked(query, limit=n, mask=mask)
    return exact, keyword, ideal, _ms(time.perf_counter() - t0)


def _cosines(index: SearchIndex, rows: list[int], vec: np.ndarray) -> np.ndarray:
    """Cosines of a few stored rows with the query (dequantised like SearchIndex.vector)."""
    picked = np.asarray(rows, dtype=np.int64)
    scores = rowwise_dot(index.embeddings[picked], vec)  # as the kernels rescore: independent of the batch
    if index.scales is not None:
        scores = scores * index.scales[picked]
    return scores


def _with_titles(index: SearchIndex, cosine: dict[int, float], vec: np.ndarray) -> dict[int, float]:
    """Each candidate's better cosine of document and title (max-sim, see index/titles.py)."""
    if index.titles is None or not cosine:  # built with --no-title-vectors, or no title says more than its id
        return cosine
    rows = list(cosine)
    titles = index.title_cosines(rows, vec)
    assert titles is not None
    return {r: max(c, t) for r, c, t in zip(rows, cosine.values(), titles.tolist(), strict=True)}


def _allowed(exact: tuple[list[int], ...], mask) -> tuple[list[int], ...]:
    """Exact name matches that pass the filters."""
    if mask is None:
        return exact
    return tuple([r for r in tier if mask[r]] for tier in exact)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
