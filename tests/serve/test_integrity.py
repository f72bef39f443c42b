"""Issue 16 items 2 and 3: a damaged index is found and never answers silently wrong.

Each test damages a copy of the demo index the way the audit did (a flipped bit, a NaN or 1e38
in a vector, bad JSON in a record, a deleted row, damaged SQLite pages) and checks what the API
says: /readyz `verifying` then not-ready with the reason code, searches 503 `index_corrupt`.
"""

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.errors import IndexCorruptError
from search.index.reader import SearchIndex
from search.index.verify import quick_check
from search.serve.app import create_app
from tests.serve.test_api import assert_error, make_settings, ready_client

WAIT_S = 60  # bounded waits for the background verification (the machine may be busy)


@pytest.fixture()
def index_copy(demo_index, tmp_path):
    return shutil.copytree(demo_index, tmp_path / "index")


def flip_bit(path, offset=None):
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def agree_manifest(folder, name):
    """Make the manifest match the damaged file (size and sha256): only the query path can tell."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    data = (folder / name).read_bytes()
    m["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    path.write_text(json.dumps(m))


def logged(caplog) -> str:
    """Messages and their extra fields (Powertools keeps the detail in ``extra``)."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'reason', '')}" for r in caplog.records)


def app_for(model_dir, index, tmp_path, **overrides):
    return create_app(make_settings(model_dir, index, tmp_path / "cache", **overrides))


def wait_ready_state(client, *states):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        if body["state"] in states:
            return body
        time.sleep(0.05)
    pytest.fail(f"/readyz never reached {states}: {body}")


def test_clean_index_verifies_and_stays_ready(model_dir, index_copy, tmp_path):
    app = app_for(model_dir, index_copy, tmp_path)
    client = ready_client(app)
    body = wait_ready_state(client, "ready", "corrupt")
    assert body["ready"] is True and body["state"] == "ready"
    assert client.get("/search", params={"q": "chess"}).status_code == 200


def test_one_flipped_bit_is_found_and_searches_answer_503(model_dir, index_copy, tmp_path, caplog):
    flip_bit(index_copy / "embeddings.npy")
    app = app_for(model_dir, index_copy, tmp_path)
    client = ready_client(app)  # sizes match: the cheap open accepts it
    with caplog.at_level(logging.ERROR):
        body = wait_ready_state(client, "corrupt")
    r = client.get("/readyz")
    assert r.status_code == 503 and body["ready"] is False
    assert body["reason"] == "index_corrupt" and body["error"]["code"] == "index_corrupt"  # a code, no path
    assert str(index_copy) not in r.text
    assert "embeddings.npy" in logged(caplog)  # the detail is in the log
    assert_error(client.get("/search", params={"q": "strategy war"}), 503, "index_corrupt")
    assert_error(client.get("/items/0ad"), 503, "index_corrupt")
    assert_error(client.post("/search", json={"query": "chess"}), 503, "index_corrupt")


def test_searches_are_answered_while_verifying(model_dir, index_copy, tmp_path, monkeypatch):
    release = threading.Event()
    original = SearchIndex.verify

    def slow_verify(self, pause=None):
        release.wait(WAIT_S)
        return original(self, pause=pause)

    monkeypatch.setattr(SearchIndex, "verify", slow_verify)
    app = app_for(model_dir, index_copy, tmp_path)
    client = ready_client(app)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["state"] == "verifying" and r.json()["ready"] is True
    assert client.get("/search", params={"q": "chess"}).status_code == 200  # cold start does not wait
    release.set()
    assert wait_ready_state(client, "ready")["ready"] is True


def test_verification_can_be_turned_off(model_dir, index_copy, tmp_path):
    flip_bit(index_copy / "embeddings.npy")
    client = ready_client(app_for(model_dir, index_copy, tmp_path, verify_index=False))
    body = client.get("/readyz").json()
    assert body["state"] == "ready"
    assert app_for(model_dir, index_copy, tmp_path).state.runtime.settings.verify_index is True  # the default


def test_warmup_finishes_the_verification(model_dir, index_copy, tmp_path):
    flip_bit(index_copy / "scan-int8.npy")
    app = app_for(model_dir, index_copy, tmp_path)
    runtime = app.state.runtime
    result = runtime.warm()
    assert result["warm"] is False and result["error"]["code"] == "index_corrupt", result
    assert "verify" in result["timings_ms"]
    assert runtime.status()["state"] == "corrupt"


# -- the query path's own guards (verification off: they must hold alone) --------------------------


def put_row(folder, name, row, value):
    """Write ``value`` into every component of a row of a .npy matrix and make the manifest agree."""
    arr = np.load(folder / name, mmap_mode="r+")
    arr[row] = value
    arr.flush()
    del arr
    agree_manifest(folder, name)


@pytest.mark.parametrize("value", [np.nan, 1e38])
def test_a_damaged_vector_is_never_returned_and_empties_nothing(model_dir, demo_index, tmp_path, value):
    clean = ready_client(app_for(model_dir, demo_index, tmp_path, verify_index=False))
    before = clean.get("/search", params={"q": "strategy war", "mode": "semantic", "k": 10}).json()["results"]
    target = next(h for h in before if h["id"] != "0ad") if value == 1e38 else before[0]
    folder = shutil.copytree(demo_index, tmp_path / "index")
    row = SearchIndex.open(folder).metadata.row_of(target["id"])
    for name in ("embeddings.npy", "scan-int8.npy"):
        put_row(folder, name, row, value if name == "embeddings.npy" else 127)
    client = ready_client(app_for(model_dir, folder, tmp_path, verify_index=False))
    for mode in ("semantic", "hybrid"):
        r = client.get("/search", params={"q": "strategy war", "mode": mode, "k": 10})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits and target["id"] not in [h["id"] for h in hits]
        assert all(-1.05 <= h["score"] <= 1.05 for h in hits)
    semantic = client.get("/search", params={"q": "strategy war", "mode": "semantic", "k": 9}).json()["results"]
    assert [h["id"] for h in semantic] == [h["id"] for h in before if h["id"] != target["id"]][:9]
    similar = client.get("/items/0ad/similar").json()
    assert similar.get("results") or similar["error"]["code"] == "index_corrupt"


def edit_items(folder, sql, args=()):
    path = folder / "metadata.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(sql, args)
    conn.commit()
    conn.close()
    agree_manifest(folder, "metadata.sqlite")


def test_bad_json_in_fields_is_503_index_corrupt_and_flips_readyz(model_dir, index_copy, tmp_path, caplog):
    row = SearchIndex.open(index_copy).metadata.row_of("0ad")
    edit_items(index_copy, "UPDATE items SET fields = '{not json' WHERE row = ?", (row,))
    client = ready_client(app_for(model_dir, index_copy, tmp_path, verify_index=False))
    assert client.get("/readyz").status_code == 200
    with caplog.at_level(logging.ERROR):
        assert_error(client.get("/items/0ad"), 503, "index_corrupt")
    assert f"row {row}" in logged(caplog)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "index_corrupt"
    assert_error(client.get("/search", params={"q": "chess"}), 503, "index_corrupt")


@pytest.mark.parametrize("mode", ["hybrid", "keyword", "semantic"])
def test_a_missing_items_row_is_503_not_400(model_dir, index_copy, tmp_path, mode, caplog):
    row = SearchIndex.open(index_copy).metadata.row_of("0ad")
    edit_items(index_copy, "DELETE FROM items WHERE row = ?", (row,))
    client = ready_client(app_for(model_dir, index_copy, tmp_path, verify_index=False))
    with caplog.at_level(logging.ERROR):
        assert_error(client.get("/search", params={"q": "0ad strategy war", "mode": mode}), 503, "index_corrupt")
    assert f"row {row}" in logged(caplog)
    assert client.get("/readyz").status_code == 503


def test_quick_check_finds_damaged_pages(index_copy):
    path = index_copy / "metadata.sqlite"
    quick_check(path)  # the clean store passes
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for at in range(2 * page + 8, 2 * page + 200):  # the b-tree header and cells of page 3
        data[at] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="metadata.sqlite: PRAGMA quick_check"):
        quick_check(path)
    with pytest.raises(IndexCorruptError, match="metadata.sqlite"):
        SearchIndex.open(index_copy).verify()


def test_damaged_pages_at_query_time_are_index_corrupt(model_dir, index_copy, tmp_path):
    path = index_copy / "metadata.sqlite"
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for p in range(3, len(data) // page, 2):  # every other page past the schema: lookups reach one
        data[p * page + 8 : p * page + 64] = b"\xa5" * 56
    path.write_bytes(bytes(data))
    agree_manifest(index_copy, "metadata.sqlite")
    client = ready_client(app_for(model_dir, index_copy, tmp_path, verify_index=False))
    codes = {client.get(f"/items/{name}").json().get("error", {}).get("code") for name in ("0ad", "zaz", "xboard")}
    assert codes <= {None, "index_corrupt", "not_found"}
    assert "not_ready" not in codes


def test_readyz_detail_never_public(model_dir, tmp_path):
    client = TestClient(app_for(model_dir, tmp_path / "nothing-here", tmp_path), raise_server_exceptions=False)
    client.app.state.runtime.start_loading()
    deadline = time.monotonic() + WAIT_S
    while client.app.state.runtime.state != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
    r = client.get("/readyz")
    assert r.status_code == 503 and str(tmp_path) not in r.text, r.text


def test_a_stored_text_that_is_not_utf8_is_index_corrupt_not_not_ready(model_dir, index_copy, tmp_path, caplog):
    """Python's sqlite3 raises OperationalError 'Could not decode to UTF-8 ... with text ...' for it:
    that was IndexLoadError, so searches said 503 not_ready while /readyz said ready."""
    conn = sqlite3.connect(index_copy / "metadata.sqlite")
    conn.execute("UPDATE items SET text = CAST(X'41FF42' AS TEXT) WHERE id = '0ad'")
    conn.commit()
    conn.close()
    agree_manifest(index_copy, "metadata.sqlite")
    client = ready_client(app_for(model_dir, index_copy, tmp_path, verify_index=False))
    with caplog.at_level(logging.ERROR):
        assert_error(client.get("/items/0ad"), 503, "index_corrupt")
    assert "metadata.sqlite: metadata store is corrupt (a stored text is not valid UTF-8)" in logged(caplog)
    assert "with text" not in logged(caplog)  # sqlite3's message quotes the damaged text: not repeated
    assert client.get("/readyz").status_code == 503
