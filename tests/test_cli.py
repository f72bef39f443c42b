import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_jsonl


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "search", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["build"], ["query"], ["info"], ["serve"]])
def test_every_command_has_help(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_query_json_finds_the_game_by_meaning(model_dir, demo_index):
    proc = run(
        "query",
        "--model",
        model_dir,
        "--index",
        demo_index,
        "--json",
        "-k",
        "5",
        "real-time strategy game in ancient times",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ids = [r["id"] for r in out["results"]]
    assert "0ad" in ids and len(ids) == 5
    assert {"id", "score", "title", "fields"} <= set(out["results"][0])


def test_query_table_with_filter_and_offset(model_dir, demo_index):
    proc = run(
        "query",
        "--model",
        model_dir,
        "--index",
        demo_index,
        "chess",
        "-k",
        "3",
        "--offset",
        "2",
        "--filter",
        "section=games",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].lstrip().startswith("3 ") and len(lines) == 4  # ranks 3..5 and a timing line


def test_info_describes_the_index(demo_index):
    proc = run("info", "--index", demo_index, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "1108 items" in proc.stdout and "field section: games (1108)" in proc.stdout
    assert "all sha256 checksums verified" in proc.stdout
    assert "int8 scan copy: scan-int8.npy" in proc.stdout  # float32 demo index: built with its scan copy
    assert "int4 prefilter copy: prefilter-int4.npy" in proc.stdout


def test_bad_corpus_exits_1_with_one_line(tmp_path, model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {corpus}:2: duplicate id 'a'"
    assert not (tmp_path / "i").exists()


def test_skip_bad_builds_and_counts(tmp_path, model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, "{broken", {"id": "b", "text": "y"}])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--skip-bad", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "2 items" in proc.stdout and "1 bad records skipped" in proc.stdout


def test_missing_index_and_bad_filter(model_dir, tmp_path):
    proc = run("query", "--model", model_dir, "--index", tmp_path / "none", "x")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "index folder not found" in proc.stderr
    proc = run("query", "--model", model_dir, "--index", tmp_path / "none", "x", "--filter", "nonsense")
    assert proc.returncode == 2 and "expected FIELD=VALUE" in proc.stderr
    proc = run("query", "--model", model_dir, "--index", "build/index", "x", "--filter", "colour=red")
    assert proc.returncode == 1 and "unknown filter field 'colour'" in proc.stderr


def test_unknown_command_exits_2():
    proc = run("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_build_without_scan_copy(tmp_path, model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"i{n}", "text": f"game number {n}"} for n in range(5)])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--quiet", "--no-scan-copy")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["scan"] is None and not any(n.startswith("scan-") for n in manifest["files"])
