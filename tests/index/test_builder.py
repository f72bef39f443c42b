import json
import os

import numpy as np
import pytest

from search.errors import CorpusError, IndexBuildError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.reader import SearchIndex
from tests.conftest import write_jsonl
from tests.vectors import index_from_vectors

SPEC = CorpusSpec(fields=("section", "version", "homepage"))


def build(corpus, encoder, out, **options):
    return build_index(corpus, encoder, out, SPEC, BuildOptions(show_progress=False, **options))


@pytest.fixture(scope="module")
def sample_corpus(tmp_path_factory, demo_records):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "sample.jsonl", demo_records[::40])


def test_rebuild_is_byte_identical(tmp_path, sample_corpus, encoder):
    """Same corpus, same settings -> the same embeddings.npy bytes, whatever the worker count."""
    build(sample_corpus, encoder, tmp_path / "a", workers=1)
    build(sample_corpus, encoder, tmp_path / "b", workers=2)
    a, b = (tmp_path / "a" / "embeddings.npy").read_bytes(), (tmp_path / "b" / "embeddings.npy").read_bytes()
    assert a == b
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (
        ma["files"]["embeddings.npy"]["sha256"]
        == json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]["embeddings.npy"]["sha256"]
    )


def test_index_vectors_equal_single_text_embeddings(tmp_path, sample_corpus, encoder, demo_records):
    build(sample_corpus, encoder, tmp_path / "i", workers=2)
    index = SearchIndex.open(tmp_path / "i", model_fingerprint=encoder.fingerprint)
    rec = demo_records[::40][3]
    alone = encoder.embed([f"{rec['title']}\n{rec['text']}"])[0]
    assert np.array_equal(index.vector(3), alone)


def test_manifest_lists_every_file_with_sha256(tiny_index, tiny_encoder):
    from search.fileutil import sha256_file

    m = json.loads((tiny_index / "manifest.json").read_text())
    on_disk = sorted(p.name for p in tiny_index.iterdir() if p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk
    for name, info in m["files"].items():
        assert sha256_file(tiny_index / name) == info["sha256"]
    assert m["count"] == 1108 and m["fields"] == ["section", "version", "homepage"]
    assert m["dtype"] == "float32" and m["dimension"] == tiny_encoder.dimension
    assert m["model"]["fingerprint"] == tiny_encoder.fingerprint


def test_failed_build_leaves_nothing_and_keeps_the_old_index(tmp_path, tiny_encoder, demo_records):
    encoder = tiny_encoder
    good = write_jsonl(tmp_path / "good.jsonl", demo_records[:5])
    out = tmp_path / "index"
    build(good, encoder, out)
    before = (out / "manifest.json").read_bytes()
    bad = write_jsonl(tmp_path / "bad.jsonl", demo_records[:5] + ['{"id": "x", "text": '])
    with pytest.raises(CorpusError, match=r"bad\.jsonl:6: broken JSON"):
        build(bad, encoder, out)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "good.jsonl", "index"]  # no temp folder left


def test_empty_corpus_and_bad_field_name(tmp_path, tiny_encoder):
    encoder = tiny_encoder
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(CorpusError, match="no usable records"):
        build(empty, encoder, tmp_path / "i")
    with pytest.raises(IndexBuildError, match="field name"):
        build_index(empty, encoder, tmp_path / "i", CorpusSpec(fields=("../x",)), BuildOptions(show_progress=False))
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("field", ["q", "k", "offset", "min_score", "mode"])
def test_a_field_named_like_a_search_parameter_is_refused(tmp_path, tiny_encoder, field):
    """GET /search and the search page read ?mode= (q, k, ...) as the parameter: a field of that
    name could never be filtered on, and the page's control for it overwrote the mode."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "apple", field: "x"}])
    spec = CorpusSpec(fields=("section", field))
    with pytest.raises(IndexBuildError, match=f"field name {field!r} is one of GET /search's own parameters"):
        build_index(corpus, tiny_encoder, tmp_path / "i", spec, BuildOptions(show_progress=False))
    assert not (tmp_path / "i").exists()


def test_a_field_no_record_has_is_named_in_the_build_summary(tmp_path, tiny_encoder):
    """`--fields sectoin` (a typo) builds a field every record lacks: the summary line says so."""
    from search.index.pipeline import Outcome, summary

    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"id": "a", "text": "apple", "section": "fruit"}, {"id": "b", "text": "bean"}]
    )
    spec = CorpusSpec(fields=("section", "sectoin"))
    manifest = build_index(corpus, tiny_encoder, tmp_path / "i", spec, BuildOptions(show_progress=False))
    assert manifest["build"]["fields_without_values"] == ["sectoin"]
    line = summary(Outcome(manifest, str(tmp_path / "i"), None), "built")
    assert "no record has field sectoin (misspelt?)" in line
    full = build_index(
        corpus, tiny_encoder, tmp_path / "j", CorpusSpec(fields=("section",)), BuildOptions(show_progress=False)
    )
    assert "fields_without_values" not in full["build"] and "no record has" not in summary(
        Outcome(full, "j", None), "built"
    )


def test_the_reserved_field_names_are_the_search_parameters():
    from search.index.format import RESERVED_FIELD_NAMES
    from search.serve.routes import RESERVED_PARAMS

    assert RESERVED_FIELD_NAMES == RESERVED_PARAMS


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_storage_keeps_the_top_10(tmp_path, demo_index, dtype):
    """On real vectors (the demo corpus), float16/int8 storage returns nearly float32's top-10: the same
    ten items for most queries, and at least 9.8 of the ten on average (a 10th/11th near-tie may swap)."""
    exact = SearchIndex.open(demo_index)
    vectors = np.asarray(exact.embeddings, dtype=np.float32)
    compact = SearchIndex.open(index_from_vectors(tmp_path / dtype, vectors, dtype=dtype))
    assert compact.embeddings.dtype == np.dtype(dtype)
    queries = range(0, exact.count, 11)  # ~100 real item vectors as queries
    shared = [
        len({h.row for h in exact.search(vectors[q], k=10)} & {h.row for h in compact.search(vectors[q], k=10)})
        for q in queries
    ]
    assert sum(n == 10 for n in shared) / len(shared) >= 0.9  # int8 storage, 2026-12-01 bundle: 94 of 101
    assert sum(shared) / (10 * len(shared)) >= 0.98
    # and sizes shrink as promised
    assert compact.embeddings.nbytes * (2 if dtype == "float16" else 4) == exact.embeddings.nbytes


@pytest.fixture
def small_disk(tmp_path):
    """A real small file system: a tmpfs of the size asked for (mounting needs root; else skipped)."""
    import subprocess

    mounted = []

    def mount(size: str):
        point = tmp_path / f"disk-{size}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


# 500k: the records fit, the vectors do not (written through a memory map: SIGBUS before, rc 135
# and the temporary folder left behind); 900k: SQLite's keyword index does not (a traceback before)
@pytest.mark.parametrize("size", ["500k", "900k"])
def test_a_full_disk_fails_the_build_with_one_line_and_leaves_nothing(small_disk, tiny_model_dir, size):
    import subprocess
    import sys

    from tests.conftest import DEMO_CORPUS, ROOT

    disk = small_disk(size)
    args = ["build", "--model", tiny_model_dir, "--corpus", DEMO_CORPUS, "--out", disk / "index", "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "search", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-500:]
    assert proc.stderr.strip() == (
        f"error: --out {disk / 'index'}: no space left on the device of {disk} while writing the index; free some "
        "space there or build elsewhere (nothing was published, the index there is unchanged)"
    )
    assert list(disk.iterdir()) == []  # no index, and no temporary folder
