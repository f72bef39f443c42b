"""Argument > environment variable > default, for every command and every setting (issue 16, item 5).

The audit: with ``SEARCH_INDEX_URI=/nonexistent`` the server silently served build/index, because
argparse's defaults beat the environment."""

import os
import subprocess
import sys

import pytest

from search.cli import build_parser, resolve_settings
from search.hybrid import SENTENCE_SHARE
from search.settings import ARG_SETTINGS, DEFAULT_INDEX_URI, DEFAULT_MODEL_DIR
from tests.conftest import ROOT, write_jsonl

# every command with the options it has that are settings, and the other arguments it needs
COMMANDS = {
    "build": (["--corpus", "c.jsonl"], {"model": "model_dir", "out": "index_uri", "threads": "threads"}),
    "query": (
        ["chess"],
        {"model": "model_dir", "index": "index_uri", "threads": "threads", "sentence_share": "hybrid_sentence_share"},
    ),
    "info": ([], {"index": "index_uri"}),
    "serve": (
        [],
        {
            "model": "model_dir",
            "index": "index_uri",
            "threads": "threads",
            "cpu_workers": "cpu_workers",
            "sentence_share": "hybrid_sentence_share",
        },
    ),
    "upload": (["s3://bucket/prefix/"], {"index": "index_uri"}),
}
ENV = {"model_dir": "SEARCH_MODEL_DIR", "index_uri": "SEARCH_INDEX_URI", "threads": "SEARCH_THREADS"}
ENV["cpu_workers"] = "SEARCH_CPU_WORKERS"
ENV["hybrid_sentence_share"] = "SEARCH_HYBRID_SENTENCE_SHARE"
FROM_ENV = {"model_dir": "/env/model", "index_uri": "/env/index", "threads": 3, "cpu_workers": 5}
FROM_ENV["hybrid_sentence_share"] = 0.25
FROM_ARG = {"model_dir": "/arg/model", "index_uri": "/arg/index", "threads": 1, "cpu_workers": 0}
FROM_ARG["hybrid_sentence_share"] = 0.75
DEFAULT = {"model_dir": DEFAULT_MODEL_DIR, "index_uri": DEFAULT_INDEX_URI, "threads": None, "cpu_workers": 2}
DEFAULT["hybrid_sentence_share"] = SENTENCE_SHARE


def parse(command, *extra, env):
    needs = COMMANDS[command][0] if command in COMMANDS else ["--queries", "q.tsv"]
    args = build_parser().parse_args([command, *needs, *extra])
    resolve_settings(args, env)
    return args


def test_every_command_is_covered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    # eval, tune: common() options and the share, checked below; merge: --out is required (no setting to resolve)
    missing = set(sub.choices) - set(COMMANDS) - {"eval", "tune", "merge"}
    assert not missing
    assert set(ENV) == set(ARG_SETTINGS.values()) - {"cache_dir"}  # no command has --cache-dir


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["eval", "tune"])
def test_argument_beats_environment_beats_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    if command not in sub.choices:
        pytest.skip("no eval command in this tree")
    judged = {"model": "model_dir", "index": "index_uri", "sentence_share": "hybrid_sentence_share"}
    options = COMMANDS[command][1] if command in COMMANDS else judged
    env = {ENV[name]: str(FROM_ENV[name]) for name in options.values()}
    given = [part for dest, name in options.items() for part in (f"--{dest.replace('_', '-')}", str(FROM_ARG[name]))]
    for environ, argv, expected in [({}, [], DEFAULT), (env, [], FROM_ENV), (env, given, FROM_ARG)]:
        args = parse(command, *argv, env=environ)
        for dest, name in options.items():
            assert getattr(args, dest) == expected[name], (command, dest, environ, argv)
            assert getattr(args.settings, name) == expected[name]


def test_upload_model_bundle_is_not_the_model_dir_setting():
    args = parse("upload", env={"SEARCH_MODEL_DIR": "/env/model"})
    assert args.model_bundle is None  # SEARCH_MODEL_DIR does not turn an index upload into a bundle upload
    assert parse("upload", "--model", "b", env={}).model_bundle == "b"


def run(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "search", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_serve_fails_on_the_environments_index(model_dir):
    proc = run("serve", "--model", model_dir, "--port", "0", env={"SEARCH_INDEX_URI": "/nonexistent"})
    one_line_error(proc, "/nonexistent: no index here")


def test_serve_fails_on_the_environments_model():
    proc = run("serve", "--port", "0", env={"SEARCH_MODEL_DIR": "/nonexistent-model"})
    one_line_error(proc, "/nonexistent-model")


def test_query_reads_the_environment_and_the_argument_wins(model_dir, demo_index):
    proc = run("query", "--model", model_dir, "chess", env={"SEARCH_INDEX_URI": "/nonexistent"})
    one_line_error(proc, "/nonexistent", "index folder not found")
    proc = run("query", "--index", demo_index, "chess", "-k", "1", env={"SEARCH_MODEL_DIR": "/nonexistent-model"})
    one_line_error(proc, "/nonexistent-model")
    proc = run(
        "query", "--model", model_dir, "--index", demo_index, "chess", "-k", "1", env={"SEARCH_INDEX_URI": "/nope"}
    )
    assert proc.returncode == 0 and proc.stdout.startswith("  1 "), proc.stderr


def test_info_reads_the_environment_and_the_argument_wins(demo_index):
    one_line_error(run("info", env={"SEARCH_INDEX_URI": "/nonexistent"}), "/nonexistent", "index folder not found")
    proc = run("info", env={"SEARCH_INDEX_URI": str(demo_index)})
    assert proc.returncode == 0 and f"index {demo_index} " in proc.stdout
    assert run("info", "--index", demo_index, env={"SEARCH_INDEX_URI": "/nonexistent"}).returncode == 0


def test_build_writes_where_the_environment_says(tmp_path, model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "a chess engine"}])
    proc = run("build", "--corpus", corpus, "--quiet", env={"SEARCH_MODEL_DIR": "/nonexistent-model"})
    one_line_error(proc, "/nonexistent-model")
    proc = run(
        "build", "--corpus", corpus, "--model", model_dir, "--quiet", env={"SEARCH_INDEX_URI": str(tmp_path / "env")}
    )
    assert proc.returncode == 0 and (tmp_path / "env" / "manifest.json").is_file(), proc.stderr
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "arg", "--quiet", env={})
    assert proc.returncode == 0 and (tmp_path / "arg" / "manifest.json").is_file(), proc.stderr


def test_upload_reads_the_environments_index():
    proc = run("upload", "s3://bucket/prefix/", "--quiet", env={"SEARCH_INDEX_URI": "/nonexistent"})
    one_line_error(proc, "/nonexistent", "index folder not found")


def test_a_local_command_refuses_an_s3_index_with_one_line():
    proc = run("info", env={"SEARCH_INDEX_URI": "s3://bucket/index/"})
    one_line_error(proc, "`info` works on a local index folder")


def test_a_bad_environment_value_is_one_line(demo_index):
    proc = run("query", "--index", demo_index, "chess", env={"SEARCH_THREADS": "many"})
    one_line_error(proc, "SEARCH_THREADS='many'")
