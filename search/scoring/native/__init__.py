"""The compiled int8 scoring kernel (``int8dot.c``), loaded with ctypes; optional.

``make`` (any target that runs the service) and ``deploy/taskroot.py`` compile it with the
system C compiler into ``_int8dot.so`` beside the source.  It has no libc or Python dependency,
so one build serves CPython 3.11 and 3.12 alike.  Without it (no compiler where the code was
assembled) ``kernels.Int8Kernel`` falls back to onnxruntime's MatMulInteger, which returns the
same results, slower for single queries (numbers in the docstring of ``kernels.py``).

    python -m search.scoring.native build   # compile (what the Makefile runs)
    python -m search.scoring.native info    # which path this CPU takes
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from .build import HERE, LIBRARY_NAME, build  # noqa: F401  (build: for callers and tests)
from .build import main as build_main

PATHS = {1: "generic", 2: "avx2", 3: "avx512_vnni"}
PATH_LIMITS = {name: number for number, name in PATHS.items()}
MAX_QUERIES = 16

_LIBRARY: ctypes.CDLL | None = None  # loaded once per process
_LOAD_FAILED = False


class NativeInt8Dot:
    """``scores(rows, scales, columns, weights)`` -> (rows, queries) float32; see int8dot.c."""

    def __init__(self, library: ctypes.CDLL, limit: int = 0):
        self._fn = library.int8dot_scores  # a CDLL call releases the GIL while it runs
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._path = library.int8dot_path
        self._path.restype = ctypes.c_int
        self._path.argtypes = [ctypes.c_int64, ctypes.c_int]
        # int4 prefilter rows (search/scoring/prefilter.py) and rows read in place by number
        self._int4 = library.int4dot_scores
        self._int4_path = library.int4dot_path
        self._int4_upper = library.int4dot_upper
        self._at = library.int8dot_scores_at
        self._int4.restype = self._int4_path.restype = self._int4_upper.restype = self._at.restype = ctypes.c_int
        self._int4.argtypes = self._fn.argtypes
        self._int4_path.argtypes = self._path.argtypes
        p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        self._int4_upper.argtypes = [p, i64, i64, p, p, p, p, f32, f32, f32, p, i64, p, p, ctypes.c_int]
        self._at.argtypes = [p, p, i64, i64, p, p, p, p, ctypes.c_int]
        self.limit = limit

    def path(self, dim: int) -> str:
        return PATHS[self._path(dim, self.limit)]

    def int4_path(self, dim: int) -> str:
        return PATHS[self._int4_path(dim, self.limit)]

    def scores(self, rows: np.ndarray, scales: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """rows (n, d) int8, scales (n,) float32, columns (2q, d) int8, weights (2q,) float32."""
        rows = np.ascontiguousarray(rows, dtype=np.int8)
        n, dim = rows.shape
        scales, columns, weights, n_queries = _query_side("int8dot", scales, columns, weights, n, dim)
        out = np.empty((n, n_queries), dtype=np.float32)
        if n:
            self._fn(
                rows.ctypes.data,
                n,
                dim,
                scales.ctypes.data,
                columns.ctypes.data,
                weights.ctypes.data,
                n_queries,
                out.ctypes.data,
                self.limit,
            )
        return out

    def int4_scores(
        self, packed: np.ndarray, scales: np.ndarray, columns: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """``scores`` for int4 prefilter rows: packed (n, d/2) uint8, two nibbles per byte."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        n, half = packed.shape
        scales, columns, weights, n_queries = _query_side("int4dot", scales, columns, weights, n, 2 * half)
        out = np.empty((n, n_queries), dtype=np.float32)
        if n:
            self._int4(
                packed.ctypes.data,
                n,
                2 * half,
                scales.ctypes.data,
                columns.ctypes.data,
                weights.ctypes.data,
                n_queries,
                out.ctypes.data,
                self.limit,
            )
        return out

    def int4_upper(
        self,
        packed: np.ndarray,
        scales: np.ndarray,
        residuals: np.ndarray,
        columns: np.ndarray,
        weights: np.ndarray,
        query_norm: float,
        query_term: float,
        slack: float,
        top: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One query's upper bound per int4 row (see prefilter.py): (n,) float32; and the positions of
        the ``top`` rows with the highest int4 scores (unordered; fewer if n < top)."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        n, half = packed.shape
        scales, columns, weights, _ = _query_side("int4dot_upper", scales, columns, weights, n, 2 * half, 1)
        residuals = np.ascontiguousarray(residuals, dtype=np.float32).reshape(-1)
        if residuals.shape != (n,) or top < 0:
            raise ValueError("int4dot_upper: shapes do not match")
        out = np.empty(n, dtype=np.float32)
        top = min(top, n)
        top_val = np.full(top, -np.inf, dtype=np.float32)
        top_idx = np.full(top, -1, dtype=np.int64)
        if n:
            self._int4_upper(
                packed.ctypes.data,
                n,
                2 * half,
                scales.ctypes.data,
                residuals.ctypes.data,
                columns.ctypes.data,
                weights.ctypes.data,
                query_norm,
                query_term,
                slack,
                out.ctypes.data,
                top,
                top_val.ctypes.data,
                top_idx.ctypes.data,
                self.limit,
            )
        return out, top_idx

    def scores_at(
        self, rows: np.ndarray, positions: np.ndarray, scales: np.ndarray, columns: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """``scores`` of one query for ``rows[positions]`` only, read in place (no gathered copy)."""
        rows = np.ascontiguousarray(rows, dtype=np.int8)
        positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        n, dim = rows.shape
        scales, columns, weights, _ = _query_side("int8dot_scores_at", scales, columns, weights, n, dim, 1)
        if positions.size and (positions.min() < 0 or positions.max() >= n):
            raise ValueError("int8dot_scores_at: row outside the matrix")
        out = np.empty(positions.size, dtype=np.float32)
        if positions.size:
            self._at(
                rows.ctypes.data,
                positions.ctypes.data,
                positions.size,
                dim,
                scales.ctypes.data,
                columns.ctypes.data,
                weights.ctypes.data,
                out.ctypes.data,
                self.limit,
            )
        return out


def _query_side(name: str, scales, columns, weights, n: int, dim: int, most: int = MAX_QUERIES):
    """Contiguous (scales (n,) float32, columns (2q, dim) int8, weights (2q,) float32, q) for a C call,
    with 1 <= q <= ``most``; ValueError naming ``name`` otherwise."""
    scales = np.ascontiguousarray(scales, dtype=np.float32).reshape(-1)
    columns = np.ascontiguousarray(columns, dtype=np.int8)
    weights = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
    n_queries = columns.shape[0] // 2
    if (
        columns.shape != (2 * n_queries, dim)
        or weights.shape != (2 * n_queries,)
        or scales.shape != (n,)
        or not 1 <= n_queries <= most
    ):
        raise ValueError(f"{name}: shapes do not match")
    return scales, columns, weights, n_queries


def library_path() -> Path:
    return HERE / LIBRARY_NAME


def load(limit: str | None = None) -> NativeInt8Dot | None:
    """The kernel, or None when the shared object is missing or cannot load (callers fall back).

    ``limit`` caps the SIMD path ("generic", "avx2", "avx512_vnni"); the CPU may allow less."""
    global _LIBRARY, _LOAD_FAILED
    if _LIBRARY is None and not _LOAD_FAILED:
        try:
            library = ctypes.CDLL(str(library_path()))
            NativeInt8Dot(library)  # every entry point present (a library older than int8dot.c lacks some)
            _LIBRARY = library
        except (OSError, AttributeError):
            _LOAD_FAILED = True
    if _LIBRARY is None:
        return None
    return NativeInt8Dot(_LIBRARY, PATH_LIMITS[limit] if limit else 0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m search.scoring.native",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile int8dot.c into search/scoring/native/_int8dot.so")
    b.add_argument("--out", type=Path, default=None, help="where to write the shared object")
    b.add_argument("--optional", action="store_true", help="exit 0 with a warning when no compiler works")
    sub.add_parser("info", help="print which SIMD path this CPU takes for 384 dimensions")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build_main((["--out", str(args.out)] if args.out else []) + (["--optional"] if args.optional else []))
    kernel = load()
    print("not built: run `python -m search.scoring.native build`" if kernel is None else kernel.path(384))
    return 0
