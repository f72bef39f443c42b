"""Hybrid's semantic side keeps only the page's rows for a sentence (searcher.semantic_candidates):
the pages must be those of the full candidate list, for every storage dtype, page and filter."""

from __future__ import annotations

import numpy as np
import pytest

import search.searcher as searcher_module
from search.hybrid import keyword_style
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.reader import SearchIndex
from search.searcher import Searcher, semantic_candidates
from tests.conftest import write_jsonl
from tests.vectors import GivenVectors

SENTENCES = [
    "a game where you grow crops with friends",
    "shoot the enemy ships before they reach the bottom of the screen",
    "chess engine that plays against you",
    "puzzle game with falling blocks of different shapes",
    "drive a racing car around a track",
    "strategy game about building an ancient empire",
    "play cards against the computer",
    "a tool that prints the weather",
]
PAGES = [(10, 0), (3, 0), (5, 5), (1, 40), (20, 7)]


def test_a_sentence_takes_the_page_and_a_terse_query_every_candidate():
    assert semantic_candidates(False, 100, 10) == 10
    assert semantic_candidates(True, 100, 10) == 100
    assert not any(map(keyword_style, SENTENCES))


@pytest.fixture(scope="module", params=["float32", "float16", "int8"])
def stored_as(request, tiny_model_dir, tiny_index, tmp_path_factory):
    """The first 600 demo items with their tiny-model vectors, stored as each dtype, with a field."""
    demo = Searcher.open(tiny_model_dir, tiny_index, threads=1)
    request.addfinalizer(demo.index.close)
    rows = list(range(600))
    records = demo.index.metadata.rows(rows)
    folder = tmp_path_factory.mktemp(f"stored-{request.param}")
    corpus = write_jsonl(
        folder / "c.jsonl",
        [{**{k: records[r][k] for k in ("id", "title", "text")}, "group": "ab"[r % 2]} for r in rows],
    )
    build_index(
        corpus,
        GivenVectors(np.stack([demo.index.vector(r) for r in rows]), demo.encoder.fingerprint),
        folder / "index",
        CorpusSpec(fields=("group",)),
        BuildOptions(dtype=request.param, show_progress=False),
    )
    index = SearchIndex.open(folder / "index", model_fingerprint=demo.encoder.fingerprint)
    yield Searcher(demo.encoder, index, cache_size=0)
    index.close()


@pytest.mark.parametrize("filters", [None, {"group": ["a"]}])
def test_sentence_pages_are_those_of_every_candidate(stored_as, monkeypatch, filters):
    def page(query, k, offset, min_score=None):
        result = stored_as.search(query, k=k, offset=offset, filters=filters, min_score=min_score)
        return [(h["id"], h["score"]) for h in result.hits]

    wanted = {}
    with monkeypatch.context() as m:  # the full list: the semantic side's top N for every query
        m.setattr(searcher_module, "semantic_candidates", lambda terse, n, need: n)
        for query in SENTENCES:
            for k, offset in PAGES:
                wanted[query, k, offset] = page(query, k, offset)
            wanted[query, "min"] = page(query, 10, 0, min_score=wanted[query, 10, 0][5][1])
    for query in SENTENCES:
        for k, offset in PAGES:
            assert page(query, k, offset) == wanted[query, k, offset], (query, k, offset)
        assert page(query, 10, 0, min_score=wanted[query, 10, 0][5][1]) == wanted[query, "min"]


def test_a_sentence_result_is_semantic_when_meaning_alone_puts_it_on_the_page(stored_as):
    for query in SENTENCES:
        hybrid = stored_as.search(query, k=10).hits
        by_meaning = {h["id"] for h in stored_as.search(query, k=10, mode="semantic").hits}
        for hit in hybrid:
            assert ("semantic" in hit["signals"]) == (hit["id"] in by_meaning), (query, hit)
            assert hit["signals"], (query, hit)  # every result was proposed by one side at least
