"""Fusing the semantic and keyword candidate lists into one ranking.

Each side proposes its own top N (SEARCH_HYBRID_CANDIDATES); every candidate gets

    score = SEMANTIC_WEIGHT * cosine + (1 - SEMANTIC_WEIGHT) * bm25 / best_bm25

where cosine is the item's exact cosine with the query (computed for keyword-only candidates
too) and bm25 / best_bm25 is its BM25 relative to this query's best keyword match (0 when the
keyword side did not propose it).  Dividing by the best match calibrates BM25, whose scale
moves with query length and word rarity, to (0, 1], the range cosine lives in for relevant
items; a weak keyword match still ranks as the query's best match, but then semantic ranks
decide among items it does not name.

Chosen by measurement on the 64k Debian corpus (bench/hybrid_quality.py --compare-fusion):
against reciprocal rank fusion (k = 5, 20, 60) and weights 0.3 to 0.85, this weighted sum
with SEMANTIC_WEIGHT 0.6 was within 0.001 of the best on the known-item task (MRR@10 0.679 vs
0.651 for RRF k=60, 0.664 for RRF k=5 and 0.563 for semantic alone) and close to the best on
the name task without the exact-name rule (MRR@10 0.915 vs 0.761 for RRF k=60): RRF only sees
ranks, so it cannot tell a keyword match on the item's name from one word in a paragraph.

An exact name match (the query is an item's id or title, ignoring case and punctuation, see
lexical.name_key) comes before everything else with score 1.0; several exact matches keep
their fused order among themselves, an id typed as it is before an id or a title as a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SEMANTIC_WEIGHT = 0.6  # the keyword side gets the rest (0.4)
# A sentence ("a game where you grow crops with friends") is about meaning: there the best keyword
# match is often one rare word in a paragraph, and relative BM25 would still hand it the full 0.4.
# Queries of LONG_QUERY_WORDS words or more lean on meaning; names and keywords stay at 0.6.
LONG_QUERY_WORDS = 4
SEMANTIC_WEIGHT_LONG = 0.75
SEMANTIC = "semantic"
KEYWORD = "keyword"
EXACT = "exact"
EXACT_SCORE = 1.0  # the highest a fused score can be (cosine 1 and the best keyword match)


def semantic_weight_for(query: str) -> float:
    return SEMANTIC_WEIGHT_LONG if len(query.split()) >= LONG_QUERY_WORDS else SEMANTIC_WEIGHT


@dataclass
class Fused:
    row: int
    score: float
    signals: list[str] = field(default_factory=list)


def weighted_fuse(
    semantic_rows: Sequence[int],
    keyword: Sequence[tuple[int, float]],
    cosine: Mapping[int, float],
    exact: Sequence[list[int]] = (),
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
) -> list[Fused]:
    """Every candidate, best first (ties by lower row).  ``keyword`` is (row, bm25) best first;
    ``cosine`` holds the cosine of every candidate of both sides; ``exact`` is
    lexical.exact_matches' tiers of rows named by the query."""
    best = keyword[0][1] if keyword else 1.0
    relative = {row: bm25 / best for row, bm25 in keyword}
    signals: dict[int, list[str]] = {}
    for row in semantic_rows:
        signals[row] = [SEMANTIC]
    for row, _ in keyword:
        signals.setdefault(row, []).append(KEYWORD)
    fused = [
        Fused(row, semantic_weight * cosine[row] + (1 - semantic_weight) * relative.get(row, 0.0), sig)
        for row, sig in signals.items()
    ]
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
            f.score = EXACT_SCORE
            f.signals = [EXACT] + f.signals
            front.append(f)
            chosen.add(row)
    return front + [f for f in fused if f.row not in chosen]
