"""S3 storage against a real endpoint: moto's server, reached over HTTP through a recording,
fault-injecting proxy (tests/s3helpers.py).  Nothing in search/ is patched."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from search.errors import StorageError
from search.index.reader import SearchIndex
from search.searcher import Searcher
from search.storage import cache as s3cache
from search.storage import objects, transfer
from tests.conftest import ROOT
from tests.s3helpers import Fault, bucket, moto_url, proxy, s3_proxy, subprocess_env  # noqa: F401 (fixtures)

SMALL_CHUNKS = transfer.TransferOptions(chunk_bytes=64 * 1024)  # the tiny index's embeddings.npy -> 5 ranged GETs
FETCH_SCRIPT = """
import json, sys
from search.storage import cache as s3cache
from search.storage import transfer
f = s3cache.fetch_folder(sys.argv[1], sys.argv[2], deadline=transfer.deadline_after(60))
print(json.dumps({"path": str(f.path), "reused": f.reused, "version": f.version}))
"""


@pytest.fixture
def uploaded(bucket, moto_url, tiny_index):
    """The demo corpus's tiny-model index uploaded to s3://<fresh bucket>/games/ (straight to moto)."""
    uri = f"s3://{bucket}/games/"
    objects.upload_folder(tiny_index, uri, endpoint_url=moto_url, show_progress=False)
    return uri


def client_for(proxy):
    return transfer.s3_client(endpoint_url=proxy.url)


def published(cache: Path) -> list[Path]:
    return [p for p in cache.glob("s3-*/*") if p.is_dir() and not p.name.startswith(".")]


def temps(cache: Path) -> list[Path]:
    return list(cache.glob(f"s3-*/{transfer.TEMP_PREFIX}*"))


def test_upload_then_cold_start_download_then_query(uploaded, proxy, tmp_path, tiny_index, tiny_encoder):
    local = json.loads((tiny_index / "manifest.json").read_text())
    fetched = s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy), options=SMALL_CHUNKS)
    assert not fetched.reused and fetched.downloaded_bytes >= sum(f["bytes"] for f in local["files"].values())
    ranges = [r for _, path, r in proxy.calls("GET", "embeddings.npy")]
    chunks = -(-local["files"]["embeddings.npy"]["bytes"] // SMALL_CHUNKS.chunk_bytes)
    assert chunks > 1 and len(ranges) == chunks and len(set(ranges)) == chunks
    assert all(r.startswith("bytes=") for r in ranges)
    assert proxy.calls("HEAD") == []  # sizes come from the manifest, no HEAD per file

    index = SearchIndex.open(fetched.path, verify=True)
    assert index.version == local["version"] and index.manifest["files"] == local["files"]
    hits = Searcher(tiny_encoder, index, cache_size=0).search("real-time strategy game in ancient times", k=5).hits
    assert "0ad" in [h["id"] for h in hits]
    assert temps(tmp_path) == [] and published(tmp_path) == [fetched.path]


def test_a_later_cold_start_reuses_the_copy_without_data_gets(uploaded, proxy, tmp_path):
    first = s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy))
    proxy.reset()
    # A new process in the same environment, configured only through AWS_ENDPOINT_URL_S3.
    proc = subprocess.run(
        [sys.executable, "-c", FETCH_SCRIPT, uploaded, str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(proxy.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reused"] is True and out["path"] == str(first.path)
    assert proxy.data_gets() == [] and len(proxy.calls("GET", "manifest.json")) == 1


def test_5xx_twice_then_success(uploaded, proxy, tmp_path):
    proxy.add(
        Fault("manifest.json", status=500, code="InternalError", times=1),
        Fault("manifest.json", status=503, code="SlowDown", times=1),
        Fault("embeddings.npy", status=503, code="SlowDown", times=2),
    )
    fetched = s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy), deadline=transfer.deadline_after(20))
    SearchIndex.open(fetched.path, verify=True)
    assert len(proxy.calls("GET", "manifest.json")) == 3
    assert len(proxy.calls("GET", "embeddings.npy")) == 3


@pytest.mark.parametrize("key", ["manifest.json", "embeddings.npy"])
def test_permanent_503_is_a_typed_error_within_the_budget(uploaded, proxy, tmp_path, key):
    proxy.add(Fault(key, status=503, code="SlowDown"))
    with pytest.raises(StorageError) as err:
        s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy), deadline=transfer.deadline_after(3.0))
    # retried, then stopped when another backoff would not fit in the budget (not after the last attempt)
    attempts = len(proxy.calls("GET", key))
    assert 1 < attempts < transfer.MAX_ATTEMPTS, attempts
    assert "would not fit in the time left" in str(err.value) or "time budget" in str(err.value), err.value
    assert f"{uploaded}" in str(err.value) and key in str(err.value) and "503" in str(err.value)
    assert temps(tmp_path) == [] and published(tmp_path) == []


@pytest.mark.parametrize(
    "kind,key,expect",
    [
        ("truncate", "metadata.sqlite", "truncated"),  # connection drops after half the announced bytes
        ("short", "metadata.sqlite", "truncated"),  # a lying middlebox: half the bytes, matching length
        ("short", "embeddings.npy", "checksum"),  # ... inside one ranged GET
        ("flip", "embeddings.npy", "checksum"),  # one bit flipped in a ranged GET: our sha256 catches it
        ("flip", "metadata.sqlite", "checksum"),  # in a file fetched with a single GET
    ],
)
def test_corrupt_or_truncated_bodies_are_never_published(uploaded, proxy, tmp_path, kind, key, expect):
    proxy.add(Fault(key, kind=kind))
    with pytest.raises(StorageError) as err:
        s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy), options=SMALL_CHUNKS)
    message = str(err.value)
    assert expect in message and key in message and uploaded in message, message
    assert temps(tmp_path) == [] and published(tmp_path) == []


def test_a_body_truncated_once_is_retried_and_verified(uploaded, proxy, tmp_path):
    proxy.add(Fault("metadata.sqlite", kind="truncate", times=1))
    fetched = s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy))
    SearchIndex.open(fetched.path, verify=True)
    assert len(proxy.calls("GET", "metadata.sqlite")) == 2


def test_missing_manifest_and_missing_data_file(uploaded, proxy, tmp_path, moto_url, bucket):
    with pytest.raises(StorageError, match=r"s3://.*/nothing-here/manifest.json: not found \(404 NoSuchKey\)"):
        s3cache.fetch_folder(f"s3://{bucket}/nothing-here/", tmp_path, client=client_for(proxy))
    manifest = json.loads(
        boto3.client("s3", endpoint_url=moto_url).get_object(Bucket=bucket, Key="games/manifest.json")["Body"].read()
    )
    gone = f"games/{manifest['data_prefix']}field-homepage.npy"
    boto3.client("s3", endpoint_url=moto_url).delete_object(Bucket=bucket, Key=gone)
    with pytest.raises(StorageError) as err:
        s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy))
    assert str(err.value) == f"s3://{bucket}/{gone}: not found (404 NoSuchKey)"
    assert temps(tmp_path) == [] and published(tmp_path) == []


def test_access_denied_is_not_retried(uploaded, proxy, tmp_path):
    proxy.add(Fault("field-version.npy", status=403, code="AccessDenied"))
    with pytest.raises(StorageError, match=r"field-version.npy: access denied \(403 AccessDenied\)"):
        s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy))
    assert len(proxy.calls("GET", "field-version.npy")) == 1
    assert temps(tmp_path) == [] and published(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (we may mount as root); elsewhere the same real check with a raised reserve."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode == 0:
        yield mount, transfer.TransferOptions(reserve_bytes=0)
        subprocess.run(["umount", str(mount)], check=True)
    else:
        yield mount, transfer.TransferOptions(reserve_bytes=shutil.disk_usage(mount).free)


def test_not_enough_free_space(uploaded, proxy, small_disk):
    cache, options = small_disk
    with pytest.raises(StorageError, match=r"not enough free space in .*: the download needs [\d.]+ MB"):
        s3cache.fetch_folder(uploaded, cache, client=client_for(proxy), options=options)
    assert proxy.data_gets() == []
    assert temps(cache) == [] and published(cache) == []


def test_download_killed_midway_then_clean_restart(uploaded, proxy, tmp_path):
    proxy.add(Fault("embeddings.npy", kind="slow", delay=0.05))  # ~5 s for 1.7 MB
    child = subprocess.Popen(
        [sys.executable, "-c", FETCH_SCRIPT, uploaded, str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(proxy.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = [f for t in temps(tmp_path) for f in t.iterdir() if f.stat().st_size > 0]
            if any(f.name.startswith("embeddings.npy") for f in partial):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the child never started writing")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.communicate(timeout=30)  # waits and closes both pipes (an open one fails the run)
    assert child.returncode == -signal.SIGKILL
    assert len(temps(tmp_path)) == 1 and published(tmp_path) == []  # a half download, not published

    proxy.reset()
    fetched = s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy))
    assert not fetched.reused and temps(tmp_path) == [] and published(tmp_path) == [fetched.path]
    SearchIndex.open(fetched.path, verify=True)


def test_two_processes_at_once_download_once(uploaded, proxy, tmp_path):
    proxy.add(Fault("embeddings.npy", kind="slow", delay=0.01))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_SCRIPT, uploaded, str(tmp_path)],
            cwd=ROOT,
            env=subprocess_env(proxy.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert sorted(o["reused"] for o in outs) == [False, True]
    assert outs[0]["path"] == outs[1]["path"]
    data_keys = [path for _, path, _ in proxy.data_gets()]
    n_files = len(json.loads((Path(outs[0]["path"]) / "manifest.json").read_text())["files"])
    assert len(data_keys) == n_files and len(set(data_keys)) == n_files  # every file fetched exactly once
    SearchIndex.open(outs[0]["path"], verify=True)


def test_upload_layout_skip_unchanged_and_prune(bucket, moto_url, tiny_index, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_url)
    uri = f"s3://{bucket}/p/"

    def variant(version: str) -> Path:  # same files, another version name: a cheap "new index"
        folder = tmp_path / version
        shutil.copytree(tiny_index, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps(dict(manifest, version=version)))
        return folder

    n_files = len(json.loads((tiny_index / "manifest.json").read_text())["files"])  # data files, not the manifest
    first = objects.upload_folder(variant("v1"), uri, endpoint_url=moto_url, show_progress=False)
    assert len(first.uploaded) == n_files and first.unchanged == []
    again = objects.upload_folder(tmp_path / "v1", uri, endpoint_url=moto_url, show_progress=False)
    assert again.uploaded == [] and len(again.unchanged) == n_files and again.bytes_sent == 0
    objects.upload_folder(variant("v2"), uri, endpoint_url=moto_url, show_progress=False, prune=True)
    third = objects.upload_folder(variant("v3"), uri, endpoint_url=moto_url, show_progress=False, prune=True)
    assert third.pruned == n_files  # v1's files; v2 stays (a reader may still be fetching it)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert {k.split("/")[2] for k in keys if k.startswith("p/data/")} == {"v2", "v3"}
    published_manifest = json.loads(s3.get_object(Bucket=bucket, Key="p/manifest.json")["Body"].read())
    assert published_manifest["version"] == "v3" and published_manifest["data_prefix"] == "data/v3/"


def test_prune_deletes_only_what_upload_wrote(bucket, moto_url, tiny_index, tmp_path):
    """At a bucket's root, ``data/`` may hold anything: prune deleted every object under it."""
    s3 = boto3.client("s3", endpoint_url=moto_url)
    theirs = ["data/2025/report.csv", "data/photos/cat.jpg", "data/notes.txt", "data/a/b/c.npy"]
    for key in theirs:
        s3.put_object(Bucket=bucket, Key=key, Body=b"not the tool's")
    for version in ("v1", "v2", "v3"):
        folder = tmp_path / version
        shutil.copytree(tiny_index, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps(dict(manifest, version=version)))
        report = objects.upload_folder(
            folder, f"s3://{bucket}/", endpoint_url=moto_url, show_progress=False, prune=True
        )
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(theirs) <= keys  # before: all four deleted
    assert {k.split("/")[1] for k in keys - set(theirs) if k.startswith("data/")} == {"v2", "v3"}
    assert report.pruned == len(json.loads((tiny_index / "manifest.json").read_text())["files"])  # v1's files


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "search", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_upload_reads_the_standard_endpoint_variable(bucket, moto_url, tiny_index, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_url,
    )
    proc = run_cli("upload", "--index", tiny_index, f"s3://{bucket}/cli/", env=env)
    assert proc.returncode == 0, proc.stderr
    files = json.loads((tiny_index / "manifest.json").read_text())["files"]
    sent_mb = (sum(f["bytes"] for f in files.values()) + (tiny_index / "manifest.json").stat().st_size) / 1e6
    assert re.match(
        rf"uploaded index {tiny_index} version \w+ to s3://{bucket}/cli/: {len(files)} files sent "
        rf"\({sent_mb:.1f} MB\), 0 unchanged in [\d.]+s$",
        proc.stdout.strip(),
    ), proc.stdout
    fetched = s3cache.fetch_folder(f"s3://{bucket}/cli/", tmp_path, client=transfer.s3_client(endpoint_url=moto_url))
    SearchIndex.open(fetched.path, verify=True)


def test_cli_upload_errors_are_one_line(tiny_index, tmp_path):
    proc = run_cli("upload", "--index", tiny_index, "/not/s3")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: /not/s3: not an s3:// URI"
    proc = run_cli("upload", "--index", tmp_path / "missing", "s3://bucket/x/")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "index folder not found" in proc.stderr
    proc = run_cli("upload", "--help")
    assert proc.returncode == 0 and "--endpoint-url" in proc.stdout


@pytest.mark.slow
def test_model_bundle_from_s3(bucket, moto_url, model_dir, tmp_path, proxy):
    from search.model.encoder import Encoder

    proc = run_cli("upload", "--model", model_dir, "--endpoint-url", moto_url, "--quiet", f"s3://{bucket}/model/")
    assert proc.returncode == 0, proc.stderr
    local = s3cache.fetch_bundle(f"s3://{bucket}/model/", tmp_path, client=client_for(proxy))
    remote_vec = Encoder.load(local, threads=1).embed_query("chess engine")
    assert (remote_vec == Encoder.load(model_dir, threads=1).embed_query("chess engine")).all()
    assert s3cache.fetch_bundle(str(model_dir), tmp_path) == Path(model_dir)  # a path is used as is


def test_unreachable_endpoint_fails_fast_with_the_key(tmp_path, moto_url):  # moto_url: credentials
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError, match=r"s3://b-x/idx/manifest.json: .*(cannot reach|time budget)"):
        s3cache.fetch_folder(
            "s3://b-x/idx/",
            tmp_path,
            client=transfer.s3_client(endpoint_url=f"http://127.0.0.1:{port}"),
            deadline=transfer.deadline_after(5),
        )


def test_waiting_for_another_downloader_respects_the_deadline(uploaded, proxy, tmp_path):
    root = s3cache.cache_root(tmp_path, transfer.S3Location.parse(uploaded))
    root.mkdir(parents=True)
    with s3cache.CacheLock(root):  # as if another process were downloading, and never finishing
        with pytest.raises(StorageError, match="another process still holds the download lock"):
            s3cache.fetch_folder(uploaded, tmp_path, client=client_for(proxy), deadline=transfer.deadline_after(1))
    assert proxy.data_gets() == []
    # A holder that finishes within the budget: the fetch waits for it instead of failing.
    holding, release = threading.Event(), threading.Event()

    def hold():
        with s3cache.CacheLock(root):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        threading.Timer(0.3, release.set).start()  # lets the fetch find the lock taken first
        fetched = s3cache.fetch_folder(
            uploaded, tmp_path, client=client_for(proxy), deadline=transfer.deadline_after(20)
        )
    finally:
        release.set()
        holder.join()
    assert fetched.path.is_dir() and not fetched.reused
