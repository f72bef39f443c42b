"""The compiled int8 kernel (search/scoring/native/int8dot.c): every SIMD path returns the integers numpy
computes, the Int8Kernel returns the same rows with it as with onnxruntime, and it builds and loads
the way the Makefile and deploy/taskroot.py use it."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import search.scoring.kernels as kernels
from search.index.reader import SearchIndex
from search.scoring import native
from search.scoring.quantize import quantize_int8
from tests.vectors import index_from_vectors

HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@pytest.fixture(scope="module")
def kernel():
    loaded = native.load()
    if loaded is None:
        if HAVE_CC:  # `make test` builds it: a missing object here is a bug, not an environment gap
            pytest.fail(
                "search/scoring/native/_int8dot.so is not built although a C compiler exists (run `make native`)"
            )
        pytest.skip("no C compiler here: the native kernel is not built")
    return loaded


def reference(rows, scales, columns, weights):
    dots = rows.astype(np.int64) @ columns.T.astype(np.int64)  # exact integers
    n_q = columns.shape[0] // 2
    return (dots.reshape(len(rows), n_q, 2) * weights.reshape(n_q, 2)).sum(-1) * scales[:, None]


def random_case(rng, n, dim, n_queries):
    rows = rng.integers(-127, 128, (n, dim), dtype=np.int8)
    scales = rng.random(n, dtype=np.float32) / 100
    columns = rng.integers(-127, 128, (2 * n_queries, dim), dtype=np.int8)
    weights = rng.random(2 * n_queries, dtype=np.float32) / 100
    return rows, scales, columns, weights


def available_paths(dim):
    return sorted({native.load(limit).path(dim) for limit in native.PATH_LIMITS}, key=native.PATH_LIMITS.get)


@pytest.mark.parametrize("n, dim", [(1003, 384), (517, 96), (77, 40), (7, 384), (0, 384)])
@pytest.mark.parametrize("n_queries", [1, 3, 8, 16])
def test_every_path_matches_integer_reference(kernel, n, dim, n_queries):
    rows, scales, columns, weights = random_case(np.random.default_rng(n + dim + n_queries), n, dim, n_queries)
    expected = reference(rows, scales, columns, weights)
    results = {}
    for path in available_paths(dim):
        out = native.load(path).scores(rows, scales, columns, weights)
        assert out.shape == (n, n_queries) and out.dtype == np.float32
        # float32 rounding of the two weighted columns, relative to the largest score
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * max(1.0, float(np.abs(expected).max(initial=0))))
        results[path] = out
    first = next(iter(results.values()))
    for path, out in results.items():  # same integers, same float steps: bit-identical across paths
        assert np.array_equal(out, first), path


def test_this_machine_takes_a_simd_path(kernel):
    flags = Path("/proc/cpuinfo").read_text().split() if sys.platform == "linux" else []
    expected = (
        "avx512_vnni"
        if {"avx512_vnni", "avx512bw", "avx512dq"} <= set(flags)
        else ("avx2" if {"avx2", "fma"} <= set(flags) else "generic")
    )
    assert kernel.path(384) == expected


def test_extreme_values_do_not_saturate(kernel):
    # AVX2 multiplies into int16 pairs: +-127 everywhere is the worst case it must survive
    rows = np.full((64, 384), -127, dtype=np.int8)
    rows[::2] = 127
    columns = np.full((2, 384), 127, dtype=np.int8)
    columns[1] = -127
    scales, weights = np.ones(64, np.float32), np.ones(2, np.float32)
    for path in available_paths(384):
        out = native.load(path).scores(rows, scales, columns, weights)
        np.testing.assert_array_equal(out[:, 0], reference(rows, scales, columns, weights)[:, 0])


def test_bad_shapes_are_refused(kernel):
    rows, scales, columns, weights = random_case(np.random.default_rng(0), 10, 64, 2)
    with pytest.raises(ValueError):
        kernel.scores(rows, scales[:5], columns, weights)
    with pytest.raises(ValueError):
        kernel.scores(rows, scales, columns[:, :32], weights)
    with pytest.raises(ValueError):
        kernel.scores(rows, scales, columns[:3], weights[:3])


def test_int8_kernel_gives_the_same_candidates_with_or_without_native(kernel):
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = [quantize_int8(v) for v in vectors]
    block = np.stack([p[0] for p in pairs])
    scales = np.array([p[1] for p in pairs], dtype=np.float32)
    with_native, with_ort = kernels.Int8Kernel(native=kernel), kernels.Int8Kernel(native=None)
    queries = vectors[:5] * 0.9 + rng.standard_normal((5, 384)).astype(np.float32) * 0.02
    prepared = with_native.quantize_queries(queries)
    np.testing.assert_allclose(
        with_native.approx(block, scales, prepared), with_ort.approx(block, scales, prepared), rtol=1e-5, atol=1e-6
    )
    stored = kernels.Stored(block, scales)
    for query in queries:
        for rows in (slice(None), np.arange(0, 3000, 3)):  # a range, and listed rows (read in place by native)
            a = with_native.score(stored, rows, query, need=10, floor=-np.inf, prepared=with_native.prepare(query))
            b = with_ort.score(stored, rows, query, need=10, floor=-np.inf, prepared=with_ort.prepare(query))
            top_a, top_b = (kernels.top_rows(found, exact, 10) for found, exact in (a, b))
            assert top_a[0].tolist() == top_b[0].tolist()
            np.testing.assert_array_equal(top_a[1], top_b[1])


def test_index_search_equal_with_either_kernel(kernel, tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    matrix = rng.standard_normal((5000, 48)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    index = SearchIndex.open(index_from_vectors(tmp_path / "idx", matrix, dtype="int8"))
    assert isinstance(index.kernel, kernels.Int8Kernel) and index.kernel.native is not None
    queries = matrix[:20] + rng.standard_normal((20, 48)).astype(np.float32) * 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)  # unit, as the encoder gives (the score guard)
    native_hits = [[(h.row, h.score) for h in index.search(q, k=10)] for q in queries]
    index.kernel, index.prefilter = kernels.Int8Kernel(native=None), None
    ort_hits = [[(h.row, h.score) for h in index.search(q, k=10)] for q in queries]
    assert native_hits == ort_hits


@pytest.mark.slow  # runs the C compiler
def test_build_script_compiles_a_loadable_object(tmp_path):
    if not HAVE_CC:
        pytest.skip("no C compiler here")
    out = tmp_path / "k.so"
    done = subprocess.run(
        [sys.executable, str(native.HERE / "build.py"), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    import ctypes

    assert ctypes.CDLL(str(out)).int8dot_path(384, 1) == 1  # the generic path is always there


def test_build_without_compiler_fails_cleanly(tmp_path):
    with pytest.raises(RuntimeError, match="cannot run"):
        native.build(tmp_path / "k.so", compiler=str(tmp_path / "no-such-cc"))
    assert not list(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, str(native.HERE / "build.py"), "--optional", "--out", str(tmp_path / "k.so")],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert done.returncode == 0 and "warning: no C compiler" in done.stderr
