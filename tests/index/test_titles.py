"""Title vectors (search/index/titles.py): each title embedded alone, stored int8, reused like the
document vectors, and hybrid's cosine as the better of document and title."""

import json

import numpy as np
import pytest

from search.errors import IndexLoadError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.format import TITLE_FILES, TITLE_HASHES_NAME, TITLE_SCALES_NAME, TITLE_VECTORS_NAME
from search.index.reader import SearchIndex
from search.index.records import text_hash
from search.index.titles import NO_TITLE
from search.searcher import Searcher, _with_titles
from tests.conftest import write_jsonl

RECORDS = [
    {"id": "gparted", "title": "GNOME partition editor", "text": "Create, resize and move disk partitions."},
    {"id": "hydrogen", "title": "advanced drum machine", "text": "A pattern-based sequencer for Linux."},
    {"id": "untitled", "title": "", "text": "A record that has no title at all."},
    {"id": "chess", "title": "chess game", "text": "Play chess against the computer or a friend."},
]


def build(tmp_path, encoder, records=RECORDS, title_vectors=True):
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    out = tmp_path / "index"
    build_index(corpus, encoder, out, CorpusSpec(), BuildOptions(show_progress=False, title_vectors=title_vectors))
    return out


def test_each_title_is_embedded_alone_and_stored_int8(tmp_path, tiny_encoder):
    index = SearchIndex.open(build(tmp_path, tiny_encoder))
    try:
        assert index.manifest["titles"] == {"dtype": "int8", "files": list(TITLE_FILES)}
        assert set(TITLE_FILES) <= set(index.manifest["files"])  # checksummed like every file
        vectors = np.load(index.path / TITLE_VECTORS_NAME)
        scales = np.load(index.path / TITLE_SCALES_NAME)
        hashes = np.load(index.path / TITLE_HASHES_NAME)
        assert vectors.dtype == np.int8 and vectors.shape == (len(RECORDS), index.dimension)
        assert scales[2] == 0 and not vectors[2].any() and bytes(hashes[2]) == NO_TITLE  # no title
        assert bytes(hashes[0]) == text_hash(tiny_encoder.bundle.document_prefix + "GNOME partition editor")
        for row, record in enumerate(RECORDS):
            if not record["title"]:
                continue
            alone = tiny_encoder.embed([record["title"]])[0]
            stored = vectors[row].astype(np.float32) * scales[row]
            assert float(np.dot(stored, alone)) > 0.99  # the title's own vector, int8-rounded
        assert index.manifest["build"]["titles_embedded"] == 3
        query = tiny_encoder.embed_query("drum machine")
        cos = index.title_cosines([0, 1, 2], query)
        assert cos[2] == -np.inf and cos[1] == pytest.approx(float(np.dot(stored_row(index, 1), query)), abs=1e-5)
    finally:
        index.close()


def stored_row(index, row):
    vectors, scales = index.titles
    return vectors[row].astype(np.float32) * scales[row]


def test_hybrid_takes_the_better_of_document_and_title_cosine(tmp_path, tiny_encoder):
    index = SearchIndex.open(build(tmp_path, tiny_encoder))
    try:
        query = tiny_encoder.embed_query("advanced drum machine")
        document = {r: float(np.dot(index.vector(r), query)) for r in range(len(RECORDS))}
        title = index.title_cosines(list(document), query)
        fused = _with_titles(index, document, query)
        assert fused == {r: max(document[r], float(title[r])) for r in document}
        assert fused[2] == document[2]  # no title: the document's cosine
        assert fused[1] > document[1]  # the query is hydrogen's title
        hits = Searcher(tiny_encoder, index).search("advanced drum machine", k=4).hits
        assert hits[0]["id"] == "hydrogen"
        semantic = Searcher(tiny_encoder, index).search("advanced drum machine", k=4, mode="semantic").hits
        assert semantic[0]["score"] == pytest.approx(document[row_of(index, semantic[0]["id"])], abs=1e-5)
    finally:
        index.close()


def row_of(index, item_id):
    return index.metadata.row_of(item_id)


def test_title_vectors_are_built_by_default():
    assert BuildOptions().title_vectors


def test_only_keyword_style_queries_use_the_title(tmp_path, tiny_encoder):
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    titled = SearchIndex.open(build(tmp_path / "with", tiny_encoder))
    plain = SearchIndex.open(build(tmp_path / "without", tiny_encoder, title_vectors=False))
    try:

        def scores(index, query):
            return [(h["id"], round(h["score"], 6)) for h in Searcher(tiny_encoder, index).search(query, k=4).hits]

        sentence = "a program that lets me resize the partitions of my disk"
        assert scores(titled, sentence) == scores(plain, sentence)  # sentences: the document cosine only
        terse = "drum machine"  # hydrogen's title says it, its document vector less so
        assert scores(titled, terse) != scores(plain, terse)
        assert scores(titled, terse)[0][0] == "hydrogen"
    finally:
        titled.close()
        plain.close()


def test_a_title_that_only_repeats_the_id_gets_no_vector(tmp_path, tiny_encoder):
    records = RECORDS + [{"id": "json.dumps", "title": "json.dumps", "text": "Serialize obj to a JSON string."}]
    records += [{"id": "fs-extra", "title": "FS extra", "text": "Extra file system methods."}]
    index = SearchIndex.open(build(tmp_path, tiny_encoder, records=records))
    try:
        scales = np.load(index.path / TITLE_SCALES_NAME)
        assert scales[4] == 0 and scales[5] == 0 and scales[0] > 0  # same name: no vector
        assert index.manifest["build"]["titles_embedded"] == 3
    finally:
        index.close()
    named_only = [{"id": r["id"], "title": r["id"], "text": r["text"]} for r in RECORDS]
    (tmp_path / "names").mkdir()
    index = SearchIndex.open(build(tmp_path / "names", tiny_encoder, records=named_only))
    try:
        assert index.titles is None and index.manifest["titles"] is None  # npm-like: every title is the id
    finally:
        index.close()


def test_no_title_vectors_when_turned_off_or_when_no_record_has_a_title(tmp_path, tiny_encoder):
    (tmp_path / "off").mkdir()
    (tmp_path / "none").mkdir()
    off = SearchIndex.open(build(tmp_path / "off", tiny_encoder, title_vectors=False))
    untitled = [dict(r, title="") for r in RECORDS]
    none = SearchIndex.open(build(tmp_path / "none", tiny_encoder, records=untitled))
    try:
        for index in (off, none):
            assert index.manifest["titles"] is None and index.titles is None
            assert not any((index.path / name).exists() for name in TITLE_FILES)
            assert index.title_cosines([0, 1], tiny_encoder.embed_query("chess")) is None
            assert Searcher(tiny_encoder, index).search("chess game", k=2).hits[0]["id"] == "chess"
        assert "titles_embedded" not in off.manifest["build"]
    finally:
        off.close()
        none.close()


def test_a_damaged_title_is_ignored_not_ranked(tmp_path, tiny_encoder):
    out = build(tmp_path, tiny_encoder)
    scales = np.load(out / TITLE_SCALES_NAME)
    scales[0], scales[1] = np.inf, np.nan
    np.save(out / TITLE_SCALES_NAME, scales)  # same size: opening does not notice, the guard must
    index = SearchIndex.open(out)
    try:
        cos = index.title_cosines([0, 1, 3], tiny_encoder.embed_query("partition editor"))
        assert cos[0] == cos[1] == -np.inf and np.isfinite(cos[2])
    finally:
        index.close()


def test_a_title_file_of_the_wrong_shape_is_a_load_error_naming_it(tmp_path, tiny_encoder):
    out = build(tmp_path, tiny_encoder)
    np.save(out / TITLE_VECTORS_NAME, np.zeros((2, 3), dtype=np.int8))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][TITLE_VECTORS_NAME]["bytes"] = (out / TITLE_VECTORS_NAME).stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError) as err:
        SearchIndex.open(out)
    assert TITLE_VECTORS_NAME in str(err.value) and "shape" in str(err.value)
