"""The compiled int8 scoring kernel (``int8dot.c``), loaded with ctypes; optional.

``make`` (any target that runs the service) and ``deploy/taskroot.py`` compile it with the
system C compiler into ``_int8dot.so`` beside the source.  It has no libc or Python dependency,
so one build serves CPython 3.11 and 3.12 alike.  Without it (no compiler where the code was
assembled) ``kernels.Int8Kernel`` falls back to onnxruntime's MatMulInteger, which returns the
same results, slower for single queries (numbers in the docstring of ``kernels.py``).

    python -m search.native build   # compile (what the Makefile runs)
    python -m search.native info    # which path this CPU takes
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

_LIBRARY = None  # loaded once per process; False after a failed load


class NativeInt8Dot:
    """``scores(rows, scales, columns, weights)`` -> (rows, queries) float32; see int8dot.c."""

    def __init__(self, library: ctypes.CDLL, limit: int = 0):
        self._fn = library.int8dot_scores  # a CDLL call releases the GIL while it runs
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
        self._path = library.int8dot_path
        self._path.restype = ctypes.c_int
        self._path.argtypes = [ctypes.c_int64, ctypes.c_int]
        self.limit = limit

    def path(self, dim: int) -> str:
        return PATHS[self._path(dim, self.limit)]

    def scores(self, rows: np.ndarray, scales: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """rows (n, d) int8, scales (n,) float32, columns (2q, d) int8, weights (2q,) float32."""
        rows = np.ascontiguousarray(rows, dtype=np.int8)
        scales = np.ascontiguousarray(scales, dtype=np.float32).reshape(-1)
        columns = np.ascontiguousarray(columns, dtype=np.int8)
        weights = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
        n, dim = rows.shape
        n_queries = columns.shape[0] // 2
        if columns.shape != (2 * n_queries, dim) or weights.shape != (2 * n_queries,) or scales.shape != (n,) \
                or not 1 <= n_queries <= MAX_QUERIES:
            raise ValueError("int8dot: shapes do not match")
        out = np.empty((n, n_queries), dtype=np.float32)
        if n:
            self._fn(rows.ctypes.data, n, dim, scales.ctypes.data, columns.ctypes.data, weights.ctypes.data,
                     n_queries, out.ctypes.data, self.limit)
        return out


def library_path() -> Path:
    return HERE / LIBRARY_NAME


def load(limit: str | None = None) -> NativeInt8Dot | None:
    """The kernel, or None when the shared object is missing or cannot load (callers fall back).

    ``limit`` caps the SIMD path ("generic", "avx2", "avx512_vnni"); the CPU may allow less."""
    global _LIBRARY
    if _LIBRARY is None:
        try:
            _LIBRARY = ctypes.CDLL(str(library_path()))
        except OSError:
            _LIBRARY = False
    if _LIBRARY is False:
        return None
    return NativeInt8Dot(_LIBRARY, PATH_LIMITS[limit] if limit else 0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m search.native", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile int8dot.c into search/native/_int8dot.so")
    b.add_argument("--out", type=Path, default=None, help="where to write the shared object")
    b.add_argument("--optional", action="store_true", help="exit 0 with a warning when no compiler works")
    sub.add_parser("info", help="print which SIMD path this CPU takes for 384 dimensions")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build_main((["--out", str(args.out)] if args.out else []) + (["--optional"] if args.optional else []))
    kernel = load()
    print("not built: run `python -m search.native build`" if kernel is None else kernel.path(384))
    return 0
