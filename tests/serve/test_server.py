"""``python -m search serve``: a real uvicorn process on 127.0.0.1, driven with httpx from threads."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # starts real servers (a few seconds each)

START_TIMEOUT_S = 120  # bounded waits: the machine may be busy, but nothing here waits forever
QUEUED_SEARCHES = 40
QUERIES_PER_SEARCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, index, log_path, *extra, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search",
                "serve",
                "--model",
                str(model_dir),
                "--index",
                str(index),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SEARCH_QUERY_CACHE_SIZE": "0", "SEARCH_PAGE_IN": "false", **(env or {})},
        )
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"server not ready within {START_TIMEOUT_S}s: {self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log_path).read_text()

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down cleanly (uvicorn re-raises the signal once done)."""
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def server(model_dir, demo_index, tmp_path_factory):
    srv = Server(
        model_dir,
        demo_index,
        tmp_path_factory.mktemp("server") / "server.log",
        "--cpu-workers",
        "1",
        "--log-level",
        "warning",
    )
    yield srv
    assert srv.stop()  # SIGTERM: a clean shutdown


def test_health_answers_while_searches_queue(server):
    """40 batch searches are queued behind one CPU worker; /livez and /readyz still answer at once,
    while most of those searches are still waiting (health checks never queue behind CPU work)."""
    done: list[int] = []

    def search(i: int) -> None:
        texts = [f"game number {i} variant {j}" for j in range(QUERIES_PER_SEARCH)]
        with httpx.Client(base_url=server.url, timeout=300) as client:
            done.append(client.post("/search", json={"queries": texts, "k": 5}).status_code)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(QUEUED_SEARCHES)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        deadline, pending = time.monotonic() + START_TIMEOUT_S, 0
        while time.monotonic() < deadline and pending < QUEUED_SEARCHES * 3 // 4:
            pending = client.get("/readyz").json()["pending"]
        assert pending >= QUEUED_SEARCHES * 3 // 4, "the searches never queued up"
        started = time.perf_counter()
        live = [client.get("/livez") for _ in range(5)]
        ready = client.get("/readyz")
        health_ms = (time.perf_counter() - started) * 1000 / 6
        finished_meanwhile = len(done)
        still_pending = ready.json()["pending"]
    for t in threads:
        t.join(timeout=300)
    assert all(r.status_code == 200 and r.json() == {"status": "ok"} for r in live)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert finished_meanwhile < QUEUED_SEARCHES and still_pending > 0
    assert done == [200] * QUEUED_SEARCHES
    print(f"health answered in {health_ms:.1f} ms on average with {still_pending} searches pending")


def test_same_json_as_in_process(server, model_dir, demo_index, tmp_path):
    from fastapi.testclient import TestClient

    from search.serve.app import create_app
    from search.settings import Settings

    settings = Settings.resolve(env={}, model_dir=str(model_dir), index_uri=str(demo_index), cache_dir=str(tmp_path))
    local = TestClient(create_app(settings))
    params = {"q": "a strategy game with tanks", "k": 5}
    over_http = httpx.get(server.url + "/search", params=params, timeout=60).json()
    in_process = local.get("/search", params=params).json()
    assert over_http["results"] == in_process["results"] and over_http["index"] == in_process["index"]


def test_errors_and_request_ids_over_http(server):
    r = httpx.get(server.url + "/search", params={"q": "x", "k": 0}, headers={"x-request-id": "trace-42"})
    assert r.status_code == 422 and r.json()["request_id"] == "trace-42" == r.headers["x-request-id"]
    big = json.dumps({"query": "x", "filter": {"version": ["v" * 500] * 200}})
    r = httpx.post(server.url + "/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(server.url + "/search", content=big)  # no content type: read here, still limited
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(server.url + "/search", content=json.dumps({"query": "chess", "k": 2}))
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    for path in ("/livez", "/readyz"):  # HEAD through uvicorn: status and headers, no body
        r = httpx.head(server.url + path)
        assert r.status_code == 200 and r.content == b""
    r = httpx.delete(server.url + "/search")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_query_text_is_not_in_the_server_log(server):
    r = httpx.get(server.url + "/search", params={"q": "zebra-striped kazoo symphony"}, timeout=60)
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while request_id not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)  # the log line is written after the response
    log = server.output()
    line = next(line for line in log.splitlines() if request_id in line)
    assert '"message":"request"' in line and '"path":"/search"' in line  # the app logs each request ...
    assert "kazoo" not in log  # ... without the query string (uvicorn's access log is off)


def test_several_worker_processes(model_dir, demo_index, tmp_path):
    srv = Server(model_dir, demo_index, tmp_path / "workers.log", "--workers", "2", "--log-level", "info")
    try:
        answers = [
            httpx.get(srv.url + "/search", params={"q": "chess"}, timeout=60).json()["results"] for _ in range(4)
        ]
        assert all(a == answers[0] for a in answers)
    finally:
        assert srv.stop()
    assert srv.output().count("Started server process") == 2


def test_serve_fails_fast_with_one_line(tmp_path, demo_index):
    proc = subprocess.run(
        [sys.executable, "-m", "search", "serve", "--model", str(tmp_path / "nope"), "--index", str(demo_index)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "nope" in proc.stderr


def test_serve_help_lists_the_options():
    proc = subprocess.run(
        [sys.executable, "-m", "search", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for option in ("--host", "--port", "--workers", "--cpu-workers"):
        assert option in proc.stdout
