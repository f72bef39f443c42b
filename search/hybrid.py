"""Fusing the semantic and keyword candidate lists into one ranking.

Each side proposes its own top N (a setting, SEARCH_HYBRID_CANDIDATES); items found by both
rise.  Reciprocal rank fusion (RRF) scores an item by its ranks alone,

    rrf(item) = sum over sides that found it of 1 / (RRF_K + rank),   rank 1-based,

reported divided by its maximum 2 / (RRF_K + 1), so the hybrid score is in (0, 1] and 1.0 means
"first on both sides".  Ranks are used instead of cosine and BM25 values because the two are
on unrelated scales that move from query to query: measured on the 64k Debian corpus,
RRF beat a per-query-normalised weighted sum of cosine and BM25 (bench/hybrid_quality.py,
figures in the README).

An exact name match (the query is an item's id or title, ignoring case and punctuation, see
lexical.name_key) comes before everything else with score 1.0; several exact matches keep
their fused order among themselves, an id typed as it is before an id or a title as a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

RRF_K = 60              # the usual constant (Cormack et al. 2009); flattens the head of each list
SEMANTIC = "semantic"
KEYWORD = "keyword"
EXACT = "exact"


@dataclass
class Fused:
    row: int
    score: float
    signals: list[str] = field(default_factory=list)


def rrf_fuse(semantic_rows: list[int], keyword_rows: list[int], exact: Sequence[list[int]] = (), *,
             k: int = RRF_K) -> list[Fused]:
    """Fuse two best-first row lists; returns every candidate best first (ties by lower row).
    ``exact`` is lexical.exact_matches' tiers of rows named by the query."""
    scores: dict[int, float] = {}
    signals: dict[int, list[str]] = {}
    for name, rows in ((SEMANTIC, semantic_rows), (KEYWORD, keyword_rows)):
        for rank, row in enumerate(rows, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (k + rank)
            signals.setdefault(row, []).append(name)
    top = 2.0 / (k + 1)
    fused = [Fused(row, score / top, signals[row]) for row, score in scores.items()]
    fused.sort(key=lambda f: (-f.score, f.row))
    return promote_exact(fused, exact)


def promote_exact(fused: list[Fused], exact: Sequence[list[int]]) -> list[Fused]:
    """Exact name matches first with score 1.0, tier by tier (id as typed, id as a name, title),
    each tier in fused order; a match neither side proposed is added (it passed the filters)."""
    if not any(exact):
        return fused
    position = {f.row: i for i, f in enumerate(fused)}
    by_row = {f.row: f for f in fused}
    front: list[Fused] = []
    chosen: set[int] = set()
    for tier in exact:
        for row in sorted(set(tier) - chosen, key=lambda r: (position.get(r, len(fused)), r)):
            f = by_row.get(row) or Fused(row, 0.0, [])
            f.score = 1.0
            f.signals = [EXACT] + f.signals
            front.append(f)
            chosen.add(row)
    return front + [f for f in fused if f.row not in chosen]
