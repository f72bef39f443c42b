"""Build real index folders from given vectors (for tests of the index itself).

`GivenVectors` stands where the encoder stands in `build_index`: it yields precomputed vectors
in row order, so the index files are written by the real builder code."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from search.builder import BuildOptions, build_index
from search.corpus import CorpusSpec
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


def index_from_vectors(folder: Path, vectors: np.ndarray, sections=None, dtype="float32",
                       fingerprint="given-vectors") -> Path:
    n = len(vectors)
    sections = sections if sections is not None else ["s"] * n
    records = [{"id": f"item-{i}", "title": f"Item {i}", "text": f"text {i}", "section": sections[i]}
               for i in range(n)]
    corpus = write_jsonl(folder.parent / f"{folder.name}.jsonl", records)
    build_index(corpus, GivenVectors(vectors, fingerprint), folder, CorpusSpec(fields=("section",)),
                BuildOptions(dtype=dtype, show_progress=False))
    return folder
