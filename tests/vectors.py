"""Build real index folders from given vectors (for tests of the index itself).

`GivenVectors` stands where the encoder stands in `build_index`: it yields precomputed vectors
in row order, so the index files are written by the real builder code."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from tests.conftest import write_jsonl


class GivenVectors:
    def __init__(self, vectors: np.ndarray, fingerprint: str = "given-vectors"):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.dimension = self.vectors.shape[1]
        self.fingerprint = fingerprint
        self.bundle = SimpleNamespace(source_model="given-vectors", quantization=None)

    def embed_stream(self, texts, *, workers=1, kind="document"):
        for row, _ in enumerate(texts):
            yield self.vectors[row]


def index_from_vectors(
    folder: Path, vectors: np.ndarray, sections=None, dtype="float32", fingerprint="given-vectors"
) -> Path:
    n = len(vectors)
    sections = sections if sections is not None else ["s"] * n
    records = [{"id": f"item-{i}", "title": f"Item {i}", "text": f"text {i}", "section": sections[i]} for i in range(n)]
    corpus = write_jsonl(folder.parent / f"{folder.name}.jsonl", records)
    build_index(
        corpus,
        GivenVectors(vectors, fingerprint),
        folder,
        CorpusSpec(fields=("section",)),
        BuildOptions(dtype=dtype, show_progress=False),
    )
    return folder


def unit_rows(rng, n, d):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def clustered(rng, n, d):
    """Rows in tight clusters plus exact duplicates: many near-ties around any top-k cut."""
    centres = unit_rows(rng, 20, d)
    m = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, d)).astype(np.float32) * 0.05
    m[5] = m[6]
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def clustered_index(folder: Path, dtype: str, sections=("a", "b", "c"), n: int = 3000, seed: int = 3):
    """(folder, matrix): ``clustered`` rows built into a real index, sections cycling through ``sections``."""
    matrix = clustered(np.random.default_rng(seed), n, 384)
    index_from_vectors(folder, matrix, [sections[i % len(sections)] for i in range(n)], dtype=dtype)
    return folder, matrix
