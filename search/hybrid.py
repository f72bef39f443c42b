"""Fusing the semantic and keyword candidate lists into one ranking.

Each side proposes its own top N (SEARCH_HYBRID_CANDIDATES); every candidate gets

    score = (cosine + w * coverage^2) / (1 + w)
    w = KEYWORD_WEIGHT * min(1, 5 / query words) * min(1, 10 / items covering the whole query)

where cosine is the item's exact cosine with the query (computed for keyword-only candidates
too) and coverage = min(1, bm25 / (FULL_MATCH_SHARE * ideal)), 0 when the keyword side did not
propose the item.  ``ideal`` is the query's ideal BM25 (an item of average length holding every
scored query word once in each column, see keyword.LexicalIndex.ideal_score), so coverage says
how much of the query, weighted by word rarity, an item holds, on the same scale for every
query.  Squared, a half match counts a quarter: one rare word out of a six-word sentence is a
weak match even when it is the query's best, so meaning decides descriptive queries.  The
weight falls when many candidates hold the whole query ("time tracker", "smtp server": every
word common): covering the query is then no evidence, and a flat bonus for a hundred items would
push the semantic answers out of the page.  An item holding every word of a specific short
query gets the whole weight.

Chosen on the tuning sets only (eval/*-tune*.tsv, ``python -m bench.fusion``), against BM25
relative to the query's best match (the first default), min-max and z-score normalisation,
reciprocal rank fusion, keyword evidence as a re-ranking signal only, BM25's own order among
full matches, and several weights; the tables are in
docs/decisions/2026-12-01-hybrid-coverage-fusion.md, the held-out figures in
bench/results/README.md.

An exact name match (the query is an item's id or title, ignoring case and punctuation, see
keyword.name_key) comes before everything else with score 1.0; several exact matches keep
their fused order among themselves, an id typed as it is before an id or a title as a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KEYWORD_WEIGHT = 0.3  # a full keyword match is worth 0.3 of a cosine of 1
# An item reaching half the ideal BM25 counts as a full keyword match: few items hold every query
# word in every column, and on the tuning sets 1/2 beat 1, 2/3, 1/2.5, 1/3 and 1/4.
FULL_MATCH_SHARE = 0.5
# Queries longer than this many words give the keyword side proportionally less weight
# (KEYWORD_WEIGHT x 5 / words): chosen on the tuning sets, see the decision record.
FULL_WEIGHT_WORDS = 5
COVERAGE_POWER = 2  # coverage^2: partial matches count less (tuning sets: 1.5 and 3 were no better)
# When more than this many of the first COMMON_POOL keyword candidates hold the whole query, the
# weight is scaled by COMMON_MATCHES / that count (5 and 10 alike on the tuning sets, 20 and 30 worse).
COMMON_MATCHES = 10
COMMON_POOL = 100  # counted among this many, so SEARCH_HYBRID_CANDIDATES does not change the weight
SEMANTIC = "semantic"
KEYWORD = "keyword"
EXACT = "exact"
EXACT_SCORE = 1.0  # the highest a fused score can be (cosine 1 and full coverage)


def keyword_weight_for(query: str) -> float:
    """KEYWORD_WEIGHT, shrinking past FULL_WEIGHT_WORDS words: in a sentence most words only
    carry meaning, so a partial keyword match says less about what the user wants."""
    return KEYWORD_WEIGHT * min(1.0, FULL_WEIGHT_WORDS / max(len(query.split()), 1))


def coverage(bm25: float, ideal: float) -> float:
    """How much of the query an item covers, 0..1 (see the module docstring)."""
    return min(1.0, bm25 / (FULL_MATCH_SHARE * ideal)) if ideal > 0 else 0.0


def common_match_factor(covered: Sequence[float]) -> float:
    """1, or COMMON_MATCHES / n when n > COMMON_MATCHES of the first COMMON_POOL keyword
    candidates (``covered``: their coverage, best BM25 first) hold the whole query."""
    full = sum(1 for c in covered[:COMMON_POOL] if c >= 1.0)
    return COMMON_MATCHES / full if full > COMMON_MATCHES else 1.0


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
    ideal: float,
    keyword_weight: float = KEYWORD_WEIGHT,
) -> list[Fused]:
    """Every candidate, best first (ties by lower row).  ``keyword`` is (row, bm25) best first and
    ``ideal`` the query's ideal BM25; ``cosine`` holds the cosine of every candidate of both
    sides; ``exact`` is keyword.exact_matches' tiers of rows named by the query."""
    shares = [coverage(bm25, ideal) for _, bm25 in keyword]
    keyword_weight *= common_match_factor(shares)
    covered = {row: share**COVERAGE_POWER for (row, _), share in zip(keyword, shares, strict=True)}
    signals: dict[int, list[str]] = {}
    for row in semantic_rows:
        signals[row] = [SEMANTIC]
    for row, _ in keyword:
        signals.setdefault(row, []).append(KEYWORD)
    scale = 1.0 + keyword_weight
    fused = [
        Fused(row, (cosine[row] + keyword_weight * covered.get(row, 0.0)) / scale, sig) for row, sig in signals.items()
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
