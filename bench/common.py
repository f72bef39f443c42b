"""Shared paths, child processes, timing and memory helpers for ``python -m bench``.

Figures that need one thread or a fresh process run in a child (``python -m bench.<module> --child
...``) with the thread variables set before numpy/onnxruntime/torch load; the child prints one JSON
line.  Every comparison is taken in the same run, interleaved where drift could favour one side.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PY = sys.executable
BUILD = ROOT / "build" / "bench"
# BENCH_MODEL / BENCH_INDEX point a development run elsewhere (e.g. a small index); results say so.
MODEL = Path(os.environ.get("BENCH_MODEL") or ROOT / "build" / "model")  # the shipped int8 bundle (make model)
FP32_MODEL = BUILD / "model-fp32"  # same export, --quantize none: the ONNX fp32 baseline
INDEX_64K = Path(os.environ.get("BENCH_INDEX") or BUILD / "debian-64k")  # title + text, fields: what users deploy
INDEX_64K_INT8 = BUILD / "debian-64k-int8"  # the same, stored as int8 (search build --dtype int8)
TEXT_INDEX_64K = BUILD / "debian-64k-text"  # text only (--no-title): the known-item task's index
CORPUS = ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"
RESULTS = ROOT / "bench" / "results"
FIELDS = "section,version,homepage"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "SEARCH_THREADS")


def child_env(threads: int | None = 1, **extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    if threads is not None:
        env.update({v: str(threads) for v in THREAD_VARS})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_child(module: str, *args: str, threads: int | None = 1, timeout: float = 3600, **env) -> dict:
    """Run ``python -m module --child args`` in a fresh process; its last stdout line is JSON."""
    cmd = [PY, "-m", module, "--child", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads, **env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """A child's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
        "n": len(ms),
    }


def proc_status() -> dict:
    """VmHWM (peak RSS), VmRSS, RssAnon, RssFile of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def corpus_records(limit: int | None = None):
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                return
            yield json.loads(line)


def short_queries(n: int, seed: int = 7) -> list[str]:
    """Distinct short, realistic queries: package titles (synopses) from the corpus, seeded sample."""
    import random

    titles = sorted({r["title"] for r in corpus_records() if r.get("title") and len(r["title"]) <= 60})
    return random.Random(seed).sample(titles, min(n, len(titles)))


@contextmanager
def build_lock(name: str):
    """Serialise builds of one cached folder across processes (another helper may build it too)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _other_build_running(folder: Path) -> bool:
    """A builder's temp sibling (``.name.tmp-PID``) whose process is alive."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def ensure_index(
    folder: Path,
    *,
    no_title: bool = False,
    model: Path = MODEL,
    fields: str = FIELDS,
    corpus: Path = CORPUS,
    extra: tuple = ("--skip-bad",),
) -> dict:
    """Build ``folder`` once (cached); returns {"built_now": bool, "seconds": build seconds}.
    The corpus has a few bad records (duplicate ids, an empty text): --skip-bad counts and skips them."""
    titles_asked = "--no-title-vectors" not in extra and not no_title
    with build_lock(folder.name):
        while _other_build_running(folder):
            log(f"waiting for another process building {folder} ...")
            time.sleep(15)
        if (folder / "manifest.json").is_file():
            cached = json.loads((folder / "manifest.json").read_text())
            wanted = json.loads((model / "manifest.json").read_text())["fingerprint"]
            from search.model.encoder import DISABLED_OPTIMIZERS  # search imports stay out of bench startup

            stale_format = ("prefilter" not in cached and "--no-prefilter" not in extra) or (
                cached["model"].get("session") or {}
            ).get("disabled_optimizers") != list(DISABLED_OPTIMIZERS)
            same_vectors = cached["model"]["fingerprint"] == wanted and not stale_format
            sidecar = titles_asked_file(folder)
            if sidecar.is_file():  # a catalogue whose titles all repeat their ids has none to store
                titles_differ = sidecar.read_text().strip() != str(int(titles_asked))
            else:
                titles_differ = bool(cached.get("titles")) != titles_asked
            if same_vectors and not titles_differ:
                return {"built_now": False, "seconds": cached["build_seconds"]}
            if same_vectors:
                # only the title vectors differ from what is asked for: the rebuild below reuses every
                # document vector from the index at --out, so it is not removed
                log(f"{folder}: title vectors not as asked; rebuilding it (document vectors reused)")
            else:
                log(
                    f"{folder} was built "
                    + ("by an older builder or encoder" if stale_format else "with another model")
                    + "; rebuilding it"
                )
                shutil.rmtree(folder)
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
            str(folder),
            "--fields",
            fields,
            *(("--no-title",) if no_title else ()),
            *extra,
        ]
        log("building " + " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=ROOT, env=child_env(None), check=True)
        titles_asked_file(folder).write_text(f"{int(titles_asked)}\n")
        return {"built_now": True, "seconds": json.loads((folder / "manifest.json").read_text())["build_seconds"]}


def titles_asked_file(folder: Path) -> Path:
    """Beside an index the bench built: 1 if title vectors were asked for, else 0.  The manifest
    cannot say it: an index whose titles only repeat the ids (npm) has no title vectors either way."""
    return folder.with_name(folder.name + ".titles-asked")


def ensure_fp32_model() -> Path:
    with build_lock("model-fp32"):
        if not (FP32_MODEL / "manifest.json").is_file():
            cmd = [PY, "export_onnx.py", "--out", str(FP32_MODEL), "--quantize", "none"]
            log("exporting " + " ".join(cmd[1:]))
            subprocess.run(cmd, cwd=ROOT, env=child_env(None), check=True)
    return FP32_MODEL


def require_model() -> Path:
    if not (MODEL / "manifest.json").is_file():
        raise SystemExit(f"error: {MODEL} missing: run `make model` first")
    return MODEL
