"""bench/heldout_chance.py: the per-query ranks recorded with each set, the checks made on redrawn
sets (the same verdicts as heldout_report.targets) and the table of misses against chance."""

from __future__ import annotations

import numpy as np
import pytest

from bench import heldout, heldout_chance
from search.evaluation import evaluate

KINDS = ["descriptive", "descriptive", "keyword", "keyword", "name", "paraphrase"]
ACCEPTED = [{"a"}, {"b"}, {"c"}, {"d"}, {"e"}, {"f"}]


def _rankings(hybrid_keyword_rank: int = 1, keyword_name_rank: int = 1) -> dict:
    top = [[i] for i in ("a", "b", "c", "d", "e", "f")]
    second = [["x", i] for i in ("a", "b", "c", "d", "e", "f")]
    hybrid = [list(t) for t in top]
    hybrid[2] = ["x"] * (hybrid_keyword_rank - 1) + ["c"]
    keyword = [list(t) for t in top]
    keyword[4] = ["x"] * (keyword_name_rank - 1) + ["e"]
    return {"pytorch": top, "semantic": second, "keyword": keyword, "bm25s": second, "hybrid": hybrid, "tuned": top}


def _recorded(name: str, rankings: dict) -> dict:
    evaluation = evaluate(rankings, ACCEPTED, 10, KINDS, heldout.PAIRS)
    return heldout_chance.query_ranks(name, evaluation, KINDS), evaluation


def test_the_ranks_of_each_query_are_recorded_zero_for_none():
    rankings = _rankings()
    rankings["semantic"][0] = ["x", "y"]  # nothing accepted in the top 10
    r, _ = _recorded("toy", rankings)
    assert r["heldout.toy.query_kinds"] == KINDS
    assert r["heldout.toy.ranks"]["semantic"] == [0, 2, 2, 2, 2, 2]
    assert r["heldout.toy.ranks"]["hybrid"] == [1] * 6
    assert set(r["heldout.toy.ranks"]) == set(heldout_chance.RANKED)


@pytest.mark.parametrize("hybrid_keyword_rank, keyword_name_rank", [(1, 1), (4, 1), (1, 3)])
def test_a_set_checked_from_its_ranks_gets_the_verdicts_targets_gives(hybrid_keyword_rank, keyword_name_rank):
    recorded, evaluation = _recorded("toy", _rankings(hybrid_keyword_rank, keyword_name_rank))
    targets = heldout.targets("toy", evaluation)
    rr = {s: heldout_chance._reciprocal(v)[None, :] for s, v in recorded["heldout.toy.ranks"].items()}
    verdicts = heldout_chance.checks(np.asarray(KINDS), rr)
    p = "heldout.toy.target."
    expect = {
        f"hybrid vs the better single mode: {k}": targets[f"{p}hybrid_vs_best_single.{k}"]["met"]
        for k in ("all", "descriptive", "keyword", "name", "paraphrase")
    }
    expect["int8 vs PyTorch"] = targets[p + "int8_vs_pytorch"]["met"]
    expect["keyword vs bm25s (keyword-style)"] = targets[p + "keyword_vs_bm25s"]["met"]
    expect["names first (hybrid hit@1)"] = targets[p + "names_hit1"]["met"]
    assert {name: bool(ok[0]) for name, ok in verdicts.items()} == expect
    assert not all(expect.values())  # semantic at half of PyTorch: int8's check misses on every case


def _set(kinds, hybrid, semantic, keyword=None):
    n = len(kinds)
    rr = {"hybrid": hybrid, "semantic": semantic, "keyword": keyword if keyword is not None else np.zeros(n)}
    rr.update(pytorch=np.asarray(semantic, dtype=float), bm25s=np.zeros(n))
    return np.asarray(kinds), {s: np.asarray(v, dtype=float) for s, v in rr.items()}


def test_sets_that_never_miss_are_expected_never_to_miss():
    kinds = ["descriptive"] * 4 + ["keyword"] * 2
    sets = [_set(kinds, [1.0] * 6, [0.5] * 6) for _ in range(3)]
    observed, expected = heldout_chance.expected_misses(sets, draws=200)
    assert sum(observed.values()) == 0 and sum(expected.values()) == 0.0


def test_a_miss_one_set_shows_is_counted_and_chance_spreads_it_over_the_draws():
    kinds = ["descriptive"] * 4
    good = _set(kinds, [1.0] * 4, [0.5] * 4)
    bad = _set(kinds, [0.0] * 4, [1.0] * 4)  # hybrid finds nothing where semantic is first
    observed, expected = heldout_chance.expected_misses([good, bad], draws=4000, seed=1)
    name = "hybrid vs the better single mode: descriptive"
    assert observed[name] == 1 and observed["hybrid vs the better single mode: all"] == 1
    # hybrid - semantic is +0.5 on a good query and -1 on a bad one, so a redrawn set of four with g
    # good queries misses when (0.5 g - (4 - g)) / 4 < -0.01, i.e. g <= 2: P = (1 + 4 + 6) / 16 a set
    assert expected[name] == pytest.approx(2 * 11 / 16, abs=0.06)


def test_the_table_lists_each_check_per_corpus_and_needs_the_ranks():
    r: dict = {}
    for name, hybrid_keyword_rank in (("toy-fresh8", 1), ("toy-fresh9", 4)):
        recorded, evaluation = _recorded(name, _rankings(hybrid_keyword_rank))
        r.update(heldout.figures(name, evaluation, "held-out", 6, {"corpus": "toy", "settings_round": True}))
        r.update(recorded)
    lines = heldout_chance.chance_lines(r)
    assert lines[2] == "| check | toy (2 sets) |"
    row = next(line for line in lines if line.startswith("| hybrid vs the better single mode: keyword |"))
    assert row.startswith("| hybrid vs the better single mode: keyword | 1 / ")
    assert any(line.startswith("| **all checks** | **") for line in lines)
    assert any(line.startswith("Single sets against chance") for line in heldout.settings_round_lines(r))
    del r["heldout.toy-fresh9.ranks"]  # results recorded before the ranks were
    assert heldout_chance.chance_lines(r) == []
