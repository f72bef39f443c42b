"""The text report of ``python -m search eval`` and ``search tune``: aligned tables of an
:class:`~search.evaluation.Evaluation`, the misses, and the misses as TSV."""

from __future__ import annotations

from collections.abc import Sequence

from search.evaluation import CONFIDENCE, Evaluation, Miss

__all__ = ["format_miss", "format_paired", "format_table", "interval_label", "misses_tsv"]


def interval_label() -> str:
    return f"{CONFIDENCE:.0%} interval"


def format_table(evaluation: Evaluation, first: str = "mode") -> list[str]:
    k = evaluation.k
    head = (first, "kind", "n", "hit@1", f"hit@{k}", f"MRR@{k}", f"MRR {interval_label()}", f"nDCG@{k}")
    rows = [
        (
            s,
            kind,
            str(m.n),
            f"{m.hit1:.3f}",
            f"{m.hitk:.3f}",
            f"{m.mrr:.3f}",
            _interval(m.mrr_interval, signed=False),
            f"{m.ndcg:.3f}",
        )
        for s in evaluation.systems
        for kind, m in evaluation.metrics[s].items()
    ]
    return _columns(head, rows, right=range(2, 8))


def format_paired(evaluation: Evaluation) -> list[str]:
    head = ("A vs B", "kind", "A wins", "B wins", "ties", "p (sign test)", "MRR A - B", interval_label())
    rows = [
        (
            f"{p.a} vs {p.b}",
            p.kind,
            str(p.wins),
            str(p.losses),
            str(p.ties),
            _p(p.p),
            f"{p.mrr_difference:+.3f}",
            _interval(p.difference_interval, signed=True),
        )
        for p in evaluation.paired
    ]
    return _columns(head, rows, right=range(2, 8))


def format_miss(miss: Miss) -> str:
    case = miss.case
    kind = f" ({case.kind})" if case.kind else ""
    got = ", ".join(miss.got) if miss.got else "(nothing)"
    return (
        f"[{miss.system}] line {case.line}{kind}: {case.query!r}  accepted: {', '.join(sorted(case.accepted))}"
        f"  got: {got}"
    )


def misses_tsv(items: Sequence[Miss]) -> str:
    """The misses as TSV with a header line (tabs and newlines inside fields become spaces)."""

    def clean(value: str) -> str:
        return " ".join(value.split())

    lines = ["mode\tline\tkind\tquery\taccepted\tgot"]
    for m in items:
        lines.append(
            "\t".join(
                [
                    m.system,
                    str(m.case.line),
                    clean(m.case.kind),
                    clean(m.case.query),
                    ",".join(sorted(m.case.accepted)),
                    ",".join(m.got),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def _interval(interval: tuple[float, float] | None, *, signed: bool) -> str:
    if interval is None:
        return "-"
    low, high = interval
    return f"{low:+.3f} .. {high:+.3f}" if signed else f"{low:.3f} .. {high:.3f}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.1e}"


def _columns(head: Sequence[str], rows: Sequence[Sequence[str]], right) -> list[str]:
    right = set(right)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(head), *map(line, rows)]
