"""Search quality on your own queries: ``python -m search eval`` (see docs/quality.md).

A query file is UTF-8 text, one query a line::

    query<TAB>accepted ids, comma-separated[<TAB>kind]

Blank lines and lines starting with ``#`` are skipped.  ``kind`` is a free label ("name",
"descriptive", ...) that the figures are broken down by.

The metric code is pure: :func:`score_query` and :func:`evaluate` take ranked id lists and
accepted id sets, whoever produced them (``Searcher.search`` here; the bench feeds it other
systems' rankings too).  Definitions, for a query whose first accepted id is at rank ``r``
within the top ``k`` (``r`` = none when there is none):

* hit@1 = 1 if r = 1; hit@k = 1 if r exists; RR@k = 1 / r, else 0 (MRR@k is its mean);
* nDCG@k with binary gains: DCG = sum over accepted ids at ranks i <= k of 1 / log2(i + 1),
  divided by the DCG of an ideal list (min(|accepted|, k) accepted ids first).

Paired comparisons take each query's reciprocal rank under two systems: a win for A when A's
is higher, a loss when lower, ties dropped; the p-value is the exact two-sided sign test
(binomial, p = 1/2) on wins vs losses.  Each MRR, and each paired difference of MRRs, also has a
95% percentile bootstrap interval (the queries resampled with replacement, a fixed seed so the
same run prints the same interval): how far the figure could move on other queries like these.
The text report is in ``eval_report.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.errors import EvalError

ALL = "all"  # the pseudo-kind every query belongs to
SHARE = "share"  # not a kind either: `search tune --json` names each grid row's share with it
MISS_SHOWN = 3  # ids shown for what came back instead of an accepted one
CONFIDENCE = 0.95  # of the bootstrap intervals
BOOTSTRAP_RESAMPLES = 2000  # the ends move by ~0.003 (one sd) between seeds on 60 queries (measured)
BOOTSTRAP_SEED = 0  # fixed: the same queries and rankings always give the same interval
_RESAMPLE_VALUES = 2_000_000  # indices drawn per step (16 MB), so a large query file stays bounded


# ---------------------------------------------------------------------------------- query files


@dataclass(frozen=True)
class QueryCase:
    query: str
    accepted: frozenset[str]
    kind: str = ""  # "" when the file has no kind column on this line
    line: int = 0  # 1-based line in the query file


def parse_queries(lines: Iterable[str], path: str = "<queries>") -> list[QueryCase]:
    """Query cases from the lines of a query file; an :class:`EvalError` names ``path:line``.
    Error messages never repeat the line itself (it may hold anything)."""
    cases = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise EvalError("expected query<TAB>accepted ids[<TAB>kind]: no tab on this line", path=path, line=number)
        if len(parts) > 3:
            raise EvalError(
                f"expected query<TAB>accepted ids[<TAB>kind]: {len(parts)} tab-separated fields, at most 3",
                path=path,
                line=number,
            )
        query = parts[0].strip()
        if not query:
            raise EvalError("empty query", path=path, line=number)
        accepted = frozenset(i.strip() for i in parts[1].split(",") if i.strip())
        if not accepted:
            raise EvalError("no accepted ids (the second field lists them, comma-separated)", path=path, line=number)
        kind = parts[2].strip() if len(parts) == 3 else ""
        if kind == ALL:
            raise EvalError(f"kind {ALL!r} is reserved for the overall figures", path=path, line=number)
        if kind == SHARE:
            raise EvalError(f"kind {SHARE!r} is reserved (search tune's rows are named by it)", path=path, line=number)
        cases.append(QueryCase(query, accepted, kind, number))
    if not cases:
        raise EvalError("no queries (every line is blank or a # comment)", path=path)
    return cases


def load_queries(path: str | Path) -> list[QueryCase]:
    """Read and parse a query file (see the module docstring)."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise EvalError("query file not found", path=name) from None
    except IsADirectoryError:
        raise EvalError("is a folder, not a query file", path=name) from None
    except OSError as exc:
        raise EvalError(f"cannot read ({exc.strerror or exc})", path=name) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise EvalError("not UTF-8 text", path=name, line=number) from None
    if lines and lines[-1] == "":
        lines.pop()
    return parse_queries(lines, name)


def check_ids(cases: Sequence[QueryCase], known: Callable[[str], bool]) -> tuple[list[QueryCase], dict[str, list[int]]]:
    """Drop accepted ids for which ``known(id)`` is false.  Returns (the cases that still have an
    accepted id, {unknown id: [lines naming it]}); a case left with none is dropped too."""
    unknown: dict[str, list[int]] = {}
    kept = []
    for case in cases:
        good = frozenset(i for i in case.accepted if known(i))
        for i in sorted(case.accepted - good):
            unknown.setdefault(i, []).append(case.line)
        if good:
            kept.append(QueryCase(case.query, good, case.kind, case.line))
    return kept, unknown


def repeats(cases: Sequence[QueryCase]) -> list[tuple[int, int]]:
    """(line, earlier line) for each case whose query repeats an earlier one's (case and runs of
    spaces aside): each copy counts as one more query in every figure."""
    first: dict[str, int] = {}
    out = []
    for case in cases:
        key = " ".join(case.query.split()).casefold()
        if key in first:
            out.append((case.line, first[key]))
        else:
            first[key] = case.line
    return out


# ---------------------------------------------------------------------------------- metrics (pure)


@dataclass(frozen=True)
class QueryScore:
    rank: int | None  # 1-based rank of the first accepted id within the top k, None when none
    ndcg: float

    @property
    def rr(self) -> float:
        return 1.0 / self.rank if self.rank else 0.0

    def hit(self, n: int) -> bool:
        return self.rank is not None and self.rank <= n


def score_query(ranked: Sequence[str], accepted: AbstractSet[str], k: int) -> QueryScore:
    """One query's rank and nDCG@k (binary gains) from its ranked ids, best first."""
    if k < 1:
        raise ValueError("k must be >= 1")
    seen: set[str] = set()
    rank = None
    dcg = 0.0
    for position, item in enumerate(ranked[:k], 1):
        if item in seen:  # a repeated id earns nothing the second time
            continue
        seen.add(item)
        if item in accepted:
            rank = rank or position
            dcg += 1.0 / math.log2(position + 1)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(accepted), k) + 1))
    return QueryScore(rank, dcg / ideal if ideal else 0.0)


def bootstrap_interval(
    values: Sequence[float],
    *,
    level: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement), or
    None for fewer than two values, where it says nothing."""
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("level must be in (0, 1) and resamples >= 1")
    data = np.asarray(values, dtype=np.float64)
    n = data.size
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _RESAMPLE_VALUES // n)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Metrics:
    n: int
    hit1: float
    hitk: float
    mrr: float
    ndcg: float
    mrr_interval: tuple[float, float] | None = None  # bootstrap, CONFIDENCE; None below two queries

    def as_dict(self, k: int) -> dict:
        return {
            "n": self.n,
            "hit@1": self.hit1,
            f"hit@{k}": self.hitk,
            f"mrr@{k}": self.mrr,
            f"ndcg@{k}": self.ndcg,
            f"mrr@{k}_interval": list(self.mrr_interval) if self.mrr_interval else None,
        }


def summarize(scores: Sequence[QueryScore], k: int) -> Metrics:
    """Means over queries (0.0 for none) and the MRR's bootstrap interval."""
    n = len(scores)
    if not n:
        return Metrics(0, 0.0, 0.0, 0.0, 0.0)
    rr = [s.rr for s in scores]
    return Metrics(
        n,
        sum(s.hit(1) for s in scores) / n,
        sum(s.hit(k) for s in scores) / n,
        sum(rr) / n,
        sum(s.ndcg for s in scores) / n,
        bootstrap_interval(rr),
    )


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | p = 1/2), ties already dropped.
    1 win and 9 losses -> 2 x (C(10,0) + C(10,1)) / 2^10 = 0.021484375; no pairs -> 1.0."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be >= 0")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Paired:
    a: str
    b: str
    kind: str
    wins: int  # queries where a's reciprocal rank beats b's
    losses: int
    ties: int
    p: float
    mrr_difference: float  # a's MRR minus b's
    difference_interval: tuple[float, float] | None  # bootstrap over the queries, paired

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "kind": self.kind,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "p": self.p,
            "mrr_difference": self.mrr_difference,
            "difference_interval": list(self.difference_interval) if self.difference_interval else None,
        }


def compare(a: Sequence[QueryScore], b: Sequence[QueryScore]) -> tuple[int, int, int, float]:
    """(wins, losses, ties, sign-test p) of ``a`` against ``b``, query by query, on reciprocal rank."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same queries on both sides")
    wins = sum(x.rr > y.rr for x, y in zip(a, b))
    losses = sum(x.rr < y.rr for x, y in zip(a, b))
    return wins, losses, len(a) - wins - losses, sign_test(wins, losses)


def difference(a: Sequence[QueryScore], b: Sequence[QueryScore]) -> tuple[float, tuple[float, float] | None]:
    """``a``'s MRR minus ``b``'s and its bootstrap interval, the queries resampled as pairs."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same queries on both sides")
    gaps = [x.rr - y.rr for x, y in zip(a, b)]
    return (sum(gaps) / len(gaps) if gaps else 0.0), bootstrap_interval(gaps)


@dataclass
class Evaluation:
    k: int
    systems: list[str]
    kinds: list[str]  # ALL first, then the labelled kinds in first-seen order
    scores: dict[str, list[QueryScore]]  # per system, in query order
    metrics: dict[str, dict[str, Metrics]]  # system -> kind -> metrics
    paired: list[Paired] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "k": self.k,
            "systems": self.systems,
            "kinds": self.kinds,
            "metrics": {
                s: {kind: m.as_dict(self.k) for kind, m in per_kind.items()} for s, per_kind in self.metrics.items()
            },
            "paired": [p.as_dict() for p in self.paired],
        }


def evaluate(
    rankings: Mapping[str, Sequence[Sequence[str]]],
    accepted: Sequence[AbstractSet[str]],
    k: int = 10,
    kinds: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> Evaluation:
    """Metrics per system and per kind, and paired comparisons.

    ``rankings[system][q]`` is query q's ranked ids (best first), ``accepted[q]`` its accepted
    ids, ``kinds[q]`` its label ("" for none).  ``pairs`` defaults to every pair of systems in
    the order given; each pair is compared overall and within each labelled kind."""
    n = len(accepted)
    kinds = list(kinds) if kinds is not None else [""] * n
    if len(kinds) != n:
        raise ValueError("one kind per query")
    for system, ranked in rankings.items():
        if len(ranked) != n:
            raise ValueError(f"{system}: {len(ranked)} rankings for {n} queries")
    systems = list(rankings)
    labelled = list(dict.fromkeys(kind for kind in kinds if kind))
    groups = {ALL: list(range(n)), **{kind: [q for q in range(n) if kinds[q] == kind] for kind in labelled}}
    scores = {s: [score_query(rankings[s][q], accepted[q], k) for q in range(n)] for s in systems}
    metrics = {s: {kind: summarize([scores[s][q] for q in rows], k) for kind, rows in groups.items()} for s in systems}
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(systems) for b in systems[i + 1 :]]
    paired = []
    for a, b in pairs:
        for kind, rows in groups.items():
            left, right = [scores[a][q] for q in rows], [scores[b][q] for q in rows]
            w, lo, t, p = compare(left, right)
            paired.append(Paired(a, b, kind, w, lo, t, p, *difference(left, right)))
    return Evaluation(k, systems, list(groups), scores, metrics, paired)


@dataclass(frozen=True)
class Miss:
    system: str
    case: QueryCase
    got: tuple[str, ...]  # the top ids that came back instead

    def as_dict(self) -> dict:
        return {
            "mode": self.system,
            "line": self.case.line,
            "kind": self.case.kind,
            "query": self.case.query,
            "accepted": sorted(self.case.accepted),
            "got": list(self.got),
        }


def misses(
    evaluation: Evaluation, cases: Sequence[QueryCase], rankings: Mapping[str, Sequence[Sequence[str]]]
) -> list[Miss]:
    """Queries with no accepted id in the top k, per system, with the top ids returned instead."""
    return [
        Miss(system, case, tuple(rankings[system][q][:MISS_SHOWN]))
        for system in evaluation.systems
        for q, case in enumerate(cases)
        if evaluation.scores[system][q].rank is None
    ]


# ---------------------------------------------------------------------------------- running a searcher


def rank_with(searcher, cases: Sequence[QueryCase], modes: Sequence[str], k: int) -> tuple[dict, list[str]]:
    """Each case's ranked ids per mode through ``searcher.search`` (at least MISS_SHOWN deep);
    returns (rankings, notes) where notes say when a mode answered as another (hybrid falls
    back to semantic on an index without a keyword table)."""
    depth = max(k, MISS_SHOWN)
    rankings: dict[str, list[list[str]]] = {mode: [] for mode in modes}
    notes: dict[str, str] = {}
    for case in cases:
        for mode in modes:
            result = searcher.search(case.query, k=depth, mode=mode)
            if result.note and mode not in notes:
                notes[mode] = f"{mode}: {result.note}"
            rankings[mode].append([hit["id"] for hit in result.hits])
    return rankings, list(notes.values())
