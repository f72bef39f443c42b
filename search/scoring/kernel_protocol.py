"""The one contract every scoring kernel implements (``kernels.py``, ``int8.py``), so the index
(``search/index/reader.py``) never asks which kernel it holds.

A kernel scores rows of what an index stores (``Stored``) against one query and returns *exact*
scores of the rows that may still enter the top ``need``, given that ``need`` rows already score at
least ``floor``: rows it leaves out provably score below ``floor``.  ``rows`` is a range (a slice)
or sorted row numbers (filters, the int4 first pass's survivors); the answer is always row numbers
of the whole index.  How a kernel reads them (a product, an int8 pass plus exact rescoring, in place
through the compiled kernel) is its own business.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

Rows = slice | np.ndarray  # a range of rows, or sorted row numbers (int64)
Scored = tuple[np.ndarray, np.ndarray]  # (row numbers int64, exact scores float32), any order


class ScanBlock(NamedTuple):
    """A float32/float16 index's int8 scan copy: the stored matrix, its int8 rows, their scales and
    residuals (``||stored - int8 x scale||``, rounded up)."""

    vectors: np.ndarray
    scan: np.ndarray
    scales: np.ndarray
    residuals: np.ndarray


class Stored(NamedTuple):
    """What an index stores for scoring."""

    vectors: np.ndarray  # (count, d) in the storage dtype, usually memory-mapped
    scales: np.ndarray | None = None  # int8 storage: each row's scale
    scan: ScanBlock | None = None  # float32/float16 with a scan copy


class QueryColumns(NamedTuple):
    """Queries as the int8 kernels and the int4 first pass take them (``quantize_queries``)."""

    columns: np.ndarray  # (d, 2q) int8: each query quantised, then its residual quantised
    weights: np.ndarray  # (2q, q) float32: column scales, summed into each query's score
    residual_norms: np.ndarray  # (q,) what the two columns leave out, for the error bound
    native_columns: np.ndarray  # (2q, d) int8, contiguous: ``columns`` for search/scoring/native
    native_weights: np.ndarray  # (2q,) float32: each column's scale


@runtime_checkable
class Kernel(Protocol):
    dtype: str  # the storage dtype it scores
    scanned: bool  # scores a float index from its int8 scan copy
    batch_queries: int  # queries per pass in ``score_many`` (0: all at once)

    def prepare(self, query: np.ndarray) -> Any:
        """Per-query work done once per search, not once per block; passed back as ``prepared``."""
        ...

    def query_columns(self, query: np.ndarray, prepared: Any) -> QueryColumns:
        """The query quantised for the int4 first pass (reusing ``prepared`` where it holds that)."""
        ...

    def score(self, stored: Stored, rows: Rows, query: np.ndarray, *, need: int, floor: float, prepared: Any) -> Scored:
        """(row numbers, exact scores) of the rows in ``rows`` that may still enter the top ``need``."""
        ...

    def exact(self, stored: Stored, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Exact scores of the listed rows."""
        ...

    def score_many(
        self, stored: Stored, rows: slice, queries: np.ndarray, *, need: int, floors: list[float]
    ) -> list[Scored]:
        """``score`` for several queries in one pass over ``rows`` (batch requests)."""
        ...


def absolute(rows: Rows, keep: np.ndarray | None, count: int) -> np.ndarray:
    """Row numbers of ``keep`` (positions inside ``rows``; None: all of them)."""
    if isinstance(rows, slice):
        start = rows.start or 0
        if keep is None:
            return np.arange(start, start + count, dtype=np.int64)
        return start + np.asarray(keep, dtype=np.int64)
    return rows if keep is None else rows[keep]


def rowwise_dot(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` in float32 with each row's sum in a fixed order.  BLAS gemv is not: a row's
    score changes in the last bits with the number of rows scored beside it (measured), and rescoring
    scores varying subsets, so a score (and a tie) would depend on which other rows were rescored."""
    return np.einsum("ij,j->i", np.asarray(rows, dtype=np.float32), np.asarray(query, dtype=np.float32))


def above(scores: np.ndarray, floor: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Drop rows that cannot enter the top (saves the caller's partition and sort on later blocks)."""
    if floor == -np.inf:
        return None, scores
    keep = np.flatnonzero(scores >= floor)
    return keep, scores[keep]


def top_rows(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best (score desc, row asc), deterministic even with ties at the cut."""
    if rows.size > n:
        cut = np.partition(scores, rows.size - n)[rows.size - n]  # n-th largest score
        keep = scores >= cut  # keeps every tie at the cut; the sort below decides among them
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:n]
    return rows[order], scores[order]
