import gzip
import json

import pytest

from search.errors import CorpusError
from search.index.corpus import CorpusSpec, ReadStats, read_corpus
from tests.conftest import write_jsonl

GOOD = {"id": "a", "title": "Alpha", "text": "first item", "section": "games"}


def read_all(path, **kw):
    return list(read_corpus(path, CorpusSpec(fields=("section",)), **kw))


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"title": "no id", "text": "x"}', "missing id"),
        ('{"id": "a", "title": "dup", "text": "x"}', "duplicate id 'a'"),
        ('{"id": "c", "title": "", "text": "   "}', "empty text"),
        ('{"id": "d", "title": "broken", "text": ', "broken JSON"),
        ('["not", "an", "object"]', "not a JSON object"),
    ],
)
def test_bad_record_names_its_line(tmp_path, bad_line, problem):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, "", bad_line, {"id": "z", "text": "ok"}])
    with pytest.raises(CorpusError) as err:
        read_all(path)
    assert err.value.line == 3  # the blank line 2 still counts as a line
    assert problem in str(err.value) and f"{path}:3:" in str(err.value)


def test_skip_bad_counts_and_keeps_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, '{"id": "a", "text": "dup"}', "{oops", {"id": "b", "text": "t"}])
    stats = ReadStats()
    records = read_all(path, skip_bad=True, stats=stats)
    assert [r.id for r in records] == ["a", "b"]
    assert stats.skipped == 2 and stats.records == 2
    assert stats.first_errors[0].startswith("line 2: duplicate id")


def test_gzip_and_csv_read_the_same_records(tmp_path):
    rows = [GOOD, {"id": "b", "title": "Beta", "text": "second, with a comma", "section": "x11"}]
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('id,title,text,section\na,Alpha,first item,games\nb,Beta,"second, with a comma",x11\n')
    from_gz, from_csv = read_all(gz), read_all(csv_path)
    assert [(r.id, r.title, r.text, r.fields) for r in from_gz] == [(r.id, r.title, r.text, r.fields) for r in from_csv]
    assert from_csv[1].fields == {"section": "x11"} and from_csv[1].line == 3


def test_csv_bad_row_reports_physical_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,title,text\na,Alpha,one\n,NoId,two\n")
    with pytest.raises(CorpusError, match=r"c\.csv:3: missing id"):
        read_all(path)


def test_title_only_record_is_fine_unless_titles_are_off(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "t", "title": "Only a title", "text": ""}])
    assert read_all(path)[0].title == "Only a title"
    with pytest.raises(CorpusError, match="empty text"):
        list(read_corpus(path, CorpusSpec(embed_title=False)))


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_all(tmp_path / "nope.jsonl")
    odd = tmp_path / "c.parquet"
    odd.write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_all(odd)


def test_not_utf8_is_a_corpus_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_all(path)
