"""bench/heldout.py on tiny sets: set discovery, the bm25s and PyTorch baselines, the target
checks and the report, and one whole run on a 60-record corpus (not the real eval/ corpora)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import heldout, heldout_intervals, heldout_report, heldout_sets
from search.evaluation import evaluate
from search.hybrid import SENTENCE_SHARE
from search.tuning import GRID, MAX_P
from tests.conftest import write_jsonl

TUNE_HEAD = "# toy corpus, TUNING set: written by hand\n"
HELD_HEAD = "# toy corpus, HELD-OUT set: run once\n"


@pytest.fixture
def eval_dir(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    (d / "toy-tune.tsv").write_text(TUNE_HEAD + "a cat\tcat\tdescriptive\n", encoding="utf-8")
    (d / "toy.tsv").write_text(HELD_HEAD + "a dog\tdog\tdescriptive\n", encoding="utf-8")
    return d


def test_discover_roles_corpora_and_selection(eval_dir, tmp_path, monkeypatch):
    corpora = {"toy": tmp_path / "toy.jsonl"}
    sets = heldout.discover(eval_dir, corpora=corpora)
    assert [(s.name, s.role, s.corpus, s.corpus_path) for s in sets] == [
        ("toy-tune", "tuning", "toy", corpora["toy"]),
        ("toy", "held-out", "toy", corpora["toy"]),
    ]  # in file name order
    assert [s.name for s in heldout.discover(eval_dir, ["toy-tune"], corpora)] == ["toy-tune"]
    with pytest.raises(RuntimeError, match="no query set nope"):
        heldout.discover(eval_dir, ["nope"], corpora)
    with pytest.raises(RuntimeError, match="no corpus for 'toy'"):
        heldout.discover(eval_dir, None, {"npm": tmp_path})
    monkeypatch.setenv(heldout.ENV_SETS, "toy-tune")
    monkeypatch.setattr(heldout_sets, "EVAL_DIR", eval_dir)
    monkeypatch.setattr(heldout_sets, "CORPORA", corpora)
    assert heldout.result_prefixes() == ("heldout.toy-tune.",)


def test_retired_held_out_sets_report_as_tuning(tmp_path):
    (tmp_path / "npm.tsv").write_text(HELD_HEAD, encoding="utf-8")  # its file still says HELD-OUT
    (tmp_path / "npm-fresh5.tsv").write_text(HELD_HEAD, encoding="utf-8")
    newest = f"npm-{heldout._registry().HELD_OUT_ROUND}.tsv"  # the round held out now
    (tmp_path / newest).write_text(HELD_HEAD, encoding="utf-8")
    assert heldout.role_of(tmp_path / "npm.tsv") == "tuning"
    assert heldout.role_of(tmp_path / "npm-fresh5.tsv") == "tuning"
    assert heldout.role_of(tmp_path / newest) == "held-out"


def test_role_falls_back_to_the_name(tmp_path):
    (tmp_path / "x-tune.tsv").write_text("q\ta\n", encoding="utf-8")
    (tmp_path / "x.tsv").write_text("q\ta\n", encoding="utf-8")
    assert heldout.role_of(tmp_path / "x-tune.tsv") == "tuning"
    assert heldout.role_of(tmp_path / "x.tsv") == "held-out"


ROWS = [
    ("cat", "cat\nthe cat sat on the mat"),
    ("dog", "dog\na dog chases a cat"),
    ("fox", "fox\nthe quick brown fox"),
    ("web", "web\npython web framework"),
]


def test_bm25s_ranks_plain_bm25_and_drops_non_matches():
    ranked = heldout.bm25s_rankings(ROWS, ["quick fox", "cat", "zebra", "a"], k=10)
    assert ranked[0] == ["fox"]  # only fox holds "quick" or "fox"
    assert set(ranked[1]) == {"cat", "dog"} and ranked[1][0] == "cat"  # cat: "cat" twice in a shorter text
    assert ranked[2] == []  # no word in the vocabulary
    assert ranked[3] == []  # one-letter words are not tokens
    assert heldout.bm25_tokens("Hash-Passwords, a B2 test") == ["hash", "passwords", "b2", "test"]


def test_pytorch_rankings_exact_cosine_and_cache(tmp_path):
    calls = []

    def encode(texts):  # a stand-in model: one axis per corpus id named in the text
        calls.append(len(texts))
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for i, t in enumerate(texts):
            for j, (item_id, _) in enumerate(ROWS):
                if item_id in t:
                    out[i, j] += 1 + j / 10
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)

    first, embedded = heldout.pytorch_rankings(ROWS, ["fox", "web fox"], k=2, cache=tmp_path, name="toy", encode=encode)
    assert first[0][0] == "fox" and first[1] == ["web", "fox"] and embedded == 4
    assert calls == [4, 2] and (tmp_path / "pytorch-toy.npy").is_file()
    again, embedded = heldout.pytorch_rankings(ROWS, ["fox", "web fox"], k=2, cache=tmp_path, name="toy", encode=encode)
    assert again == first and embedded == 0 and calls == [4, 2, 2]  # documents came from the cache
    # a pool: only those rows are candidates; a new text is embedded and added to the store
    rows = [*ROWS, ("fox2", "fox\nanother fox")]
    pooled, embedded = heldout.pytorch_rankings(
        rows, ["fox"], k=3, cache=tmp_path, name="toy", encode=encode, pool=[3, 4, 1]
    )
    assert embedded == 1 and set(pooled[0]) <= {"web", "fox2", "dog"} and pooled[0][0] == "fox2"
    store = heldout.VectorStore(tmp_path, "toy")
    assert len(store.keys) == 5 and store.vectors.shape == (5, 4)


def _evaluation(hybrid_name_rank1: bool = True):
    accepted = [{"a"}, {"b"}, {"c"}]
    kinds = ["name", "keyword", "descriptive"]
    r = {
        "pytorch": [["a"], ["b"], ["c"]],
        "semantic": [["a"], ["x", "b"], ["c"]],
        "keyword": [["a"], ["b"], ["x", "c"]],
        "bm25s": [["a"], ["x", "b"], ["x"]],
        "hybrid": [["a"] if hybrid_name_rank1 else ["x", "a"], ["b"], ["c"]],
        "tuned": [["a"], ["b"], ["c"]],
    }
    return evaluate(r, accepted, 10, kinds, heldout.PAIRS)


def test_targets_met_and_missed():
    t = heldout.targets("toy", _evaluation())
    p = "heldout.toy.target."
    assert all(t[p + f"hybrid_vs_best_single.{k}"]["met"] for k in ("all", "name", "keyword", "descriptive"))
    assert t[p + "int8_vs_pytorch"]["value"] == pytest.approx((1 + 0.5 + 1) / 3, abs=1e-4)
    assert t[p + "int8_vs_pytorch"]["met"] is False
    # one keyword-style query: no interval
    assert t[p + "keyword_vs_bm25s"] == {"value": 1.0, "target": 0.5, "margin": 0.5, "met": True, "interval": None}
    assert t[p + "names_hit1"]["met"] is True

    t = heldout.targets("toy", _evaluation(hybrid_name_rank1=False))
    assert t[p + "names_hit1"] == {"value": 0.0, "target": 0.99, "met": False}
    assert t[p + "hybrid_vs_best_single.name"]["met"] is False
    assert t[p + "hybrid_vs_best_single.name"]["margin"] == pytest.approx(0.5 - 0.99)


def test_a_missed_check_shows_the_interval_of_its_gap():
    accepted = [{"a"}, {"b"}, {"c"}, {"d"}]
    kinds = ["paraphrase"] * 4
    first, second = [["a"], ["b"], ["c"], ["d"]], [["x", "a"], ["x", "b"], ["c"], ["d"]]
    r = {"pytorch": first, "semantic": first, "keyword": second, "bm25s": second, "hybrid": second, "tuned": second}
    evaluation = evaluate(r, accepted, 10, kinds, heldout.PAIRS)
    t = heldout.targets("toy", evaluation)["heldout.toy.target.hybrid_vs_best_single.paraphrase"]
    assert t["met"] is False and t["against"] == "semantic"
    low, high = t["interval"]  # hybrid - semantic: -0.5 on two of four queries, 0 on the others
    assert low <= -0.25 <= high <= 0
    rows = heldout.target_rows(heldout.figures("toy", evaluation, "held-out", 4))
    assert f"**missed** (hybrid - semantic: 95% interval {low:+.3f} .. {high:+.3f})" in rows[0][1]


def test_keyword_under_bm25s_shows_the_interval_of_its_gap():
    accepted = [{"a"}, {"b"}, {"c"}, {"d"}]
    kinds = ["keyword"] * 4
    first, second = [["a"], ["b"], ["c"], ["d"]], [["x", "a"], ["b"], ["x", "c"], ["d"]]
    r = {"pytorch": first, "semantic": first, "keyword": second, "bm25s": first, "hybrid": first, "tuned": first}
    evaluation = evaluate(r, accepted, 10, kinds, heldout.PAIRS)
    t = heldout.targets("toy", evaluation)["heldout.toy.target.keyword_vs_bm25s"]
    assert t["met"] is False and t["margin"] == pytest.approx(-0.25)
    low, high = t["interval"]  # keyword - bm25s: -0.5 on two of four queries, 0 on the others
    assert low <= -0.25 <= high <= 0
    rows = heldout.target_rows(heldout.figures("toy", evaluation, "held-out", 4))
    (row,) = [row for row in rows if "keyword MRR@10 vs bm25s" in row[0]]
    assert row[1].endswith(f"(keyword - bm25s: 95% interval {low:+.3f} .. {high:+.3f})") and row[3] is False


def test_figures_report_and_target_rows():
    r = heldout.figures("toy", _evaluation(), "tuning", 4, {"corpus": "toy"})
    assert r["heldout.toy.hybrid.all.mrr10"] == 1.0 and r["heldout.toy.semantic.keyword.hit1"] == 0.0
    assert r["heldout.toy.paired.keyword_vs_bm25s.keyword.wins"] == 1
    assert r["heldout.toy.kinds"] == ["name", "keyword", "descriptive"]
    json.dumps(r)  # latest.json must be able to hold it
    rows = heldout.target_rows(r)
    assert [ok for *_, ok in rows] == [True, False, True, True]
    assert "toy (tuning, 3 queries, 4 documents)" in rows[0][0]
    lines = heldout.report_lines(r)
    assert "### toy (TUNING): 3 queries, 4 documents (toy)" in lines
    assert any(line.startswith("| hybrid vs semantic | name |") for line in lines)
    assert any(line.startswith("| keyword vs bm25s | keyword |") for line in lines)
    assert heldout.report_lines({}) == []
    # hybrid vs semantic overall: 0 on the name, +0.5 on the keyword query, 0 on the last: +1/6
    q = "heldout.toy.paired.hybrid_vs_semantic.all."
    assert r[q + "mrr_difference"] == pytest.approx(1 / 6, abs=1e-4)
    assert r[q + "difference_low"] <= r[q + "mrr_difference"] <= r[q + "difference_high"]
    assert any(
        line.startswith("| hybrid vs semantic | all | 1 | 0 | 2 | 1 | +0.167 (+0.000 .. +0.500) |") for line in lines
    )
    # a kind of one query has no interval; results recorded before differences were: "-"
    assert "heldout.toy.paired.hybrid_vs_semantic.name.difference_low" not in r
    assert heldout_intervals.difference_text(r, "heldout.toy.paired.hybrid_vs_semantic.name.") == "+0.000"
    assert heldout_intervals.difference_text({}, q) == "-"


def test_pooled_figures_weigh_each_set_by_its_queries():
    r = {}
    for name, queries, sem, torch in [("toy-tune", 30, 0.5, 0.5), ("toy-fresh", 10, 0.9, 1.0)]:
        p = f"heldout.{name}."
        r.update({p + "role": "tuning", p + "corpus": "toy", p + "queries": queries, p + "hybrid.all.mrr10": 0.7})
        r.update({p + "semantic.all.mrr10": sem, p + "pytorch.all.mrr10": torch, p + "tuned.all.mrr10": 0.6})
    lines = heldout.pooled_lines(r)
    # semantic (30 x 0.5 + 10 x 0.9) / 40 = 0.6; PyTorch (15 + 10) / 40 = 0.625; 0.6 / 0.625 = 96.0%
    assert "| toy | 2 | 40 | 0.700 | 0.600 | 0.600 | 0.625 | 96.0% |" in lines
    assert heldout.pooled_lines({}) == []


def _flat_set(r: dict, name: str, flagged: bool, mrr: dict[str, dict[str, float]], n: dict[str, int]) -> None:
    p = f"heldout.{name}."
    r.update({p + "role": "tuning", p + "corpus": "toy", p + "queries": n["all"], p + "documents": 9})
    r[p + "settings_round"] = flagged
    r[p + "kinds"] = [k for k in n if k != "all"]
    for system, by_kind in mrr.items():
        for kind, value in by_kind.items():
            r.update({f"{p}{system}.{kind}.mrr10": value, f"{p}{system}.{kind}.n": n[kind]})


def test_the_held_out_rounds_are_pooled_per_kind_and_their_misses_named():
    r: dict = {}
    n = {"all": 30, "keyword": 10, "descriptive": 20}
    systems = ("hybrid", "semantic", "keyword", "bm25s", "pytorch")
    # toy-fresh8: hybrid 0.9 on keyword-style, semantic 0.5; toy-fresh9: hybrid 0.5, semantic 0.9 (a tie pooled)
    for name, hybrid_kw, sem_kw in (("toy-fresh8", 0.9, 0.5), ("toy-fresh9", 0.5, 0.9)):
        mrr = {s: {"all": 0.6, "keyword": 0.4, "descriptive": 0.6} for s in systems}
        mrr["hybrid"]["keyword"], mrr["semantic"]["keyword"] = hybrid_kw, sem_kw
        mrr["pytorch"]["all"] = 0.5
        _flat_set(r, name, True, mrr, n)
    _flat_set(r, "toy-tune", False, {s: {"all": 0.0, "keyword": 0.0, "descriptive": 0.0} for s in systems}, n)
    pools = heldout.settings_round_pools(r)
    assert list(pools) == ["toy"] and pools["toy"]["sets"] == ["toy-fresh8", "toy-fresh9"]
    assert sorted(["toy-fresh10", "toy-fresh9", "toy-fresh"], key=heldout_report._round_order) == [
        "toy-fresh",
        "toy-fresh9",
        "toy-fresh10",
    ]
    assert pools["toy"]["queries"] == 60
    assert pools["toy"]["kinds"]["keyword"]["hybrid"] == pytest.approx(0.7)
    assert pools["toy"]["kinds"]["keyword"]["semantic"] == pytest.approx(0.7)
    rows = [row for row in heldout.target_rows(r) if "held-out rounds together" in row[0]]
    per_kind, int8, versus_bm25s = rows
    assert per_kind[3] is True and "keyword 0.700 vs 0.690" in per_kind[1]  # within the slack
    assert int8[3] is True and "= **120.0%**" in int8[1]
    assert versus_bm25s[3] is True
    # one kind below the better single mode by more than the slack: named, and the row fails
    r["heldout.toy-fresh9.hybrid.descriptive.mrr10"] = 0.3
    per_kind = next(
        row for row in heldout.target_rows(r) if "held-out rounds together" in row[0] and "per kind" in row[0]
    )
    assert per_kind[3] is False and "descriptive 0.450 vs 0.590 **missed**" in per_kind[1]
    for name, wins, losses in (("toy-fresh8", 7, 1), ("toy-fresh9", 3, 1)):
        r.update({f"heldout.{name}.paired.hybrid_vs_semantic.all.wins": wins})
        r.update({f"heldout.{name}.paired.hybrid_vs_semantic.all.losses": losses})
    assert heldout.settings_round_pools(r)["toy"]["paired"] == {"hybrid_vs_semantic": (10, 2)}
    lines = heldout.settings_round_lines(r)
    assert any(line.startswith("| toy | toy-fresh8, toy-fresh9 | 60 |") and "missed by 0.140" in line for line in lines)
    # 10 wins, 2 losses: two-sided binomial p = 2 x P(X <= 2 | n 12, 1/2) = 2 x 79 / 4096
    assert any("hybrid better than semantic on 10 queries, worse on 2 (sign test p = 0.039)" in line for line in lines)
    assert heldout.settings_round_lines({}) == []


def test_the_registered_settings_rounds_end_with_the_held_out_round():
    rounds = heldout._registry().SETTINGS_ROUNDS
    assert rounds and rounds[-1] == heldout._registry().HELD_OUT_ROUND
    sets = heldout.settings_round_sets()
    assert {f"npm-{r}" for r in rounds} <= sets and not any(s.endswith("-tune") for s in sets)


def test_run_set_on_a_tiny_corpus(model_dir, demo_records, tmp_path, monkeypatch):
    records = demo_records[:60]
    corpus = write_jsonl(tmp_path / "toy.jsonl", records)
    queries = tmp_path / "toy-tune.tsv"
    lines = [TUNE_HEAD.rstrip("\n")]
    lines += [f"{r['id']}\t{r['id']}\tname" for r in records[:6]]
    lines += [f"{r['title']}\t{r['id']}\tdescriptive" for r in records[10:16]]
    lines += [f"{r['title'].split()[0]}\t{r['id']},no-such-id\tkeyword" for r in records[20:24]]
    queries.write_text("\n".join(lines) + "\n", encoding="utf-8")
    qs = heldout.QuerySet("toy-tune", queries, "toy", corpus, "tuning")
    r = heldout.run_set(qs, model_dir, tmp_path / "cache")
    p = "heldout.toy-tune."
    assert r[p + "documents"] == 60 and r[p + "queries"] == 16 and r[p + "unknown_ids"] == 1
    for s in heldout.SYSTEMS:
        assert 0 <= r[p + f"{s}.all.hit1"] <= r[p + f"{s}.all.mrr10"] <= r[p + f"{s}.all.hit10"] <= 1
    assert r[p + "hybrid.name.hit1"] == 1.0 and r[p + "keyword.name.hit1"] == 1.0
    # the shipped int8 model and PyTorch fp32 agree on titles of these packages
    assert r[p + "pytorch.descriptive.hit10"] == 1.0 and r[p + "semantic.descriptive.hit10"] == 1.0
    details = (tmp_path / "cache" / "toy-tune.details.tsv").read_text(encoding="utf-8").splitlines()
    assert details[0].split("\t")[4:10] == [f"rank.{s}" for s in heldout.SYSTEMS] and len(details) == 17
    assert (tmp_path / "cache" / "pytorch-toy.npy").is_file()
    assert len(list((tmp_path / "cache").glob("toy-*/manifest.json"))) == 1
    assert r[p + "pytorch_scope"] == "all documents" and r[p + "pytorch_embedded_now"] == 60
    # no other tuning set of this corpus: `search tune` has nothing to go on and keeps the default
    assert r[p + "tuned_from_queries"] == 0 and r[p + "tuned_share"] == r[p + "sentence_share"] == SENTENCE_SHARE
    assert r[p + "tuned.all.mrr10"] == r[p + "hybrid.all.mrr10"]

    # the pool the large corpora use gives the same PyTorch figures here, and embeds nothing new
    monkeypatch.setattr(heldout, "FULL_LIMIT", 10)
    monkeypatch.setattr(heldout, "POOL", 20)
    pooled = heldout.run_set(qs, model_dir, tmp_path / "cache")
    assert pooled[p + "pytorch_scope"].startswith("pool of ") and pooled[p + "pytorch_embedded_now"] == 0
    assert {k: v for k, v in pooled.items() if ".pytorch." in k} == {k: v for k, v in r.items() if ".pytorch." in k}


def test_the_tuned_share_comes_from_the_corpus_s_other_tuning_sets(model_dir, demo_records, tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "toy.jsonl", demo_records[:60])
    own = [f"{r['id']}\t{r['id']}\tname" for r in demo_records[:3]]
    other = [f"{r['title']} and more\t{r['id']}\tdescriptive" for r in demo_records[10:20]]
    (tmp_path / "toy-tune.tsv").write_text(TUNE_HEAD + "\n".join(own) + "\n", encoding="utf-8")
    (tmp_path / "toy-tune2.tsv").write_text(TUNE_HEAD + "\n".join(other) + "\n", encoding="utf-8")
    (tmp_path / "toy-held.tsv").write_text(HELD_HEAD + "\n".join(other[:2]) + "\n", encoding="utf-8")
    monkeypatch.setattr(heldout_sets, "EVAL_DIR", tmp_path)
    monkeypatch.setattr(heldout_sets, "CORPORA", {"toy": corpus})
    sets = {s.name: s for s in heldout.discover()}
    assert [c.query for c in heldout.tune_pool(sets["toy-tune"])] == [line.split("\t")[0] for line in other]
    assert len(heldout.tune_pool(sets["toy-held"])) == len(own) + len(other)  # every tuning set, never held-out ones
    r = heldout.run_set(sets["toy-tune"], model_dir, tmp_path / "cache")
    p = "heldout.toy-tune."
    assert r[p + "tuned_from_queries"] == len(other) and r[p + "tuned_share"] in (*GRID, SENTENCE_SHARE)
    assert r[p + "tuned_best"] in (*GRID, SENTENCE_SHARE)
    assert (r[p + "tuned_share"] == SENTENCE_SHARE) == (r[p + "tuned_p"] is None or r[p + "tuned_p"] > MAX_P)


def test_set_index_is_rebuilt_when_the_index_code_changes(model_dir, demo_records, tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "toy.jsonl", demo_records[:20])
    qs = heldout.QuerySet("toy-tune", tmp_path / "unused.tsv", "toy", corpus, "tuning")
    cache = tmp_path / "cache"
    folder = heldout.ensure_set_index(qs, model_dir, cache)
    inode = (folder / "manifest.json").stat().st_ino
    assert folder.with_name(folder.name + ".code").read_text().strip() == heldout.index_code_stamp()
    assert heldout.ensure_set_index(qs, model_dir, cache) == folder
    assert (folder / "manifest.json").stat().st_ino == inode  # cached: not rebuilt
    monkeypatch.setattr(heldout, "index_code_stamp", lambda: "other-code")
    assert heldout.ensure_set_index(qs, model_dir, cache) == folder
    assert (folder / "manifest.json").stat().st_ino != inode
    assert folder.with_name(folder.name + ".code").read_text().strip() == "other-code"


def test_an_index_without_title_vectors_to_store_is_not_rebuilt(model_dir, demo_records, tmp_path):
    records = [{**r, "title": r["id"]} for r in demo_records[:20]]  # every title repeats its id, as in npm
    qs = heldout.QuerySet(
        "toy-tune", tmp_path / "unused.tsv", "toy", write_jsonl(tmp_path / "toy.jsonl", records), "tuning"
    )
    folder = heldout.ensure_set_index(qs, model_dir, tmp_path / "cache")
    assert json.loads((folder / "manifest.json").read_text())["titles"] is None
    inode = (folder / "manifest.json").stat().st_ino
    assert heldout.ensure_set_index(qs, model_dir, tmp_path / "cache") == folder
    assert (folder / "manifest.json").stat().st_ino == inode  # asked for and none to store: up to date


def test_bench_report_shows_the_sets(tmp_path, monkeypatch):
    from bench import report

    r = heldout.figures("toy", _evaluation(), "held-out", 4, {"corpus": "toy"})
    rows = report.rows(r)
    ours = [row for row in rows if row[0].startswith("toy (held-out")]
    assert len(ours) == 4 and ours[1][3] == "**missed**" and ours[0][3] == "met"
    assert all(row[4] == f"`{heldout.COMMAND}`" for row in ours)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    data = {"results": r, "meta": {"finished": "now", "commit": "x", "python": "3", "cpus": 2}, "runs": {}}
    text = report.write_readme(data).read_text(encoding="utf-8")
    assert "## Quality on the judged query sets (eval/)" in text and "### toy (HELD-OUT)" in text
