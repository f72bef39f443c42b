"""Scoring kernels, one per storage dtype, chosen by measurement (``python -m bench --only kernels``).

Every kernel scores one block of stored rows (a memory-mapped slice or a gathered copy) against a
query and returns *exact* scores with respect to the stored vectors, so quantised storage never
changes which rows come back, only how fast:

* float32: numpy ``block @ query`` (BLAS gemv; memory-bound, nothing beats it for one query).
* float16: onnxruntime Cast + MatMul in small sub-blocks that stay in cache.  numpy has no fast
  float16 product and its float16->float32 ``astype`` is several times slower than the product.
* int8: an approximate score for every row from integer dot products, then only rows whose
  approximation, widened by a proven error bound, can still reach the current top are rescored
  exactly in float.  The integer products come from ``search/scoring/native/int8dot.c`` (AVX-512 VNNI /
  AVX2, one pass at memory speed: 1M x 384 in ~30 ms for one query) when it is built, else from
  onnxruntime's ``MatMulInteger`` (MLAS packs the matrix first: ~120 ms for one query, ~21 ms per
  query in groups of 8).  Both give the same integers, so the same rows come back.  numpy has no
  int8 product and int8->float32 ``astype`` is slower than a float32 product.

Where the index has an int4 prefilter copy (``prefilter.py``), a first pass over it comes before these
kernels and they score only the rows it lets through (``score_at``: read in place by row number).

Why the int8 query is two int8 columns: MLAS computes up to 16 columns at the price of one, so the
query's quantisation residual rides along as a second column and the error bound shrinks ~250x
(to ~1e-4 on unit vectors), which keeps the exact rescoring to the few rows that tie the top.
Why XOR 0x80: the fast MLAS path wants the matrix unsigned; ``int8 ^ 0x80`` viewed as uint8 is
``int8 + 128`` and ``a_zero_point = 128`` undoes it, so the file stays the builder's int8.

The tiny ONNX graphs are written as protobuf bytes by ``onnx_graph.py``, because the ``onnx``
package is an export-time dependency and the run time may only import onnxruntime.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

from search.scoring import onnx_graph

# Rows per onnxruntime run, measured (python -m bench --only scale): a sub-block whose working set
# stays in a 2 MiB L2 is up to 2x faster than 64k-row blocks.
INT8_SUB_BLOCK_ROWS = 4096  # 4096 x 384 uint8 scratch = 1.5 MiB
FLOAT16_SUB_BLOCK_ROWS = 1024  # 1024 x 384 float32 after the Cast = 1.5 MiB
INT8_QUERY_COLUMNS = 2  # quantised query + its quantised residual (see the module docstring)
FLOAT_SLACK = 1e-5  # float32 rounding allowance added to the int8 error bound
MAX_BATCH_QUERIES = 8  # queries per MatMulInteger run: 8 x 2 columns = one 16-wide MLAS panel


class Float32Kernel:
    dtype = "float32"
    scanned = False

    def prepare(self, query: np.ndarray):
        return None

    def score(self, block: np.ndarray, scales, query: np.ndarray, *, need: int, floor: float, prepared=None):
        """(positions in block or None for all, exact scores); rows below ``floor`` may be left out."""
        return _above(block @ query, floor)

    def exact(self, block: np.ndarray, scales, query: np.ndarray) -> np.ndarray:
        return block @ query

    def many(self, block: np.ndarray, queries: np.ndarray) -> np.ndarray:
        return block @ queries.T


class Float16Kernel:
    dtype = "float16"
    scanned = False

    def __init__(self):
        f16, f32 = onnx_graph.ELEM["float16"], onnx_graph.ELEM["float32"]
        self._session = onnx_graph.session(
            nodes=[onnx_graph.node("Cast", ["A"], ["Af"], to=f32), onnx_graph.node("MatMul", ["Af", "B"], ["Y"])],
            inputs=[onnx_graph.value("A", f16, ["n", "d"]), onnx_graph.value("B", f32, ["d", "q"])],
            outputs=[onnx_graph.value("Y", f32, ["n", "q"])],
        )

    def prepare(self, query: np.ndarray):
        return None

    def score(self, block: np.ndarray, scales, query: np.ndarray, *, need: int, floor: float, prepared=None):
        return _above(self.exact(block, scales, query), floor)

    def exact(self, block: np.ndarray, scales, query: np.ndarray) -> np.ndarray:
        return self.many(block, query[None, :])[:, 0]

    def many(self, block: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Scores (rows, queries), float32."""
        weights = np.ascontiguousarray(queries.T, dtype=np.float32)
        out = np.empty((block.shape[0], weights.shape[1]), dtype=np.float32)
        for start in range(0, block.shape[0], FLOAT16_SUB_BLOCK_ROWS):
            sub = np.ascontiguousarray(block[start : start + FLOAT16_SUB_BLOCK_ROWS])
            out[start : start + len(sub)] = self._session.run(None, {"A": sub, "B": weights})[0]
        return out


class QueryColumns(NamedTuple):
    """Queries as the int8 kernels take them (``Int8Kernel.quantize_queries``)."""

    columns: np.ndarray  # (d, 2q) int8: each query quantised, then its residual quantised
    weights: np.ndarray  # (2q, q) float32: column scales, summed into each query's score
    residual_norms: np.ndarray  # (q,) what the two columns leave out, for the error bound
    native_columns: np.ndarray  # (2q, d) int8, contiguous: ``columns`` for search/scoring/native
    native_weights: np.ndarray  # (2q,) float32: each column's scale


class Int8Kernel:
    dtype = "int8"
    scanned = False

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
                onnx_graph.node("Mul", ["Z", "S"], ["Y"]),
            ],  # times the row scale
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

    # -- approximate scores -------------------------------------------------------------------
    @staticmethod
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

    def approx(self, block: np.ndarray, scales: np.ndarray, prepared) -> np.ndarray:
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

    # -- exact ---------------------------------------------------------------------------------
    @staticmethod
    def exact(block: np.ndarray, scales: np.ndarray, query: np.ndarray) -> np.ndarray:
        return rowwise_dot(block, query) * scales

    def prepare(self, query: np.ndarray):
        """Per-query work done once per search, not once per block."""
        return self.quantize_queries(query[None, :])

    @staticmethod
    def query_columns(prepared) -> QueryColumns:
        return prepared

    def score_at(
        self,
        matrix: np.ndarray,
        scales: np.ndarray,
        rows: np.ndarray,
        query: np.ndarray,
        *,
        need: int,
        floor: float,
        prepared,
    ):
        """``score`` for the listed ``rows`` of the whole matrix, read in place by the compiled kernel
        (the int4 prefilter's survivors; see prefilter.py); returns (rows, exact scores)."""
        approx = self.native.scores_at(matrix, rows, scales, prepared.native_columns, prepared.native_weights)

        def exact(positions):
            picked = rows[positions]
            return self.exact(matrix[picked], scales[picked], query)

        keep, scores = self.select(
            None, scales[rows], query, approx, prepared.residual_norms[0], need=need, floor=floor, exact=exact
        )
        return (rows if keep is None else rows[keep]), scores

    def score(
        self, block: np.ndarray, scales: np.ndarray, query: np.ndarray, *, need: int, floor: float, prepared=None
    ):
        """(positions in block, exact scores) of every row that may still enter the top ``need``
        given that ``need`` rows already score >= ``floor``; rows left out provably score below it."""
        prepared = prepared if prepared is not None else self.prepare(query)
        approx = self.approx(block, scales, prepared)[:, 0]
        return self.select(block, scales, query, approx, prepared[2][0], need=need, floor=floor)

    def select(
        self,
        block,
        scales,
        query,
        approx,
        residual_norm,
        *,
        need: int,
        floor: float,
        row_residuals: np.ndarray | None = None,
        query_norm: float = 1.0,
        exact=None,
    ):
        """Rows of the block that may reach ``floor`` and their exact scores.  ``row_residuals``: the
        scan copy's per-row distance from the stored vectors, a further error term of at most
        ``row_residuals x query_norm``; ``exact(positions)``: exact scores of those rows (default: from
        ``block`` and ``scales``)."""
        if exact is None:

            def exact(positions):
                return self.exact(block[positions], scales[positions], query)

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


class ScanBlock(NamedTuple):
    """Rows of a float32/float16 index as its scan copy sees them: the whole stored matrix, the
    int8 rows, their scales and residuals for ``rows`` (a slice or row numbers of ``vectors``)."""

    vectors: np.ndarray
    scan: np.ndarray
    scales: np.ndarray
    residuals: np.ndarray
    rows: object = None


class ScannedKernel:
    """float32/float16 storage scored from its int8 scan copy, rescored from the stored vectors.

    With ``v`` a stored vector, ``s * r`` its int8 form and ``q`` the query: ``v.q = s r.q + (v - s r).q``
    and ``|(v - s r).q| <= ||v - s r|| ||q||`` (the builder stores ``||v - s r||``, rounded up), so the
    int8 approximation's bound widened by that term never drops a row that could reach the top.
    The rows that can are rescored from the stored vectors (``rowwise_dot``), so the results are the
    stored dtype's, up to float32 rounding of the sums."""

    scanned = True

    def __init__(self, dtype: str, int8: Int8Kernel):
        self.dtype, self.int8 = dtype, int8

    def prepare(self, query: np.ndarray):
        return self.int8.quantize_queries(query[None, :]), float(np.linalg.norm(query))

    @staticmethod
    def query_columns(prepared) -> QueryColumns:
        return prepared[0]

    def score_at(self, block: ScanBlock, rows: np.ndarray, query: np.ndarray, *, need: int, floor: float, prepared):
        """``score`` for the listed ``rows`` (``block``: the whole scan copy), read in place."""
        columns, query_norm = prepared
        approx = self.int8.native.scores_at(
            block.scan, rows, block.scales, columns.native_columns, columns.native_weights
        )

        def exact(positions):
            return rowwise_dot(block.vectors[rows[positions]], query)

        keep, scores = self.int8.select(
            None,
            block.scales[rows],
            query,
            approx,
            columns.residual_norms[0],
            need=need,
            floor=floor,
            row_residuals=block.residuals[rows],
            query_norm=query_norm,
            exact=exact,
        )
        return (rows if keep is None else rows[keep]), scores

    def score(self, block: ScanBlock, scales, query: np.ndarray, *, need: int, floor: float, prepared=None):
        columns, query_norm = prepared if prepared is not None else self.prepare(query)
        approx = self.int8.approx(block.scan, block.scales, columns)[:, 0]

        def exact(positions):
            return self.exact(block, positions, query)

        return self.int8.select(
            block.scan,
            block.scales,
            query,
            approx,
            columns.residual_norms[0],
            need=need,
            floor=floor,
            row_residuals=block.residuals,
            query_norm=query_norm,
            exact=exact,
        )

    def exact(self, block: ScanBlock, positions: np.ndarray, query: np.ndarray) -> np.ndarray:
        rows = block.rows
        if isinstance(rows, slice):
            absolute = (rows.start or 0) + positions
        elif rows is None:
            absolute = positions
        else:
            absolute = np.asarray(rows)[positions]
        return rowwise_dot(block.vectors[absolute], query)


def rowwise_dot(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` in float32 with each row's sum in a fixed order.  BLAS gemv is not: a row's
    score changes in the last bits with the number of rows scored beside it (measured), and rescoring
    scores varying subsets, so a score (and a tie) would depend on which other rows were rescored."""
    return np.einsum("ij,j->i", np.asarray(rows, dtype=np.float32), np.asarray(query, dtype=np.float32))


def _above(scores: np.ndarray, floor: float):
    """Drop rows that cannot enter the top (saves the caller's partition and sort on later blocks)."""
    if floor == -np.inf:
        return None, scores
    keep = np.flatnonzero(scores >= floor)
    return keep, scores[keep]


_KERNELS: dict[str, object] = {}
_KERNELS_LOCK = threading.Lock()
_CLASSES = {"float32": Float32Kernel, "float16": Float16Kernel, "int8": Int8Kernel}


def scanned_kernel_for(dtype: str):
    """The scan-copy kernel for a float32/float16 index, or None where the compiled int8 kernel is not
    built (onnxruntime's MatMulInteger is slower on one query than a float32 scan at these sizes)."""
    int8 = kernel_for("int8")
    if int8.native is None or dtype == "int8":
        return None
    return ScannedKernel(dtype, int8)


def kernel_for(dtype: str):
    """The process-wide kernel for a storage dtype (onnxruntime sessions are thread-safe)."""
    kernel = _KERNELS.get(dtype)
    if kernel is None:
        with _KERNELS_LOCK:
            kernel = _KERNELS.get(dtype)
            if kernel is None:
                kernel = _KERNELS[dtype] = _CLASSES[dtype]()
    return kernel


def search_many(
    embeddings: np.ndarray, scales: np.ndarray | None, queries: np.ndarray, k: int, chunk_rows: int = 65536
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top ``k`` (rows, scores) for several queries at once, best first, ties by lower row.

    One pass over the matrix serves a group of queries: int8 takes ``MAX_BATCH_QUERIES`` per pass
    (one 16-column MLAS panel), float32 and float16 all of them (one gemm).  For batch requests."""
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, embeddings.shape[1])
    kernel = kernel_for(str(embeddings.dtype))
    quantised = isinstance(kernel, Int8Kernel)
    group_size = MAX_BATCH_QUERIES if quantised else max(1, len(queries))
    best = [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
    for start in range(0, embeddings.shape[0], chunk_rows):
        block = embeddings[start : start + chunk_rows]
        block_scales = None if scales is None else scales[start : start + block.shape[0]]
        rows = np.arange(start, start + block.shape[0], dtype=np.int64)
        for first in range(0, len(queries), group_size):
            group = queries[first : first + group_size]
            if quantised:
                prepared = kernel.quantize_queries(group)
                approx = kernel.approx(block, block_scales, prepared)
            else:
                scores = kernel.many(block, group)
            for col, query in enumerate(group):
                j = first + col
                if quantised:
                    floor = float(best[j][1][k - 1]) if best[j][1].size >= k else -np.inf
                    keep, exact = kernel.select(
                        block, block_scales, query, approx[:, col], prepared[2][col], need=k, floor=floor
                    )
                    cand_rows = rows if keep is None else rows[keep]
                else:
                    cand_rows, exact = rows, scores[:, col]
                best[j] = top_rows(np.concatenate([best[j][0], cand_rows]), np.concatenate([best[j][1], exact]), k)
    return best


def top_rows(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best (score desc, row asc), deterministic even with ties at the cut."""
    if rows.size > n:
        cut = np.partition(scores, rows.size - n)[rows.size - n]  # n-th largest score
        keep = scores >= cut  # keeps every tie at the cut; the sort below decides among them
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:n]
    return rows[order], scores[order]
