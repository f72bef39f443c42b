"""The int8 scan copy of float32/float16 indexes (kernels.ScannedKernel): written by the builder,
validated on open, and searching through it returns what the plain kernel returns."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import search.scoring.kernels as kernels
from search.errors import IndexLoadError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.format import SCAN_FILES, SCAN_NAME, SCAN_RESIDUALS_NAME
from search.index.reader import SearchIndex
from search.scoring.quantize import quantize_int8
from tests.conftest import write_jsonl
from tests.vectors import GivenVectors, clustered_index, index_from_vectors, unit_rows

SECTIONS = ["a", "b", "c"]
needs_native = pytest.mark.skipif(
    kernels.kernel_for("int8").native is None, reason="the compiled int8 kernel is not built (no C compiler)"
)


@pytest.fixture(scope="module", params=["float32", "float16"])
def pair(request, tmp_path_factory):
    """(index searched through its scan copy, the same files searched by the plain kernel, sections)."""
    folder, matrix = clustered_index(tmp_path_factory.mktemp("scan") / "index", request.param, SECTIONS)
    scanned, plain = SearchIndex.open(folder), SearchIndex.open(folder)
    plain.kernel = kernels.kernel_for(request.param)
    scanned.prefilter = plain.prefilter = None  # the int4 first pass has its own tests (test_prefilter.py)
    return scanned, plain, matrix


@needs_native
def test_builder_writes_the_scan_copy(pair):
    scanned, plain, matrix = pair
    assert scanned.manifest["scan"] == {"dtype": "int8", "files": list(SCAN_FILES)}
    assert all(name in scanned.manifest["files"] for name in SCAN_FILES)
    assert isinstance(scanned.kernel, kernels.ScannedKernel) and not plain.kernel.scanned
    vectors, scan, scales, residuals = scanned.scan
    stored = np.asarray(vectors, dtype=np.float32)
    for row in (0, 1, 1234, len(stored) - 1):  # the builder's per-row int8 format, and a true bound
        q, s = quantize_int8(stored[row])
        assert np.array_equal(scan[row], q) and scales[row] == s
        assert np.linalg.norm(stored[row].astype(np.float64) - q * np.float64(s)) <= residuals[row]


@needs_native
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 100),
    offset=st.integers(0, 40),
    wanted=st.sets(st.sampled_from(SECTIONS), max_size=2),
    min_score=st.one_of(st.none(), st.floats(0.0, 0.9)),
)
def test_scan_copy_returns_what_the_plain_kernel_returns(pair, seed, k, offset, wanted, min_score):
    scanned, plain, matrix = pair
    rng = np.random.default_rng(seed)
    query = matrix[seed % len(matrix)] if seed % 3 == 0 else unit_rows(rng, 1, 384)[0]
    filters = {"section": sorted(wanted)} if wanted else None
    args = dict(k=k, offset=offset, filters=filters, min_score=min_score)
    got, expected = scanned.search(query, **args), plain.search(query, **args)
    assert len(got) == len(expected)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=0, atol=1e-6)
    # the same rows in the same order, except where two scores are within float32 rounding
    # (the plain kernel sums with BLAS gemv, rescoring row by row): there they may trade places
    for a, b in zip(got, expected):
        assert a.row == b.row or abs(a.score - b.score) <= 1e-6
    assert {h.row for h in got if h.score > got[-1].score + 1e-6} == {
        h.row for h in expected if h.score > got[-1].score + 1e-6
    }


@needs_native
def test_scan_copy_rescores_few_rows(pair, monkeypatch):
    scanned, _, matrix = pair
    seen = []
    original = kernels.ScannedKernel.exact

    def counting(self, block, positions, query):
        seen.append(len(positions))
        return original(self, block, positions, query)

    monkeypatch.setattr(kernels.ScannedKernel, "exact", counting)
    scanned.search(unit_rows(np.random.default_rng(1), 1, 384)[0], k=10)
    assert sum(seen) < len(matrix) / 10  # the point of the copy: stored vectors mostly unread


def test_no_scan_copy_option_and_int8(tmp_path):
    rng = np.random.default_rng(5)
    matrix = unit_rows(rng, 50, 32)
    records = [{"id": f"i{i}", "title": f"T{i}", "text": f"x {i}"} for i in range(50)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    for dtype, scan_copy in (("float32", False), ("int8", True)):
        out = tmp_path / f"{dtype}-{scan_copy}"
        manifest = build_index(
            corpus,
            GivenVectors(matrix, "fp"),
            out,
            CorpusSpec(),
            BuildOptions(dtype=dtype, scan_copy=scan_copy, show_progress=False),
        )
        assert manifest["scan"] is None and not any((out / n).exists() for n in SCAN_FILES)
        index = SearchIndex.open(out)
        assert index.scan is None and not index.kernel.scanned


def test_without_the_compiled_kernel_the_plain_kernel_is_used(tmp_path, monkeypatch):
    folder = index_from_vectors(tmp_path / "idx", unit_rows(np.random.default_rng(2), 100, 32))
    monkeypatch.setattr(kernels.kernel_for("int8"), "native", None)
    index = SearchIndex.open(folder)
    assert index.scan is not None and isinstance(index.kernel, kernels.Float32Kernel)
    assert len(index.search(index.vector(3), k=5)) == 5


@pytest.mark.parametrize("name", [SCAN_NAME, SCAN_RESIDUALS_NAME])
def test_damaged_scan_files_are_named(tmp_path, name):
    folder = index_from_vectors(tmp_path / "idx", unit_rows(np.random.default_rng(2), 100, 32))
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(IndexLoadError, match=name + r": size .*truncated"):
        SearchIndex.open(folder)
    path.unlink()
    with pytest.raises(IndexLoadError, match=name + ": missing file"):
        SearchIndex.open(folder)


def test_scan_listed_on_an_int8_index_is_refused(tmp_path):
    folder = index_from_vectors(tmp_path / "idx", unit_rows(np.random.default_rng(2), 100, 32), dtype="int8")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["scan"] = {"dtype": "int8", "files": list(SCAN_FILES)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="no scan copy"):
        SearchIndex.open(folder)


@needs_native
def test_a_rows_score_does_not_depend_on_what_else_was_rescored(pair):
    scanned, _, matrix = pair
    query = unit_rows(np.random.default_rng(11), 1, 384)[0]
    wide = {h.row: h.score for h in scanned.search(query, k=100)}
    for args in ({"k": 5}, {"k": 30, "offset": 7}, {"k": 100, "min_score": sorted(wide.values())[50]}):
        for h in scanned.search(query, **args):
            assert h.score == wide[h.row]  # bit for bit: rescoring sums each row in a fixed order


def test_rowwise_dot_is_independent_of_the_batch():
    rng = np.random.default_rng(0)
    rows, query = rng.standard_normal((500, 384)).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    whole = kernels.rowwise_dot(rows, query)
    for n in (1, 3, 7, 9, 100):
        picked = rng.choice(500, n, replace=False)
        assert np.array_equal(kernels.rowwise_dot(rows[picked], query), whole[picked])
    np.testing.assert_allclose(whole, rows @ query, rtol=1e-5, atol=1e-5)
