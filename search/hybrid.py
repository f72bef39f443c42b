"""Fusing the semantic and keyword candidate lists into one ranking.

Each side proposes its own top N (SEARCH_HYBRID_CANDIDATES; for a sentence the semantic side only
the page's rows, see searcher.semantic_candidates); every candidate gets

    score = (cosine + w * coverage) / (1 + w),   w = KEYWORD_WEIGHT * share * min(1, 5 / query words)

where share is 1 for keyword-style queries (below) and SENTENCE_SHARE for sentences, cosine is
the item's exact cosine with the query (computed for keyword-only candidates too) and
coverage = min(1, bm25 / (FULL_MATCH_SHARE * ideal)), 0 when the keyword side did not
propose the item.  ``ideal`` is the query's ideal BM25 (an item of average length holding every
scored query word once in each column, see keyword.LexicalIndex.ideal_score), so coverage says
how much of the query, weighted by word rarity, an item holds, on the same scale for every
query: one rare word out of a six-word sentence is a weak match even when it is the query's
best, so meaning decides descriptive queries, while an item holding every word of a short
keyword query gets the whole keyword weight.

Chosen on judged tuning sets (eval/, ``python -m bench.fusion``; two at first, sixteen by round 4),
against BM25 relative to the query's best match (the previous default),
min-max and z-score normalisation, reciprocal rank fusion, keyword evidence as a re-ranking
signal only, and a weight that drops for long queries.  Coverage fusion met "within 0.01 of the
better single mode on every kind" on both sets for every weight tried (0.25 to 1), which BM25
relative to the best match, min-max and RRF did not; among the passing settings (all within
0.01 overall) 0.4 kept the largest margin on Debian's descriptive queries.  The tables are in
docs/decisions/2026-12-01-hybrid-coverage-fusion.md, the held-out figures in
bench/results/README.md.

On an index with title vectors (the default, index/titles.py: titles that say more than the id),
keyword-style queries (one to three words, none of them a function word: "partition editor", "pdf viewer")
score each candidate by the better of its document and its title cosine: a document vector
mixes the title with a long description, so a terse query that says what the title says sits
far from it.  Sentences keep the document cosine: with the title for every query, Debian's
held-out descriptive queries fell from 0.574 to 0.427 MRR@10
(docs/decisions/2026-12-01-title-vectors.md).

An exact name match (the query is an item's id or title, ignoring case and punctuation, see
keyword.name_key) comes before everything else with score 1.0; several exact matches keep
their fused order among themselves, an id typed as it is before an id or a title as a name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KEYWORD_WEIGHT = 0.4  # a full keyword match is worth 0.4 of a cosine of 1
# An item reaching half the ideal BM25 counts as a full keyword match: few items hold every query
# word in every column, and on the tuning sets 1/2 beat 1, 2/3, 1/2.5, 1/3 and 1/4.
FULL_MATCH_SHARE = 0.5
# Queries longer than this many words give the keyword side proportionally less weight
# (KEYWORD_WEIGHT x 5 / words): chosen on the tuning sets, see the decision record.  Round 4 tried 3
# twice: it lifted the tuning sets and lowered held-out sets both times (fresh2; fresh5 by 0.004 and
# 0.007), so 5 stayed.
FULL_WEIGHT_WORDS = 5
# Sentences (queries that are not keyword-style, below) get this share of the keyword weight
# (SEARCH_HYBRID_SENTENCE_SHARE; `search tune` measures other shares on a catalogue's own judged
# queries).  Round 5 tried 0.5, the best mean of the 22 tuning sets (0.705 -> 0.714): the fresh6
# held-out run lowered Debian (0.699 -> 0.687) while lifting npm and pydocs, so 1 stayed.
SENTENCE_SHARE = 1.0
SEMANTIC = "semantic"
KEYWORD = "keyword"
EXACT = "exact"
EXACT_SCORE = 1.0  # the highest a fused score can be (cosine 1 and full coverage)
KEYWORD_STYLE_WORDS = 3  # a keyword-style query has at most this many words ...
# ... and none of these: English function words, which terse search-box queries leave out.  On the
# 420 judged queries of eval/ this told keyword-style and name queries from descriptive needs and
# paraphrases with no descriptive query or paraphrase taken for keyword-style.
FUNCTION_WORDS = frozenset(
    "a about after all also an and another any are as at be been before being between but by can "
    "could did do does down during each every for from he her here his how i if in into is it its "
    "just like may me might more most must my no not of on one only onto or other our out over own "
    "same shall she should so some such than that the their them then there these they this those "
    "through to too two under up us very was we were what when where which who whom whose why will "
    "with within without would you your".split()
)
_QUERY_WORD = re.compile(r"\w+")


def keyword_style(query: str) -> bool:
    """A terse search-box query ("pdf viewer", "chess engine"), not a sentence: at most
    KEYWORD_STYLE_WORDS words, none a function word."""
    words = _QUERY_WORD.findall(query.casefold())
    return 0 < len(words) <= KEYWORD_STYLE_WORDS and FUNCTION_WORDS.isdisjoint(words)


def keyword_weight_for(query: str, sentence_share: float = SENTENCE_SHARE) -> float:
    """KEYWORD_WEIGHT, times ``sentence_share`` unless the query is keyword-style, shrinking past
    FULL_WEIGHT_WORDS words: in a sentence most words only carry meaning, so a partial keyword
    match says less about what the user wants."""
    share = 1.0 if keyword_style(query) else sentence_share
    return KEYWORD_WEIGHT * share * min(1.0, FULL_WEIGHT_WORDS / max(len(query.split()), 1))


def coverage(bm25: float, ideal: float) -> float:
    """How much of the query an item covers, 0..1 (see the module docstring)."""
    return min(1.0, bm25 / (FULL_MATCH_SHARE * ideal)) if ideal > 0 else 0.0


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
    covered = {row: coverage(bm25, ideal) for row, bm25 in keyword}
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
