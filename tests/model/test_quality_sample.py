"""A small sample of the bench's known-item task (bench/quality.py) on the real Debian corpus.

Documents are the first 400 packages' texts (no titles), queries are their unique titles; a hit is
the package or one with the same text.  The full task (64k documents, 5,000 queries, PyTorch and
fp32 references) runs in `make bench`; this keeps its code and the shipped model honest in `make test`."""

import itertools

import numpy as np
import pytest

from bench.quality import evaluate, known_item_task, stored
from search.index.reader import SearchIndex
from tests.conftest import SHARED_CORPUS
from tests.vectors import index_from_vectors

DOCS, QUERIES = 400, 100


@pytest.fixture(scope="module")
def sample(encoder):
    if not SHARED_CORPUS.is_file():
        pytest.skip(f"{SHARED_CORPUS} not present")
    import gzip
    import json

    with gzip.open(SHARED_CORPUS, "rt", encoding="utf-8") as fh:
        records = [r for r in (json.loads(line) for line in itertools.islice(fh, DOCS + 10)) if r["text"].strip()][
            :DOCS
        ]
    queries, accept = known_item_task(records, QUERIES, seed=3)
    documents = encoder.embed([r["text"].strip() for r in records])
    query_vectors = np.stack([encoder.embed_query(q) for q in queries])
    return documents, query_vectors, accept, queries


def test_task_is_well_formed(sample):
    _, _, accept, queries = sample
    assert len(queries) == QUERIES and len(set(queries)) == QUERIES  # unique titles only
    assert all(len(rows) >= 1 for rows in accept)


def test_shipped_model_finds_packages_by_title(sample):
    documents, queries, accept, _ = sample
    result = evaluate(documents, queries, accept)
    # 400 documents: easier than the full 64k (MRR@10 ~0.68 there); a broken encoder scores ~0
    assert result["mrr10"] >= 0.6
    assert result["recall10"] >= result["mrr10"]


def test_compact_storage_keeps_quality(sample):
    documents, queries, accept, _ = sample
    base = evaluate(stored(documents, "float32"), queries, accept)["mrr10"]
    assert evaluate(stored(documents, "float16"), queries, accept)["mrr10"] >= 0.995 * base
    assert evaluate(stored(documents, "int8"), queries, accept)["mrr10"] >= 0.98 * base


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_index_ranks_as_the_bench_brute_force(sample, tmp_path, dtype):
    """The bench scores stored vectors by brute force; the real index must rank exactly the same."""
    documents, queries, accept, _ = sample
    index = SearchIndex.open(index_from_vectors(tmp_path / dtype, documents, dtype=dtype))
    reference = stored(documents, dtype)
    for q in queries[:30]:
        scores = reference @ q
        expected = sorted(range(len(scores)), key=lambda r: (-scores[r], r))[:10]
        assert [h.row for h in index.search(q, k=10)] == expected
