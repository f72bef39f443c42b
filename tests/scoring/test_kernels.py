"""The scoring kernels (search/kernels.py) return what brute-force numpy returns on the stored vectors.

Storage is written by the real builder (tests/vectors.py); the reference is float32 numpy over the
stored rows (dequantised for int8), ties by lower row."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import search.index.reader as index_module
import search.scoring.int8 as int8
import search.scoring.kernels as kernels
from search.index.reader import SearchIndex
from search.scoring import onnx_graph
from tests.vectors import index_from_vectors

DTYPES = ["float32", "float16", "int8"]
SECTIONS = ["a", "b", "c", "d"]


def unit_rows(rng, n, d):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def stored(index: SearchIndex) -> np.ndarray:
    m = np.asarray(index.embeddings, dtype=np.float32)
    return m * np.asarray(index.scales)[:, None] if index.scales is not None else m


def brute_force(matrix, query, k, offset=0, mask=None, min_score=None):
    scores = matrix @ query
    rows = np.arange(len(matrix)) if mask is None else np.flatnonzero(mask)
    if min_score is not None:
        rows = rows[scores[rows] >= min_score]
    order = sorted(rows.tolist(), key=lambda r: (-scores[r], r))[offset : offset + k]
    return order, scores[order]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    rng = np.random.default_rng(11)
    # clustered rows (like real embeddings: many near-equal scores at the top) plus a duplicate pair
    centres = unit_rows(rng, 12, 48)
    matrix = centres[rng.integers(0, 12, 3000)] + 0.15 * rng.standard_normal((3000, 48)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix[20] = matrix[10]
    sections = [SECTIONS[i % 4] for i in range(3000)]
    base = tmp_path_factory.mktemp("kernels")
    return (
        {d: SearchIndex.open(index_from_vectors(base / d, matrix, sections, dtype=d)) for d in DTYPES},
        matrix,
        np.array(sections),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_equals_brute_force_on_stored_vectors(indexes, dtype, monkeypatch):
    by_dtype, matrix, _ = indexes
    index = by_dtype[dtype]
    reference = stored(index)
    rng = np.random.default_rng(5)
    queries = [matrix[7], matrix[10], *unit_rows(rng, 6, 48)]
    for chunk_rows, sub_rows in ((65536, 4096), (700, 128)):  # one block, then many blocks and sub-blocks
        monkeypatch.setattr(index_module, "CHUNK_ROWS", chunk_rows)
        monkeypatch.setattr(int8, "INT8_SUB_BLOCK_ROWS", sub_rows)
        monkeypatch.setattr(kernels, "FLOAT16_SUB_BLOCK_ROWS", sub_rows)
        for query in queries:
            for k in (1, 10, 57):
                hits = index.search(query, k=k)
                rows, scores = brute_force(reference, query, k)
                assert [h.row for h in hits] == rows
                assert np.allclose([h.score for h in hits], scores, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicate_rows_tie_by_row(indexes, dtype):
    by_dtype, matrix, _ = indexes
    hits = by_dtype[dtype].search(matrix[10], k=2)
    assert [h.row for h in hits] == [10, 20]
    assert hits[0].score == hits[1].score


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 40),
    offset=st.integers(0, 30),
    wanted=st.sets(st.sampled_from(SECTIONS), max_size=2),
    min_score=st.one_of(st.none(), st.floats(0.0, 0.9)),
)
def test_int8_with_filters_offsets_and_min_score(indexes, seed, k, offset, wanted, min_score):
    by_dtype, matrix, sections = indexes
    index = by_dtype["int8"]
    rng = np.random.default_rng(seed)
    query = matrix[seed % len(matrix)] if seed % 2 else unit_rows(rng, 1, 48)[0]
    mask = np.isin(sections, sorted(wanted)) if wanted else None
    hits = index.search(
        query, k=k, offset=offset, min_score=min_score, filters={"section": sorted(wanted)} if wanted else None
    )
    rows, scores = brute_force(stored(index), query, k, offset, mask, min_score)
    assert [h.row for h in hits] == rows
    assert np.allclose([h.score for h in hits], scores, atol=1e-5)


def test_int8_error_bound_holds():
    rng = np.random.default_rng(2)
    vectors = unit_rows(rng, 5000, 384)
    from search.scoring.quantize import quantize_int8

    pairs = [quantize_int8(v) for v in vectors]
    block = np.stack([p[0] for p in pairs])
    scales = np.array([p[1] for p in pairs], dtype=np.float32)
    kernel = kernels.kernel_for("int8")
    queries = unit_rows(rng, 5, 384)
    prepared = kernel.quantize_queries(queries)
    approx = kernel.approx(block, scales, prepared)
    exact = (block.astype(np.float32) @ queries.T) * scales[:, None]
    for j in range(len(queries)):
        bound = kernel.error_bound(scales, 384, prepared[2][j], approx[:, j])
        assert (np.abs(exact[:, j] - approx[:, j]) <= bound).all()
        assert np.median(bound) < 1e-3  # tight enough that only near-ties get rescored


@pytest.mark.parametrize("dtype", DTYPES)
def test_search_many_equals_one_at_a_time(indexes, dtype):
    by_dtype, matrix, _ = indexes
    index = by_dtype[dtype]
    queries = np.concatenate([matrix[:3], unit_rows(np.random.default_rng(9), 9, 48)])  # 12 > one int8 group
    results = kernels.search_many(index.embeddings, index.scales, queries, 10, chunk_rows=1000)
    for query, (rows, scores) in zip(queries, results):
        hits = index.search(query, k=10)
        assert rows.tolist() == [h.row for h in hits]
        assert np.allclose(scores, [h.score for h in hits], atol=1e-5)


def test_kernel_graphs_are_valid_onnx():
    onnx = pytest.importorskip("onnx")  # export-time dependency: checks our hand-written protobuf
    f32, u8 = onnx_graph.ELEM["float32"], onnx_graph.ELEM["uint8"]
    data = onnx_graph.model_bytes(
        [onnx_graph.node("Cast", ["A"], ["Y"], to=f32)],
        [onnx_graph.value("A", u8, ["n", 384])],
        [onnx_graph.value("Y", f32, ["n", 384])],
    )
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert model.graph.node[0].op_type == "Cast" and model.graph.node[0].attribute[0].i == f32
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 384
