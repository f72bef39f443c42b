"""Sharded builds: `search build --shard I/N` then `search merge` gives the bytes of a single build."""

import io
import json
import subprocess
import sys

import pytest

from search.errors import CorpusError, IndexBuildError
from search.fileutil import describe_files
from search.index.builder import BuildOptions
from search.index.corpus import CorpusSpec
from search.index.format import TITLE_FILES
from search.index.merge import merge_shards
from search.index.pipeline import build, merge
from search.index.records import parse_shard, shard_of
from tests.conftest import ROOT, write_jsonl
from tests.s3helpers import bucket, moto_url, subprocess_env  # noqa: F401 (fixtures)

SPEC = CorpusSpec(fields=("section", "version"))


def data_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def options(**kw):
    return BuildOptions(show_progress=False, workers=1, title_vectors=True, **kw)  # titles merged too


def run_build(corpus, out, tiny_encoder, *, shard=None, reuse=None, **kw):
    return build(
        str(corpus), str(out), tiny_encoder, SPEC, options(**kw), shard=shard, reuse=reuse, stream=io.StringIO()
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_records):
    rows = demo_records[::12] + ["", '{"id": "", "text": "no id"}', '{"id": "x", "text": ']  # 93 good, 2 bad, a blank
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "games.jsonl", rows)


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus, tiny_encoder):
    out = tmp_path_factory.mktemp("single") / "index"
    run_build(corpus, out, tiny_encoder, skip_bad=True)
    return out


@pytest.mark.parametrize("n, reuse", [(1, True), (3, False), (7, True)])
def test_merged_shards_are_byte_identical_to_a_single_build(tmp_path, corpus, single, tiny_encoder, n, reuse):
    folders = []
    for i in range(n):
        folder = tmp_path / f"shard-{i}"
        outcome = run_build(
            corpus, folder, tiny_encoder, shard=(i, n), reuse=str(single) if reuse else None, skip_bad=True
        )
        assert outcome.manifest["build"]["embedded" if not reuse else "reused"] == outcome.manifest["count"]
        titles = outcome.manifest["build"]["titles_embedded" if not reuse else "titles_reused"]
        assert titles == outcome.manifest["count"]  # every demo record has a title
        folders.append(folder)
    merged = merge_shards(list(reversed(folders)), tmp_path / "merged", options())  # any order
    assert data_files(tmp_path / "merged") == data_files(single)
    assert set(TITLE_FILES) <= set(data_files(single))  # title vectors merged like the rest
    want = json.loads((single / "manifest.json").read_text())
    assert merged["version"] == want["version"] and merged["files"] == want["files"]
    assert merged["corpus"] == want["corpus"]  # file, sha256, records, skipped and first errors
    assert merged["corpus"]["skipped"] == 2 and merged["build"]["shards"] == n


def test_empty_shards_are_fine(tmp_path, tiny_encoder, demo_records):
    path = write_jsonl(tmp_path / "two.jsonl", demo_records[:2])
    run_build(path, tmp_path / "single", tiny_encoder)
    counts = [run_build(path, tmp_path / f"s{i}", tiny_encoder, shard=(i, 7)).manifest["count"] for i in range(7)]
    assert sorted(counts) == [0, 0, 0, 0, 0, 1, 1]
    merge_shards([tmp_path / f"s{i}" for i in range(7)], tmp_path / "m", options())
    assert data_files(tmp_path / "m") == data_files(tmp_path / "single")


def test_records_go_to_the_shard_of_their_id(tmp_path, corpus, tiny_encoder, demo_records):
    run_build(corpus, tmp_path / "s", tiny_encoder, shard=(2, 5), skip_bad=True, reuse=None)
    from search.index.metadata import MetadataReader

    reader = MetadataReader(tmp_path / "s" / "records.sqlite")
    ids = [r[0] for r in reader.fetch("SELECT id FROM items ORDER BY row")]
    reader.close()
    expected = [r["id"] for r in demo_records[::12] if shard_of(r["id"], 5) == 2]
    assert ids == expected and ids


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path, corpus, tiny_encoder, demo_records):
    for i in range(3):
        run_build(corpus, tmp_path / f"s{i}", tiny_encoder, shard=(i, 3), skip_bad=True)
    with pytest.raises(IndexBuildError, match=r"shard 2/3 missing"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m", options())
    with pytest.raises(IndexBuildError, match=r"shard 1/3 given twice"):
        merge_shards([tmp_path / "s0", tmp_path / "s1", tmp_path / "s1"], tmp_path / "m", options())
    other = write_jsonl(tmp_path / "other.jsonl", demo_records[1:40:12])
    run_build(other, tmp_path / "o2", tiny_encoder, shard=(2, 3), skip_bad=True)
    with pytest.raises(IndexBuildError, match=r"o2: built from another corpus"):
        merge_shards([tmp_path / "s0", tmp_path / "s1", tmp_path / "o2"], tmp_path / "m", options())
    run_build(corpus, tmp_path / "strict2", tiny_encoder, shard=(2, 3), skip_bad=True, max_record_bytes=4096)
    with pytest.raises(IndexBuildError, match=r"strict2: built with another max_record_bytes"):
        merge_shards([tmp_path / "s0", tmp_path / "s1", tmp_path / "strict2"], tmp_path / "m", options())
    with pytest.raises(IndexBuildError, match=r"not a shard folder"):
        merge_shards([tmp_path / "s0", tmp_path], tmp_path / "m", options())
    assert not (tmp_path / "m").exists()


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # same size, another sha256
    path.write_bytes(bytes(data))


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: flip_a_byte(f / "embeddings.npy"), "its embeddings.npy differs from its manifest (damaged)"),
        (lambda f: flip_a_byte(f / "text-hashes.npy"), "its text-hashes.npy differs from its manifest (damaged)"),
        (lambda f: flip_a_byte(f / "title-int8.npy"), "its title-int8.npy differs from its manifest (damaged)"),
        (lambda f: flip_a_byte(f / "records.sqlite"), "its records.sqlite differs from its manifest (damaged)"),
        (lambda f: (f / "embeddings.npy").unlink(), "its embeddings.npy is missing"),
        (lambda f: edit_manifest(f, lambda m: m["files"].pop("records.sqlite")), "does not list records.sqlite"),
        (lambda f: edit_manifest(f, lambda m: m.pop("shard")), "its manifest key shard must be"),
        (lambda f: edit_manifest(f, lambda m: m.pop("build")), "its manifest key build must be an object"),
        (lambda f: edit_manifest(f, lambda m: m.pop("corpus")), "its manifest key corpus must be"),
    ],
)
def test_a_damaged_shard_fails_the_merge_naming_it(tmp_path, corpus, tiny_encoder, damage, message):
    for i in range(3):
        run_build(corpus, tmp_path / f"s{i}", tiny_encoder, shard=(i, 3), skip_bad=True)
    damage(tmp_path / "s1")
    with pytest.raises(IndexBuildError) as caught:
        merge_shards([tmp_path / f"s{i}" for i in range(3)], tmp_path / "m", options())
    assert str(caught.value).startswith(f"{tmp_path / 's1'}: ") and message in str(caught.value)
    assert not (tmp_path / "m").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s0", "s1", "s2"]


def test_a_shard_build_never_deletes_files_its_shard_folder_does_not_list(tmp_path, corpus, tiny_encoder):
    run_build(corpus, tmp_path / "s", tiny_encoder, shard=(0, 3), skip_bad=True)
    (tmp_path / "s" / "NOTES.txt").write_text("mine")
    (tmp_path / "s" / "mine").mkdir()
    with pytest.raises(IndexBuildError, match=r"holds files the shard does not list \('NOTES.txt' and 1 more\)"):
        run_build(corpus, tmp_path / "s", tiny_encoder, shard=(0, 3), skip_bad=True)
    assert (tmp_path / "s" / "NOTES.txt").read_text() == "mine" and (tmp_path / "s" / "mine").is_dir()
    (tmp_path / "s" / "NOTES.txt").unlink()
    (tmp_path / "s" / "mine").rmdir()
    run_build(corpus, tmp_path / "s", tiny_encoder, shard=(0, 3), skip_bad=True)  # only its own files: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary or old folder left


@pytest.mark.parametrize("field", ["../x", "mode"])
def test_a_shard_refuses_a_field_name_a_build_refuses(tmp_path, corpus, tiny_encoder, field):
    """`--shard` took any --fields, and `search merge` then failed with a traceback (field-../x.npy)."""
    spec = CorpusSpec(fields=("section", field))
    with pytest.raises(IndexBuildError, match=f"field name {field!r}"):
        build(str(corpus), str(tmp_path / "s0"), tiny_encoder, spec, options(), shard=(0, 1), stream=io.StringIO())
    assert not (tmp_path / "s0").exists()


def test_merge_refuses_a_shard_with_a_field_name_a_build_refuses(tmp_path, corpus, tiny_encoder):
    run_build(corpus, tmp_path / "s0", tiny_encoder, shard=(0, 1), skip_bad=True)
    manifest = json.loads((tmp_path / "s0" / "manifest.json").read_text())
    manifest["spec"]["fields"] = ["section", "../x"]  # as a shard build wrote it before it checked names
    (tmp_path / "s0" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexBuildError, match="field name '../x'"):
        merge_shards([tmp_path / "s0"], tmp_path / "index", options())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0"]


def test_a_duplicate_id_fails_the_shard_that_holds_it(tmp_path, tiny_encoder, demo_records):
    rows = demo_records[:6] + [dict(demo_records[2], text="again")]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    owner = shard_of(demo_records[2]["id"], 2)
    with pytest.raises(CorpusError, match=rf"dup\.jsonl:7: duplicate id {demo_records[2]['id']!r}"):
        run_build(path, tmp_path / "a", tiny_encoder, shard=(owner, 2))
    run_build(path, tmp_path / "b", tiny_encoder, shard=(1 - owner, 2))  # the other shard is fine


def test_a_duplicate_id_across_shards_is_an_error_at_merge(tmp_path, tiny_encoder, demo_records):
    """Shards of one corpus cannot disagree; a tampered shard (an id moved into another shard's
    records) still cannot produce an index with two rows of one id."""
    import sqlite3

    path = write_jsonl(tmp_path / "c.jsonl", demo_records[:8])
    for i in range(2):
        run_build(path, tmp_path / f"s{i}", tiny_encoder, shard=(i, 2))
    conn = sqlite3.connect(tmp_path / "s1" / "records.sqlite")
    taken = conn.execute("SELECT id FROM items LIMIT 1").fetchone()[0]
    conn.close()
    conn = sqlite3.connect(tmp_path / "s0" / "records.sqlite")
    conn.execute("UPDATE items SET id = ? WHERE row = (SELECT min(row) FROM items)", (taken,))
    conn.commit()
    conn.close()
    # the manifest made to vouch for the edited file (else the merge refuses it as damaged, see below)
    edit_manifest(tmp_path / "s0", lambda m: m["files"].update(describe_files(tmp_path / "s0", ["records.sqlite"])))
    with pytest.raises(IndexBuildError, match=rf"duplicate id {taken!r} in more than one shard"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m", options())


def test_shards_and_merge_through_s3(tmp_path, corpus, single, tiny_encoder, bucket, moto_url, monkeypatch):
    """Shards written to s3:// prefixes, merged from them into an s3:// index (moto's server)."""
    from search.storage.objects import download_files

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    n = 3
    prefixes = [f"s3://{bucket}/build/shards/{i}-of-{n}/" for i in range(n)]
    for i, prefix in enumerate(prefixes):
        outcome = run_build(corpus, prefix, tiny_encoder, shard=(i, n), reuse=str(single), skip_bad=True)
        assert outcome.uploaded is not None and outcome.uploaded.uri == prefix
    again = run_build(corpus, prefixes[0], tiny_encoder, shard=(0, n), reuse="default", skip_bad=True)
    assert again.manifest["build"]["reused"] == again.manifest["count"]  # --reuse per shard: its own prefix
    outcome = merge(prefixes, f"s3://{bucket}/live/", options())
    assert outcome.uploaded.uri == f"s3://{bucket}/live/"
    download_files(f"s3://{bucket}/live/", tmp_path / "fetched")
    assert data_files(tmp_path / "fetched") == data_files(single)


@pytest.mark.slow  # four CLI processes, each loading the model
def test_cli_shard_and_merge(tmp_path, corpus, single, tiny_model_dir):
    env = subprocess_env("http://127.0.0.1:9")  # nothing may reach S3
    cmd = [sys.executable, "-m", "search"]
    for i in range(2):
        done = subprocess.run(
            [*cmd, "build", "--corpus", str(corpus), "--model", str(tiny_model_dir), "--out", str(tmp_path / f"s{i}")]
            + ["--shard", f"{i}/2", "--fields", "section,version", "--skip-bad", "--quiet", "--threads", "1"]
            + ["--reuse", str(single)],  # title vectors are on by default
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout.startswith(f"built shard {tmp_path / f's{i}'}: ")
            and " vectors reused, 0 embedded" in done.stdout
            and ", 0 embedded, titles " in done.stdout
        )
    done = subprocess.run(
        [*cmd, "merge", "--out", str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1"), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"merged {tmp_path / 'm'}: 93 items")
    assert " embedded by its shards, titles " in done.stdout  # a merge embeds nothing itself
    assert data_files(tmp_path / "m") == data_files(single)
    bad = subprocess.run(
        [
            *cmd,
            "build",
            "--corpus",
            str(corpus),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "x"),
            "--shard",
            "3/2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr  # a usage error, as others
    assert "argument --shard: '3/2': need 0 <= I < N" in bad.stderr


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "0/0"])
def test_parse_shard_refuses_nonsense(text):
    from search.errors import ConfigError

    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)
    assert parse_shard(" 2 / 3 ") == (2, 3)
