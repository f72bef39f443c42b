"""Keyword (SQLite FTS5) and hybrid search: the index build, safe query syntax, exact names,
fusion, and filters / pagination / min_score behaving alike in every mode."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main as cli_main
from search.errors import IndexBuildError, QueryError
from search.fileutil import sha256_file
from search.hybrid import (
    FULL_MATCH_SHARE,
    KEYWORD_WEIGHT,
    SENTENCE_SHARE,
    coverage,
    keyword_style,
    keyword_weight_for,
    weighted_fuse,
)
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.keyword import (
    FTS_TABLE,
    lexical_for,
    match_expression,
    name_key,
    query_tokens,
    stems,
    write_lexical_index,
)
from search.index.reader import SearchIndex
from search.searcher import Searcher
from tests.conftest import DEMO_CORPUS, write_jsonl
from tests.vectors import GivenVectors

FTS_SYNTAX = [
    '"',
    '""',
    "'",
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "NEAR(chess game, 2)",
    "chess*",
    "*",
    "title:chess",
    "{id title}: chess",
    "^chess",
    "-chess",
    "+chess",
    "chess AND",
    "(chess",
    "chess)",
    "a:b:c",
    '"unterminated chess',
    "chess\x00game",
    "\\",
    "%",
    "_",
    ";",
    "'; DROP TABLE items; --",
]


@pytest.fixture(scope="module")
def given_index(tmp_path_factory):
    """A small index from the demo records with random vectors: keyword side only needs the text."""
    records = [json.loads(line) for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines()][:300]
    folder = tmp_path_factory.mktemp("given")
    corpus = write_jsonl(folder / "c.jsonl", records)
    vectors = np.random.default_rng(3).standard_normal((len(records), 8)).astype(np.float32)
    build_index(
        corpus,
        GivenVectors(vectors),
        folder / "index",
        CorpusSpec(fields=("section",)),
        BuildOptions(show_progress=False),
    )
    return SearchIndex.open(folder / "index"), records


@pytest.fixture(scope="module")
def demo(model_dir, demo_index):
    searcher = Searcher.open(model_dir, demo_index, threads=1)
    yield searcher
    searcher.index.close()


@pytest.fixture(scope="module")
def tiny_demo(tiny_model_dir, tiny_index):
    """The demo corpus searched with the tiny model (tests/tiny_model.py): for behaviour that holds
    whatever the vectors are (filters, paging, fallbacks)."""
    searcher = Searcher.open(tiny_model_dir, tiny_index, threads=1)
    yield searcher
    searcher.index.close()


@pytest.fixture(scope="module")
def grouped(tiny_demo, tmp_path_factory):
    """The first 400 demo items with their tiny-model vectors and a "group" field to filter on
    (the demo corpus is all one section)."""
    demo = tiny_demo
    rows = list(range(400))
    records = demo.index.metadata.rows(rows)
    folder = tmp_path_factory.mktemp("grouped")
    corpus = write_jsonl(
        folder / "c.jsonl",
        [
            {
                "id": records[r]["id"],
                "title": records[r]["title"],
                "text": records[r]["text"],
                "group": ("a", "b", "c")[r % 3],
            }
            for r in rows
        ],
    )
    vectors = np.stack([demo.index.vector(r) for r in rows])
    build_index(
        corpus,
        GivenVectors(vectors, demo.encoder.fingerprint),
        folder / "index",
        CorpusSpec(fields=("group",)),
        BuildOptions(show_progress=False),
    )
    index = SearchIndex.open(folder / "index", model_fingerprint=demo.encoder.fingerprint)
    yield Searcher(demo.encoder, index)
    index.close()


# -- the build ----------------------------------------------------------------------------------
def test_build_writes_the_keyword_index_and_the_manifest_lists_it(given_index):
    index, records = given_index
    lexical = index.manifest["lexical"]
    assert lexical["engine"] == "sqlite-fts5" and lexical["file"] == "metadata.sqlite"
    assert lexical["columns"] == ["id", "title", "text"]
    assert lexical["format"] == 2 and lexical["tokenizer"].startswith("porter ")
    assert len(lexical["weights"]) == 3 and all(w > 0 for w in lexical["weights"])
    assert lexical["avg_tokens"] > 1 and lexical["common_docs"] >= 1000
    metadata_file = index.path / "metadata.sqlite"
    assert index.manifest["files"]["metadata.sqlite"]["sha256"] == sha256_file(metadata_file)
    conn = sqlite3.connect(metadata_file)
    indexed = conn.execute(f"SELECT count(*) FROM {lexical['table']}").fetchone()[0]
    matched = conn.execute(f"SELECT rowid FROM {lexical['table']} WHERE {lexical['table']} MATCH '\"0ad\"'").fetchall()
    (chess_docs,) = conn.execute(f"SELECT docs FROM {lexical['terms_table']} WHERE term = 'chess'").fetchone()
    conn.close()
    assert indexed == len(records)
    assert chess_docs == sum("chess" in name_key(f"{r['id']} {r['title']} {r['text']}").split() for r in records)
    assert {records[r]["id"] for (r,) in matched} >= {"0ad", "0ad-data", "0ad-data-common"}


def test_write_refuses_clearly_without_fts5_support_in_the_connection(tmp_path):
    # A real connection that cannot create virtual tables behaves like a SQLite without FTS5.
    conn = sqlite3.connect(tmp_path / "m.sqlite")
    conn.execute("CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT, title TEXT, text TEXT)")
    conn.set_authorizer(
        lambda action, *rest: sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_CREATE_VTABLE else sqlite3.SQLITE_OK
    )
    with pytest.raises(IndexBuildError, match="FTS5"):
        write_lexical_index(conn)


# -- query text is never syntax -----------------------------------------------------------------
def test_tokens_are_words_and_the_match_string_only_quotes_them():
    assert query_tokens('NEAR("Chess" AND) *:^ chess') == ["near", "chess", "and"]
    assert match_expression(["near", "chess"]) == '"near" OR "chess"'
    assert query_tokens("!!! --- ***") == []
    assert name_key("GIMP-Data") == name_key("gimp data") == "gimp data"


@pytest.mark.parametrize("text", FTS_SYNTAX)
def test_fts_syntax_characters_are_plain_text(given_index, text):
    index, records = given_index
    lexical = lexical_for(index)
    hits = lexical.search(text, limit=10)
    words = set(stems(query_tokens(text)))
    for hit in hits:  # every hit holds one of the words as a word (or another form of it)
        rec = records[hit.row]
        assert words & set(stems(name_key(f"{rec['id']} {rec['title']} {rec['text']}").split()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(
        alphabet=st.sampled_from(list("\"'()*:^-+{}[],.;ANDORNEAR chess game0") + ["\u00e9", "\u4e2d"]), max_size=40
    )
)
def test_any_text_gives_results_or_nothing_never_an_error(given_index, text):
    index, _ = given_index
    lexical = lexical_for(index)
    hits = lexical.search(text, limit=5)
    assert len(hits) <= 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    lexical.exact_matches(text)


def test_punctuation_only_gives_empty_keyword_results(given_index, demo):
    index, _ = given_index
    assert lexical_for(index).search("?!.,;:-_()[]\"'*^", limit=10) == []
    assert demo.search("?!.;:()*", mode="keyword").hits == []
    assert demo.search("?!.;:()*", mode="hybrid").hits  # the semantic side still answers


def test_common_words_only_add_to_items_that_hold_a_rare_word(tmp_path):
    # 6,000 items of equal length: "common" in 1,100 (over the 1,000-item floor, under a fifth),
    # "every" in all (too common to add anything), "rare" in items 0, 400 and 5000
    records = [
        {
            "id": f"item-{i}",
            "title": f"Item {i}",
            "text": ("common" if i >= 4900 else "other") + " every" + (" rare" if i in (0, 400, 5000) else ""),
        }
        for i in range(6000)
    ]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    vectors = np.random.default_rng(1).standard_normal((len(records), 4)).astype(np.float32)
    build_index(corpus, GivenVectors(vectors), tmp_path / "index", CorpusSpec(), BuildOptions(show_progress=False))
    index = SearchIndex.open(tmp_path / "index")
    try:
        lexical = lexical_for(index)
        # only common words: the least common decides within the budget, "every" (all items) does not
        assert lexical.match_for("common every") == '"common"'
        assert len(lexical.search("common every", limit=2000)) == 1100
        assert lexical.match_for("every") is None and lexical.search("every", limit=5) == []
        assert lexical.match_for("Rare every common") == '("rare") AND ("common" OR "rare")'
        assert [h.row for h in lexical.search("rare common", limit=10)] == [5000, 0, 400]
        lexical.anchor_common = False
        assert lexical.match_for("rare common") == '"rare"'
        assert [h.row for h in lexical.search("rare common", limit=10)] == [0, 400, 5000]  # a tie, by row
    finally:
        index.close()


# -- exact names and ranking --------------------------------------------------------------------
def test_exact_match_tiers_id_as_typed_then_id_then_title(given_index):
    index, records = given_index
    lexical = lexical_for(index)
    rows = {r["id"]: i for i, r in enumerate(records)}
    assert lexical.exact_matches("0AD ") == ([rows["0ad"]], [], [])
    assert lexical.exact_matches("0ad data") == ([], [rows["0ad-data"]], [])
    title = records[rows["0ad"]]["title"]
    typed, by_id, by_title = lexical.exact_matches(title.upper())
    assert typed == by_id == [] and rows["0ad"] in by_title
    assert lexical.exact_matches("   ") == lexical.exact_matches("--") == ([], [], [])


def test_an_id_typed_with_its_case_comes_before_one_that_differs_only_in_case(tmp_path):
    records = [
        {"id": "re.Match", "title": "re.Match", "text": "The result of a successful match."},
        {"id": "re.match", "title": "re.match", "text": "Try to apply the pattern at the start of the string."},
        {"id": "re.search", "title": "re.search", "text": "Scan through string looking for a match."},
    ]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    out = tmp_path / "index"
    vectors = np.eye(len(records), 8, dtype=np.float32)
    build_index(corpus, GivenVectors(vectors), out, CorpusSpec(), BuildOptions(show_progress=False))
    index = SearchIndex.open(out)
    try:
        lexical = lexical_for(index)
        assert lexical.exact_matches("re.match") == ([1], [0], [])
        assert lexical.exact_matches("re.Match") == ([0], [1], [])
        assert lexical.exact_matches("RE.MATCH") == ([0, 1], [], [])  # no id typed so: case is ignored
    finally:
        index.close()


def test_an_id_typed_as_it_is_beats_a_name_that_only_reads_the_same(demo):
    if demo.item("xgalaga++") is None or demo.item("xgalaga") is None:
        pytest.skip("xgalaga and xgalaga++ not in the demo corpus")
    assert demo.search("xgalaga++", k=2).hits[0]["id"] == "xgalaga++"
    assert demo.search("xgalaga", k=2).hits[0]["id"] == "xgalaga"


def test_stemming_matches_other_forms_of_a_word(tmp_path):
    records = [
        {"id": "a", "title": "A", "text": "password hashing for web apps"},
        {"id": "b", "title": "B", "text": "a colour picker"},
    ]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    vectors = np.eye(2, 4, dtype=np.float32)
    build_index(corpus, GivenVectors(vectors), tmp_path / "index", CorpusSpec(), BuildOptions(show_progress=False))
    index = SearchIndex.open(tmp_path / "index")
    try:
        assert stems(["hashing", "passwords", "Colours"]) == ["hash", "password", "colour"]
        assert [h.row for h in lexical_for(index).search("hash passwords", limit=5)] == [0]
    finally:
        index.close()


def test_coverage_is_the_share_of_the_ideal_score(tmp_path):
    # 40 items of the same length; "alpha" and "beta" each in 4 of them, both in item 0 (in the text)
    records = [
        {
            "id": f"i{i}",
            "title": f"T{i}",
            "text": " ".join(["alpha" if i in (0, 1, 2, 3) else "x", "beta" if i in (0, 4, 5, 6) else "y", "z"]),
        }
        for i in range(40)
    ]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    vectors = np.random.default_rng(2).standard_normal((40, 4)).astype(np.float32)
    build_index(corpus, GivenVectors(vectors), tmp_path / "index", CorpusSpec(), BuildOptions(show_progress=False))
    index = SearchIndex.open(tmp_path / "index")
    try:
        lexical = lexical_for(index)
        hits, ideal = lexical.ranked("alpha beta", limit=10)
        share = {h.row: h.score / ideal for h in hits}
        assert hits[0].row == 0 and len(hits) == 7
        # item 0 holds both words once in one column of weight 2 (the ideal: once in every column)
        assert 0.5 < share[0] < 1.0 and share[1] == pytest.approx(share[0] / 2)
        assert all(share[r] == pytest.approx(share[1]) for r in (2, 3, 4, 5, 6))
        assert coverage(hits[0].score, ideal) == 1.0  # over FULL_MATCH_SHARE of the ideal: a full match
        assert coverage(hits[1].score, ideal) == pytest.approx(share[1] / FULL_MATCH_SHARE)
    finally:
        index.close()


def test_long_queries_give_the_keyword_side_less_weight():
    assert keyword_weight_for("pdf merge") == keyword_weight_for("pdf merge", sentence_share=0.1) == KEYWORD_WEIGHT
    sentence = KEYWORD_WEIGHT * SENTENCE_SHARE
    assert keyword_weight_for("one two three four five") == pytest.approx(sentence)
    assert keyword_weight_for("a b c d e f g h i j") == pytest.approx(sentence / 2)  # ten words: 5/10 of it


def test_sentences_get_their_share_of_the_keyword_weight():
    assert 0 < SENTENCE_SHARE <= 1
    assert keyword_weight_for("merge two pdf files", sentence_share=1.0) == KEYWORD_WEIGHT  # a function-free 4 words
    assert keyword_weight_for("merge two pdf files", sentence_share=0.0) == 0.0
    assert keyword_weight_for("viewer for pdf", sentence_share=0.25) == pytest.approx(KEYWORD_WEIGHT / 4)


@pytest.mark.parametrize(
    "query", ["pdf viewer", "Chess engine", "fast recursive grep", "png-optimizer", "python3 requests", "vpn"]
)
def test_terse_queries_are_keyword_style(query):
    assert keyword_style(query)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "  ?! ",
        "copy to clipboard",  # a function word
        "photo editing program similar to photoshop",
        "tcp load balancer proxy",  # four words
        "The PDF viewer",
    ],
)
def test_sentences_and_longer_queries_are_not_keyword_style(query):
    assert not keyword_style(query)


def test_fusion_weighs_cosine_and_coverage_and_promotes_exact_matches():
    cosine = {1: 0.9, 2: 0.5, 3: 0.6, 4: 0.2}
    fused = weighted_fuse([1, 2, 3], [(3, 8.0), (4, 2.0)], cosine, ideal=8.0, keyword_weight=0.4)
    assert [f.row for f in fused] == [3, 1, 2, 4]  # (.6+.4)/1.4 = .714 > .643 > .357 > (.2+.4*.5)/1.4
    assert fused[0].signals == ["semantic", "keyword"] and fused[3].signals == ["keyword"]
    assert fused[0].score == pytest.approx(1.0 / 1.4) and fused[3].score == pytest.approx(0.4 / 1.4)
    assert [f.row for f in weighted_fuse([1, 2, 3], [], cosine, ideal=1.0)] == [1, 3, 2]  # cosine order
    fused = weighted_fuse([1, 2, 3], [(3, 8.0), (4, 2.0)], cosine, ([], [9], [2, 4]), ideal=8.0)
    assert [f.row for f in fused] == [9, 2, 4, 3, 1] and fused[0].signals == ["exact"]
    assert fused[1].signals == ["exact", "semantic"] and {f.score for f in fused[:3]} == {1.0}


@pytest.mark.parametrize("name", ["0ad", "gnome-chess", "frozen-bubble", "supertux", "xboard", "pychess"])
def test_a_package_name_finds_that_package_first(demo, name):
    if demo.item(name) is None:
        pytest.skip(f"{name} not in the demo corpus")
    for query in (name, name.replace("-", " ").upper()):
        hits = demo.search(query, k=3).hits
        assert hits[0]["id"] == name and "exact" in hits[0]["signals"]


def test_names_in_the_demo_corpus_rank_first_in_hybrid(demo, demo_records):
    sample = demo_records[::37]  # a fixed spread of 30 names
    first = sum(demo.search(r["id"].replace("-", " ").replace("_", " "), k=1).hits[0]["id"] == r["id"] for r in sample)
    assert first / len(sample) >= 0.95


def test_descriptions_still_work_and_say_which_side_found_them(demo):
    hits = demo.search("space trading game", k=10).hits
    assert len(hits) == 10
    assert any("semantic" in h["signals"] for h in hits)
    assert all(set(h["signals"]) <= {"semantic", "keyword", "exact"} and h["signals"] for h in hits)
    assert demo.search("space trading game", k=3, mode="semantic").hits[0]["signals"] == ["semantic"]


def test_empty_keyword_side_leaves_the_semantic_order(demo):
    query = "zqxjv wkpfh qqzzv xkcdq"  # no such words anywhere; four words, so no title cosines either
    hybrid = demo.search(query, k=10, mode="hybrid").hits
    semantic = demo.search(query, k=10, mode="semantic").hits
    assert [h["id"] for h in hybrid] == [h["id"] for h in semantic]
    assert all(h["signals"] == ["semantic"] for h in hybrid)
    assert demo.search(query, mode="keyword").hits == []


# -- filters, pagination, min_score, k in every mode ---------------------------------------------
@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
@pytest.mark.parametrize("filters", [None, {"group": ["a", "c"]}])
def test_pages_concatenate_to_the_whole_list(grouped, mode, filters):
    query = "board game"
    whole = [h["id"] for h in grouped.search(query, k=24, mode=mode, filters=filters).hits]
    pages = [
        h["id"]
        for off in range(0, 24, 8)
        for h in grouped.search(query, k=8, offset=off, mode=mode, filters=filters).hits
    ]
    assert pages == whole and len(set(whole)) == len(whole) == 24


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_filters_hold_in_every_mode(grouped, mode):
    hits = grouped.search("strategy game", k=30, mode=mode, filters={"group": ["b"]}).hits
    assert len(hits) == 30 and all(h["fields"]["group"] == "b" for h in hits)
    unfiltered = grouped.search("strategy game", k=100, mode=mode).hits
    if mode != "hybrid":  # one ranking, filtered: the filtered list keeps the unfiltered order
        in_b = [h["id"] for h in unfiltered if h["fields"]["group"] == "b"]
        assert [h["id"] for h in hits][: len(in_b)] == in_b[:30]
    assert grouped.search("strategy game", k=5, mode=mode, filters={"group": ["zzz"]}).hits == []
    with pytest.raises(QueryError):
        grouped.search("strategy game", mode=mode, filters={"nope": ["x"]})


def test_an_exact_match_outside_the_filter_is_not_shown(grouped):
    group = grouped.item("0ad")["fields"]["group"]
    other = next(g for g in "abc" if g != group)
    assert grouped.search("0ad", k=1).hits[0]["id"] == "0ad"
    for mode in ("keyword", "hybrid"):
        hits = grouped.search("0ad", k=10, mode=mode, filters={"group": [other]}).hits
        assert "0ad" not in [h["id"] for h in hits] and all("exact" not in h["signals"] for h in hits)


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_min_score_cuts_the_same_list(grouped, mode):
    whole = grouped.search("chess engine", k=40, mode=mode).hits
    scores = [h["score"] for h in whole]
    assert scores == sorted(scores, reverse=True)
    cut_at = next(i for i in range(len(scores) // 2, len(scores)) if scores[i] < scores[i - 1])
    cut = (scores[cut_at] + scores[cut_at - 1]) / 2  # between two distinct scores: no rounding doubt
    kept = grouped.search("chess engine", k=40, mode=mode, min_score=cut).hits
    assert kept == whole[:cut_at]


def test_bad_mode_and_bad_paging_are_query_errors(tiny_demo):
    demo = tiny_demo
    for bad in ({"mode": "fuzzy"}, {"k": 0}, {"offset": -1}, {"k": 0, "mode": "keyword"}):
        with pytest.raises(QueryError):
            demo.search("chess", **bad)


# -- an index without a keyword side --------------------------------------------------------------
@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m.pop("lexical"), "without a keyword index"),  # an index built before the keyword side
        # found by the storage audit: a bogus names table was an IndexLoadError on the first search
        (lambda m: m["lexical"].update(names_table="no_such_names"), "keyword index unreadable"),
    ],
)
def test_an_index_without_a_usable_keyword_index_falls_back_to_semantic(
    tiny_demo, tiny_index, tmp_path, change, reason
):
    demo = tiny_demo
    old = tmp_path / "old-index"
    shutil.copytree(tiny_index, old)
    manifest = json.loads((old / "manifest.json").read_text())
    change(manifest)
    (old / "manifest.json").write_text(json.dumps(manifest))
    index = SearchIndex.open(old)
    try:
        assert reason in demo.keyword_status(index)
        result = demo.search("0ad", k=3, index=index)
        assert result.mode == "semantic" and "fell back" in result.note
        assert [h["signals"] for h in result.hits] == [["semantic"]] * 3
        with pytest.raises(QueryError, match="keyword search is unavailable"):
            demo.search("0ad", mode="keyword", index=index)
    finally:
        index.close()
    assert demo.keyword_status() is None


def test_a_sqlite_without_fts5_still_serves_semantic_search(tiny_demo, tiny_index, tmp_path):
    """What a Python whose SQLite lacks FTS5 sees: the schema names a module it does not have.
    Renaming the module in a copy's schema gives exactly that on this machine."""
    demo, demo_index = tiny_demo, tiny_index
    copy = tmp_path / "no-fts5"
    shutil.copytree(demo_index, copy)
    conn = sqlite3.connect(copy / "metadata.sqlite")
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        f"UPDATE sqlite_schema SET sql = replace(sql, 'USING fts5(', 'USING fts5_absent(') WHERE name = '{FTS_TABLE}'"
    )
    conn.commit()
    conn.close()
    index = SearchIndex.open(copy)
    try:
        assert "has no FTS5" in demo.keyword_status(index)
        result = demo.search("gnome chess", k=5, index=index)
        assert result.mode == "semantic" and "has no FTS5" in result.note and len(result.hits) == 5
        with pytest.raises(QueryError, match="has no FTS5"):
            demo.search("gnome chess", mode="keyword", index=index)
    finally:
        index.close()


def test_cli_query_takes_a_mode(model_dir, demo_index, capsys):
    assert (
        cli_main(
            [
                "query",
                "gnome chess",
                "--model",
                str(model_dir),
                "--index",
                str(demo_index),
                "--mode",
                "keyword",
                "-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "keyword" and out["results"][0]["id"] == "gnome-chess"
    assert out["results"][0]["signals"] == ["exact", "keyword"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["query", "chess", "--model", str(model_dir), "--index", str(demo_index), "--mode", "fuzzy"])
    assert exit_.value.code == 2
