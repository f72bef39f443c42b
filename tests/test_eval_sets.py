"""The judged query sets under eval/ and the scripts that made their corpora.

The committed sets must pass eval/check_sets.py (the Debian ones only where the shared
corpus is present); the checker must name file:line for each kind of problem; the
corpus scripts must strip, filter, order and cut as their docstrings say.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check_sets = load("eval_check_sets", EVAL / "check_sets.py")
make_npm = load("eval_make_npm", EVAL / "corpora" / "make_npm.py")
make_pydocs = load("eval_make_pydocs", EVAL / "corpora" / "make_pydocs.py")

NO_DEBIAN = "../shared/data/debian-bookworm-packages.jsonl.gz is not here: the Debian sets need the shared corpus"


@pytest.mark.parametrize("spec", check_sets.SETS, ids=lambda s: s.path.name)
def test_committed_set_passes_every_check(spec):
    if not spec.corpus.is_file():
        pytest.skip(NO_DEBIAN)
    summaries, problems = check_sets.check_all([spec])
    assert list(problems) == []
    assert summaries[0].endswith(": ok")
    assert "60 queries (descriptive 25, keyword 15, name 10, paraphrase 10)" in summaries[0]


def test_no_tuning_query_reappears_in_a_held_out_set():
    summaries, problems = check_sets.check_all(allow_missing_corpus=True)
    assert list(problems) == []
    roles = {s.path.name: s.role for s in check_sets.SETS}
    assert sorted(n for n, r in roles.items() if r == check_sets.TUNING) == [
        "debian-fresh.tsv",  # held out once, then tuned on
        "debian-fresh10.tsv",
        "debian-fresh11.tsv",
        "debian-fresh12.tsv",
        "debian-fresh2.tsv",
        "debian-fresh3.tsv",
        "debian-fresh4.tsv",
        "debian-fresh5.tsv",
        "debian-fresh6.tsv",
        "debian-fresh7.tsv",
        "debian-fresh8.tsv",
        "debian-fresh9.tsv",
        "debian-tune.tsv",
        "debian-tune2.tsv",
        "debian.tsv",  # held out until round 3
        "npm-fresh.tsv",
        "npm-fresh10.tsv",
        "npm-fresh11.tsv",
        "npm-fresh12.tsv",
        "npm-fresh2.tsv",
        "npm-fresh3.tsv",
        "npm-fresh4.tsv",
        "npm-fresh5.tsv",
        "npm-fresh6.tsv",
        "npm-fresh7.tsv",
        "npm-fresh8.tsv",
        "npm-fresh9.tsv",
        "npm-tune.tsv",
        "npm.tsv",
        "pydocs-fresh.tsv",
        "pydocs-fresh10.tsv",
        "pydocs-fresh11.tsv",
        "pydocs-fresh12.tsv",
        "pydocs-fresh2.tsv",
        "pydocs-fresh3.tsv",
        "pydocs-fresh4.tsv",
        "pydocs-fresh5.tsv",
        "pydocs-fresh6.tsv",
        "pydocs-fresh7.tsv",
        "pydocs-fresh8.tsv",
        "pydocs-fresh9.tsv",
        "pydocs-tune.tsv",
        "pydocs.tsv",
    ]
    assert sorted(n for n, r in roles.items() if r == check_sets.HELD_OUT) == [
        "debian-fresh13.tsv",
        "npm-fresh13.tsv",
        "pydocs-fresh13.tsv",
    ]
    assert len(summaries) == 46


def test_the_readme_table_gives_every_set_its_registered_role():
    """eval/README.md's table is written by hand each round: it must list every set check_sets.py
    registers, once, as HELD OUT exactly when it is registered as held out."""
    import re

    rows = re.findall(r"^\| `([^`]+\.tsv)` \| \*\*(TUNING|HELD OUT)\*\*", (EVAL / "README.md").read_text(), re.M)
    listed = [name for name, _ in rows]
    assert sorted(listed) == sorted(s.path.name for s in check_sets.SETS) and len(set(listed)) == len(listed)
    roles = {s.path.name: s.role for s in check_sets.SETS}
    for name, role in rows:
        assert (role == "HELD OUT") == (roles[name] == check_sets.HELD_OUT), name


# --- the checker on bad input ---------------------------------------------------------

CORPUS_IDS = [f"item-{i}" for i in range(90)] + ["json.dumps", "python3-requests"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "title": i, "text": ""}) + "\n" for i in CORPUS_IDS))
    return path


def valid_lines(prefix: str = "need", first_name: int = 60) -> list[str]:
    """60 lines that pass: 25 descriptive, 15 keyword, 10 paraphrase, 10 name."""
    kinds = ["descriptive"] * 25 + ["keyword"] * 15 + ["paraphrase"] * 10
    lines = [f"{prefix} number {n} of {kind}\titem-{n}\t{kind}" for n, kind in enumerate(kinds)]
    names = range(first_name, first_name + 10)
    lines += [f"item {n}\titem-{n},item-{n + 1}\tname" for n in names]
    return lines


def run(tmp_path, corpus, lines, *, tuning_lines=None, dotted=False, tuning_corpus=None):
    held = tmp_path / "held.tsv"
    held.write_text("# a set\n" + "\n".join(lines) + "\n")
    specs = [check_sets.SetSpec(held, corpus, check_sets.HELD_OUT, dotted_names=dotted)]
    if tuning_lines is not None:
        tune = tmp_path / "tune.tsv"
        tune.write_text("\n".join(tuning_lines) + "\n")
        specs.insert(0, check_sets.SetSpec(tune, tuning_corpus or corpus, check_sets.TUNING))
    summaries, problems = check_sets.check_all(specs)
    return local(problems, tmp_path)


def local(problems, tmp_path) -> list[str]:
    """Problems with the temporary folder's path taken out."""
    prefix = os.path.relpath(tmp_path, ROOT) + os.sep
    return [p.replace(prefix, "") for p in problems]


def test_a_valid_set_passes(tmp_path, corpus):
    assert run(tmp_path, corpus, valid_lines(), tuning_lines=valid_lines("other", first_name=70)) == []


@pytest.mark.parametrize(
    ("index", "line", "message"),
    [
        (0, "a query\titem-0", "held.tsv:2: expected 3 tab-separated fields, got 2"),
        (0, "a query\titem-0\tvague", "held.tsv:2: unknown kind 'vague'"),
        (0, "a query\tnope\tdescriptive", "held.tsv:2: accepted id 'nope' is not in the corpus"),
        (0, "a query\titem-0,item-0\tdescriptive", "held.tsv:2: an accepted id is listed twice"),
        (0, "a query \titem-0\tdescriptive", "held.tsv:2: query is empty or has stray spaces"),
        (0, "a query\titem-0, item-1\tdescriptive", "held.tsv:2: empty accepted id or stray spaces"),
        (1, "Need number 0 of descriptive!\titem-3\tdescriptive", "held.tsv:3: same query as line 2"),
        (59, "requests\titem-3\tname", "held.tsv:61: name query is not one of its accepted ids"),
        (2, "find item 7 quickly\titem-7\tdescriptive", "held.tsv:4: descriptive query names the item 'item-7'"),
        (3, "", "held.tsv:5: blank line"),
        (3, "# late comment", "held.tsv:5: a comment line is allowed only as the first line"),
    ],
)
def test_each_problem_is_named_with_file_and_line(tmp_path, corpus, index, line, message):
    lines = valid_lines()
    lines[index] = line
    problems = run(tmp_path, corpus, lines)
    assert any(p.startswith(message) for p in problems), problems


def test_name_queries_match_ids_up_to_case_spaces_and_punctuation(tmp_path, corpus):
    lines = valid_lines()
    lines[-1] = "Python3 Requests\tpython3-requests\tname"
    assert run(tmp_path, corpus, lines) == []


def test_kind_counts_are_enforced(tmp_path, corpus):
    lines = valid_lines()
    lines[0] = lines[0].replace("\tdescriptive", "\tkeyword")
    problems = run(tmp_path, corpus, lines)
    assert "held.tsv:0: 24 descriptive queries, want 25" in problems
    assert "held.tsv:0: 16 keyword queries, want 15" in problems


def test_python_names_count_by_their_last_part(tmp_path, corpus):
    lines = valid_lines()
    lines[0] = "how do i use dumps on a dict\tjson.dumps\tdescriptive"
    assert run(tmp_path, corpus, lines) == []  # dotted names not checked by their last part
    problems = run(tmp_path, corpus, lines, dotted=True)
    assert problems == ["held.tsv:2: descriptive query names the item 'json.dumps'"]


def test_tuning_queries_must_not_reappear_in_held_out_sets(tmp_path, corpus):
    tuning = valid_lines("other", first_name=70)
    tuning[0] = "keep two folders in sync across computers\titem-0\tdescriptive"
    held = valid_lines()
    held[4] = "Keep two folders in sync, across computers\titem-4\tdescriptive"
    problems = run(tmp_path, corpus, held, tuning_lines=tuning)
    assert problems == ["held.tsv:6: held-out query nearly repeats tuning tune.tsv:1"]
    other_corpus = tmp_path / ("other" + "".join(corpus.suffixes))
    shutil.copy(corpus, other_corpus)
    assert run(tmp_path, corpus, held, tuning_lines=tuning, tuning_corpus=other_corpus) == []  # another corpus


def test_near_repeats(tmp_path):
    assert check_sets.near("pdf merge", "PDF merge")
    assert check_sets.near("merge pdf files", "how to merge pdf files quickly")  # one inside the other
    assert not check_sets.near("pdf merge", "pdf viewer")
    assert not check_sets.near("vue", "vue router")  # a one-word query is only its own repeat


def test_missing_corpus_is_a_problem_unless_allowed(tmp_path, corpus):
    held = tmp_path / "held.tsv"
    held.write_text("\n".join(valid_lines()) + "\n")
    spec = check_sets.SetSpec(held, tmp_path / "absent.jsonl.gz", check_sets.HELD_OUT)
    _, problems = check_sets.check_all([spec])
    assert local(problems, tmp_path) == ["held.tsv:0: corpus absent.jsonl.gz not found"]
    summaries, problems = check_sets.check_all([spec], allow_missing_corpus=True)
    assert list(problems) == [] and "corpus check SKIPPED" in summaries[0]


def test_main_prints_one_line_per_set_and_exits_0(capsys):
    assert check_sets.main(["--allow-missing-corpus"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "eval/debian-tune.tsv",
        "eval/npm-tune.tsv",
        "eval/debian-tune2.tsv",
        "eval/pydocs-tune.tsv",
        "eval/debian.tsv",
        "eval/npm.tsv",
        "eval/pydocs.tsv",
        "eval/debian-fresh.tsv",
        "eval/npm-fresh.tsv",
        "eval/pydocs-fresh.tsv",
        "eval/debian-fresh2.tsv",
        "eval/npm-fresh2.tsv",
        "eval/pydocs-fresh2.tsv",
        "eval/debian-fresh3.tsv",
        "eval/npm-fresh3.tsv",
        "eval/pydocs-fresh3.tsv",
        "eval/debian-fresh4.tsv",
        "eval/npm-fresh4.tsv",
        "eval/pydocs-fresh4.tsv",
        "eval/debian-fresh5.tsv",
        "eval/npm-fresh5.tsv",
        "eval/pydocs-fresh5.tsv",
        "eval/debian-fresh6.tsv",
        "eval/npm-fresh6.tsv",
        "eval/pydocs-fresh6.tsv",
        "eval/debian-fresh7.tsv",
        "eval/npm-fresh7.tsv",
        "eval/pydocs-fresh7.tsv",
        "eval/debian-fresh8.tsv",
        "eval/npm-fresh8.tsv",
        "eval/pydocs-fresh8.tsv",
        "eval/debian-fresh9.tsv",
        "eval/npm-fresh9.tsv",
        "eval/pydocs-fresh9.tsv",
        "eval/debian-fresh10.tsv",
        "eval/npm-fresh10.tsv",
        "eval/pydocs-fresh10.tsv",
        "eval/debian-fresh11.tsv",
        "eval/npm-fresh11.tsv",
        "eval/pydocs-fresh11.tsv",
        "eval/debian-fresh12.tsv",
        "eval/npm-fresh12.tsv",
        "eval/pydocs-fresh12.tsv",
        "eval/debian-fresh13.tsv",
        "eval/npm-fresh13.tsv",
        "eval/pydocs-fresh13.tsv",
    ]


def test_main_exits_1_and_names_the_line(tmp_path, corpus, monkeypatch, capsys):
    lines = valid_lines()
    lines[0] = "a query\tnope\tdescriptive"
    held = tmp_path / "held.tsv"
    held.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(check_sets, "SETS", [check_sets.SetSpec(held, corpus, check_sets.HELD_OUT)])
    assert check_sets.main([]) == 1
    captured = capsys.readouterr()
    assert "1 problem(s)" in captured.out
    assert local(captured.err.splitlines(), tmp_path) == ["held.tsv:1: accepted id 'nope' is not in the corpus"]


def test_unreadable_set_is_a_problem_not_a_traceback(tmp_path, corpus):
    held = tmp_path / "held.tsv"
    held.write_bytes(b"caf\xe9\titem-1\tkeyword\n")
    _, problems = check_sets.check_all([check_sets.SetSpec(held, corpus, check_sets.HELD_OUT)])
    assert local(problems, tmp_path)[0] == "held.tsv:0: cannot read: UnicodeDecodeError"


# --- the corpus scripts ----------------------------------------------------------------


def test_make_npm_strips_tested_here_notes_filters_sorts_and_cuts(tmp_path):
    source = tmp_path / "npm.tsv"
    rows = [
        "name\tversion\tdownloads_a_month\tsummary (notes)",
        "b-pkg\t1.0.0\t500\t[tested here: pin 1.0, npm i [x]] A  real summary",
        "a-pkg\t1.0.0\t500\tSame downloads, sorts first by name",
        "only-note\t1.0.0\t9000\t[tested here: npm ci refuses it]",
        "empty\t1.0.0\t8000\t",
        "no-count\t1.0.0\t\tNobody counted",
        "top\t2.0.0\t7000\tMost downloaded with a summary",
        "zz-cut\t1.0.0\t0\tFalls past the limit",
    ]
    source.write_text("\n".join(rows) + "\n")
    data = make_npm.build(source, limit=4)
    assert data == make_npm.build(source, limit=4)  # byte-for-byte deterministic
    records = [json.loads(line) for line in gzip.decompress(data).splitlines()]
    assert records == [
        {"id": "top", "title": "top", "text": "Most downloaded with a summary"},
        {"id": "a-pkg", "title": "a-pkg", "text": "Same downloads, sorts first by name"},
        {"id": "b-pkg", "title": "b-pkg", "text": "A real summary"},
        {"id": "no-count", "title": "no-count", "text": "Nobody counted"},
    ]


def test_make_npm_names_a_bad_source_line(tmp_path):
    source = tmp_path / "npm.tsv"
    source.write_text("name\tversion\tdownloads_a_month\tsummary\nx\t1\tmany\tA summary\n")
    with pytest.raises(make_npm.SourceError, match=r"npm.tsv:2: downloads_a_month is not a number"):
        make_npm.build(source)


def test_committed_npm_corpus_shape():
    lines = gzip.decompress((EVAL / "corpora" / "npm.jsonl.gz").read_bytes()).splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 20_000
    assert len({r["id"] for r in records}) == 20_000
    assert all(r["id"] == r["title"] and r["text"] and "[tested here" not in r["text"] for r in records)


def test_pydocs_first_paragraph_skips_signatures_and_markup():
    doc = """chain(*iterables) --> chain object

    Return a chain object whose ``__next__`` method returns elements
    from the first iterable, see :func:`itertools.islice`.

    More detail."""
    assert make_pydocs.first_paragraph(doc) == (
        "Return a chain object whose __next__ method returns elements from the first iterable, see itertools.islice."
    )
    long = make_pydocs.first_paragraph("word " * 400)
    assert len(long) <= make_pydocs.MAX_CHARS and long.endswith("word")
    assert make_pydocs.first_paragraph(None) == ""


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the pydocs corpus is made on Python 3.11")
def test_pydocs_build_is_deterministic_and_matches_the_committed_corpus(tmp_path):
    modules = make_pydocs.read_modules(make_pydocs.DEFAULT_MODULES)
    assert 150 <= len(modules) <= 200
    # a fresh interpreter: pytest replaces hooks such as sys.unraisablehook and pdb.set_trace
    out = tmp_path / "pydocs.jsonl.gz"
    script = EVAL / "corpora" / "make_pydocs.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data == (EVAL / "corpora" / "pydocs.jsonl.gz").read_bytes()
    ids = [json.loads(line)["id"] for line in gzip.decompress(data).splitlines()]
    assert ids == sorted(ids) and 4_000 <= len(ids) <= 6_000
    assert {"json.dumps", "pathlib.Path.glob", "os.path.join", "bisect.bisect_left"} <= set(ids)


def test_pydocs_module_list_errors_name_the_line(tmp_path):
    path = tmp_path / "modules.txt"
    path.write_text("# list\njson\njson\n")
    with pytest.raises(make_pydocs.ModulesError, match=r"modules.txt:3: module listed twice"):
        make_pydocs.read_modules(path)
