"""The int4 prefilter copy (search/prefilter.py): packing, a bound never below the exact score, the
compiled kernels against numpy on every SIMD path, and searches through the first pass returning
exactly what the same index returns without it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import search.index.reader as index_module
import search.scoring.prefilter as prefilter_module
from search.errors import IndexLoadError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.format import PREFILTER_FILES, PREFILTER_NAME, PREFILTER_RESIDUALS_NAME
from search.index.reader import SearchIndex
from search.scoring import native
from search.scoring.quantize import pack_int4, quantize_int4_rows, unpack_int4
from tests.conftest import write_jsonl
from tests.vectors import GivenVectors, clustered, clustered_index, index_from_vectors, unit_rows

SECTIONS = ["a", "b", "c"]
_LOADED = native.load()
needs_int4 = pytest.mark.skipif(_LOADED is None, reason="the compiled kernel is not built (no C compiler)")


def int4_paths(dim):
    return sorted({native.load(limit).int4_path(dim) for limit in native.PATH_LIMITS}, key=native.PATH_LIMITS.get)


def int8_paths(dim):
    return sorted({native.load(limit).path(dim) for limit in native.PATH_LIMITS}, key=native.PATH_LIMITS.get)


def query_columns(query):
    from search.scoring.kernels import Int8Kernel

    return Int8Kernel.quantize_queries(np.asarray(query, dtype=np.float32)[None, :])


# -- packing -------------------------------------------------------------------------------------


def test_pack_and_unpack_are_inverse():
    values = np.random.default_rng(0).integers(-7, 8, (50, 384)).astype(np.int8)
    packed = pack_int4(values)
    assert packed.shape == (50, 192) and packed.dtype == np.uint8
    assert ((packed & 0x0F) >= 1).all() and ((packed >> 4) >= 1).all()  # stored as value + 8: 1..15
    assert np.array_equal(unpack_int4(packed), values)
    assert np.array_equal(unpack_int4(packed)[:, :192], values[:, :192])  # low nibbles: first half


def test_residual_bounds_the_distance_to_the_int4_form():
    rng = np.random.default_rng(1)
    rows = np.concatenate(
        [
            unit_rows(rng, 200, 64),
            np.zeros((1, 64), np.float32),
            np.eye(64, dtype=np.float32)[:2],
            rng.standard_normal((3, 64)).astype(np.float32) * 100,
        ]
    )
    packed, scales, residuals = quantize_int4_rows(rows)
    nibbles = unpack_int4(packed)
    assert np.abs(nibbles).max() <= 7 and scales.dtype == residuals.dtype == np.float32
    true = np.linalg.norm(rows.astype(np.float64) - nibbles * scales.astype(np.float64)[:, None], axis=1)
    assert (residuals >= true).all() and (residuals <= true * 1.001 + 1e-12).all()
    assert residuals[200] < 1e-40 and (nibbles[200] == 0).all()  # the zero row (rounded up: the smallest float)
    with pytest.raises(ValueError, match="even dimension"):
        quantize_int4_rows(rows[:, :63])


# -- compiled kernels ------------------------------------------------------------------------------


@needs_int4
@pytest.mark.parametrize("n, dim", [(1003, 384), (517, 128), (77, 64), (9, 40), (0, 384)])
@pytest.mark.parametrize("n_queries", [1, 3, 16])
def test_int4_scores_match_numpy_on_every_path(n, dim, n_queries):
    rng = np.random.default_rng(n + dim + n_queries)
    packed = pack_int4(rng.integers(-7, 8, (n, dim)).astype(np.int8))
    scales = rng.random(n, dtype=np.float32)
    columns = rng.integers(-127, 128, (2 * n_queries, dim), dtype=np.int8)
    weights = rng.random(2 * n_queries, dtype=np.float32) / 100
    dots = unpack_int4(packed).astype(np.int64) @ columns.T.astype(np.int64)
    expected = (dots.reshape(n, n_queries, 2) * weights.reshape(n_queries, 2)).sum(-1) * scales[:, None]
    paths = int4_paths(dim)
    if dim == 384:
        assert paths[-1] != "generic"  # this CPU takes a SIMD path for the real dimension
    for path in paths:
        out = native.load(path).int4_scores(packed, scales, columns, weights)
        assert out.shape == (n, n_queries)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * max(1.0, float(np.abs(expected).max(initial=0))))


@needs_int4
@pytest.mark.parametrize("make_rows", [unit_rows, clustered])
def test_upper_bound_is_never_below_the_exact_score(make_rows):
    rng = np.random.default_rng(4)
    rows = make_rows(rng, 2000, 384)
    packed, scales, residuals = quantize_int4_rows(rows)
    from search.scoring.prefilter import Prefilter

    for path in int4_paths(384):
        prefilter = Prefilter(packed, scales, residuals, native.load(path))
        for query in (rows[17], -rows[17], unit_rows(rng, 1, 384)[0], rows[5] * 3.0):
            upper, _ = prefilter.upper_bounds(slice(None), query_columns(query), float(np.linalg.norm(query)))
            exact = rows.astype(np.float64) @ query.astype(np.float64)
            assert (upper >= exact).all()
            assert np.median(upper - exact) < 0.2 * np.linalg.norm(query)  # and not uselessly loose


@needs_int4
@pytest.mark.parametrize("n, top", [(5000, 20), (5000, 1), (15, 40), (5000, 0)])
def test_upper_bounds_also_return_the_rows_with_the_best_int4_scores(n, top):
    rng = np.random.default_rng(n + top)
    rows = unit_rows(rng, n, 384)
    from search.scoring.prefilter import Prefilter

    prefilter = Prefilter(*quantize_int4_rows(rows), native.load())
    columns = query_columns(rows[3])
    for path in int4_paths(384):
        kernel = native.load(path)
        upper, best = Prefilter(*prefilter[:3], kernel).upper_bounds(slice(None), columns, 1.0, top=top)
        approx = kernel.int4_scores(prefilter.packed, prefilter.scales, columns.native_columns, columns.native_weights)[
            :, 0
        ]
        assert len(best) == min(top, n)
        assert set(best.tolist()) == set(np.argsort(-approx, kind="stable")[: min(top, n)].tolist())
        np.testing.assert_array_equal(
            upper, Prefilter(*prefilter[:3], kernel).upper_bounds(slice(None), columns, 1.0)[0]
        )


@needs_int4
def test_scores_at_reads_listed_rows_in_place():
    rng = np.random.default_rng(6)
    rows = rng.integers(-127, 128, (3001, 384), dtype=np.int8)
    scales = rng.random(3001, dtype=np.float32)
    columns = rng.integers(-127, 128, (2, 384), dtype=np.int8)
    weights = rng.random(2, dtype=np.float32) / 100
    listed = np.sort(rng.choice(3001, 333, replace=False))
    for path in int8_paths(384):
        kernel = native.load(path)
        whole = kernel.scores(rows, scales, columns, weights)[:, 0]
        np.testing.assert_array_equal(kernel.scores_at(rows, listed, scales, columns, weights), whole[listed])
        assert kernel.scores_at(rows, np.empty(0, np.int64), scales, columns, weights).shape == (0,)
        with pytest.raises(ValueError, match="outside"):
            kernel.scores_at(rows, np.array([3001]), scales, columns, weights)


# -- searches through the first pass ---------------------------------------------------------------


@pytest.fixture(scope="module", params=["float32", "float16", "int8"])
def pair(request, tmp_path_factory):
    """(index searched through its int4 copy, the same files searched without it, matrix)."""
    folder, matrix = clustered_index(tmp_path_factory.mktemp("pf") / "index", request.param, SECTIONS)
    first_pass, plain = SearchIndex.open(folder), SearchIndex.open(folder)
    plain.prefilter = None
    return first_pass, plain, matrix


@needs_int4
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 60),
    offset=st.integers(0, 30),
    wanted=st.sets(st.sampled_from(SECTIONS), max_size=2),
    min_score=st.one_of(st.none(), st.floats(0.0, 0.9)),
    chunk=st.sampled_from([700, 3000, 65536]),
    excluded=st.integers(0, 3),
    heap_extra=st.sampled_from([0, 4096]),
)
def test_first_pass_returns_exactly_what_the_index_returns_without_it(
    pair, monkeypatch, seed, k, offset, wanted, min_score, chunk, excluded, heap_extra
):
    first_pass, plain, matrix = pair
    assert first_pass.prefilter is not None
    monkeypatch.setattr(index_module, "CHUNK_ROWS", chunk)  # several chunks: the floor carries over
    monkeypatch.setattr(index_module, "MAX_HEAP_EXTRA", heap_extra)  # seeds of filtered searches: heap or numpy
    monkeypatch.setattr(prefilter_module, "MAX_PASS_SHARE", 1.0)  # the pass on for every search
    rng = np.random.default_rng(seed)
    query = matrix[seed % len(matrix)] if seed % 3 == 0 else unit_rows(rng, 1, 384)[0]
    args = dict(
        k=k,
        offset=offset,
        filters={"section": sorted(wanted)} if wanted else None,
        min_score=min_score,
        exclude_rows=[int(r) for r in rng.choice(len(matrix), excluded, replace=False)],
    )
    assert first_pass.search(query, **args) == plain.search(query, **args)  # same rows, same scores, bit for bit


@needs_int4
def test_first_pass_leaves_most_rows_unread(pair, monkeypatch):
    first_pass, _, matrix = pair
    listed = []
    original = SearchIndex._score_listed

    def counting(self, rows, *args, **kwargs):
        listed.append(len(rows))
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(SearchIndex, "_score_listed", counting)
    monkeypatch.setattr(prefilter_module, "MAX_PASS_SHARE", 1.0)
    assert first_pass.search(matrix[100], k=10)[0].row == 100
    assert 0 < sum(listed) < len(matrix) / 10


def test_pass_rate_switches_the_pass_off_where_it_lets_too_much_through_and_probes_again():
    rate = prefilter_module.PassRate()
    assert rate.use()
    for _ in range(10):
        rate.record(30, 100)  # 30% let through: the pass costs more than it saves
    assert rate.share > prefilter_module.MAX_PASS_SHARE
    uses = [rate.use() for _ in range(3 * prefilter_module.PROBE_EVERY)]
    assert uses.count(True) == 3 and uses[prefilter_module.PROBE_EVERY - 1]  # one probe per PROBE_EVERY
    for _ in range(20):
        rate.record(1, 1000)  # the data changed (an index swap): the pass pays again
    assert rate.use() and rate.share < prefilter_module.MAX_PASS_SHARE
    rate.record(0, 0)  # a search that scanned nothing (all rows filtered out) changes nothing
    assert rate.share < prefilter_module.MAX_PASS_SHARE


@needs_int4
def test_flat_scores_switch_the_pass_off_with_the_same_results(tmp_path):
    rng = np.random.default_rng(12)
    matrix = unit_rows(rng, 3000, 384)  # random directions: no top stands out, most rows pass
    index = SearchIndex.open(index_from_vectors(tmp_path / "flat", matrix))
    plain = SearchIndex.open(tmp_path / "flat")
    plain.prefilter = None
    queries = unit_rows(rng, 40, 384)
    for q in queries:
        assert index.search(q, k=10) == plain.search(q, k=10)
    assert index.pass_rate.share > prefilter_module.MAX_PASS_SHARE and index.pass_rate.skipped > 0


def test_builder_writes_the_copy_and_can_leave_it_out(tmp_path):
    matrix = unit_rows(np.random.default_rng(5), 50, 32)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"i{i}", "title": f"T{i}", "text": f"x {i}"} for i in range(50)])
    for dtype in ("float32", "float16", "int8"):
        for prefilter in (True, False):
            out = tmp_path / f"{dtype}-{prefilter}"
            manifest = build_index(
                corpus,
                GivenVectors(matrix, "fp"),
                out,
                CorpusSpec(),
                BuildOptions(dtype=dtype, prefilter=prefilter, show_progress=False),
            )
            present = [(out / name).exists() for name in PREFILTER_FILES]
            if prefilter:
                assert manifest["prefilter"] == {"dtype": "int4", "files": list(PREFILTER_FILES)}
                assert all(present) and all(name in manifest["files"] for name in PREFILTER_FILES)
                index = SearchIndex.open(out)
                stored = np.asarray(index.embeddings, dtype=np.float32)
                if index.scales is not None:
                    stored = stored * np.asarray(index.scales)[:, None]
                packed, scales, residuals = quantize_int4_rows(stored)  # the copy is of what is stored
                assert np.array_equal(
                    np.asarray(index.prefilter.packed if index.prefilter else np.load(out / PREFILTER_NAME)), packed
                )
            else:
                assert manifest["prefilter"] is None and not any(present)
                assert SearchIndex.open(out).prefilter is None


@pytest.mark.parametrize("name", [PREFILTER_NAME, PREFILTER_RESIDUALS_NAME])
def test_damaged_prefilter_files_are_named(tmp_path, name):
    folder = index_from_vectors(tmp_path / "idx", unit_rows(np.random.default_rng(2), 100, 32))
    path = folder / name
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(IndexLoadError, match=name + r": size .*truncated"):
        SearchIndex.open(folder)
    path.unlink()
    with pytest.raises(IndexLoadError, match=name + ": missing file"):
        SearchIndex.open(folder)


def test_without_the_compiled_kernel_the_copy_is_ignored(tmp_path, monkeypatch):
    matrix = unit_rows(np.random.default_rng(2), 100, 32)
    folder = index_from_vectors(tmp_path / "idx", matrix)
    monkeypatch.setattr(native, "load", lambda limit=None: None)
    index = SearchIndex.open(folder)
    assert index.prefilter is None
    assert index.search(matrix[3], k=5)[0].row == 3
