"""Exact search at scale: synthetic unit vectors (seeded), one thread, per storage dtype (int8 and
float32 + scan copy with and without the int4 prefilter copy that `search build` adds), through the
real ``SearchIndex.search`` on memory-mapped files, beside plain numpy float32 ``matrix @ query``
in the same process, sides taking turns in blocks of queries.  Also: the batched kernel (8 queries per pass), and the
anonymous memory of the process at each size (file pages of the maps are not counted).

    python -m bench --only scale
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from bench.common import BUILD, emit, log, proc_status, run_child
from search.scoring.quantize import quantize_int4_rows, quantize_int8_rows, residual_norms

COMMAND = "python -m bench --only scale"
DIM = 384
FULL_SIZES = (65_536, 100_000, 1_000_000)
QUICK_SIZES = (20_000, 100_000)
SYNTHETIC = BUILD / "synthetic"
GEN_BLOCK = 100_000
ROUNDS = 3


def ensure_synthetic(rows: int) -> None:
    """float32 / float16 / int8 (+ scales, search.scoring.quantize: what the builder writes) files of ``rows``
    seeded unit vectors."""
    SYNTHETIC.mkdir(parents=True, exist_ok=True)
    done = SYNTHETIC / f"done-{rows}"
    if done.exists():
        if not (SYNTHETIC / f"residuals-{rows}.npy").is_file():
            _write_residuals(rows)
        _ensure_prefilters(rows)
        return
    log(f"writing {rows:,} synthetic {DIM}-d unit vectors to {SYNTHETIC}")
    rng = np.random.default_rng(20240601)
    files = {
        d: np.lib.format.open_memmap(SYNTHETIC / f"{d}-{rows}.npy", mode="w+", dtype=d, shape=(rows, DIM))
        for d in ("float32", "float16", "int8")
    }
    scales = np.lib.format.open_memmap(SYNTHETIC / f"scales-{rows}.npy", mode="w+", dtype=np.float32, shape=(rows,))
    for start in range(0, rows, GEN_BLOCK):
        n = min(GEN_BLOCK, rows - start)
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        files["float32"][start : start + n] = x
        files["float16"][start : start + n] = x
        files["int8"][start : start + n], scales[start : start + n] = quantize_int8_rows(x)  # the builder's format
    for arr in (*files.values(), scales):
        arr.flush()
    _write_residuals(rows)
    _ensure_prefilters(rows)
    done.touch()


def _prefilter_paths(rows: int, source: str) -> dict:
    return {part: SYNTHETIC / f"prefilter-{source}-{part}-{rows}.npy" for part in ("int4", "scales", "residuals")}


def _ensure_prefilters(rows: int) -> None:
    """The int4 prefilter copy (quantize_int4_rows, as the builder writes it) of the float32 file and of the
    int8 file's stored vectors (row x scale): what `search build` writes beside each dtype."""
    for source in ("float32", "int8"):
        paths = _prefilter_paths(rows, source)
        if all(p.is_file() for p in paths.values()):
            continue
        log(f"writing the int4 prefilter copy of the {rows:,}-row {source} file")
        matrix = np.load(SYNTHETIC / f"{source}-{rows}.npy", mmap_mode="r")
        scales = np.load(SYNTHETIC / f"scales-{rows}.npy", mmap_mode="r")
        tmp = {k: p.with_name("." + p.name) for k, p in paths.items()}
        out = {
            "int4": np.lib.format.open_memmap(tmp["int4"], mode="w+", dtype=np.uint8, shape=(rows, DIM // 2)),
            **{
                k: np.lib.format.open_memmap(tmp[k], mode="w+", dtype=np.float32, shape=(rows,))
                for k in ("scales", "residuals")
            },
        }
        for start in range(0, rows, GEN_BLOCK):
            block = np.asarray(matrix[start : start + GEN_BLOCK], dtype=np.float32)
            if source == "int8":
                block = block * np.asarray(scales[start : start + len(block)])[:, None]
            stop = start + len(block)
            out["int4"][start:stop], out["scales"][start:stop], out["residuals"][start:stop] = quantize_int4_rows(block)
        for arr in out.values():
            arr.flush()
        del out
        for k, p in paths.items():
            tmp[k].replace(p)


def load_prefilter(rows: int, file_rows: int, source: str):
    """The memory-mapped int4 copy of the first ``rows`` rows, or None without the compiled kernel."""
    from search.scoring import native
    from search.scoring.prefilter import Prefilter

    kernel = native.load()
    if kernel is None:
        return None
    parts = {k: np.load(p, mmap_mode="r")[:rows] for k, p in _prefilter_paths(file_rows, source).items()}
    return Prefilter(parts["int4"], parts["scales"], parts["residuals"], kernel)


def _write_residuals(rows: int) -> None:
    """The scan copy's residual norms for the float32 file (its int8 file is the scan copy itself)."""
    f32 = np.load(SYNTHETIC / f"float32-{rows}.npy", mmap_mode="r")
    i8 = np.load(SYNTHETIC / f"int8-{rows}.npy", mmap_mode="r")
    sc = np.load(SYNTHETIC / f"scales-{rows}.npy", mmap_mode="r")
    tmp = SYNTHETIC / f".residuals-{rows}.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows,))
    for start in range(0, rows, GEN_BLOCK):
        stop = min(start + GEN_BLOCK, rows)
        out[start:stop] = residual_norms(
            np.asarray(f32[start:stop]), np.asarray(i8[start:stop]), np.asarray(sc[start:stop])
        )
    out.flush()
    del out
    tmp.replace(SYNTHETIC / f"residuals-{rows}.npy")


def measure(quick: bool) -> dict:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    top = max(sizes)
    ensure_synthetic(top)
    out: dict = {"scale.sizes": list(sizes)}
    for n in sizes:
        log(f"scale: {n:,} rows")
        res = run_child(
            "bench.scale",
            "--rows",
            str(n),
            "--file-rows",
            str(top),
            "--queries",
            str(10 if quick else (30 if n >= 1_000_000 else 100)),
        )
        out.update(res)
    big = max(sizes)
    for side in ("int8_onnxruntime", "float32_scan"):
        if f"scale.{big}.{side}_ms" in out:
            out[f"scale.{big}.{side}.speedup_vs_numpy"] = round(
                out[f"scale.{big}.numpy_float32_ms"] / out[f"scale.{big}.{side}_ms"], 2
            )
    for dtype in ("float32", "float16", "int8"):
        out[f"scale.{big}.{dtype}.speedup_vs_numpy"] = round(
            out[f"scale.{big}.numpy_float32_ms"] / out[f"scale.{big}.{dtype}_ms"], 2
        )
        out[f"scale.{big}.{dtype}.batch8_speedup_vs_numpy"] = round(
            out[f"scale.{big}.numpy_float32_ms"] / out[f"scale.{big}.{dtype}_batch8_ms_per_query"], 2
        )
    small = min(sizes)
    out["memory.anon_growth_mb"] = round(out[f"scale.{big}.rss_anon_mb"] - out[f"scale.{small}.rss_anon_mb"], 1)
    out["memory.anon_growth_from_to"] = [small, big]
    return out


def _matrix_index(manifest: dict, embeddings, scales=None, scan=None):
    """A SearchIndex over bare matrices: no metadata, no fields (the figure is the scoring alone)."""
    from search.index.reader import SearchIndex

    return SearchIndex(SYNTHETIC, manifest, embeddings, scales, {}, None, scan)  # type: ignore[arg-type]


def _child(args) -> None:
    from search.scoring import kernels

    n, file_rows = args.rows, args.file_rows
    arrays = {d: np.load(SYNTHETIC / f"{d}-{file_rows}.npy", mmap_mode="r")[:n] for d in ("float32", "float16", "int8")}
    scales = np.load(SYNTHETIC / f"scales-{file_rows}.npy", mmap_mode="r")[:n]
    indexes = {}
    for dtype, matrix in arrays.items():
        manifest = {"count": n, "dimension": DIM, "dtype": dtype, "fields": [], "version": "synthetic"}
        indexes[dtype] = _matrix_index(manifest, matrix, scales if dtype == "int8" else None)
        indexes[dtype].kernel = kernels.kernel_for(dtype)  # no scan copy here: the plain kernel of the dtype
        indexes[dtype].page_in()  # warm: the figure is compute, not disk
    # float32 storage with its scan copy (what `search build` writes by default): the int8 file is
    # the builder's quantisation of the float32 file, so it is that copy
    residuals = np.load(SYNTHETIC / f"residuals-{file_rows}.npy", mmap_mode="r")[:n]
    scanned = kernels.scanned_kernel_for("float32")
    if scanned is not None:
        indexes["float32_scan"] = _matrix_index(
            {**indexes["float32"].manifest},
            arrays["float32"],
            scan=kernels.ScanBlock(arrays["float32"], arrays["int8"], scales, residuals),
        )
        indexes["float32_scan"].page_in()
    # what `search build` writes by default: the int4 prefilter copy beside each of these
    for name, source in (("int8", "int8"), ("float32_scan", "float32")):
        prefilter = load_prefilter(n, file_rows, source) if name in indexes else None
        if prefilter is not None:
            base = indexes[name]
            indexes[f"{name}_no_prefilter"] = _matrix_index({**base.manifest}, base.embeddings, base.scales, base.scan)
            indexes[f"{name}_no_prefilter"].kernel = base.kernel
            base.prefilter = prefilter
            base.page_in()
    # the same int8 files scored by onnxruntime's MatMulInteger: what runs where int8dot.c is not built
    fallback = _matrix_index({**indexes["int8"].manifest}, arrays["int8"], scales)
    fallback.kernel = kernels.Int8Kernel(native=None)
    indexes["int8_onnxruntime"] = fallback
    rng = np.random.default_rng(99)
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    plain = arrays["float32"]
    sides: dict[str, Callable[[np.ndarray], object]] = {"numpy_float32": lambda q: plain @ q}
    for name, index in indexes.items():
        sides[name] = partial(index.search, k=10)
    # Sides take turns in blocks of queries, each block after one untimed query: a server scans one
    # index again and again, so a side is timed warm (caches, TLB) and not right after another
    # side's gigabyte scan; rounds alternate so drift hits every side alike.
    times: dict[str, list[float]] = {s: [] for s in sides}
    block = max(1, len(queries) // ROUNDS)
    for start in range(0, len(queries), block):
        for side, fn in sides.items():
            fn(queries[start])
            for q in queries[start : start + block]:
                t0 = time.perf_counter()
                fn(q)
                times[side].append(time.perf_counter() - t0)
    out: dict[str, object] = {f"scale.{n}.{s}_ms": round(statistics.median(ts) * 1000, 3) for s, ts in times.items()}
    # batched: 8 queries per pass over the matrix (batch requests)
    batch = queries[:8] if len(queries) >= 8 else np.resize(queries, (8, DIM))
    for dtype, matrix in arrays.items():
        sc = scales if dtype == "int8" else None
        kernels.search_many(matrix, sc, batch, 10)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            kernels.search_many(matrix, sc, batch, 10)
            ts.append(time.perf_counter() - t0)
        out[f"scale.{n}.{dtype}_batch8_ms_per_query"] = round(statistics.median(ts) * 1000 / 8, 3)
    int8_kernel = indexes["int8"].kernel
    native_kernel = int8_kernel.native if isinstance(int8_kernel, kernels.Int8Kernel) else None
    out["scale.int8_kernel"] = native_kernel.path(DIM) if native_kernel is not None else "onnxruntime"
    out[f"scale.{n}.rss_anon_mb"] = proc_status()["RssAnon"]
    emit(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--file-rows", type=int, required=True)
    p.add_argument("--queries", type=int, default=30)
    _child(p.parse_args())
