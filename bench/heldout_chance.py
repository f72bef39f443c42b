"""How many of issue 15's checks one 60-query set misses by chance alone.

Each held-out set is one draw of queries. If every set of a corpus behaved like all of that
corpus's held-out rounds together, how often would a single set still miss a check? The rounds'
queries are pooled per corpus and redrawn, with replacement and kind by kind, into sets of the
real sets' make-up (``DRAWS`` times, a fixed seed), and each draw is checked as
``heldout_report.targets`` checks a set. Misses close to what the draws give say the single sets'
misses are what sets of this size show, not a kind of query the ranking fails on.

The per-query ranks come from ``query_ranks`` (recorded by bench/heldout.py with each set)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.heldout_report import INT8_RATIO, NAME_HIT1, meets_per_kind, settings_round_pools

__all__ = ["CHECKS", "chance_lines", "checks", "expected_misses", "query_ranks"]

DRAWS = 2000
SEED = 0
RANKED = ("pytorch", "semantic", "keyword", "bm25s", "hybrid")  # the systems the checks read
CHECKS = (
    "hybrid vs the better single mode: all",
    "hybrid vs the better single mode: descriptive",
    "hybrid vs the better single mode: keyword",
    "hybrid vs the better single mode: name",
    "hybrid vs the better single mode: paraphrase",
    "int8 vs PyTorch",
    "keyword vs bm25s (keyword-style)",
    "names first (hybrid hit@1)",
)


def query_ranks(name: str, evaluation, kinds: Sequence[str]) -> dict:
    """``heldout.<set>.query_kinds`` and ``.ranks`` ({system: rank of the first accepted id, 0 for
    none, query by query}) for chance_lines."""
    p = f"heldout.{name}."
    ranks = {s: [score.rank or 0 for score in evaluation.scores[s]] for s in RANKED if s in evaluation.scores}
    return {p + "query_kinds": list(kinds), p + "ranks": ranks}


def checks(kinds: np.ndarray, rr: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each check's verdict per draw. ``kinds``: (queries,) labels; ``rr``: {system: (draws,
    queries) reciprocal ranks}. A check a draw cannot make (no query of its kind) is absent."""
    out: dict[str, np.ndarray] = {}
    groups = {"all": np.ones(len(kinds), dtype=bool), **{k: kinds == k for k in np.unique(kinds)}}
    for kind, rows in groups.items():
        name = f"hybrid vs the better single mode: {kind}"
        if name in CHECKS and rows.any():
            m = {s: rr[s][:, rows].mean(axis=1) for s in ("hybrid", "semantic", "keyword")}
            out[name] = np.asarray(meets_per_kind(m["hybrid"], np.maximum(m["semantic"], m["keyword"])))
    semantic, pytorch = rr["semantic"].mean(axis=1), rr["pytorch"].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["int8 vs PyTorch"] = semantic / pytorch >= INT8_RATIO
    if groups.get("keyword") is not None:
        terse = groups["keyword"]
        out["keyword vs bm25s (keyword-style)"] = (
            rr["keyword"][:, terse].mean(axis=1) >= rr["bm25s"][:, terse].mean(axis=1) - 1e-12
        )
    if groups.get("name") is not None:
        out["names first (hybrid hit@1)"] = (rr["hybrid"][:, groups["name"]] == 1.0).mean(axis=1) >= NAME_HIT1
    return out


def _reciprocal(ranks: Sequence[int]) -> np.ndarray:
    values = np.asarray(ranks, dtype=np.float64)
    return np.divide(1.0, values, out=np.zeros_like(values), where=values > 0)


def expected_misses(sets: list[tuple[np.ndarray, dict[str, np.ndarray]]], draws: int = DRAWS, seed: int = SEED):
    """(observed, expected) misses per check over ``sets`` (each: kinds, {system: reciprocal ranks}),
    the expected ones from ``draws`` redraws of every set out of all their queries together."""
    rng = np.random.default_rng(seed)
    kinds = np.concatenate([k for k, _ in sets])
    pooled = {s: np.concatenate([rr[s] for _, rr in sets]) for s in RANKED}
    by_kind = {k: np.flatnonzero(kinds == k) for k in np.unique(kinds)}
    observed: dict[str, int] = dict.fromkeys(CHECKS, 0)
    expected: dict[str, float] = dict.fromkeys(CHECKS, 0.0)
    for set_kinds, rr in sets:
        for name, ok in checks(set_kinds, {s: v[None, :] for s, v in rr.items()}).items():
            observed[name] += int(not ok[0])
        # the same kinds in the same order, each query drawn from the pooled queries of its kind
        picks = np.empty((draws, len(set_kinds)), dtype=np.int64)
        for kind, rows in by_kind.items():
            columns = np.flatnonzero(set_kinds == kind)
            picks[:, columns] = rows[rng.integers(0, len(rows), size=(draws, len(columns)))]
        for name, ok in checks(set_kinds, {s: v[picks] for s, v in pooled.items()}).items():
            expected[name] += float((~ok).mean())
    return observed, expected


def chance_lines(r: dict) -> list[str]:
    """The README table: per corpus, the checks its held-out rounds missed and those chance gives."""
    pools = settings_round_pools(r)
    columns: dict[str, tuple[dict, dict]] = {}
    for corpus, pool in pools.items():
        sets = []
        for name in pool["sets"]:
            p = f"heldout.{name}."
            if p + "ranks" not in r or not set(RANKED) <= set(r[p + "ranks"]):
                return []  # results recorded before the ranks were: nothing to redraw
            rr = {s: _reciprocal(r[p + "ranks"][s]) for s in RANKED}
            sets.append((np.asarray(r[p + "query_kinds"], dtype=str), rr))
        columns[corpus] = expected_misses(sets)
    if not columns:
        return []
    head = " | ".join(f"{corpus} ({len(pools[corpus]['sets'])} sets)" for corpus in columns)
    lines = [
        "Single sets against chance: the checks these rounds' sets missed, and how many they would miss "
        f"on average (after the slash) had each drawn its queries, kind by kind, from its corpus's rounds "
        f"together ({DRAWS} draws, seed {SEED}; bench/heldout_chance.py).",
        "",
        f"| check | {head} |",
        "|---|" + "---|" * len(columns),
    ]
    totals = {corpus: [0, 0.0] for corpus in columns}
    for name in CHECKS:
        cells = []
        for corpus, (observed, expected) in columns.items():
            cells.append(f"{observed[name]} / {expected[name]:.1f}")
            totals[corpus][0] += observed[name]
            totals[corpus][1] += expected[name]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append("| **all checks** | " + " | ".join(f"**{o} / {e:.1f}**" for o, e in totals.values()) + " |")
    return [*lines, ""]
