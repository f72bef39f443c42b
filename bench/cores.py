"""Does the build use every core?  Document embedding docs/s, docs/s per core and CPU use for 1 and
2 workers, on short texts (Debian package synopses, ~10 tokens) and long ones (title + description,
truncated at the model's max length), through the build's two paths: worker threads in the build process (the old
path: per-text Python under one GIL) and worker processes (search/index/workers.py, the path a
build takes for >= 1000 texts on several cores).  The vectors of every path are checked equal.

    python -m bench --only cores
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench.common import MODEL, corpus_records, emit, require_model, run_child

COMMAND = "python -m bench --only cores"


def measure(quick: bool) -> dict:
    require_model()
    return run_child("bench.cores", "--texts", "600" if quick else "3000", threads=1)


def _texts(kind: str, n: int) -> list[str]:
    out = []
    for r in corpus_records():
        title, text = (r.get("title") or "").strip(), (r.get("text") or "").strip()
        if kind == "short" and title:
            out.append(title)
        elif kind == "long" and len(text) > 400:
            out.append(f"{title}\n{text}")
        if len(out) >= n:
            break
    return out


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _run(encoder, texts: list[str], workers: int, mode: str) -> tuple[np.ndarray, float, float]:
    from search.index.workers import WorkerPool

    cpu0, t0 = _cpu(), time.perf_counter()
    if mode == "threads":
        vectors = np.stack(list(encoder.embed_stream(iter(texts), workers=workers)))
    else:
        with WorkerPool(encoder.bundle.path, workers, encoder.dimension) as pool:
            t0, cpu0 = time.perf_counter(), _cpu()  # after the children loaded the model (about a second)
            vectors = np.stack(list(pool.embed_stream(iter(texts))))
    wall = time.perf_counter() - t0
    return vectors, wall, _cpu() - cpu0


def _child(args) -> None:
    from search.model.encoder import Encoder

    encoder = Encoder.load(MODEL, threads=1)
    cores = len(os.sched_getaffinity(0))
    result: dict = {"cores.machine_cpus": cores, "cores.texts": args.texts}
    for kind in ("short", "long"):
        texts = _texts(kind, args.texts)
        tokens = np.mean([len(encoder._tokenizer.encode(t).ids) for t in texts[:500]])
        result[f"cores.{kind}_mean_tokens"] = round(float(tokens), 1)
        encoder.embed(texts[:20])  # warm
        reference = None
        for mode in ("threads", "processes"):
            for workers in (1, 2):
                if mode == "processes" and workers == 1:
                    continue  # one worker never starts a process (the encoder runs in the build)
                vectors, wall, cpu = _run(encoder, texts, workers, mode)
                if reference is None:
                    reference = vectors
                assert vectors.tobytes() == reference.tobytes(), f"{kind} {mode} x{workers}: vectors differ"
                rate = len(texts) / wall
                key = f"cores.{kind}.{mode}.w{workers}"
                result[f"{key}.docs_per_s"] = round(rate, 1)
                result[f"{key}.docs_per_s_per_core"] = round(rate / workers, 1)
                result[f"{key}.cpu_percent"] = round(100 * cpu / wall)
        one = result[f"cores.{kind}.threads.w1.docs_per_s"]
        result[f"cores.{kind}.threads.scaling_2w"] = round(result[f"cores.{kind}.threads.w2.docs_per_s"] / one, 2)
        result[f"cores.{kind}.processes.scaling_2w"] = round(result[f"cores.{kind}.processes.w2.docs_per_s"] / one, 2)
    emit(result)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--texts", type=int, default=3000)
    _child(p.parse_args())
