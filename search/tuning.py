"""``search tune``: choose hybrid mode's sentence share on a catalogue's own judged queries.

The share (SEARCH_HYBRID_SENTENCE_SHARE, hybrid.SENTENCE_SHARE) is how much of the keyword
weight a query that is not keyword-style gets.  It is the one fusion setting that moved by
catalogue on the judged sets of eval/: partial keyword matches of a sentence help descriptive
needs on long descriptions and mislead paraphrases on one-line summaries
(docs/decisions/2026-12-01-hybrid-coverage-fusion.md).

Only sentences depend on the share, so only they are ranked, once per share of the grid.  The
recommendation leaves the current share unless the best share also wins the paired,
query-by-query comparison with a sign-test p <= MAX_P: on 60 queries one rank move is worth
about 0.01 MRR@10, and a setting picked on noise does not carry over to new queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.errors import EvalError
from search.evaluation import ALL, SHARE, Evaluation, Paired, QueryCase, evaluate
from search.hybrid import keyword_style

__all__ = ["GRID", "MAX_P", "Tuning", "label", "parse_grid", "tune"]

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_P = 0.10  # the sign-test p the best share must reach to be recommended over the current one
HYBRID = "hybrid"


def label(share: float) -> str:
    """The share as it was written: "0", "0.25", "1", and distinct for distinct shares (not
    rounded to 6 digits, so 0.1234561 and 0.1234562 are two rows, and the recommendation is the
    exact share measured)."""
    text = repr(float(share) + 0.0)  # + 0.0: -0.0 is 0
    return text.removesuffix(".0")


def parse_grid(text: str) -> tuple[float, ...]:
    """ "0,0.25,0.5" -> (0.0, 0.25, 0.5); ValueError naming the bad part."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise ValueError(f"{part!r} is not between 0 and 1")
        values.append(value + 0.0)  # -0 is 0
    if not values:
        raise ValueError("no share given")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class Tuning:
    current: float
    grid: tuple[float, ...]  # the current share included
    sentences: list[QueryCase]  # the queries that depend on the share, in file order
    left_out: int  # keyword-style queries (the share does not change them)
    evaluation: Evaluation  # one system per share, named by label()
    best: float
    recommended: float
    versus_current: Paired | None  # best against current over every sentence, None when best is current

    def mrr(self, share: float) -> float:
        return self.evaluation.metrics[label(share)][ALL].mrr

    def as_dict(self) -> dict:
        k = self.evaluation.k
        return {
            "current": self.current,
            "best": self.best,
            "recommended": self.recommended,
            "max_p": MAX_P,
            "sentences": len(self.sentences),
            "keyword_style_left_out": self.left_out,
            "grid": [
                {SHARE: s, **{kind: m.as_dict(k) for kind, m in self.evaluation.metrics[label(s)].items()}}
                for s in self.grid
            ],
            "best_vs_current": self.versus_current.as_dict() if self.versus_current else None,
        }


def tune(searcher, cases: Sequence[QueryCase], k: int = 10, grid: Sequence[float] = GRID) -> Tuning:
    """Rank every sentence of ``cases`` in hybrid mode at each share of ``grid`` (and the
    searcher's current one) and recommend one; the searcher's share is left as it was."""
    original = searcher.sentence_share
    current = original + 0.0  # -0.0 is 0.0: one row, one label
    shares = tuple(sorted({s + 0.0 for s in grid} | {current}))
    sentences = [c for c in cases if not keyword_style(c.query)]
    if not sentences:
        raise EvalError("every query is keyword-style (1-3 words, no function word): the sentence share changes none")
    rankings: dict[str, list[list[str]]] = {}
    try:
        for share in shares:
            searcher.sentence_share = share
            ranked = rankings[label(share)] = []
            for case in sentences:
                result = searcher.search(case.query, k=k, mode=HYBRID)
                if result.mode != HYBRID:
                    raise EvalError(f"hybrid search is unavailable on this index ({result.note})")
                ranked.append([hit["id"] for hit in result.hits])
    finally:
        searcher.sentence_share = original
    pairs = [(label(s), label(current)) for s in shares if s != current]
    evaluation = evaluate(rankings, [c.accepted for c in sentences], k, [c.kind for c in sentences], pairs=pairs)
    mrr = {s: evaluation.metrics[label(s)][ALL].mrr for s in shares}
    best = max(shares, key=lambda s: (mrr[s], -abs(s - current)))  # ties: the share nearest the current one
    versus = next((p for p in evaluation.paired if p.a == label(best) and p.kind == ALL), None)
    significant = versus is not None and versus.wins > versus.losses and versus.p <= MAX_P
    return Tuning(
        current=current,
        grid=shares,
        sentences=sentences,
        left_out=len(cases) - len(sentences),
        evaluation=evaluation,
        best=best,
        recommended=best if significant else current,
        versus_current=versus,
    )
