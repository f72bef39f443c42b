"""Compare fusion functions on a judged query set, offline: each side's candidates are fetched
once per query, then every fusion ranks the same candidates.  This is how the hybrid fusion was
chosen (docs/decisions/2026-12-01-hybrid-coverage-fusion.md); run it on TUNING sets only.

    python -m bench.fusion --index build/tune/npm --queries eval/npm-tune.tsv [--weights 1,1,2]

Prints MRR@10 per kind for every fusion.  ``--weights`` overrides the keyword column weights at
query time (FTS5 takes them per query), so field weights can be compared without a rebuild.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from search.hybrid import coverage, keyword_weight_for, promote_exact, weighted_fuse
from search.index.keyword import lexical_for
from search.index.reader import SearchIndex
from search.model.encoder import Encoder
from search.searcher import _cosines

CANDIDATES = 100


@dataclass
class Candidates:
    kind: str
    accepted: set[int]  # rows of the accepted ids
    semantic: list[tuple[int, float]]  # (row, cosine) best first
    keyword: list[tuple[int, float]]  # (row, bm25) best first
    ideal: float
    cosine: dict[int, float]
    exact: tuple[list[int], list[int], list[int]]
    query: str

    @property
    def words(self) -> int:
        return len(self.query.split())


def read_queries(path: Path) -> list[tuple[str, set[str], str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        out.append(
            (parts[0], {a.strip() for a in parts[1].split(",") if a.strip()}, parts[2] if len(parts) > 2 else "")
        )
    return out


def gather(index: SearchIndex, encoder: Encoder, queries, weights: tuple[float, ...] | None) -> list[Candidates]:
    lexical = lexical_for(index)
    if weights:
        marks = ", ".join(repr(w) for w in weights)
        t = lexical.table
        lexical._sql = (
            f"SELECT rowid, -bm25({t}, {marks}) FROM {t} WHERE {t} MATCH ? ORDER BY bm25({t}, {marks}), rowid"
        )
        lexical._sql_top = lexical._sql + " LIMIT ?"
        lexical.weights = weights
        freq = sum(weights)
        lexical._ideal_tf = freq * 2.2 / (freq + 1.2)
    out = []
    for text, accepted, kind in queries:
        vec = encoder.embed_query(text)
        semantic = [(h.row, h.score) for h in index.search(vec, k=CANDIDATES)]
        hits, ideal = lexical.ranked(text, limit=CANDIDATES)
        keyword = [(h.row, h.score) for h in hits]
        cosine = dict(semantic)
        missing = [r for r, _ in keyword if r not in cosine]
        if missing:
            cosine.update(zip(missing, _cosines(index, missing, vec).tolist(), strict=True))
        accepted_rows = {r for r in map(index.metadata.row_of, accepted) if r is not None}
        out.append(
            Candidates(
                kind,
                accepted_rows,
                semantic,
                keyword,
                ideal,
                cosine,
                lexical.exact_matches(text),
                text,
            )
        )
    return out


def _ranked(scores: dict[int, float], c: Candidates) -> list[int]:
    from search.hybrid import Fused

    fused = sorted((Fused(r, s, []) for r, s in scores.items()), key=lambda f: (-f.score, f.row))
    return [f.row for f in promote_exact(fused, c.exact)]


def _norm(values: dict[int, float], how: str) -> dict[int, float]:
    if not values:
        return {}
    v = list(values.values())
    if how == "minmax":
        lo, hi = min(v), max(v)
        return {r: (x - lo) / (hi - lo) if hi > lo else 1.0 for r, x in values.items()}
    mu, sd = statistics.fmean(v), statistics.pstdev(v) or 1.0
    return {r: (x - mu) / sd for r, x in values.items()}


def _plain_coverage(c: Candidates, w: float) -> list[int]:
    """The first coverage fusion: (cosine + w x coverage) / (1 + w), no power, no damping."""
    kw = {r: coverage(s, c.ideal) for r, s in c.keyword}
    rows = {r for r, _ in c.semantic} | set(kw)
    return _ranked({r: (c.cosine[r] + w * kw.get(r, 0.0)) / (1 + w) for r in rows}, c)


def shipped(c: Candidates) -> list[int]:
    """search/hybrid.py's weights (the title step of keyword-style queries left out: see
    search.searcher._with_titles)."""
    weight = keyword_weight_for(c.query)
    fused = weighted_fuse(
        [r for r, _ in c.semantic], c.keyword, c.cosine, c.exact, ideal=c.ideal, keyword_weight=weight
    )
    return [x.row for x in fused]


def fusions() -> dict[str, Callable[[Candidates], list[int]]]:
    f: dict[str, Callable[[Candidates], list[int]]] = {
        "semantic": lambda c: [r for r, _ in c.semantic],
        "keyword": lambda c: _ranked({r: s for r, s in c.keyword}, c),
        "shipped (search/hybrid.py)": shipped,
    }

    def old(c: Candidates) -> list[int]:  # the previous default: 0.6 cos + 0.4 bm25/best (0.75 for 4+ words)
        best = c.keyword[0][1] if c.keyword else 1.0
        rel = {r: s / best for r, s in c.keyword}
        w = 0.6
        rows = {r for r, _ in c.semantic} | set(rel)
        return _ranked({r: w * c.cosine[r] + (1 - w) * rel.get(r, 0.0) for r in rows}, c)

    f["old relative 0.6/0.4"] = old
    for w in (0.25, 0.4, 0.5, 0.75, 1.0):

        def fixed(c: Candidates, w: float = w) -> list[int]:
            return _plain_coverage(c, w)

        f[f"coverage w={w}"] = fixed
    for how in ("minmax", "zscore"):
        for alpha in (0.3, 0.5):

            def norm(c: Candidates, how=how, alpha=alpha) -> list[int]:
                sem = _norm(dict(c.semantic), how)
                kw = _norm(dict(c.keyword), how)
                floor_s = min(sem.values(), default=0.0)
                floor_k = min(kw.values(), default=0.0)
                rows = set(sem) | set(kw)
                return _ranked({r: (1 - alpha) * sem.get(r, floor_s) + alpha * kw.get(r, floor_k) for r in rows}, c)

            f[f"{how} alpha={alpha}"] = norm

    def rrf(c: Candidates, k: int = 60) -> list[int]:
        scores: dict[int, float] = defaultdict(float)
        for lst in (c.semantic, c.keyword):
            for i, (r, _) in enumerate(lst):
                scores[r] += 1 / (k + i + 1)
        return _ranked(dict(scores), c)

    f["rrf k=60"] = rrf
    for short_w, long_w in ((0.5, 0.25), (0.75, 0.35), (1.0, 0.35), (1.0, 0.5)):

        def by_length(c: Candidates, a: float = short_w, b: float = long_w) -> list[int]:
            return _plain_coverage(c, a if c.words < 4 else b)

        f[f"coverage w={short_w}/{long_w} (4+ words)"] = by_length

    def capped(c: Candidates, floor: float, w: float) -> list[int]:  # BM25 over max(best, floor x ideal)
        best = c.keyword[0][1] if c.keyword else 1.0
        norm = max(best, floor * c.ideal)
        kw = {r: min(1.0, s / norm) for r, s in c.keyword}
        rows = {r for r, _ in c.semantic} | set(kw)
        return _ranked({r: (c.cosine[r] + w * kw.get(r, 0.0)) / (1 + w) for r in rows}, c)

    def scaled(c: Candidates, scale: float, w: float) -> list[int]:  # coverage against a smaller ideal
        kw = {r: min(1.0, scale * s / c.ideal) for r, s in c.keyword}
        rows = {r for r, _ in c.semantic} | set(kw)
        return _ranked({r: (c.cosine[r] + w * kw.get(r, 0.0)) / (1 + w) for r in rows}, c)

    for floor in (0.3,):
        for w in (0.5, 0.67):
            f[f"capped floor={floor} w={w}"] = partial(capped, floor=floor, w=w)
    for scale in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        for w in (0.4, 0.5, 0.67):
            f[f"scaled {scale} w={w}"] = partial(scaled, scale=scale, w=w)

    def decay(c: Candidates, share: float, w: float, words: int, power: float = 1.0) -> list[int]:
        weight = w * min(1.0, words / max(c.words, 1)) ** power  # the weight falls past `words` words
        kw = {r: min(1.0, s / (share * c.ideal)) for r, s in c.keyword}
        rows = {r for r, _ in c.semantic} | set(kw)
        return _ranked({r: (c.cosine[r] + weight * kw.get(r, 0.0)) / (1 + weight) for r in rows}, c)

    for share in (0.5,):
        for words in (3, 4, 5):
            for power in (1.0, 2.0):
                f[f"decay share={share} w=0.4 past {words} ^{power:g}"] = partial(
                    decay, share=share, w=0.4, words=words, power=power
                )

    def rerank(c: Candidates, w: float = 0.5) -> list[int]:  # keyword evidence only inside semantic candidates
        cov = {r: coverage(s, c.ideal) for r, s in c.keyword}
        return _ranked({r: cos + w * cov.get(r, 0.0) for r, cos in c.semantic}, c)

    f["rerank-only w=0.5"] = rerank

    # Round 3 (issue 15, keyword-style queries): past the share, coverage saturates and BM25's own order
    # (field weights, length, term frequency) is lost, so among many full matches meaning alone decides.
    def shaped(c: Candidates, w: float, gamma: float, words: int = 5) -> list[int]:
        # coverage x (BM25 / best)^gamma: full weight needs both the whole query and a near-best match.
        weight = w * min(1.0, words / max(c.words, 1))
        best = c.keyword[0][1] if c.keyword else 1.0
        kw = {r: coverage(s, c.ideal) * (s / best) ** gamma for r, s in c.keyword}
        rows = {r for r, _ in c.semantic} | set(kw)
        return _ranked({r: (c.cosine[r] + weight * kw.get(r, 0.0)) / (1 + weight) for r in rows}, c)

    for w in (0.4, 0.6, 0.8):
        for gamma in (0.5, 1.0, 2.0):
            f[f"cov x rel^{gamma:g} w={w}"] = partial(shaped, w=w, gamma=gamma)

    def specific(c: Candidates, w: float, boost: float, few: int, words: int = 5) -> list[int]:
        # the keyword weight rises when few candidates cover the whole query (a specific keyword query)
        weight = w * min(1.0, words / max(c.words, 1))
        cov = {r: coverage(s, c.ideal) for r, s in c.keyword}
        full = sum(1 for v in cov.values() if v >= 1.0)
        if 0 < full <= few and c.words <= 3:
            weight *= boost
        rows = {r for r, _ in c.semantic} | set(cov)
        return _ranked({r: (c.cosine[r] + weight * cov.get(r, 0.0)) / (1 + weight) for r in rows}, c)

    for boost in (1.5, 2.5):
        for few in (10, 30):
            f[f"specific x{boost} <= {few} full"] = partial(specific, w=0.4, boost=boost, few=few)

    def damped(c: Candidates, w: float, p: float, few: int | None, decay_rank: int | None, words: int = 5):
        # coverage^p (partial matches count less); the weight falls as few/n when n > few candidates
        # cover the whole query (covering it is common, so it says little); optionally a rank decay
        # 1 / (1 + rank / decay_rank) so BM25's own order counts among full matches.
        weight = w * min(1.0, words / max(c.words, 1))
        cov = [(r, coverage(s, c.ideal)) for r, s in c.keyword]
        full = sum(1 for _, v in cov if v >= 1.0)
        if few is not None and full > few:
            weight *= few / full
        kw = {r: v**p * (1.0 / (1 + i / decay_rank) if decay_rank else 1.0) for i, (r, v) in enumerate(cov)}
        rows = {r for r, _ in c.semantic} | set(kw)
        return _ranked({r: (c.cosine[r] + weight * kw.get(r, 0.0)) / (1 + weight) for r in rows}, c)

    settings: tuple[tuple[float, float, int | None, int | None], ...] = (
        (0.3, 2, 10, None),
        (0.3, 2, 30, None),
        (0.4, 1, 10, None),
        (0.3, 2, 10, 30),
        (0.4, 2, None, 30),
    )
    for d_w, d_p, d_few, d_rank in settings:
        f[f"damped w={d_w} cov^{d_p} few={d_few} rank/{d_rank}"] = partial(
            damped, w=d_w, p=d_p, few=d_few, decay_rank=d_rank
        )
    return f


def mrr(ranked: list[int], accepted: set[int], k: int = 10) -> float:
    for i, r in enumerate(ranked[:k]):
        if r in accepted:
            return 1.0 / (i + 1)
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, action="append", required=True)
    p.add_argument("--model", type=Path, default=Path("build/model"))
    p.add_argument("--weights", help="keyword column weights id,title,text (query time)")
    args = p.parse_args()
    encoder = Encoder.load(args.model, threads=1)
    index = SearchIndex.open(args.index)
    weights = tuple(float(w) for w in args.weights.split(",")) if args.weights else None
    cands = [c for q in args.queries for c in gather(index, encoder, read_queries(q), weights)]
    kinds = sorted({c.kind for c in cands})
    print(f"{'fusion':24s} {'all':>6s} " + " ".join(f"{k[:11]:>11s}" for k in kinds))
    for name, fn in fusions().items():
        per: dict[str, list[float]] = defaultdict(list)
        for c in cands:
            per[c.kind].append(mrr(fn(c), c.accepted))
        overall = statistics.fmean(x for v in per.values() for x in v)
        print(f"{name:24s} {overall:6.3f} " + " ".join(f"{statistics.fmean(per[k]):11.3f}" for k in kinds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
