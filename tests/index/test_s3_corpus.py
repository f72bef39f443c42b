"""--corpus s3://bucket/key: streamed through the same client as the index download (standard
retries, short timeouts), a broken body resumed where it stopped, the same line-numbered errors."""

import csv
import gzip
import io
import json

import boto3
import pytest

from search.errors import CorpusError, StorageError
from search.index.builder import BuildOptions
from search.index.corpus import CorpusSpec, read_corpus
from search.index.pipeline import build
from tests.s3helpers import Fault, bucket, moto_url, proxy, s3_proxy  # noqa: F401 (fixtures)

SPEC = CorpusSpec(fields=("section",))


def put(moto_url, bucket, key, body: bytes) -> str:
    boto3.client("s3", endpoint_url=moto_url).put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def jsonl(records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


@pytest.fixture
def via_proxy(proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    return proxy


def run(corpus, out, tiny_encoder):
    return build(
        str(corpus),
        str(out),
        tiny_encoder,
        SPEC,
        BuildOptions(show_progress=False, workers=1),
        reuse=None,
        stream=io.StringIO(),
    )


def data_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def test_an_s3_corpus_builds_the_same_index_as_the_local_file(
    tmp_path, tiny_encoder, demo_records, moto_url, bucket, via_proxy
):
    body = gzip.compress(jsonl(demo_records[::60]), mtime=0)
    (tmp_path / "games.jsonl.gz").write_bytes(body)
    uri = put(moto_url, bucket, "catalogue/games.jsonl.gz", body)
    remote = run(uri, tmp_path / "remote", tiny_encoder)
    local = run(tmp_path / "games.jsonl.gz", tmp_path / "local", tiny_encoder)
    assert data_files(tmp_path / "remote") == data_files(tmp_path / "local")
    assert remote.manifest["corpus"] == local.manifest["corpus"]  # same file name, sha256 and counts
    assert via_proxy.calls("GET", "catalogue/games.jsonl.gz")


def test_a_broken_body_is_resumed_where_it_stopped(tmp_path, demo_records, moto_url, bucket, via_proxy):
    body = jsonl(demo_records[:300])
    uri = put(moto_url, bucket, "c.jsonl", body)
    via_proxy.add(Fault("c.jsonl", kind="truncate", times=1), Fault("c.jsonl", status=503, times=1))
    ids = [r.id for r in read_corpus(uri, SPEC)]
    assert ids == [r["id"] for r in demo_records[:300]]
    ranges = [r for _, _, r in via_proxy.calls("GET", "c.jsonl")]
    assert ranges[0] is None and any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges), ranges


def test_a_body_that_keeps_breaking_gives_up_with_one_line(demo_records, moto_url, bucket, via_proxy):
    uri = put(moto_url, bucket, "c.jsonl", jsonl(demo_records[:300]))
    via_proxy.add(Fault("c.jsonl", kind="truncate"))
    with pytest.raises(StorageError, match=rf"^{uri}: body broke off at byte \d+ on 4 attempts in a row"):
        list(read_corpus(uri, SPEC))


def test_bad_records_name_the_s3_uri_and_the_line(moto_url, bucket, via_proxy):
    uri = put(moto_url, bucket, "bad.jsonl", jsonl([{"id": "a", "text": "x"}, "", '{"id": "b", "text": ']))
    with pytest.raises(CorpusError, match=rf"^{uri}:3: broken JSON"):
        list(read_corpus(uri, SPEC))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "title", "text"])
    writer.writeheader()
    writer.writerows([{"id": "a", "title": "A", "text": "x"}, {"id": "a", "title": "again", "text": "y"}])
    uri = put(moto_url, bucket, "dup.csv", buf.getvalue().encode())
    with pytest.raises(CorpusError, match=rf"^{uri}:3: duplicate id 'a'"):
        list(read_corpus(uri, SPEC))


def test_missing_object_and_bucket_are_one_line(moto_url, bucket, via_proxy):
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/nope\.jsonl: not found \(404 NoSuchKey\)$"):
        list(read_corpus(f"s3://{bucket}/nope.jsonl", SPEC))
    with pytest.raises(StorageError, match=r"names a bucket, not an object"):
        list(read_corpus(f"s3://{bucket}/", SPEC))
    with pytest.raises(CorpusError, match="unknown corpus format"):
        list(read_corpus(f"s3://{bucket}/catalogue.parquet", SPEC))


def test_cli_builds_from_an_s3_corpus_to_an_s3_index(tmp_path, demo_records, moto_url, bucket, tiny_model_dir):
    import subprocess
    import sys

    from search.storage.objects import download_files
    from tests.conftest import ROOT
    from tests.s3helpers import subprocess_env

    uri = put(moto_url, bucket, "corpus/games.jsonl", jsonl(demo_records[::80]))
    cmd = [sys.executable, "-m", "search", "build", "--corpus", uri, "--model", str(tiny_model_dir)]
    cmd += ["--out", f"s3://{bucket}/index/", "--fields", "section", "--quiet", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(moto_url), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"built s3://{bucket}/index/ (uploaded): {len(demo_records[::80])} items")
    again = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(moto_url), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"{len(demo_records[::80])} vectors reused, 0 embedded" in again.stdout
    manifest = download_files(f"s3://{bucket}/index/", tmp_path / "i", client=boto3.client("s3", endpoint_url=moto_url))
    assert manifest["corpus"]["file"] == "games.jsonl" and manifest["build"]["reused"] == len(demo_records[::80])
