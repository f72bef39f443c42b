"""A real S3 endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1, and a small HTTP proxy in
front of it that records every request and misbehaves on demand (5xx, 403, truncated or corrupted
bodies, slow bodies).  Nothing in the code under test is patched: it talks HTTP to these servers."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import ROOT

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
}


@dataclass
class Fault:
    """Applies to requests whose method matches and whose path contains ``match``.

    kind: "status" (answer ``status`` with an S3 XML error ``code``), "truncate" (announce the full
    length, send half, drop the connection), "short" (send half with a matching length: a lying
    cache), "flip" (invert one byte), "slow" (send in 16 KiB pieces, ``delay`` s apart), "hold" (answer
    only once ``gate`` is set: the test decides when a transfer may finish).  ``times`` None = every time."""

    match: str
    kind: str = "status"
    status: int = 503
    code: str = "SlowDown"
    times: int | None = None
    method: str = "GET"
    delay: float = 0.0
    gate: threading.Event | None = None


class S3Proxy:
    def __init__(self, target_url: str):
        target = urlsplit(target_url)
        self.target = (target.hostname, target.port)
        self.requests: list[tuple[str, str, str | None]] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def add(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.match in path and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def calls(self, method: str = "GET", contains: str = "") -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[0] == method and contains in r[1]]

    def data_gets(self) -> list[tuple[str, str, str | None]]:
        """GETs of anything but the manifest (list calls have a '?')."""
        return [r for r in self.calls("GET") if not r[1].endswith("/manifest.json") and "?" not in r[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        try:
            self._forward()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a killed process): nothing to do

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self):
        proxy: S3Proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = unquote(self.path)
        with proxy.lock:
            proxy.requests.append((self.command, path, self.headers.get("Range")))
        fault = proxy.take(self.command, path)
        if fault is not None and fault.kind == "status":
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                f"<Message>injected by the test proxy</Message><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
            )
            data = xml.encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        conn = http.client.HTTPConnection(*proxy.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        announced = len(data) if self.command != "HEAD" else int(resp.getheader("Content-Length") or 0)
        kind = fault.kind if fault is not None and resp.status < 300 and data else None
        if kind == "hold" and fault.gate is not None and not fault.gate.wait(60):
            raise RuntimeError("a held S3 answer was never released")  # the test forgot to set the gate
        if kind == "flip":
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        elif kind == "short":
            data = data[: len(data) // 2]
            announced = len(data)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "slow":
            for i in range(0, len(data), 16384):
                self.wfile.write(data[i : i + 16384])
                self.wfile.flush()
                time.sleep(fault.delay)
            return
        self.wfile.write(data)


@pytest.fixture(scope="session")
def moto_url():
    """moto's real HTTP server on a free port, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_proxy(moto_url):
    proxy = S3Proxy(moto_url)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(s3_proxy):
    """The proxy with an empty request log and no faults."""
    s3_proxy.reset()
    yield s3_proxy
    s3_proxy.reset()


@pytest.fixture
def bucket(moto_url):
    """A fresh bucket (straight to moto, not through the proxy)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name


def subprocess_env(endpoint: str) -> dict:
    """Environment for a child process that reaches S3 only through boto3's standard variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=endpoint, PYTHONPATH=str(ROOT))
    return env
