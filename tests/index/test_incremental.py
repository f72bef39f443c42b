"""Incremental builds: vectors of unchanged texts are taken from an earlier compatible index, and
the result is byte-identical to a full build with --no-reuse (embeddings, scan and prefilter copies,
metadata, text hashes)."""

import io
import json
import shutil

import numpy as np
import pytest

from search.index.builder import BuildOptions
from search.index.corpus import CorpusSpec
from search.index.format import HASHES_NAME, TITLE_FILES
from search.index.pipeline import DEFAULT, build
from search.index.reader import SearchIndex
from search.index.records import match_rows, text_hash
from tests.conftest import write_jsonl

SPEC = CorpusSpec(fields=("section",))


def data_files(folder):
    """Every file but the manifest (which carries the build record and the time)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def run(corpus, out, tiny_encoder, *, reuse=DEFAULT, dtype="float32", progress=False):
    stream = io.StringIO()
    outcome = build(
        str(corpus),
        str(out),
        tiny_encoder,
        SPEC,
        BuildOptions(dtype=dtype, show_progress=progress, workers=1, title_vectors=True),
        reuse=reuse,
        stream=stream,
    )
    return outcome, stream.getvalue()


def edited(records):
    """The same catalogue a day later: 3 texts changed, 2 records gone, 2 new, the order shuffled."""
    out = [dict(r) for r in records]
    for i in (1, 5, 9):
        out[i]["text"] += " (updated)"
    del out[12], out[3]
    out += [
        {"id": "new-1", "title": "Brand new", "text": "a game released today", "section": "games"},
        {"id": "new-2", "title": "Another", "text": "a puzzle for two players", "section": "games"},
    ]
    rng = np.random.default_rng(7)
    return [out[i] for i in rng.permutation(len(out))]


@pytest.fixture(scope="module")
def records(demo_records):
    return demo_records[::50]  # 23 records


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_incremental_rebuild_is_byte_identical_to_a_full_one(tmp_path, tiny_encoder, records, dtype):
    old = write_jsonl(tmp_path / "old.jsonl", records)
    new = write_jsonl(tmp_path / "new.jsonl", edited(records))
    run(old, tmp_path / "index", tiny_encoder, dtype=dtype, reuse=None)
    outcome, _ = run(new, tmp_path / "index", tiny_encoder, dtype=dtype)  # reuses what is at --out
    full, _ = run(new, tmp_path / "full", tiny_encoder, dtype=dtype, reuse=None)

    assert data_files(tmp_path / "index") == data_files(tmp_path / "full")
    assert {"embeddings.npy", HASHES_NAME, "prefilter-int4.npy", "metadata.sqlite", *TITLE_FILES} <= set(
        data_files(tmp_path / "full")
    )
    assert manifest(tmp_path / "index")["version"] == manifest(tmp_path / "full")["version"]
    build_record = outcome.manifest["build"]
    assert build_record["reused"] == len(records) - 2 - 3 and build_record["embedded"] == 3 + 2
    assert build_record["reuse_source"] == str(tmp_path / "index")
    # titles: the three changed texts keep theirs, the two new records bring new ones
    assert build_record["titles_reused"] == len(records) - 2 and build_record["titles_embedded"] == 2
    assert full.manifest["build"] == {
        "reused": 0,
        "embedded": len(records),
        "reuse_source": None,
        "titles_reused": 0,
        "titles_embedded": len(records),
    }


def test_each_row_stores_the_hash_of_its_embedded_text(tmp_path, tiny_encoder, records):
    run(write_jsonl(tmp_path / "c.jsonl", records), tmp_path / "i", tiny_encoder, reuse=None)
    hashes = np.load(tmp_path / "i" / HASHES_NAME)
    prefix = tiny_encoder.bundle.document_prefix
    expected = [text_hash(prefix + SPEC.document_text(r["title"], r["text"])) for r in records]
    assert hashes.shape == (len(records), 32) and [bytes(h) for h in hashes] == expected


def test_match_rows_finds_moved_rows_and_misses_new_ones():
    old = np.frombuffer(b"".join(text_hash(str(i)) for i in range(5)), np.uint8).reshape(-1, 32)
    new = np.frombuffer(b"".join(text_hash(s) for s in ["3", "x", "0", "4"]), np.uint8).reshape(-1, 32)
    assert match_rows(old, new).tolist() == [3, -1, 0, 4]
    assert match_rows(old[:0], new).tolist() == [-1] * 4


def test_reuse_from_another_folder_and_the_progress_line(tmp_path, tiny_encoder, records, capsys):
    old = write_jsonl(tmp_path / "old.jsonl", records)
    new = write_jsonl(tmp_path / "new.jsonl", edited(records))
    run(old, tmp_path / "yesterday", tiny_encoder, reuse=None)
    outcome, _ = run(new, tmp_path / "today", tiny_encoder, reuse=str(tmp_path / "yesterday"), progress=True)
    err = capsys.readouterr().err
    assert f"reusing {len(records) - 5} vectors from {tmp_path / 'yesterday'}; embedding 5 new or changed texts" in err
    assert "embedding: 5/5 docs" in err
    assert outcome.manifest["build"]["embedded"] == 5


def test_a_reuse_source_named_but_missing_is_said_not_ignored(tmp_path, tiny_encoder, records):
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    outcome, said = run(corpus, tmp_path / "new", tiny_encoder, reuse=str(tmp_path / "no-such-index"))
    assert said.strip() == f"not reusing {tmp_path / 'no-such-index'}: there is no index there; embedding every text"
    assert outcome.manifest["build"]["embedded"] == len(records)
    _, first = run(corpus, tmp_path / "first", tiny_encoder)  # nothing at --out yet: a first build, no note
    assert first == ""
    (tmp_path / "made-for-it").mkdir()
    _, into_empty = run(corpus, tmp_path / "made-for-it", tiny_encoder)  # an empty folder made for the index
    assert into_empty == ""


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m["model"].update(fingerprint="0" * 64), "another model"),
        (lambda m: m["model"].update(session={"disabled_optimizers": []}), "other session settings"),
        (lambda m: m["files"].pop(HASHES_NAME), f"has no {HASHES_NAME}"),
    ],
)
def test_an_incompatible_index_is_not_reused_and_the_build_says_so(tmp_path, tiny_encoder, records, change, reason):
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    run(corpus, tmp_path / "old", tiny_encoder, reuse=None)
    m = manifest(tmp_path / "old")
    change(m)
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(m))
    outcome, said = run(corpus, tmp_path / "new", tiny_encoder, reuse=str(tmp_path / "old"))
    assert said.count("\n") == 1 and said.startswith(f"not reusing {tmp_path / 'old'}: ") and reason in said
    build_record = outcome.manifest["build"]
    assert build_record["reused"] == build_record["titles_reused"] == 0  # titles neither
    assert build_record["embedded"] == build_record["titles_embedded"] == len(records)
    assert build_record["reuse_source"] is None
    assert outcome.reuse_note == said.strip()


@pytest.mark.parametrize("name", ["embeddings.npy", "scales.npy", HASHES_NAME, "title-int8.npy"])
def test_a_damaged_index_is_not_reused_so_its_damage_is_not_copied(tmp_path, tiny_encoder, records, name):
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    run(corpus, tmp_path / "index", tiny_encoder, reuse=None, dtype="int8")
    full, _ = run(corpus, tmp_path / "full", tiny_encoder, reuse=None, dtype="int8")
    damaged = tmp_path / "index" / name
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0x40  # a flipped bit in the last row: same size, the sha256 differs
    damaged.write_bytes(bytes(data))

    outcome, said = run(corpus, tmp_path / "index", tiny_encoder, dtype="int8")  # reuses what is at --out

    assert (
        said.strip()
        == f"not reusing {tmp_path / 'index'}: its {name} differs from its manifest (damaged); embedding every text"
    )
    assert outcome.manifest["build"]["reused"] == outcome.manifest["build"]["titles_reused"] == 0
    assert data_files(tmp_path / "index") == data_files(tmp_path / "full")
    SearchIndex.open(tmp_path / "index", verify=True)


def test_another_dtype_is_not_reused(tmp_path, tiny_encoder, records):
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    run(corpus, tmp_path / "i", tiny_encoder, reuse=None, dtype="float16")
    outcome, said = run(corpus, tmp_path / "i", tiny_encoder, dtype="int8")
    assert "stores float16 vectors, this build int8" in said
    assert outcome.manifest["build"]["embedded"] == len(records)
    assert SearchIndex.open(tmp_path / "i", verify=True).embeddings.dtype == np.int8


def test_no_index_at_out_yet_is_not_worth_a_word(tmp_path, tiny_encoder, records):
    outcome, said = run(write_jsonl(tmp_path / "c.jsonl", records), tmp_path / "first", tiny_encoder)
    assert said == "" and outcome.manifest["build"]["reused"] == 0


def test_reuse_from_s3(tmp_path, tiny_encoder, records, moto_url, bucket, monkeypatch):
    from search.storage.objects import upload_folder

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    old = write_jsonl(tmp_path / "old.jsonl", records)
    new = write_jsonl(tmp_path / "new.jsonl", edited(records))
    run(old, tmp_path / "old", tiny_encoder, reuse=None, dtype="int8")
    upload_folder(tmp_path / "old", f"s3://{bucket}/live/", show_progress=False)
    shutil.rmtree(tmp_path / "old")
    outcome, _ = run(new, tmp_path / "new", tiny_encoder, reuse=f"s3://{bucket}/live/", dtype="int8")
    run(new, tmp_path / "full", tiny_encoder, reuse=None, dtype="int8")
    assert outcome.manifest["build"]["reused"] == len(records) - 5
    assert data_files(tmp_path / "new") == data_files(tmp_path / "full")


from tests.s3helpers import bucket, moto_url  # noqa: E402, F401 (fixtures)
