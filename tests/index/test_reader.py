import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.errors import IndexLoadError, IndexMismatchError, QueryError
from search.index.reader import SearchIndex
from tests.vectors import index_from_vectors

SECTIONS = ["games", "x11", "libs"]


def unit_rows(rng, n, d):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def brute_force(matrix, query, k, offset, mask=None, min_score=None):
    scores = matrix @ query
    rows = np.arange(len(matrix))
    if mask is not None:
        rows = rows[mask]
    if min_score is not None:
        rows = rows[scores[rows] >= min_score]
    order = sorted(rows.tolist(), key=lambda r: (-scores[r], r))  # plain argsort semantics, ties by row
    return order[offset : offset + k]


@pytest.fixture(scope="module")
def random_index(tmp_path_factory):
    rng = np.random.default_rng(7)
    matrix = unit_rows(rng, 500, 16)
    matrix[10] = matrix[20]  # exact ties must be broken by row
    sections = [SECTIONS[i % 3] for i in range(500)]
    folder = index_from_vectors(tmp_path_factory.mktemp("idx") / "index", matrix, sections)
    return SearchIndex.open(folder), matrix, np.array(sections)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 100),
    offset=st.integers(0, 60),
    wanted=st.sets(st.sampled_from(SECTIONS + ["nope"]), max_size=3),
    min_score=st.one_of(st.none(), st.floats(-0.5, 0.5)),
)
def test_top_k_equals_brute_force(random_index, seed, k, offset, wanted, min_score):
    index, matrix, sections = random_index
    query = matrix[seed % len(matrix)] if seed % 5 == 0 else unit_rows(np.random.default_rng(seed), 1, 16)[0]
    filters = {"section": sorted(wanted)} if wanted else None
    mask = np.isin(sections, sorted(wanted)) if wanted else None
    hits = index.search(query, k=k, offset=offset, filters=filters, min_score=min_score)
    expected = brute_force(matrix, query, k, offset, mask, min_score)
    assert [h.row for h in hits] == expected
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_ties_broken_by_row_and_exclusion(random_index):
    index, matrix, _ = random_index
    hits = index.search(matrix[10], k=2)
    assert [h.row for h in hits] == [10, 20]
    assert [h.row for h in index.search(matrix[10], k=1, exclude_rows=[10])] == [20]


def test_filter_returns_k_when_k_match(random_index):
    index, matrix, sections = random_index
    hits = index.search(matrix[0], k=50, filters={"section": ["libs"]})
    assert len(hits) == 50 and all(sections[h.row] == "libs" for h in hits)


def test_unknown_filter_field_is_a_query_error(random_index):
    index, matrix, _ = random_index
    with pytest.raises(QueryError, match="unknown filter field 'colour'"):
        index.search(matrix[0], filters={"colour": ["red"]})


def test_chunked_scoring_matches_one_shot(tmp_path, monkeypatch):
    import search.index.reader as index_module

    rng = np.random.default_rng(3)
    matrix = unit_rows(rng, 300, 8)
    index = SearchIndex.open(index_from_vectors(tmp_path / "i", matrix))
    query = unit_rows(rng, 1, 8)[0]
    whole = index.search(query, k=40)
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 7)  # many chunks, ties across chunk borders
    for hits in (index.search(query, k=40), index.search(query, k=40, filters={"section": ["s"]})):
        assert [h.row for h in hits] == [h.row for h in whole]
        # BLAS may sum a 7-row block in another order than a 300-row one: last-bit differences only
        assert np.allclose([h.score for h in hits], [h.score for h in whole], atol=1e-6)


# -- corrupt or mismatched indexes: each gives a typed error naming the file ----------------------


@pytest.fixture()
def fresh_index(tmp_path):
    rng = np.random.default_rng(1)
    return index_from_vectors(tmp_path / "index", unit_rows(rng, 50, 8))


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_missing_folder_and_manifest(tmp_path, fresh_index):
    with pytest.raises(IndexLoadError, match="index folder not found"):
        SearchIndex.open(tmp_path / "nothing")
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    with pytest.raises(IndexLoadError, match=r"corpus.jsonl: not a folder \(an index is a folder built by"):
        SearchIndex.open(tmp_path / "corpus.jsonl")
    (fresh_index / "manifest.json").unlink()
    with pytest.raises(IndexLoadError, match="manifest.json: missing file"):
        SearchIndex.open(fresh_index)


def test_missing_data_file(fresh_index):
    (fresh_index / "field-section.npy").unlink()
    with pytest.raises(IndexLoadError, match="field-section.npy: missing file"):
        SearchIndex.open(fresh_index)


def test_truncated_embeddings(fresh_index):
    path = fresh_index / "embeddings.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexLoadError, match=r"embeddings.npy: size .*truncated"):
        SearchIndex.open(fresh_index)


def test_corrupt_npy_header(fresh_index):
    path = fresh_index / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"GARBAG"  # same size, broken magic
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="embeddings.npy: not a readable .npy"):
        SearchIndex.open(fresh_index)


def test_wrong_dtype(fresh_index):
    edit_manifest(fresh_index, lambda m: m.update(dtype="float16"))
    with pytest.raises(IndexLoadError, match="embeddings.npy: dtype float32 but the manifest says float16"):
        SearchIndex.open(fresh_index)


def test_wrong_count(fresh_index):
    edit_manifest(fresh_index, lambda m: m.update(count=49))
    with pytest.raises(IndexLoadError, match="shape"):
        SearchIndex.open(fresh_index)


def test_dimension_and_fingerprint_mismatch(fresh_index):
    with pytest.raises(IndexMismatchError, match="dimension 8 but the model gives 384"):
        SearchIndex.open(fresh_index, dimension=384)
    with pytest.raises(IndexMismatchError, match="rebuild the index with this model"):
        SearchIndex.open(fresh_index, model_fingerprint="another-model")


def test_flipped_byte_caught_by_verify(fresh_index):
    path = fresh_index / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    SearchIndex.open(fresh_index).close()  # sizes match: cheap open accepts it
    with pytest.raises(IndexLoadError, match="embeddings.npy: sha256 differs"):
        SearchIndex.open(fresh_index, verify=True)


def test_corrupt_metadata_store(fresh_index):
    path = fresh_index / "metadata.sqlite"
    path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(IndexLoadError, match="metadata.sqlite: not a valid metadata store"):
        SearchIndex.open(fresh_index)


def test_manifest_missing_key(fresh_index):
    edit_manifest(fresh_index, lambda m: m.pop("files"))
    with pytest.raises(IndexLoadError, match="manifest key files: missing"):
        SearchIndex.open(fresh_index)


def test_bad_json_manifest(fresh_index):
    (fresh_index / "manifest.json").write_text("{not json")
    with pytest.raises(IndexLoadError, match="unreadable manifest"):
        SearchIndex.open(fresh_index)


def test_opening_reads_little_of_the_metadata(demo_index):
    """Opening must not parse the metadata store whole: count the bytes this process reads."""

    def read_chars():
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])

    size = (demo_index / "metadata.sqlite").stat().st_size
    SearchIndex.open(demo_index).close()  # lazy imports (the native kernel, ctypes) are not the store
    before = read_chars()
    index = SearchIndex.open(demo_index)
    opened = read_chars() - before
    assert opened < size / 10, f"open read {opened} bytes of a {size}-byte metadata store"
    assert index.metadata.rows([5])[5]["id"]


# -- issue 16 item 4: every malformed artefact is an IndexLoadError naming the file and the key ---


def replace_file(folder, name, data: bytes):
    """Put ``data`` in place of ``name`` and make the manifest agree (size and sha256), as a buggy
    builder would: only the content itself can then be wrong."""
    import hashlib

    (folder / name).write_bytes(data)
    edit_manifest(
        folder,
        lambda m: m["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()),
    )


def test_npz_renamed_to_npy_is_a_load_error(fresh_index, tmp_path):
    import io

    buf = io.BytesIO()
    np.savez(buf, embeddings=np.zeros((50, 8), dtype=np.float32))
    replace_file(fresh_index, "embeddings.npy", buf.getvalue())
    with pytest.raises(IndexLoadError, match=r"embeddings.npy: not a .npy file \(an .npz archive\?\)"):
        SearchIndex.open(fresh_index)


def test_object_array_npy_is_a_load_error(fresh_index):
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}] * 50, dtype=object), allow_pickle=True)
    replace_file(fresh_index, "field-section.npy", buf.getvalue())
    with pytest.raises(IndexLoadError, match="field-section.npy: not a readable .npy"):
        SearchIndex.open(fresh_index)


def test_a_damaged_npy_header_is_a_load_error_not_a_tokenizer_traceback(fresh_index):
    """An unbalanced header (a flipped length byte lets the parse run into the data) sends numpy to
    its tokenize fallback, which raised tokenize.TokenError past the reader."""
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (50,"
    header += b" " * (128 - 10 - len(header) - 1) + b"\n"
    replace_file(
        fresh_index, "field-section.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(200)
    )
    with pytest.raises(IndexLoadError, match=r"field-section.npy: not a readable .npy file"):
        SearchIndex.open(fresh_index)


@pytest.mark.parametrize(
    "name", ["embeddings.npy", "metadata.sqlite", "scan-int8.npy", "prefilter-int4.npy", "field-section.npy"]
)
def test_a_file_the_index_reads_must_be_listed_in_the_manifest(fresh_index, name):
    """Only listed files are size-checked at open and sha256-checked by verification: a manifest that
    leaves one out would let that file be damaged unseen (verify=True passed with it flipped)."""
    edit_manifest(fresh_index, lambda m: m["files"].pop(name))
    with pytest.raises(IndexLoadError) as caught:
        SearchIndex.open(fresh_index)
    assert str(caught.value) == (
        f"{fresh_index / 'manifest.json'}: manifest key files: does not list {name}, "
        "which this index reads (its size and sha256 would go unchecked)"
    )


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda m: m["lexical"].update(weights="10,4,1"), "lexical.weights"),
        (lambda m: m["lexical"].update(weights=[float("nan"), 4, 1]), "lexical.weights"),
        (lambda m: m["lexical"].update(weights=[1, 2]), "lexical.weights"),
        (lambda m: m["lexical"].update(weights=[True, 4, 1]), "lexical.weights"),
        (lambda m: m["lexical"].update(common_docs="many"), "lexical.common_docs"),
        (lambda m: m["lexical"].update(avg_tokens=float("inf")), "lexical.avg_tokens"),
        (lambda m: m["lexical"].update(table="items; DROP TABLE items"), "lexical.table"),
        (lambda m: m.update(lexical=[1, 2]), "lexical"),
        (lambda m: m.update(count="fifty"), "count"),
        (lambda m: m.update(count=-1), "count"),
        (lambda m: m.update(count=True), "count"),
        (lambda m: m.update(dimension=8.5), "dimension"),
        (lambda m: m.update(fields="section"), "fields"),
        (lambda m: m.update(fields=["../../etc/x"]), "fields"),
        (lambda m: m["files"]["embeddings.npy"].update(bytes="many"), "files.embeddings.npy.bytes"),
        (lambda m: m["files"]["embeddings.npy"].update(sha256=7), "files.embeddings.npy.sha256"),
        (lambda m: m["files"].update({"../outside": {"bytes": 1, "sha256": "0" * 64}}), "files"),
        (lambda m: m.update(files={"embeddings.npy": "x"}), "files.embeddings.npy"),
        (lambda m: m.update(model="x"), "model"),
        (lambda m: m.update(version=["v"]), "version"),
    ],
)
def test_malformed_manifest_values_name_the_key(fresh_index, change, key):
    edit_manifest(fresh_index, change)
    with pytest.raises(IndexLoadError) as caught:
        SearchIndex.open(fresh_index)
    message = str(caught.value)
    assert message.startswith(str(fresh_index / "manifest.json") + ": "), message
    assert f"key {key}" in message or f"key {key!r}" in message, message
    assert "\n" not in message


# -- a rebuild renames a new folder over the path while a reader opens or verifies it ------------


def two_versions(tmp_path):
    """The index at ``live`` (sections "a") and a rebuild of it beside it (other vectors, sections "b")."""
    old = index_from_vectors(tmp_path / "live", unit_rows(np.random.default_rng(1), 50, 8), sections=["a"] * 50)
    new = index_from_vectors(tmp_path / "rebuilt", unit_rows(np.random.default_rng(2), 50, 8), sections=["b"] * 50)
    return old, new


def publish_over(new, live):
    """What publish.swap does: the old folder moved aside, the new one renamed into its place."""
    live.rename(live.with_name("aside"))
    new.rename(live)


def test_a_folder_replaced_while_it_is_being_opened_is_opened_again(tmp_path, monkeypatch):
    import search.index.opening as opening

    live, rebuilt = two_versions(tmp_path)
    new_version = SearchIndex.open(rebuilt).version
    opened_first = opening.MetadataReader

    def metadata_after_a_publish(path):  # the rebuild lands after the vectors were mapped
        if (tmp_path / "rebuilt").exists():
            publish_over(rebuilt, live)
        return opened_first(path)

    monkeypatch.setattr(opening, "MetadataReader", metadata_after_a_publish)
    index = SearchIndex.open(live)
    # one version throughout: before, the manifest and vectors were the old index's, the metadata the new one's
    assert index.version == new_version
    assert index.metadata.rows([0])[0]["fields"] == {"section": "b"}
    np.testing.assert_array_equal(index.embeddings, np.load(live / "embeddings.npy"))


def test_verifying_an_index_whose_folder_was_replaced_is_not_corruption(tmp_path):
    from search.errors import IndexCorruptError
    from search.index.verify import Integrity

    live, rebuilt = two_versions(tmp_path)
    index = SearchIndex.open(live)
    publish_over(rebuilt, live)
    with pytest.raises(IndexLoadError, match="replaced by another version since it was opened") as caught:
        index.verify()
    assert not isinstance(caught.value, IndexCorruptError)  # before: "sha256 differs (corrupt)", then 503s
    integrity = Integrity(index)
    integrity.start()
    assert integrity.wait(30) and integrity.state == "unverified" and integrity.error is None


def test_a_damaged_file_is_still_corruption_when_the_folder_was_not_replaced(tmp_path):
    from search.errors import IndexCorruptError

    live, _ = two_versions(tmp_path)
    index = SearchIndex.open(live)
    data = bytearray((live / "embeddings.npy").read_bytes())
    data[-3] ^= 0x10
    (live / "embeddings.npy").write_bytes(bytes(data))
    (live / "stray.txt").write_text("a file dropped into the folder changes its ctime, not its identity")
    with pytest.raises(IndexCorruptError, match="embeddings.npy: sha256 differs"):
        index.verify()
