"""Index build speed, load on the local server, and page-in time.

* build: ``python -m search build`` (both cores, its defaults) on the same seeded corpus sample with
  the shipped int8 bundle and with the fp32 ONNX export; docs/s from each manifest's build_seconds.
* load: ``python -m search serve`` on the 64k index under ``wrk`` (Debian package) on 127.0.0.1,
  distinct queries (a Lua script cycles them), while this process polls ``/livez`` every 50 ms.
* page_in: ``SearchIndex.page_in()`` on the 64k index after its files were dropped from the page
  cache (posix_fadvise DONTNEED): what a first query on EFS or a lazily loaded image would pay.

    python -m bench --only build,load,pagein
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (
    BUILD,
    CORPUS,
    FIELDS,
    INDEX_64K,
    MODEL,
    PY,
    ROOT,
    child_env,
    ensure_fp32_model,
    ensure_index,
    percentile,
    require_model,
    short_queries,
)

COMMANDS = {
    "build": "python -m bench --only build",
    "load": "python -m bench --only load",
    "pagein": "python -m bench --only pagein",
}


# ---------------------------------------------------------------------------------------- build


def _sample_corpus(n: int) -> Path:
    path = BUILD / f"corpus-sample-{n}.jsonl"
    if not path.is_file():
        with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
            lines = fh.readlines()
        chosen = sorted(random.Random(5).sample(range(len(lines)), min(n, len(lines))))
        BUILD.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines[i] for i in chosen), encoding="utf-8")
    return path


def measure_build(quick: bool) -> dict:
    require_model()
    fp32 = ensure_fp32_model()
    n = 400 if quick else 6000
    corpus = _sample_corpus(n)
    out: dict = {"build.docs": n}
    with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        # alternate the two models twice so drift on the shared machine hits both alike
        rates: dict[str, list[float]] = {"int8": [], "fp32": []}
        for _ in range(1 if quick else 2):
            for name, model in (("int8", MODEL), ("fp32", fp32)):
                target = Path(tmp) / name
                cmd = [
                    PY,
                    "-m",
                    "search",
                    "build",
                    "--corpus",
                    str(corpus),
                    "--model",
                    str(model),
                    "--out",
                    str(target),
                    "--fields",
                    FIELDS,
                    "--skip-bad",
                    "--quiet",
                ]
                subprocess.run(cmd, cwd=ROOT, env=child_env(None), check=True, capture_output=True)
                manifest = json.loads((target / "manifest.json").read_text())
                rates[name].append(manifest["count"] / manifest["build_seconds"])
                shutil.rmtree(target)
    best = {k: max(v) for k, v in rates.items()}
    out.update(
        {
            "build.int8_docs_per_s": round(best["int8"], 1),
            "build.fp32_docs_per_s": round(best["fp32"], 1),
            "build.speedup": round(best["int8"] / best["fp32"], 2),
            "build.cpus": os.cpu_count(),
        }
    )
    manifest = INDEX_64K / "manifest.json"
    m = json.loads(manifest.read_text()) if manifest.is_file() else None
    if m is not None and not m.get("build", {}).get("reused"):  # a build that reused vectors is no speed figure
        out["build.64k_docs_per_s"] = round(m["count"] / m["build_seconds"], 1)
        out["build.64k_seconds"] = m["build_seconds"]
    return out


# ----------------------------------------------------------------------------------------- load

WRK_SCRIPT = """
local queries = {}
for line in io.lines("%s") do queries[#queries + 1] = line end
local i = 0
request = function()
  i = i %% #queries + 1
  return wrk.format("GET", "/search?k=10&q=" .. queries[i])
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _found(pattern: str, text: str) -> re.Match[str]:
    """``re.search`` that names what wrk's output lacked instead of failing on None."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"wrk output has no {pattern!r}: {text[-500:]!r}")
    return match


def _wrk_ms(text: str) -> float:
    value, unit = _found(r"^([\d.]+)(us|ms|s)", text.strip()).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure_load(quick: bool) -> dict:
    if shutil.which("wrk") is None:
        return {"load.skipped": "wrk not installed (apt-get install -y wrk)"}
    require_model()
    ensure_index(INDEX_64K)
    port = _free_port()
    env = child_env(None, SEARCH_QUERY_CACHE_SIZE="0")  # every request embeds: the honest worst case
    server = subprocess.Popen(
        [
            PY,
            "-m",
            "search",
            "serve",
            "--model",
            str(MODEL),
            "--index",
            str(INDEX_64K),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(port, "/readyz") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(
                    "server did not become ready: "
                    + (
                        server.stderr.read().decode()[-1500:]
                        if server.stderr and server.poll() is not None
                        else "timeout"
                    )
                )
            time.sleep(0.2)
        import urllib.parse

        with tempfile.TemporaryDirectory() as tmp:
            qfile = Path(tmp) / "queries.txt"
            qfile.write_text("\n".join(urllib.parse.quote(q) for q in short_queries(2000, seed=17)) + "\n")
            script = Path(tmp) / "search.lua"
            script.write_text(WRK_SCRIPT % qfile)
            livez: list[float] = []
            stop = threading.Event()

            def poll_livez():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        status = _get(port, "/livez")
                        if status == 200:
                            livez.append(time.perf_counter() - t0)
                    except OSError:
                        livez.append(5.0)
                    stop.wait(0.05)

            _get(port, "/search?q=warm%20up&k=10")
            poller = threading.Thread(target=poll_livez, daemon=True)
            poller.start()
            seconds = 10 if quick else 30
            wrk = subprocess.run(
                ["wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            stop.set()
            poller.join()
        text = wrk.stdout
        rps = float(_found(r"Requests/sec:\s+([\d.]+)", text).group(1))
        p50 = _wrk_ms(_found(r"50%\s+(\S+)", text).group(1))
        p99 = _wrk_ms(_found(r"99%\s+(\S+)", text).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        live_ms = [t * 1000 for t in livez]
        return {
            "load.requests_per_s": rps,
            "load.p50_ms": p50,
            "load.p99_ms": p99,
            "load.non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "load.connections": 4,
            "load.seconds": seconds,
            "load.livez_p99_ms": round(percentile(live_ms, 99), 2),
            "load.livez_p50_ms": round(percentile(live_ms, 50), 2),
            "load.livez_samples": len(live_ms),
            "load.wrk": "wrk -t1 -c4 --latency, distinct queries, query cache off",
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# -------------------------------------------------------------------------------------- page in


def _drop_from_page_cache(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure_pagein(quick: bool) -> dict:
    require_model()
    ensure_index(INDEX_64K)
    from search.index.reader import SearchIndex

    times, size = [], 0
    for _ in range(2 if quick else 3):
        _drop_from_page_cache(INDEX_64K)
        index = SearchIndex.open(INDEX_64K)
        t0 = time.perf_counter()
        size = index.page_in()
        times.append(time.perf_counter() - t0)
        index.close()
    seconds = sorted(times)[len(times) // 2]
    warm = SearchIndex.open(INDEX_64K)
    t0 = time.perf_counter()
    warm.page_in()
    warm_s = time.perf_counter() - t0
    warm.close()
    return {
        "pagein.ms": round(seconds * 1000, 1),
        "pagein.mb": round(size / 1e6, 1),
        "pagein.mb_per_s": round(size / 1e6 / seconds, 1),
        "pagein.already_cached_ms": round(warm_s * 1000, 2),
        "pagein.storage": "local disk (files dropped from the page cache first); EFS would be slower",
    }
