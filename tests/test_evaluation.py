"""search/evaluation.py (metrics by hand, the sign test's exact values, query files) and
``python -m search eval`` on the demo index."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from search import cli
from search.errors import EvalError, SearchError
from search.eval_report import misses_tsv
from search.evaluation import (
    ALL,
    QueryCase,
    bootstrap_interval,
    check_ids,
    compare,
    difference,
    evaluate,
    load_queries,
    misses,
    parse_queries,
    repeats,
    score_query,
    sign_test,
    summarize,
)
from tests.conftest import ROOT

# ------------------------------------------------------------------------------------ metrics


def test_score_query_rank_rr_and_ndcg_by_hand():
    s = score_query(["a", "b", "c"], {"b"}, k=10)
    assert s.rank == 2 and s.rr == 0.5 and s.hit(2) and not s.hit(1)
    assert s.ndcg == pytest.approx(1 / math.log2(3))  # one relevant: ideal DCG is 1

    # two accepted at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3)
    s = score_query(["a", "x", "c", "y"], {"a", "c"}, k=10)
    assert s.rank == 1 and s.rr == 1.0
    assert s.ndcg == pytest.approx(1.5 / (1 + 1 / math.log2(3)))


def test_score_query_cut_off_at_k():
    ranked = [f"x{i}" for i in range(10)] + ["good"]
    s = score_query(ranked, {"good"}, k=10)
    assert s.rank is None and s.rr == 0.0 and s.ndcg == 0.0 and not s.hit(10)
    assert score_query(ranked, {"good"}, k=11).rank == 11


def test_score_query_ideal_dcg_is_capped_at_k():
    # 5 accepted ids, k = 2, both top slots accepted: a perfect list
    assert score_query(["a", "b"], {"a", "b", "c", "d", "e"}, k=2).ndcg == pytest.approx(1.0)


def test_score_query_counts_a_repeated_id_once():
    s = score_query(["a", "a", "b"], {"a", "b"}, k=3)
    dcg = 1 + 1 / math.log2(4)  # a at 1, its repeat at 2 earns nothing, b at 3
    assert s.ndcg == pytest.approx(dcg / (1 + 1 / math.log2(3)))


def test_score_query_empty_ranking_and_bad_k():
    assert score_query([], {"a"}, k=10).rank is None
    with pytest.raises(ValueError):
        score_query(["a"], {"a"}, k=0)


def test_summarize_means_by_hand():
    scores = [
        score_query(["a"], {"a"}, 10),  # rank 1
        score_query(["x", "x2", "x3", "b"], {"b"}, 10),  # rank 4
        score_query(["x"], {"c"}, 10),  # miss
    ]
    m = summarize(scores, 10)
    assert m.n == 3
    assert m.hit1 == pytest.approx(1 / 3)
    assert m.hitk == pytest.approx(2 / 3)
    assert m.mrr == pytest.approx((1 + 0.25 + 0) / 3)
    assert m.ndcg == pytest.approx((1 + 1 / math.log2(5) + 0) / 3)
    assert m.mrr_interval == bootstrap_interval([1, 0.25, 0])
    assert m.mrr_interval[0] <= m.mrr <= m.mrr_interval[1]
    assert summarize([], 10).n == 0 and summarize([], 10).mrr_interval is None


# --------------------------------------------------------------------- bootstrap intervals


def test_bootstrap_interval_of_a_coin():
    # 100 values, half 1: the mean's standard error is 0.05, so a 95% interval is about 0.5 +- 0.098
    low, high = bootstrap_interval([1.0, 0.0] * 50)
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert bootstrap_interval([1.0, 0.0] * 50) == (low, high)  # a fixed seed: the same every run


def test_bootstrap_interval_narrows_with_more_queries_and_lower_level():
    values = [1.0, 0.5, 0.0, 0.25, 1.0, 0.0]
    few, many = bootstrap_interval(values), bootstrap_interval(values * 10)
    assert few[1] - few[0] > many[1] - many[0] > 0
    wide, narrow = bootstrap_interval(values * 10, level=0.99), bootstrap_interval(values * 10, level=0.5)
    assert wide[0] <= many[0] <= narrow[0] < narrow[1] <= many[1] <= wide[1]


def test_bootstrap_interval_edges():
    assert bootstrap_interval([]) is None and bootstrap_interval([0.5]) is None
    assert bootstrap_interval([0.25] * 7) == (0.25, 0.25)
    with pytest.raises(ValueError):
        bootstrap_interval([0.0, 1.0], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([0.0, 1.0], resamples=0)


def test_difference_pairs_the_queries():
    hit = [score_query(["g"], {"g"}, 10) for _ in range(20)]
    second = [score_query(["x", "g"], {"g"}, 10) for _ in range(20)]
    # every query half a reciprocal rank apart: resampling pairs cannot move the difference
    assert difference(hit, second) == (0.5, (0.5, 0.5))
    assert difference(second, hit) == (-0.5, (-0.5, -0.5))
    mixed = hit[:10] + second[:10]
    gap, (low, high) = difference(hit, mixed)
    assert gap == pytest.approx(0.25) and 0 < low < gap < high <= 0.5
    with pytest.raises(ValueError):
        difference(hit, mixed[:3])


# ------------------------------------------------------------------------------ the sign test


@pytest.mark.parametrize(
    ("wins", "losses", "p"),
    [
        (1, 9, 0.021484375),  # 2 x (1 + 10) / 1024
        (9, 1, 0.021484375),
        (0, 10, 0.001953125),  # 2 / 1024
        (3, 7, 0.34375),  # 2 x (1 + 10 + 45 + 120) / 1024
        (0, 5, 0.0625),  # 2 / 32
        (5, 5, 1.0),
        (0, 1, 1.0),
        (0, 0, 1.0),
        (6, 13, 0.1670684814453125),  # the hybrid vs semantic split: 2 x 43796 / 2^19
    ],
)
def test_sign_test_exact_values(wins, losses, p):
    assert sign_test(wins, losses) == p


def test_sign_test_rejects_negative_counts():
    with pytest.raises(ValueError):
        sign_test(-1, 3)


def test_compare_drops_ties():
    a = [score_query(r, {"g"}, 10) for r in (["g"], ["x", "g"], ["x"], ["g"])]
    b = [score_query(r, {"g"}, 10) for r in (["x", "g"], ["g"], ["x"], ["g"])]
    # query 1: a wins (1 vs 1/2); 2: a loses; 3: both miss (tie); 4: both rank 1 (tie)
    assert compare(a, b) == (1, 1, 2, 1.0)
    with pytest.raises(ValueError):
        compare(a, b[:2])


def test_evaluate_per_system_per_kind_and_pairs():
    accepted = [{"a"}, {"b"}, {"c"}, {"d"}]
    kinds = ["name", "name", "descriptive", "descriptive"]
    rankings = {
        "one": [["a"], ["b"], ["x", "c"], ["x"]],
        "two": [["x", "a"], ["b"], ["c"], ["d"]],
    }
    ev = evaluate(rankings, accepted, k=10, kinds=kinds)
    assert ev.systems == ["one", "two"] and ev.kinds == [ALL, "name", "descriptive"]
    assert ev.metrics["one"]["name"].mrr == 1.0
    assert ev.metrics["one"]["descriptive"].mrr == 0.25
    assert ev.metrics["two"][ALL].mrr == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert ev.metrics["two"][ALL].hit1 == 0.75
    overall = next(p for p in ev.paired if p.kind == ALL)
    assert (overall.a, overall.b, overall.wins, overall.losses, overall.ties) == ("one", "two", 1, 2, 1)
    assert overall.p == sign_test(1, 2)
    assert {p.kind for p in ev.paired} == {ALL, "name", "descriptive"}
    d = ev.as_dict()
    assert d["metrics"]["one"]["name"]["mrr@10"] == 1.0 and d["paired"][0]["a"] == "one"


def test_evaluate_checks_lengths():
    with pytest.raises(ValueError):
        evaluate({"one": [["a"]]}, [{"a"}, {"b"}])
    with pytest.raises(ValueError):
        evaluate({"one": [["a"]]}, [{"a"}], kinds=["x", "y"])


def test_evaluate_without_kinds_has_only_the_overall_group():
    ev = evaluate({"one": [["a"]], "two": [["b"]]}, [{"a"}])
    assert ev.kinds == [ALL] and len(ev.paired) == 1


def test_misses_list_what_came_back_instead():
    cases = [QueryCase("q1", frozenset({"a"}), "name", 3), QueryCase("q2", frozenset({"b"}), "", 4)]
    rankings = {"one": [["a", "x"], ["x", "y", "z", "w"]]}
    ev = evaluate(rankings, [c.accepted for c in cases], k=10)
    found = misses(ev, cases, rankings)
    assert [(m.system, m.case.line, m.got) for m in found] == [("one", 4, ("x", "y", "z"))]
    tsv = misses_tsv(found).splitlines()
    assert tsv[0] == "mode\tline\tkind\tquery\taccepted\tgot"
    assert tsv[1] == "one\t4\t\tq2\tb\tx,y,z"


# ----------------------------------------------------------------------------------- query files


def test_parse_queries_format():
    lines = [
        "# a comment",
        "",
        "photo editor\tgimp, krita\tdescriptive",
        "  # indented comment",
        "gimp\tgimp",
        "chess\tgnuchess,\t keyword \r",
    ]
    cases = parse_queries(lines, "q.tsv")
    assert cases == [
        QueryCase("photo editor", frozenset({"gimp", "krita"}), "descriptive", 3),
        QueryCase("gimp", frozenset({"gimp"}), "", 5),
        QueryCase("chess", frozenset({"gnuchess"}), "keyword", 6),
    ]


@pytest.mark.parametrize(
    ("lines", "where", "says"),
    [
        (["# c", "no tab here"], "q.tsv:2: ", "no tab"),
        (["a\tb\tc\td"], "q.tsv:1: ", "4 tab-separated fields"),
        (["ok\tid", "  \tid"], "q.tsv:2: ", "empty query"),
        (["q\t , ,"], "q.tsv:1: ", "no accepted ids"),
        (["q\tid\tall"], "q.tsv:1: ", "reserved"),
        (["q\tid\tname", "r\tid\tshare"], "q.tsv:2: ", "kind 'share' is reserved"),  # tune's JSON lost it
        (["# only", "", "#"], "q.tsv: ", "no queries"),
    ],
)
def test_parse_queries_errors_name_file_and_line(lines, where, says):
    with pytest.raises(EvalError) as err:
        parse_queries(lines, "q.tsv")
    assert str(err.value).startswith(where) and says in str(err.value)


def test_errors_do_not_echo_the_line():
    secret = "sk-live-1234 this line is not a query"
    with pytest.raises(EvalError) as err:
        parse_queries([secret], "q.tsv")
    assert "sk-live" not in str(err.value)


def test_load_queries_files(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_bytes("\ufeffcafé\tx\n\nthé\ty,z\tname\n".encode())
    assert [(c.query, c.line) for c in load_queries(good)] == [("café", 1), ("thé", 3)]

    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"ok\tx\n\xff\xfe\tx\n")
    with pytest.raises(EvalError, match=r"bad\.tsv:2: not UTF-8"):
        load_queries(bad)
    with pytest.raises(EvalError, match="query file not found"):
        load_queries(tmp_path / "missing.tsv")
    with pytest.raises(EvalError, match="folder"):
        load_queries(tmp_path)
    assert issubclass(EvalError, SearchError)


def test_check_ids_drops_unknown_ids_and_empty_cases():
    cases = parse_queries(["a\tx,ghost", "b\tghost", "c\ty"], "q.tsv")
    kept, unknown = check_ids(cases, lambda i: i != "ghost")
    assert [(c.query, c.accepted) for c in kept] == [("a", {"x"}), ("c", {"y"})]
    assert unknown == {"ghost": [1, 2]}


def test_repeats_names_each_repeated_query_and_its_first_line():
    cases = parse_queries(["chess\ta", "# c", "Chess\tb", "pdf  viewer\tc", "pdf viewer\td", "chess\ta"], "q.tsv")
    assert repeats(cases) == [(3, 1), (5, 4), (6, 1)]
    assert repeats(cases[1:3]) == []


def test_cli_eval_warns_about_repeated_queries(capsys, model_dir, demo_index, tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("chess\tgnuchess\n0ad\t0ad\nchess\tknights\n", encoding="utf-8")
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--mode", "keyword", "--json")
    assert rc == 0 and json.loads(out)["queries"] == 3  # still counted, but said
    assert (
        err
        == f"warning: {path}: 1 queries repeat an earlier one (line 3 repeats line 1); each copy counts in the figures\n"
    )


# ------------------------------------------------------------------------ the CLI on the demo index


@pytest.fixture(scope="module")
def demo_queries(tmp_path_factory, demo_records):
    """Name queries (the id) and title queries for a spread of demo records, and one by hand."""
    picked = demo_records[::150]
    lines = ["# demo query set for tests/test_evaluation.py"]
    lines += [f"{r['id']}\t{r['id']}\tname" for r in picked]
    lines += [f"{r['title']}\t{r['id']}\ttitle" for r in picked]
    lines.append("real-time strategy game in ancient times\t0ad,0ad-data\tdescriptive")  # not 0ad's title
    path = tmp_path_factory.mktemp("eval") / "demo.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, picked


def _eval(capsys, model_dir, index, *args):
    rc = cli.main(["eval", "--model", str(model_dir), "--index", str(index), *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_eval_json_on_the_demo_index(capsys, model_dir, demo_index, demo_queries, tmp_path):
    path, picked = demo_queries
    details = tmp_path / "misses.tsv"
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--json", "--details", details)
    assert rc == 0, err
    report = json.loads(out)
    n = 2 * len(picked) + 1
    assert report["queries"] == n and report["k"] == 10
    assert report["modes"] == ["hybrid", "semantic", "keyword"]
    assert report["kinds"] == ["all", "name", "title", "descriptive"]
    for mode in report["modes"]:
        overall = report["metrics"][mode]["all"]
        assert overall["n"] == n
        assert 0 <= overall["hit@1"] <= overall["mrr@10"] <= overall["hit@10"] <= 1
    # exact names come first in keyword and hybrid mode
    assert report["metrics"]["keyword"]["name"]["hit@1"] == 1.0
    assert report["metrics"]["hybrid"]["name"]["hit@1"] == 1.0
    assert report["metrics"]["semantic"]["descriptive"]["hit@10"] == 1.0
    assert len(report["paired"]) == 3 * 4  # three pairs, overall and per kind
    for p in report["paired"]:
        assert p["wins"] + p["losses"] + p["ties"] == report["metrics"][p["a"]][p["kind"]]["n"]
        assert p["p"] == sign_test(p["wins"], p["losses"])
        a, b = report["metrics"][p["a"]][p["kind"]], report["metrics"][p["b"]][p["kind"]]
        assert p["mrr_difference"] == pytest.approx(a["mrr@10"] - b["mrr@10"])
        if p["difference_interval"] is None:  # a kind of one query: no interval
            assert a["n"] == 1
        else:
            low, high = p["difference_interval"]
            assert low <= p["mrr_difference"] <= high
    for mode in report["modes"]:
        low, high = report["metrics"][mode]["all"]["mrr@10_interval"]
        assert 0 <= low <= report["metrics"][mode]["all"]["mrr@10"] <= high <= 1
    # misses: exactly the per-query runs without a rank, each with the top ids instead
    no_rank = {(m, q["line"]) for q in report["per_query"] for m, r in q["rank"].items() if r is None}
    assert {(m["mode"], m["line"]) for m in report["misses"]} == no_rank
    assert all(len(m["got"]) == 3 for m in report["misses"])
    rows = details.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("mode\tline") and len(rows) == 1 + len(report["misses"])
    assert report["details_file"] == str(details) and err == ""


def test_cli_eval_ranks_match_searcher(capsys, model_dir, demo_index, demo_queries):
    from search.searcher import Searcher

    path, _ = demo_queries
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--json", "--mode", "semantic", "-k", "5")
    assert rc == 0, err
    report = json.loads(out)
    searcher = Searcher.open(model_dir, demo_index, threads=1)
    try:
        cases = {c.line: c for c in load_queries(path)}
        for q in report["per_query"]:
            ids = [h["id"] for h in searcher.search(q["query"], k=5, mode="semantic").hits]
            rank = next((i for i, x in enumerate(ids, 1) if x in cases[q["line"]].accepted), None)
            assert q["rank"] == {"semantic": rank}
    finally:
        searcher.index.close()
    assert report["paired"] == [] and list(report["metrics"]["semantic"]["all"]) == [
        "n",
        "hit@1",
        "hit@5",
        "mrr@5",
        "ndcg@5",
        "mrr@5_interval",
    ]


def test_cli_eval_text_report(capsys, model_dir, demo_index, demo_queries):
    path, _ = demo_queries
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--mode", "keyword,semantic")
    assert rc == 0, err
    lines = out.splitlines()
    assert "kinds: name" in lines[0]
    head = next(line for line in lines if line.startswith("mode"))
    assert head.split() == ["mode", "kind", "n", "hit@1", "hit@10", "MRR@10", "MRR", "95%", "interval", "nDCG@10"]
    paired_head = next(line for line in lines if line.startswith("A vs B"))
    assert paired_head.split()[-6:] == ["MRR", "A", "-", "B", "95%", "interval"]
    assert any(line.startswith("keyword   name") for line in lines)
    assert any(line.startswith("keyword vs semantic") for line in lines)
    assert any(line.startswith("misses (no accepted id in the top 10)") for line in lines)


def test_cli_eval_unknown_ids_warn_or_fail_with_strict(capsys, model_dir, demo_index, tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("0ad\t0ad,not-a-package\tname\nchess\tghost-id\tkeyword\n", encoding="utf-8")
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--json")
    assert rc == 0
    assert "'not-a-package' (line 1)" in err and "'ghost-id' (line 2)" in err
    assert "1 queries left out" in err and "line 2" in err
    assert json.loads(out)["queries"] == 1

    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", path, "--strict")
    assert rc == 1 and out == ""
    assert err.startswith(f"error: {path}: 2 accepted id(s) not in the index") and "Traceback" not in err


def test_cli_eval_leaves_keyword_mode_out_where_the_index_has_no_keyword_search(
    capsys, model_dir, demo_index, demo_queries, tmp_path
):
    index = tmp_path / "no-keyword"
    shutil.copytree(demo_index, index)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["lexical"]["names_table"] = "no_such_table"
    (index / "manifest.json").write_text(json.dumps(manifest))
    path, _ = demo_queries
    rc, out, err = _eval(capsys, model_dir, index, "--queries", path, "--json")
    assert rc == 0 and json.loads(out)["modes"] == ["hybrid", "semantic"]
    assert "keyword mode left out: keyword search is unavailable" in err and "fell back to semantic" in err
    rc, out, err = _eval(capsys, model_dir, index, "--queries", path, "--mode", "keyword")  # nothing else to measure
    assert rc == 1 and out == "" and err.count("\n") == 1 and "keyword search is unavailable" in err


def test_cli_eval_bad_files_are_one_line_errors(capsys, model_dir, demo_index, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("# header\ngood query\t0ad\nthis has no tab\n", encoding="utf-8")
    rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", bad)
    assert rc == 1 and out == ""
    assert err == f"error: {bad}:3: expected query<TAB>accepted ids[<TAB>kind]: no tab on this line\n"

    rc, _, err = _eval(capsys, model_dir, demo_index, "--queries", tmp_path / "none.tsv")
    assert rc == 1 and err == f"error: {tmp_path / 'none.tsv'}: query file not found\n"

    unanswerable = tmp_path / "ghosts.tsv"
    unanswerable.write_text("q\tghost\n# x\nr\tghost,spook\n", encoding="utf-8")
    rc, _, err = _eval(capsys, model_dir, demo_index, "--queries", unanswerable)
    assert rc == 1 and err == (  # one line that names the ids the index lacks
        f"error: {unanswerable}: no query has an accepted id in this index "
        "(2 id(s) not in it: 'ghost' (lines 1, 3), 'spook' (line 3))\n"
    )

    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--queries", str(bad), "--mode", "semantic,fuzzy"])
    assert exit_.value.code == 2
    assert "choose from semantic, keyword, hybrid" in capsys.readouterr().err
    for k in ["0", "10001", "99999999999999999999"]:  # the last one overflowed SQLite: a traceback
        with pytest.raises(SystemExit) as exit_:
            cli.main(["eval", "--queries", str(bad), "-k", k])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: argument -k: -k '{k}': expected a whole number from 1 to 10000 (see python -m search eval --help)"
        ]


def test_cli_eval_details_never_overwrites_the_query_file_nor_leaves_half_a_file(
    capsys, model_dir, demo_index, tmp_path
):
    queries = tmp_path / "q.tsv"
    text = "".join(f"chess {i}\t0ad\n" for i in range(6))  # -k 1: every run misses, 18 TSV rows
    queries.write_text(text, encoding="utf-8")
    link = tmp_path / "link.tsv"
    link.symlink_to(queries)
    for details in (queries, link):  # the query file was overwritten with the misses
        rc, out, err = _eval(capsys, model_dir, demo_index, "--queries", queries, "-k", "1", "--details", details)
        assert rc == 1 and out == "" and err == f"error: {details}: is the query file: the misses would overwrite it\n"
        assert queries.read_text(encoding="utf-8") == text
    missing = tmp_path / "no-such-folder" / "misses.tsv"
    rc, _, err = _eval(capsys, model_dir, demo_index, "--queries", queries, "--details", missing)
    assert rc == 1 and err == f"error: {missing}: cannot write the details file (its folder does not exist)\n"

    # a write that fails half-way (here: a 300-byte file size limit) leaves the old file as it was
    details = tmp_path / "misses.tsv"
    details.write_text("keep me\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = (
        "import resource, signal, sys\n"
        "from search import cli\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    args = ["eval", "--model", model_dir, "--index", demo_index, "--queries", queries, "-k", "1"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args), "--threads", "1", "--details", details],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"error: {details}: cannot write the details file (File too large)\n"
    assert details.read_text(encoding="utf-8") == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left


def test_cli_eval_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--queries" in out and "--details" in out and "--strict" in out
