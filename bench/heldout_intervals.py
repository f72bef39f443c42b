"""How far a held-out figure could move on other queries like these: the bootstrap intervals of
search/evaluation.py, as bench/heldout_report.py records and prints them beside its checks."""

from __future__ import annotations

__all__ = ["difference_text", "gap_text", "interval_of"]


def interval_of(evaluation, a: str, b: str, kind: str) -> list[float] | None:
    """The bootstrap interval of ``a``'s MRR minus ``b``'s on ``kind`` (evaluation.difference)."""
    for pair in evaluation.paired:
        if (pair.a, pair.b, pair.kind) == (a, b, kind) and pair.difference_interval is not None:
            return [round(v, 4) for v in pair.difference_interval]
    return None


def gap_text(c: dict, a: str, b: str) -> str:
    """ " (hybrid - semantic: 95% interval -0.150 .. +0.033)" for a missed check, "" without one."""
    if c["met"] or not c.get("interval"):
        return ""
    low, high = c["interval"]
    return f" ({a} - {b}: 95% interval {low:+.3f} .. {high:+.3f})"


def difference_text(r: dict, q: str) -> str:
    """A pair's recorded difference and interval, '+0.052 (-0.010 .. +0.118)'; '-' in older results."""
    if q + "mrr_difference" not in r:
        return "-"
    text = f"{r[q + 'mrr_difference']:+.3f}"
    if q + "difference_low" in r:
        text += f" ({r[q + 'difference_low']:+.3f} .. {r[q + 'difference_high']:+.3f})"
    return text
