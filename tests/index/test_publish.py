"""``search build --out X`` never deletes what it did not make (issue 16, item 1).

Each test first sets up the audit's case (a folder that is not an index, the corpus as --out, ...),
then checks that the build refuses with one line and leaves every byte where it was."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.errors import IndexBuildError
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.publish import check_target, make_temp, publish, swap
from tests.conftest import ROOT, write_jsonl

RECORDS = [{"id": f"g{n}", "title": f"Game {n}", "text": f"a strategy game number {n}"} for n in range(3)]


def build(corpus, encoder, out, **options):
    return build_index(corpus, encoder, out, CorpusSpec(), BuildOptions(show_progress=False, **options))


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {
        os.path.relpath(os.path.join(d, f), folder): Path(d, f).read_bytes()
        for d, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture()
def corpus(tmp_path):
    return write_jsonl(tmp_path / "games.jsonl", RECORDS)


@pytest.fixture()
def index(tmp_path, corpus, encoder):
    out = tmp_path / "index"
    build(corpus, encoder, out)
    return out


def test_a_folder_that_is_not_an_index_is_kept(tmp_path, corpus, encoder):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = snapshot(tmp_path)
    for force in (False, True):
        with pytest.raises(IndexBuildError, match=r"photos is a folder that is not an index \(no manifest\.json\)"):
            build(corpus, encoder, out, force=force)
    assert snapshot(tmp_path) == before  # nothing deleted, no temp folder left


def test_the_corpus_as_out_is_never_touched(tmp_path, corpus, encoder):
    before = snapshot(tmp_path)
    with pytest.raises(IndexBuildError, match="is the corpus file"):
        build(corpus, encoder, corpus, force=True)
    with pytest.raises(IndexBuildError, match="holds the corpus"):
        build(corpus, encoder, tmp_path, force=True)
    assert snapshot(tmp_path) == before  # no games.jsonl.old-PID, no temp folder


def test_an_index_folder_holding_the_corpus_is_refused(tmp_path, index, encoder):
    inside = write_jsonl(index / "games.jsonl", RECORDS)
    before = snapshot(index)
    with pytest.raises(IndexBuildError, match="holds the corpus"):
        build(inside, encoder, index, force=True)
    assert snapshot(index) == before


def test_a_file_or_a_symlink_as_out_is_refused(tmp_path, corpus, encoder, index):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(index)
    before = snapshot(tmp_path)
    with pytest.raises(IndexBuildError, match="is a file, not an index folder"):
        build(corpus, encoder, notes, force=True)
    with pytest.raises(IndexBuildError, match="is a symbolic link"):
        build(corpus, encoder, link, force=True)
    assert snapshot(tmp_path) == before and link.is_symlink()


def test_missing_and_empty_folders_are_built(tmp_path, corpus, encoder):
    empty = tmp_path / "empty"
    empty.mkdir()
    build(corpus, encoder, empty)
    build(corpus, encoder, tmp_path / "new" / "deeper" / "index")
    for out in (empty, tmp_path / "new" / "deeper" / "index"):
        assert json.loads((out / "manifest.json").read_text())["count"] == 3


def test_an_index_it_wrote_is_replaced_and_nothing_is_left_beside_it(tmp_path, corpus, encoder, index):
    more = write_jsonl(tmp_path / "more.jsonl", RECORDS + [{"id": "g9", "text": "a chess engine"}])
    build(more, encoder, index)
    assert json.loads((index / "manifest.json").read_text())["count"] == 4
    assert sorted(os.listdir(tmp_path)) == ["games.jsonl", "index", "more.jsonl"]


def test_an_index_holding_files_it_does_not_list_is_kept_even_with_force(tmp_path, corpus, encoder, index):
    (index / "README.txt").write_text("my notes about this index")
    before = snapshot(tmp_path)
    with pytest.raises(IndexBuildError, match=r"holds files the index does not list \('README.txt'\)"):
        build(corpus, encoder, index, force=True)
    assert snapshot(tmp_path) == before


def test_a_damaged_index_needs_force(tmp_path, corpus, encoder, index):
    (index / "embeddings.npy").unlink()
    with pytest.raises(IndexBuildError, match=r"is an index, but damaged \(embeddings\.npy is missing\); pass --force"):
        build(corpus, encoder, index)
    build(corpus, encoder, index, force=True)
    assert (index / "embeddings.npy").is_file()


def test_an_old_file_that_cannot_be_deleted_does_not_fail_the_published_build(tmp_path, corpus, encoder, index):
    """The new index is in place once renamed: an old file that cannot be deleted (here a listed
    name that is now a folder; elsewhere a read-only one) stays beside it instead of failing the build."""
    (index / "embeddings.npy").unlink()
    (index / "embeddings.npy").mkdir()
    (index / "embeddings.npy" / "notes.txt").write_text("not the build's to delete")
    more = write_jsonl(tmp_path / "more.jsonl", RECORDS + [{"id": "g9", "text": "a chess engine"}])
    build(more, encoder, index, force=True)
    assert json.loads((index / "manifest.json").read_text())["count"] == 4
    assert (index / "embeddings.npy").is_file()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".index.old-")]
    assert len(aside) == 1 and (aside[0] / "embeddings.npy" / "notes.txt").read_text() == "not the build's to delete"


def test_an_index_of_another_format_needs_force(tmp_path, corpus, encoder, index):
    manifest = json.loads((index / "manifest.json").read_text())
    (index / "manifest.json").write_text(json.dumps({**manifest, "format": "search-index/0"}))
    with pytest.raises(IndexBuildError, match="of format 'search-index/0'"):
        build(corpus, encoder, index)
    build(corpus, encoder, index, force=True)
    assert json.loads((index / "manifest.json").read_text())["format"] == "search-index/1"


@pytest.mark.parametrize(
    "manifest",
    [
        {"format": "search-model-bundle/1", "files": {"model.onnx": {}}},  # a model bundle
        {"format": "search-index/1", "files": {"../games.jsonl": {"bytes": 1}}},  # names a file outside
        {"format": "search-index/1"},  # no file list
        "not json",
    ],
)
def test_a_manifest_this_tool_did_not_write_is_refused_even_with_force(tmp_path, corpus, encoder, manifest):
    out = tmp_path / "other"
    out.mkdir()
    (out / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    before = snapshot(tmp_path)
    with pytest.raises(IndexBuildError, match="not an index this tool wrote"):
        build(corpus, encoder, out, force=True)
    assert snapshot(tmp_path) == before


def test_another_builds_temp_folder_is_left_alone(tmp_path, corpus, encoder):
    """The old builder removed ``.<name>.tmp-<its pid>`` first, whoever had made it."""
    theirs = tmp_path / f".index.tmp-{os.getpid()}"
    theirs.mkdir()
    (theirs / "embeddings.npy").write_bytes(b"another build, still running")
    build(corpus, encoder, tmp_path / "index")
    assert (theirs / "embeddings.npy").read_bytes() == b"another build, still running"


def test_a_failed_build_removes_only_its_own_temp_folder(tmp_path, encoder):
    bad = write_jsonl(tmp_path / "bad.jsonl", RECORDS + ['{"id": "x", "text": '])
    theirs = tmp_path / ".index.tmp-someone"
    theirs.mkdir()
    with pytest.raises(Exception, match="broken JSON"):
        build(bad, encoder, tmp_path / "index")
    assert sorted(os.listdir(tmp_path)) == [".index.tmp-someone", "bad.jsonl"]


def test_a_folder_created_during_the_build_is_not_replaced(tmp_path, corpus):
    out = tmp_path / "index"
    check_target(out, corpus=corpus)  # missing when the build starts
    tmp = make_temp(out)
    (tmp / "manifest.json").write_text("{}")
    out.mkdir()
    (out / "mine.txt").write_text("made while the build ran")
    with pytest.raises(IndexBuildError, match="not an index"):
        publish(tmp, out, corpus=corpus)
    assert (out / "mine.txt").read_text() == "made while the build ran"


def test_a_file_dropped_into_the_old_index_during_the_swap_survives(tmp_path, index, corpus, encoder):
    """Only the files the old manifest lists are deleted; the rest stays in the moved-aside folder."""
    target = check_target(index, corpus=corpus)
    tmp = make_temp(index)
    (tmp / "manifest.json").write_text("{}")
    (index / "late.txt").write_text("written after the check")
    swap(tmp, index, target.own_files)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".index.old-")]
    assert len(aside) == 1 and sorted(os.listdir(aside[0])) == ["late.txt"]


def test_out_under_a_file_or_unwritable_is_one_line(tmp_path, corpus, encoder):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(IndexBuildError, match=r"is under .*plain, which is a file, not a folder"):
        build(corpus, encoder, tmp_path / "plain" / "index")
    with pytest.raises(IndexBuildError, match="cannot"):
        build(corpus, encoder, "/proc/self/search-index")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder_is_one_line(tmp_path, corpus, encoder):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(IndexBuildError, match="permission denied"):
        build(corpus, encoder, locked / "index")


@pytest.mark.parametrize("case", ["folder", "corpus", "under-file", "proc"])
def test_cli_refuses_with_one_line_and_exit_1(tmp_path, corpus, model_dir, case):
    out = {
        "folder": tmp_path / "photos",
        "corpus": corpus,
        "under-file": corpus / "index",
        "proc": "/proc/self/search-index",
    }[case]
    if case == "folder":
        out.mkdir()
        (out / "a.jpg").write_bytes(b"jpeg")
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "search", "build", "--corpus", corpus, "--model", model_dir, "--out", out, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --out ")
    assert snapshot(tmp_path) == before
