"""search/tuning.py and `search tune`: the sentence share chosen on judged queries."""

import json
from dataclasses import dataclass

import pytest

from search import cli
from search.errors import EvalError
from search.evaluation import QueryCase, sign_test
from search.hybrid import SENTENCE_SHARE
from search.searcher import Result
from search.tuning import GRID, MAX_P, label, parse_grid, tune


def test_parse_grid_sorts_and_dedups():
    assert parse_grid("1, 0.5,0,0.5") == (0.0, 0.5, 1.0)
    assert parse_grid("0.25") == (0.25,)


@pytest.mark.parametrize(
    "text, says", [("0,x", "'x' is not a number"), ("1.5", "not between 0 and 1"), ("nan", "not between")]
)
def test_parse_grid_rejects_bad_parts(text, says):
    with pytest.raises(ValueError, match=says):
        parse_grid(text)


@dataclass
class ShareSensitiveSearcher:
    """Ranks the accepted id first only at ``good_share`` and second otherwise: a stand-in for the
    searcher that makes the decision rule checkable by hand (no AWS, no index involved)."""

    good_share: float
    sentence_share: float = 0.5
    mode: str = "hybrid"

    def search(self, query, *, k, mode):
        assert mode == "hybrid"
        target = f"id-{query}"
        ids = [target, "other"] if self.sentence_share == self.good_share else ["other", target]
        return Result(
            [{"id": i} for i in ids], mode=self.mode, note=None if self.mode == "hybrid" else "no keyword index"
        )


def _cases(n, prefix="find the item number"):
    return [QueryCase(f"{prefix} {i}", frozenset({f"id-{prefix} {i}"}), "descriptive", i + 1) for i in range(n)]


def test_a_significant_winner_is_recommended():
    searcher = ShareSensitiveSearcher(good_share=0.25)
    result = tune(searcher, _cases(10) + [QueryCase("chess", frozenset({"id-chess"}), "keyword", 11)])
    assert result.grid == GRID and result.current == 0.5 and searcher.sentence_share == 0.5  # restored
    assert result.left_out == 1 and len(result.sentences) == 10  # "chess" is keyword-style
    assert result.mrr(0.25) == 1.0 and result.mrr(0.5) == 0.5
    assert result.best == 0.25 and result.recommended == 0.25
    v = result.versus_current
    assert (v.a, v.b, v.wins, v.losses, v.ties) == (label(0.25), label(0.5), 10, 0, 0)
    assert v.p == sign_test(10, 0) <= MAX_P
    assert v.mrr_difference == 0.5 and v.difference_interval == (0.5, 0.5)  # every query: 1 against 1/2


def test_a_winner_on_too_few_queries_is_not_recommended():
    result = tune(ShareSensitiveSearcher(good_share=1.0), _cases(3))
    assert result.best == 1.0 and result.versus_current.p == sign_test(3, 0) > MAX_P
    assert result.recommended == 0.5  # three wins of three: p = 0.25


def test_the_current_share_is_always_tried_and_ties_stay_near_it():
    searcher = ShareSensitiveSearcher(good_share=-1.0, sentence_share=0.4)  # every share ranks alike
    result = tune(searcher, _cases(4), grid=(0.0, 1.0))
    assert result.grid == (0.0, 0.4, 1.0)
    assert result.best == 0.4 and result.recommended == 0.4 and result.versus_current is None
    report = result.as_dict()
    assert [g["share"] for g in report["grid"]] == [0.0, 0.4, 1.0]
    assert report["best_vs_current"] is None and report["keyword_style_left_out"] == 0


def test_shares_are_labelled_exactly_and_minus_zero_is_zero():
    assert [label(s) for s in (0.0, -0.0, 0.25, 1.0, 0.1234561)] == ["0", "0", "0.25", "1", "0.1234561"]
    assert [label(s) for s in parse_grid("-0,0.5")] == ["0", "0.5"]
    # a current share of -0 (--sentence-share -0) was a second label for 0: KeyError '-0'
    searcher = ShareSensitiveSearcher(good_share=0.5, sentence_share=-0.0)
    result = tune(searcher, _cases(4), grid=(0.0, 0.5))
    assert [label(s) for s in result.grid] == ["0", "0.5"] and label(result.current) == "0"
    assert result.best == 0.5 and result.versus_current.wins == 4
    # two shares that round alike to 6 digits were one row of the table (the second overwrote the first)
    searcher = ShareSensitiveSearcher(good_share=0.1234562, sentence_share=1.0)
    result = tune(searcher, _cases(4), grid=(0.1234561, 0.1234562))
    assert result.evaluation.systems == ["0.1234561", "0.1234562", "1"]
    assert result.mrr(0.1234561) == 0.5 and result.mrr(0.1234562) == 1.0 and result.best == 0.1234562


def test_only_keyword_style_queries_or_no_hybrid_are_errors():
    with pytest.raises(EvalError, match="every query is keyword-style"):
        tune(ShareSensitiveSearcher(good_share=0.5), [QueryCase("pdf viewer", frozenset({"x"}), "", 1)])
    with pytest.raises(EvalError, match="hybrid search is unavailable"):
        tune(ShareSensitiveSearcher(good_share=0.5, mode="semantic"), _cases(2))


# ------------------------------------------------------------------------ the CLI on the demo index


@pytest.fixture(scope="module")
def sentence_queries(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "q.tsv"
    path.write_text(
        "# sentences and one keyword-style query\n"
        "real-time strategy game of ancient warfare\t0ad,0ad-data\tdescriptive\n"
        "a game where you build and manage a city\tlincity-ng,lincity\tdescriptive\n"
        "play chess against the computer\tgnuchess,eboard,knights\tdescriptive\n"
        "chess\tgnuchess,knights\tkeyword\n",
        encoding="utf-8",
    )
    return path


def _tune(capsys, model_dir, index, *args):
    rc = cli.main(["tune", "--model", str(model_dir), "--index", str(index), "--threads", "1", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_tune_json_matches_eval_at_each_share(capsys, model_dir, demo_index, sentence_queries):
    rc, out, err = _tune(capsys, model_dir, demo_index, "--queries", sentence_queries, "--json", "--grid", "0,0.5")
    assert rc == 0, err
    report = json.loads(out)
    assert report["current"] == SENTENCE_SHARE and report["sentences"] == 3 and report["keyword_style_left_out"] == 1
    shares = sorted({0.0, 0.5, SENTENCE_SHARE})
    assert [g["share"] for g in report["grid"]] == shares and report["recommended"] in shares
    for g in report["grid"]:  # `search eval` at the same share gives the same figures
        rc = cli.main(
            ["eval", "--model", str(model_dir), "--index", str(demo_index), "--threads", "1", "--json"]
            + ["--queries", str(sentence_queries), "--mode", "hybrid", "--sentence-share", str(g["share"])]
        )
        evaluated = json.loads(capsys.readouterr().out)
        sentences = [q for q in evaluated["per_query"] if q["kind"] != "keyword"]
        mrr = sum(1 / q["rank"]["hybrid"] if q["rank"]["hybrid"] else 0 for q in sentences) / len(sentences)
        assert g["all"]["mrr@10"] == pytest.approx(mrr)


def test_cli_tune_text_report(capsys, model_dir, demo_index, sentence_queries):
    rc, out, err = _tune(capsys, model_dir, demo_index, "--queries", sentence_queries, "--sentence-share", "0.75")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("3 sentence queries from") and "1 keyword-style queries left out" in lines[0]
    assert lines[2].split()[:2] == ["share", "kind"]
    assert any(line.split()[:2] == ["0.25", "descriptive"] for line in lines)
    assert lines[-1].startswith("recommended: ") and "SEARCH_HYBRID_SENTENCE_SHARE=" in lines[-1]
    best = next(line for line in lines if line.startswith("best: "))
    assert best.startswith("best: the current share") or "95% interval of the gain" in best


def test_cli_tune_bad_input_is_one_line(capsys, model_dir, demo_index, tmp_path):
    terse = tmp_path / "terse.tsv"
    terse.write_text("chess\tgnuchess\n", encoding="utf-8")
    rc, out, err = _tune(capsys, model_dir, demo_index, "--queries", terse)
    assert (
        rc == 1 and out == "" and err.startswith("error: every query is keyword-style") and len(err.splitlines()) == 1
    )
    for bad, says in [
        (["--grid", "0,2"], "argument --grid: '2' is not between 0 and 1"),
        (["--sentence-share", "a,b"], "argument --sentence-share: 'a' is not a number"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["tune", "--queries", str(terse), *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1
