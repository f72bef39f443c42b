"""LiveIndex: S3 and local sources, readiness, and hot swap under concurrent queries."""

import gc
import json
import threading
import time
import weakref
from pathlib import Path

import pytest

from search.errors import IndexCorruptError, IndexMismatchError, StorageError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.searcher import Searcher
from search.storage import s3 as storage
from search.storage.live import LiveIndex
from tests.conftest import write_jsonl
from tests.s3helpers import Fault, bucket, moto_url, proxy, s3_proxy  # noqa: F401 (fixtures)

QUERIES = ["chess", "space shooter", "puzzle with falling blocks", "card game", "racing cars", "strategy"]


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory, tiny_encoder, demo_records):
    """Two small indexes whose ids do not overlap: every answer tells which version gave it."""
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for name, records in (("a", demo_records[:40]), ("b", demo_records[40:80])):
        corpus = write_jsonl(root / f"{name}.jsonl", [dict(r, id=f"{name}-{r['id']}") for r in records])
        build_index(
            corpus, tiny_encoder, root / name, CorpusSpec(fields=("section",)), BuildOptions(show_progress=False)
        )
        out[name] = root / name
    return out


def version_of(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["version"]


def mapped_paths() -> str:
    with open("/proc/self/maps") as fh:
        return fh.read()


def test_hot_swap_under_concurrent_queries(two_versions, bucket, moto_url, proxy, tiny_encoder, tmp_path):
    encoder = tiny_encoder
    uri = f"s3://{bucket}/live/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live = LiveIndex(
        uri,
        cache_dir=str(tmp_path),
        refresh_seconds=3600,
        model_fingerprint=encoder.fingerprint,
        dimension=encoder.dimension,
        client=storage.s3_client(endpoint_url=proxy.url),
    )
    live.load()
    prefix = {version_of(two_versions["a"]): "a-", version_of(two_versions["b"]): "b-"}
    old_path = Path(live.status()["local_path"])
    old_ref = weakref.ref(live.current())
    assert str(old_path / "embeddings.npy") in mapped_paths()
    searcher = Searcher(encoder, live.current(), cache_size=64)
    answers, errors, stop = [], [], threading.Event()

    def ask(worker: int):
        i = worker
        while not stop.is_set():
            index = live.current()  # pinned for this request, as the app does
            try:
                hits = searcher.search(QUERIES[i % len(QUERIES)], k=5, index=index).hits  # noqa: F821 (del below)
                answers.append((index.version, [h["id"] for h in hits], time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))
            del index
            i += 1

    threads = [threading.Thread(target=ask, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert live.maybe_refresh() is False  # within refresh_seconds: not even a HEAD
    storage.upload_folder(two_versions["b"], uri, endpoint_url=moto_url, show_progress=False)
    proxy.reset()
    assert live.maybe_refresh(force=True) is True  # a warmup event forces the check
    swapped_at = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()

    assert errors == []
    assert live.version == version_of(two_versions["b"]) and live.swaps == 1
    per_version = {v: sum(1 for a in answers if a[0] == v) for v in prefix}
    print(f"answers per version: {per_version}")
    assert all(n > 0 for n in per_version.values())  # answers came from both versions ...
    for version, ids, _ in answers:  # ... each from exactly one
        assert len(ids) == 5 and all(i.startswith(prefix[version]) for i in ids), (version, ids)
    assert all(v == live.version for v, _, at in answers if at > swapped_at + 0.05)
    assert len(proxy.calls("HEAD", "manifest.json")) == 1  # the forced check

    del searcher
    gc.collect()
    assert old_ref() is None  # the old version is gone once no request holds it ...
    assert not old_path.exists() and str(old_path) not in mapped_paths()  # ... files deleted and unmapped
    assert live.status()["ready"] and live.status()["error"] is None


def test_unchanged_manifest_costs_one_head(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/same/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live = LiveIndex(uri, cache_dir=str(tmp_path), refresh_seconds=1, client=storage.s3_client(endpoint_url=proxy.url))
    live.load()
    proxy.reset()
    time.sleep(1.1)
    assert live.maybe_refresh() is False
    assert [r[0] for r in proxy.requests] == ["HEAD"]


def test_a_second_environment_start_reuses_the_cache(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/warm/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    first = LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url))
    first.load()
    assert first.status()["downloaded_mb"] > 0
    proxy.reset()
    second = LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url))
    second.load()
    assert second.status()["downloaded_mb"] == 0 and proxy.data_gets() == []
    assert second.version == first.version


def test_not_ready_says_why_and_does_not_stampede(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/later/"
    live = LiveIndex(uri, cache_dir=str(tmp_path), retry_seconds=60, client=storage.s3_client(endpoint_url=proxy.url))
    with pytest.raises(StorageError, match="manifest.json: not found"):
        live.load()
    status = live.status()
    assert status["ready"] is False and f"{uri}manifest.json: not found (404 NoSuchKey)" in status["error"]
    proxy.reset()
    for _ in range(20):  # a burst of requests while not ready
        with pytest.raises(StorageError):
            live.current()
        with pytest.raises(StorageError):
            live.load()
    assert proxy.requests == []  # the same error, no new S3 calls
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live.retry_seconds = 0
    assert live.maybe_refresh() is True and live.status()["ready"] and live.status()["error"] is None


def test_index_for_another_model_is_refused_before_download(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/other/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live = LiveIndex(
        uri, cache_dir=str(tmp_path), model_fingerprint="f" * 64, client=storage.s3_client(endpoint_url=proxy.url)
    )
    with pytest.raises(IndexMismatchError, match="rebuild the index with this model"):
        live.load()
    assert proxy.data_gets() == [] and not live.ready


def test_bad_new_version_keeps_the_old_one_serving(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/bad/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live = LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url))
    live.load()
    before = live.version
    storage.upload_folder(two_versions["b"], uri, endpoint_url=moto_url, show_progress=False)
    proxy.add(Fault("embeddings.npy", kind="flip"))
    assert live.maybe_refresh(force=True) is False
    assert live.version == before and live.status()["ready"]
    assert "checksum mismatch" in live.status()["error"]
    proxy.reset()
    assert live.maybe_refresh(force=True) is True and live.status()["error"] is None


def test_local_folder_in_place_with_page_in_and_rebuild_swap(two_versions, tiny_encoder, tmp_path, demo_records):
    encoder = tiny_encoder
    folder = tmp_path / "index"
    build_index(
        write_jsonl(tmp_path / "a.jsonl", [dict(r, id=f"a-{r['id']}") for r in demo_records[:20]]),
        encoder,
        folder,
        CorpusSpec(),
        BuildOptions(show_progress=False),
    )
    live = LiveIndex(str(folder), refresh_seconds=0, page_in=True)
    first = live.load()
    assert first.path == folder and "page_in" in live.timings and live.status()["source"] == "path"
    assert live.maybe_refresh(force=True) is False  # nothing changed
    build_index(
        write_jsonl(tmp_path / "b.jsonl", [dict(r, id=f"b-{r['id']}") for r in demo_records[20:40]]),
        encoder,
        folder,
        CorpusSpec(),
        BuildOptions(show_progress=False),
    )
    assert live.maybe_refresh() is False  # refresh_seconds=0: only forced checks
    assert live.maybe_refresh(force=True) is True
    assert live.current().metadata.rows([0])[0]["id"].startswith("b-")
    assert first.metadata.rows([0])[0]["id"].startswith("a-")  # a request still holding the old one finishes
    assert folder.exists()  # a path we do not own is never deleted


def test_same_content_republished_keeps_the_old_index_and_closes_the_new_open(two_versions, monkeypatch):
    live = LiveIndex(str(two_versions["a"]), refresh_seconds=0)
    opened = []
    real_open = live._open
    monkeypatch.setattr(live, "_open", lambda path: opened.append(real_open(path)) or opened[-1])
    first = live.load()
    manifest = two_versions["a"] / "manifest.json"
    data = manifest.read_bytes()
    manifest.unlink()
    manifest.write_bytes(data)  # a new file, the same content: the stamp changes, the version does not
    assert live.maybe_refresh(force=True) is False
    assert live.current() is first and len(opened) == 2
    assert opened[1].embeddings is None  # the second open was closed, not left to the garbage collector
    assert first.metadata.rows([0])[0]["id"].startswith("a-")


def test_background_refresh_does_not_block_the_caller(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/bg/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    live = LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url))
    live.load()
    storage.upload_folder(two_versions["b"], uri, endpoint_url=moto_url, show_progress=False)
    proxy.reset()
    release = threading.Event()
    proxy.add(Fault("embeddings.npy", kind="hold", gate=release))  # the new version cannot finish downloading
    try:
        assert live.maybe_refresh(force=True, wait=False) is False  # returned while the download is held
        until = time.monotonic() + 30
        while not proxy.calls("GET", "embeddings.npy") and time.monotonic() < until:
            time.sleep(0.01)
        assert proxy.calls("GET", "embeddings.npy"), "the background refresh never started its download"
        assert live.version == version_of(two_versions["a"]) and live.current().version == live.version
    finally:
        release.set()
    until = time.monotonic() + 30
    while live.version != version_of(two_versions["b"]) and time.monotonic() < until:
        time.sleep(0.05)
    assert live.version == version_of(two_versions["b"]) and live.swaps == 1


# -- issue 16 item 2: a damaged copy is found in the background, and an S3 copy is fetched again --


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_a_damaged_reused_s3_copy_is_found_and_downloaded_again(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/damaged/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    first = LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url), verify=True)
    first.load()
    assert first.integrity.state == "verified"  # just downloaded: sha256-checked on the way in
    cached = Path(first.status()["local_path"])
    flip_middle_byte(cached / "embeddings.npy")  # the disk damages the cached copy
    proxy.reset()
    second = LiveIndex(
        uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url), verify=True, repair_seconds=0
    )
    second.load()
    assert second.status()["downloaded_mb"] == 0  # reused (sizes match), then verified in the background
    wait_for(lambda: second.integrity.state != "verifying", "the verification")
    assert second.corrupt and second.status()["integrity"] == "corrupt"
    with pytest.raises(IndexCorruptError, match="embeddings.npy: sha256 differs"):
        second.current()  # ... which also starts the repair
    wait_for(lambda: not second.corrupt, "the repair")
    repaired = second.current()
    assert second.downloaded_bytes > 0 and proxy.data_gets()
    assert second.integrity.state == "verified" and repaired.version == first.version
    repaired.verify()  # the new copy is whole


def test_a_damaged_local_index_stays_refused(two_versions, tmp_path):
    import shutil

    folder = shutil.copytree(two_versions["a"], tmp_path / "index")
    flip_middle_byte(folder / "scan-int8.npy" if (folder / "scan-int8.npy").exists() else folder / "embeddings.npy")
    live = LiveIndex(str(folder), verify=True, repair_seconds=0)
    live.load()
    wait_for(lambda: live.integrity.state != "verifying", "the verification")
    assert live.corrupt
    for _ in range(2):
        with pytest.raises(IndexCorruptError):
            live.current()


def test_verification_is_off_unless_asked(two_versions):
    live = LiveIndex(str(two_versions["a"]))
    live.load()
    assert live.integrity is None and live.status()["integrity"] == "off"


def test_repair_is_rate_limited_while_s3_fails(two_versions, bucket, moto_url, proxy, tmp_path):
    uri = f"s3://{bucket}/damaged-down/"
    storage.upload_folder(two_versions["a"], uri, endpoint_url=moto_url, show_progress=False)
    LiveIndex(uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url)).load()
    cached = next(p for p in Path(tmp_path).rglob("embeddings.npy"))
    flip_middle_byte(cached)
    live = LiveIndex(
        uri, cache_dir=str(tmp_path), client=storage.s3_client(endpoint_url=proxy.url), verify=True, repair_seconds=3600
    )
    live.load()
    wait_for(lambda: live.integrity.state != "verifying", "the verification")
    proxy.reset()
    proxy.add(Fault("/", kind="status", status=403, code="AccessDenied"))  # S3 refuses (no retries)
    for _ in range(5):
        with pytest.raises(IndexCorruptError):
            live.current()
    wait_for(lambda: live._repair_thread is not None and not live._repair_thread.is_alive(), "the repair attempt")
    attempts = len(proxy.calls("GET", "manifest.json"))
    for _ in range(5):
        with pytest.raises(IndexCorruptError):
            live.current()  # within repair_seconds: no new attempt
    assert live.corrupt and attempts >= 1 and len(proxy.calls("GET", "manifest.json")) == attempts
