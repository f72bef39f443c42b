"""The int4 prefilter copy: a first pass over every row at half the bytes of int8.

One query against a large index is a memory-bound scan (1M x 384 int8 = 384 MB at ~14 GB/s on one
core is ~28 ms), so the cheapest way to score every row is to read fewer bytes.  The builder writes
each stored vector ``x`` (a float32/float16 row, or an int8 row times its scale) a second time as
4-bit values ``n`` (-7..7, two per byte) with a row scale ``t``, plus ``||x - t n||`` rounded up.
Then for a query ``q``

    x.q = t n.q + (x - t n).q      and      |(x - t n).q| <= ||x - t n|| ||q||

so ``approx + ||x - t n|| ||q||`` (widened by the query's own quantisation error and float slack) is
a proven upper bound of the exact score.  A row whose bound is below the score that ``need`` rows
already reach cannot enter the top and is never read again; the few others go through the storage
dtype's kernel (int8 scan copy, float rescoring) exactly as without the prefilter.  The results
are identical; only fewer bytes are read.  On MiniLM vectors of the 64k Debian corpus 0.2% of rows
pass for a top 10 (4% for hybrid's top 100); of random unit vectors (the worst case: a flat score
distribution) ~15% of 64k and ~5% of 1M.  The float32 rounding of an int8 row times its scale
(relative 6e-8) is far inside the slack.

The rows are written by ``search/scoring/quantize.py`` (``quantize_int4_rows``, with the packing).
Only the compiled kernel reads this copy; without it the index searches as before.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from search.scoring.quantize import NIBBLE_MAX

if TYPE_CHECKING:
    from search.scoring.native import NativeInt8Dot

FLOAT_SLACK = 1e-5  # float32 rounding allowance, as kernels.FLOAT_SLACK
# Above this share of rows let through, the first pass costs more than it saves.  Measured on random
# unit vectors, one thread, int8 rows, the pass forced on vs off: 24% let through (20k rows, top 10)
# 0.66 vs 0.73 ms; 25% (200k, top 100) 4.10 vs 3.83 ms; 36% (64k, top 100) 1.72 vs 1.71 ms; 49%
# (20k, top 100) 0.89 vs 0.59 ms.  MiniLM vectors of the 64k Debian corpus let 0.2-4% through.
MAX_PASS_SHARE = 0.20
PROBE_EVERY = 64  # while the pass is off, every 64th search still takes it, to notice a change


class Prefilter(NamedTuple):
    """An index's int4 copy, memory-mapped, and the compiled kernel that reads it."""

    packed: np.ndarray  # (count, d/2) uint8
    scales: np.ndarray  # (count,) float32
    residuals: np.ndarray  # (count,) float32, ||x - t n|| rounded up
    native: NativeInt8Dot  # the compiled kernel: only it reads this copy

    @property
    def dimension(self) -> int:
        return 2 * self.packed.shape[1]

    def upper_bounds(self, rows: slice, columns, query_norm: float, top: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Each row's proven upper bound of its exact score (float32), from the compiled kernel, and
        the positions of the ``top`` rows with the highest int4 scores (the likeliest best rows).
        ``columns``: ``Int8Kernel.quantize_queries`` of one query; ``query_norm``: its L2 norm."""
        return self.native.int4_upper(
            self.packed[rows],
            self.scales[rows],
            self.residuals[rows],
            columns.native_columns,
            columns.native_weights,
            query_norm,
            self._query_term(columns),
            FLOAT_SLACK,
            top,
        )

    def _query_term(self, columns) -> float:
        """|t n.(q - q_quantised)| / t <= ||n|| ||q - q_quantised||, ||n|| <= 7 sqrt(d)."""
        return NIBBLE_MAX * math.sqrt(self.dimension) * float(columns.residual_norms[0])


class PassRate:
    """Whether the first pass pays on an index: the running share of rows it lets through (an
    exponential average over searches).  The share is a property of the data (how far the top scores
    stand out), so it is learnt per index and the pass switched off where it would slow searches
    down; results are the same either way.  Races between threads only blur the average."""

    def __init__(self):
        self.share = 0.0
        self.skipped = 0

    def use(self) -> bool:
        if self.share <= MAX_PASS_SHARE:
            return True
        self.skipped += 1
        if self.skipped >= PROBE_EVERY:
            self.skipped = 0
            return True
        return False

    def record(self, passed: int, scanned: int) -> None:
        if scanned:
            self.share += 0.25 * (passed / scanned - self.share)
