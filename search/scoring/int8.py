"""The int8 kernel: an approximate score for every row from integer dot products, then exact float
rescoring of only the rows whose approximation, widened by a proven error bound, can still reach
the current top.  Implements ``kernel_protocol.Kernel``; see ``kernels.py`` for why and how fast.

The integer products come from the compiled kernel (``native/int8dot.c``) when it is built, else
from onnxruntime's ``MatMulInteger``; both give the same integers, so the same rows come back.

Why the query is two int8 columns: MLAS computes up to 16 columns at the price of one, so the
query's quantisation residual rides along as a second column and the error bound shrinks ~250x
(to ~1e-4 on unit vectors), which keeps the exact rescoring to the few rows that tie the top.
Why XOR 0x80: the fast MLAS path wants the matrix unsigned; ``int8 ^ 0x80`` viewed as uint8 is
``int8 + 128`` and ``a_zero_point = 128`` undoes it, so the file stays the builder's int8.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from search.scoring import onnx_graph
from search.scoring.kernel_protocol import QueryColumns, Rows, Scored, Stored, absolute, rowwise_dot

# Rows per onnxruntime run, measured (python -m bench --only scale): a sub-block whose working set
# stays in a 2 MiB L2 is up to 2x faster than 64k-row blocks.
INT8_SUB_BLOCK_ROWS = 4096  # 4096 x 384 uint8 scratch = 1.5 MiB
INT8_QUERY_COLUMNS = 2  # quantised query + its quantised residual (see the module docstring)
FLOAT_SLACK = 1e-5  # float32 rounding allowance added to the int8 error bound
MAX_BATCH_QUERIES = 8  # queries per MatMulInteger run: 8 x 2 columns = one 16-wide MLAS panel


def quantize_queries(queries: np.ndarray) -> QueryColumns:
    """(B int8 (d, 2q), W float32 (2q, q), residual L2 norm per query) and B, W in the layout
    of the compiled kernel, made once per search rather than once per block."""
    queries = np.asarray(queries, dtype=np.float32)
    n_q, dim = queries.shape
    columns = np.empty((dim, INT8_QUERY_COLUMNS * n_q), dtype=np.int8)
    weights = np.zeros((INT8_QUERY_COLUMNS * n_q, n_q), dtype=np.float32)
    residual_norms = np.empty(n_q, dtype=np.float64)
    for j, q in enumerate(queries):
        rest = q.astype(np.float64)
        for c in range(INT8_QUERY_COLUMNS):
            peak = float(np.abs(rest).max())
            scale = peak / 127.0 if peak > 0 else 1.0
            quant = np.clip(np.rint(rest / scale), -127, 127)
            columns[:, INT8_QUERY_COLUMNS * j + c] = quant
            weights[INT8_QUERY_COLUMNS * j + c, j] = scale
            rest = rest - quant * scale
        residual_norms[j] = float(np.linalg.norm(rest))
    # each column carries one query's scale: weights has one non-zero per row
    return QueryColumns(columns, weights, residual_norms, np.ascontiguousarray(columns.T), weights.sum(axis=1))


class Int8Kernel:
    dtype = "int8"
    scanned = False
    batch_queries = MAX_BATCH_QUERIES

    def __init__(self, native="auto"):
        """``native``: a ``search.scoring.native`` kernel, None for onnxruntime only, "auto" to load it if built."""
        from search.scoring import native as native_module

        self.native = native_module.load() if native == "auto" else native
        u8, i8, f32 = onnx_graph.ELEM["uint8"], onnx_graph.ELEM["int8"], onnx_graph.ELEM["float32"]
        self._session = onnx_graph.session(
            nodes=[
                onnx_graph.node("MatMulInteger", ["A", "B", "A_zero"], ["Yi"]),
                onnx_graph.node("Cast", ["Yi"], ["Yf"], to=f32),
                onnx_graph.node("MatMul", ["Yf", "W"], ["Z"]),  # sums each query's columns with their scales
                onnx_graph.node("Mul", ["Z", "S"], ["Y"]),  # times the row scale
            ],
            inputs=[
                onnx_graph.value("A", u8, ["n", "d"]),
                onnx_graph.value("B", i8, ["d", "c"]),
                onnx_graph.value("A_zero", u8, []),
                onnx_graph.value("W", f32, ["c", "q"]),
                onnx_graph.value("S", f32, ["n", 1]),
            ],
            outputs=[onnx_graph.value("Y", f32, ["n", "q"])],
        )
        self._buffers = threading.local()  # XOR scratch per thread: the kernel is shared by threads

    quantize_queries = staticmethod(quantize_queries)

    # -- the contract (kernel_protocol.Kernel) ---------------------------------------------------
    def prepare(self, query: np.ndarray) -> QueryColumns:
        return quantize_queries(query[None, :])

    def query_columns(self, query: np.ndarray, prepared: QueryColumns) -> QueryColumns:
        return prepared

    def score(
        self, stored: Stored, rows: Rows, query: np.ndarray, *, need: int, floor: float, prepared: QueryColumns
    ) -> Scored:
        """Listed rows are read in place by the compiled kernel where it is built, else gathered."""
        assert stored.scales is not None  # int8 storage has row scales
        all_scales = stored.scales
        if self.native is not None and not isinstance(rows, slice):
            listed = rows
            approx = self.native.scores_at(
                stored.vectors, listed, all_scales, prepared.native_columns, prepared.native_weights
            )
            scales = all_scales[listed]

            def exact(positions):
                picked = listed[positions]
                return rowwise_dot(stored.vectors[picked], query) * all_scales[picked]

        else:
            block, scales = stored.vectors[rows], all_scales[rows]
            approx = self.approx(block, scales, prepared)[:, 0]

            def exact(positions):
                return rowwise_dot(block[positions], query) * scales[positions]

        keep, scores = self.select(
            scales, query, approx, prepared.residual_norms[0], need=need, floor=floor, exact=exact
        )
        return absolute(rows, keep, len(approx)), scores

    def exact(self, stored: Stored, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        assert stored.scales is not None
        return rowwise_dot(stored.vectors[rows], query) * stored.scales[rows]

    def score_many(
        self, stored: Stored, rows: slice, queries: np.ndarray, *, need: int, floors: list[float]
    ) -> list[Scored]:
        assert stored.scales is not None
        block, scales = stored.vectors[rows], stored.scales[rows]
        prepared = quantize_queries(queries)
        approx = self.approx(block, scales, prepared)
        out = []
        for col, query in enumerate(queries):

            def exact(positions, query=query):
                return rowwise_dot(block[positions], query) * scales[positions]

            keep, scores = self.select(
                scales, query, approx[:, col], prepared.residual_norms[col], need=need, floor=floors[col], exact=exact
            )
            out.append((absolute(rows, keep, len(block)), scores))
        return out

    # -- approximate scores and their bound ------------------------------------------------------
    def approx(self, block: np.ndarray, scales: np.ndarray, prepared: QueryColumns) -> np.ndarray:
        """Approximate scores (rows, queries) from ``quantize_queries`` output."""
        columns, weights = prepared.columns, prepared.weights
        if self.native is not None:
            return self.native.scores(block, scales, prepared.native_columns, prepared.native_weights)
        rows = block.shape[0]
        out = np.empty((rows, weights.shape[1]), dtype=np.float32)
        unsigned = block.view(np.uint8)
        scratch = self._scratch(min(rows, INT8_SUB_BLOCK_ROWS), block.shape[1])
        zero = np.array(128, dtype=np.uint8)
        for start in range(0, rows, INT8_SUB_BLOCK_ROWS):
            sub = unsigned[start : start + INT8_SUB_BLOCK_ROWS]
            buf = scratch[: len(sub)]
            np.bitwise_xor(sub, 0x80, out=buf)  # int8 v -> uint8 v + 128
            row_scales = np.ascontiguousarray(scales[start : start + len(sub)], dtype=np.float32).reshape(-1, 1)
            out[start : start + len(sub)] = self._session.run(
                None, {"A": buf, "B": columns, "A_zero": zero, "W": weights, "S": row_scales}
            )[0]
        return out

    def _scratch(self, rows: int, dim: int) -> np.ndarray:
        buf = getattr(self._buffers, "buf", None)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != dim:
            buf = self._buffers.buf = np.empty((max(rows, 1), dim), dtype=np.uint8)
        return buf

    @staticmethod
    def error_bound(scales: np.ndarray, dim: int, residual_norm: float, approx: np.ndarray) -> np.ndarray:
        """|exact - approx| per row: |sum v_d e_d| * scale <= ||v||_2 ||e||_2 * scale, ||v||_2 <= 127 sqrt(d)."""
        bound = scales.astype(np.float32) * np.float32(127.0 * math.sqrt(dim) * residual_norm)
        return bound + np.float32(FLOAT_SLACK) * (np.abs(approx) + 1)

    def select(
        self,
        scales,
        query,
        approx,
        residual_norm,
        *,
        need: int,
        floor: float,
        exact: Callable[[np.ndarray], np.ndarray],
        row_residuals: np.ndarray | None = None,
        query_norm: float = 1.0,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(positions, exact scores) of the rows that may reach ``floor``; None: all of them.
        ``row_residuals``: the scan copy's per-row distance from the stored vectors, a further
        error term of at most ``row_residuals x query_norm``; ``exact(positions)``: exact scores."""
        rows = len(approx)
        if rows <= need:
            return None, exact(np.arange(rows))
        scales = np.asarray(scales, dtype=np.float32)
        if floor == -np.inf:
            # No floor yet: this block's own top ``need`` by approximation, rescored, gives one.
            local = np.sort(np.argpartition(-approx, need - 1)[:need])
            floor = float(exact(local).min())
        # One cheap pass with the largest bound any row can have (see prefilter_margin), then the
        # exact per-row bound on the few rows left.
        dim = query.shape[0]
        margin = self.prefilter_margin(float(scales.max()), dim, residual_norm, floor)
        if row_residuals is not None:
            margin += float(row_residuals.max()) * query_norm
        candidates = np.flatnonzero(approx >= floor - margin)
        upper = approx[candidates] + self.error_bound(scales[candidates], dim, residual_norm, approx[candidates])
        if row_residuals is not None:
            upper += row_residuals[candidates] * np.float32(query_norm)
        candidates = candidates[upper >= floor]
        return candidates, exact(candidates)

    @staticmethod
    def prefilter_margin(max_scale: float, dim: int, residual_norm: float, floor: float) -> float:
        """A row with ``approx < floor - margin`` has ``approx + error_bound < floor``: with
        ``margin = 2 (max_scale K + slack (|floor| + 1))`` both for approx >= 0 (then |approx| < |floor|)
        and approx < 0 (then the slack term shrinks approx by at most a factor 1 - slack)."""
        return 2.0 * (max_scale * 127.0 * math.sqrt(dim) * residual_norm + FLOAT_SLACK * (abs(floor) + 1.0))
