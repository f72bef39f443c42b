"""Scoring kernels, one per storage dtype, chosen by measurement (``python -m bench --only kernels``).

Every kernel implements ``kernel_protocol.Kernel``: it scores stored rows (a range, or listed rows)
against a query and returns *exact* scores with respect to the stored vectors, so quantised storage
never changes which rows come back, only how fast:

* float32: numpy ``block @ query`` (BLAS gemv; memory-bound, nothing beats it for one query).
* float16: onnxruntime Cast + MatMul in small sub-blocks that stay in cache.  numpy has no fast
  float16 product and its float16->float32 ``astype`` is several times slower than the product.
* int8 (``int8.py``): an approximate score for every row from integer dot products, then only rows whose
  approximation, widened by a proven error bound, can still reach the current top are rescored
  exactly in float.  The integer products come from ``search/scoring/native/int8dot.c`` (AVX-512 VNNI /
  AVX2, one pass at memory speed: 1M x 384 in ~30 ms for one query) when it is built, else from
  onnxruntime's ``MatMulInteger`` (MLAS packs the matrix first: ~120 ms for one query, ~21 ms per
  query in groups of 8).  Both give the same integers, so the same rows come back.  numpy has no
  int8 product and int8->float32 ``astype`` is slower than a float32 product.

* float32/float16 with an int8 scan copy (``ScannedKernel``): the int8 pass over the copy, rescored
  from the stored vectors (where the compiled kernel is built).

Where the index has an int4 prefilter copy (``prefilter.py``), a first pass over it comes before these
kernels and they score only the rows it lets through (listed rows, read in place where they can be).

The tiny ONNX graphs are written as protobuf bytes by ``onnx_graph.py``, because the ``onnx``
package is an export-time dependency and the run time may only import onnxruntime.
"""

from __future__ import annotations

import threading

import numpy as np

from search.scoring import onnx_graph
from search.scoring.int8 import FLOAT_SLACK, MAX_BATCH_QUERIES, Int8Kernel, quantize_queries
from search.scoring.kernel_protocol import (
    Kernel,
    QueryColumns,
    Rows,
    ScanBlock,
    Scored,
    Stored,
    above,
    absolute,
    rowwise_dot,
    top_rows,
)

__all__ = [
    "FLOAT_SLACK",
    "MAX_BATCH_QUERIES",
    "Float16Kernel",
    "Float32Kernel",
    "Int8Kernel",
    "Kernel",
    "QueryColumns",
    "ScanBlock",
    "ScannedKernel",
    "Stored",
    "kernel_for",
    "rowwise_dot",
    "scanned_kernel_for",
    "search_many",
    "top_rows",
]

FLOAT16_SUB_BLOCK_ROWS = 1024  # 1024 x 384 float32 after the Cast = 1.5 MiB (stays in a 2 MiB L2)


class _FloatKernel:
    """float32 / float16: every row's exact score is one product; ``_product`` differs."""

    dtype = ""
    scanned = False
    batch_queries = 0  # one gemm serves any number of queries

    def _product(self, block: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Scores (rows, queries), float32."""
        raise NotImplementedError

    def _one(self, block: np.ndarray, query: np.ndarray) -> np.ndarray:
        return self._product(block, query[None, :])[:, 0]

    def prepare(self, query: np.ndarray) -> None:
        return None

    def query_columns(self, query: np.ndarray, prepared: None) -> QueryColumns:
        return quantize_queries(query[None, :])

    def score(self, stored: Stored, rows: Rows, query: np.ndarray, *, need: int, floor: float, prepared=None) -> Scored:
        block = stored.vectors[rows]
        keep, scores = above(self._one(block, query), floor)
        return absolute(rows, keep, len(block)), scores

    def exact(self, stored: Stored, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        return self._one(stored.vectors[rows], query)

    def score_many(
        self, stored: Stored, rows: slice, queries: np.ndarray, *, need: int, floors: list[float]
    ) -> list[Scored]:
        block = stored.vectors[rows]
        scores = self._product(block, queries)
        every = absolute(rows, None, len(block))
        return [(every, scores[:, col]) for col in range(len(queries))]


class Float32Kernel(_FloatKernel):
    """numpy ``block @ query`` (BLAS gemv; memory-bound, nothing beats it for one query)."""

    dtype = "float32"

    def _product(self, block: np.ndarray, queries: np.ndarray) -> np.ndarray:
        return block @ queries.T

    def _one(self, block: np.ndarray, query: np.ndarray) -> np.ndarray:
        return block @ query  # gemv, as before the contract: the same bits


class Float16Kernel(_FloatKernel):
    """onnxruntime Cast + MatMul in sub-blocks that stay in cache."""

    dtype = "float16"

    def __init__(self):
        f16, f32 = onnx_graph.ELEM["float16"], onnx_graph.ELEM["float32"]
        self._session = onnx_graph.session(
            nodes=[onnx_graph.node("Cast", ["A"], ["Af"], to=f32), onnx_graph.node("MatMul", ["Af", "B"], ["Y"])],
            inputs=[onnx_graph.value("A", f16, ["n", "d"]), onnx_graph.value("B", f32, ["d", "q"])],
            outputs=[onnx_graph.value("Y", f32, ["n", "q"])],
        )

    def _product(self, block: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Scores (rows, queries), float32."""
        weights = np.ascontiguousarray(queries.T, dtype=np.float32)
        out = np.empty((block.shape[0], weights.shape[1]), dtype=np.float32)
        for start in range(0, block.shape[0], FLOAT16_SUB_BLOCK_ROWS):
            sub = np.ascontiguousarray(block[start : start + FLOAT16_SUB_BLOCK_ROWS])
            out[start : start + len(sub)] = self._session.run(None, {"A": sub, "B": weights})[0]
        return out


class ScannedKernel:
    """float32/float16 storage scored from its int8 scan copy, rescored from the stored vectors.

    With ``v`` a stored vector, ``s * r`` its int8 form and ``q`` the query: ``v.q = s r.q + (v - s r).q``
    and ``|(v - s r).q| <= ||v - s r|| ||q||`` (the builder stores ``||v - s r||``, rounded up), so the
    int8 approximation's bound widened by that term never drops a row that could reach the top.
    The rows that can are rescored from the stored vectors (``rowwise_dot``), so the results are the
    stored dtype's, up to float32 rounding of the sums.  Only where the compiled kernel is built."""

    scanned = True
    batch_queries = 0

    def __init__(self, dtype: str, int8: Int8Kernel):
        self.dtype, self.int8 = dtype, int8

    def prepare(self, query: np.ndarray) -> tuple[QueryColumns, float]:
        return quantize_queries(query[None, :]), float(np.linalg.norm(query))

    def query_columns(self, query: np.ndarray, prepared: tuple[QueryColumns, float]) -> QueryColumns:
        return prepared[0]

    def score(self, stored: Stored, rows: Rows, query: np.ndarray, *, need: int, floor: float, prepared) -> Scored:
        """A range reads the scan copy's slice; listed rows are read in place by the compiled kernel."""
        scan = stored.scan
        assert scan is not None and self.int8.native is not None  # scanned_kernel_for() checks both
        columns, query_norm = prepared
        if isinstance(rows, slice):
            approx = self.int8.approx(scan.scan[rows], scan.scales[rows], columns)[:, 0]
        else:
            approx = self.int8.native.scores_at(
                scan.scan, rows, scan.scales, columns.native_columns, columns.native_weights
            )
        start = (rows.start or 0) if isinstance(rows, slice) else 0

        def exact(positions):
            picked = start + positions if isinstance(rows, slice) else rows[positions]
            return rowwise_dot(scan.vectors[picked], query)

        keep, scores = self.int8.select(
            scan.scales[rows],
            query,
            approx,
            columns.residual_norms[0],
            need=need,
            floor=floor,
            exact=exact,
            row_residuals=scan.residuals[rows],
            query_norm=query_norm,
        )
        return absolute(rows, keep, len(approx)), scores

    def exact(self, stored: Stored, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        return rowwise_dot(stored.vectors[rows], query)

    def score_many(
        self, stored: Stored, rows: slice, queries: np.ndarray, *, need: int, floors: list[float]
    ) -> list[Scored]:
        return kernel_for(self.dtype).score_many(stored, rows, queries, need=need, floors=floors)


_KERNELS: dict[str, Kernel] = {}
_KERNELS_LOCK = threading.Lock()
_CLASSES: dict[str, type] = {"float32": Float32Kernel, "float16": Float16Kernel, "int8": Int8Kernel}


def scanned_kernel_for(dtype: str) -> ScannedKernel | None:
    """The scan-copy kernel for a float32/float16 index, or None where the compiled int8 kernel is not
    built (onnxruntime's MatMulInteger is slower on one query than a float32 scan at these sizes)."""
    int8 = kernel_for("int8")
    assert isinstance(int8, Int8Kernel)
    if int8.native is None or dtype == "int8":
        return None
    return ScannedKernel(dtype, int8)


def kernel_for(dtype: str) -> Kernel:
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
    stored = Stored(embeddings, scales)
    group_size = kernel.batch_queries or max(1, len(queries))
    best = [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
    for start in range(0, embeddings.shape[0], chunk_rows):
        rows = slice(start, min(start + chunk_rows, embeddings.shape[0]))
        for first in range(0, len(queries), group_size):
            group = queries[first : first + group_size]
            floors = [
                float(best[j][1][k - 1]) if best[j][1].size >= k else -np.inf for j in range(first, first + len(group))
            ]
            for col, (cand_rows, exact) in enumerate(kernel.score_many(stored, rows, group, need=k, floors=floors)):
                j = first + col
                best[j] = top_rows(np.concatenate([best[j][0], cand_rows]), np.concatenate([best[j][1], exact]), k)
    return best
