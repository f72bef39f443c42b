import gzip
import json
import re

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
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(CorpusError, match=r"folder\.jsonl: is a folder, not a corpus file$"):
        read_all(tmp_path / "folder.jsonl")
    odd = tmp_path / "c.parquet"
    odd.write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_all(odd)


def test_not_utf8_is_a_corpus_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_all(path)


def write_bytes(path, *lines: bytes):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD_LINE = json.dumps(GOOD).encode()
LAST_LINE = b'{"id": "z", "text": "ok"}'


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_line_that_is_not_utf8_names_its_line_and_can_be_skipped(tmp_path, suffix):
    """The audit: no line number (the README promises one), and --skip-bad aborted instead of skipping."""
    data = GOOD_LINE + b"\n" + b'{"id": "b", "text": "caf\xe9"}\n' + LAST_LINE + b"\n"
    path = tmp_path / f"c{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(CorpusError) as err:
        read_all(path)
    assert (
        err.value.line == 2
        and str(err.value) == f"{path}:2: not UTF-8 text (byte 25 of the line: invalid continuation byte)"
    )
    stats = ReadStats()
    assert [r.id for r in read_all(path, skip_bad=True, stats=stats)] == ["a", "z"]
    assert stats.skipped == 1 and stats.first_errors[0].startswith("line 2: not UTF-8 text")


@pytest.mark.parametrize("field", ["text", "title", "id", "section"])
def test_an_unpaired_surrogate_escape_is_a_bad_record(tmp_path, field):
    """``"\\ud800"`` is valid JSON but not text: it failed later with a traceback (SQLite, tokenizer)."""
    record = {"id": "b", "title": "t", "text": "x", "section": "games"}
    line = json.dumps(record).replace(f'"{record[field]}"', '"\\ud800"', 1).encode()
    path = write_bytes(tmp_path / "c.jsonl", GOOD_LINE, line, LAST_LINE)
    with pytest.raises(CorpusError, match=rf"c\.jsonl:2: field '{field}' holds an unpaired surrogate"):
        read_all(path)
    assert [r.id for r in read_all(path, skip_bad=True)] == ["a", "z"]


def test_a_paired_surrogate_escape_is_fine(tmp_path):
    path = write_bytes(tmp_path / "c.jsonl", b'{"id": "a", "text": "game \\ud83c\\udfae"}')
    assert read_all(path)[0].text == "game \U0001f3ae"


def test_a_record_over_max_record_bytes_names_its_line_and_can_be_skipped(tmp_path):
    big = json.dumps({"id": "big", "text": "word " * 1000}).encode()  # 5,024 bytes
    path = write_bytes(tmp_path / "c.jsonl", GOOD_LINE, big, LAST_LINE)
    with pytest.raises(CorpusError) as err:
        read_all(path, max_record_bytes=4096)
    assert str(err.value) == f"{path}:2: record is {len(big):,} bytes, over the limit of 4,096 (--max-record-bytes)"
    stats = ReadStats()
    assert [r.id for r in read_all(path, max_record_bytes=4096, skip_bad=True, stats=stats)] == ["a", "z"]
    assert stats.skipped == 1
    assert [r.id for r in read_all(path, max_record_bytes=len(big))] == ["a", "big", "z"]  # the limit is inclusive


def test_a_record_far_over_the_limit_is_counted_not_held(tmp_path):
    """The rest of an over-long line is read in steps and dropped; its size is still exact."""
    big = b'{"id": "big", "text": "' + b"x" * (3 << 20) + b'"}'
    path = write_bytes(tmp_path / "c.jsonl", big, LAST_LINE)
    with pytest.raises(CorpusError, match=rf"c\.jsonl:1: record is {len(big):,} bytes"):
        read_all(path, max_record_bytes=1000)
    assert [r.id for r in read_all(path, max_record_bytes=1000, skip_bad=True)] == ["z"]


@pytest.mark.parametrize(
    "line, problem",
    [
        (b"[" * 100_000 + b"]" * 100_000, "broken JSON (nested too deeply)"),
        (b'{"id": "n", "text": ' + b"9" * 5000 + b"}", "broken JSON (Exceeds the limit (4300 digits)"),
    ],
)
def test_json_python_refuses_is_a_broken_line_not_a_traceback(tmp_path, line, problem):
    path = write_bytes(tmp_path / "c.jsonl", GOOD_LINE, line)
    with pytest.raises(CorpusError, match=rf"c\.jsonl:2: {re.escape(problem)}"):
        read_all(path)


def test_crlf_line_endings_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE + b"\r\n" + LAST_LINE + b"\r\n")
    assert [r.id for r in read_all(path, max_record_bytes=len(GOOD_LINE))] == ["a", "z"]


def test_csv_line_that_is_not_utf8_or_too_long_names_its_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(
        b'id,title,text\na,Alpha,one\nb,"Two\nlines",caf\xe9\nc,Long,'
        + b"x" * 5000
        + b'\nd,"D\n'
        + b"y" * 3000
        + b"\n"
        + b"z" * 3000
        + b'",ok\ne,Last,fine\n'
    )
    with pytest.raises(CorpusError, match=r"c\.csv:4: not UTF-8 text"):
        read_all(path)
    stats = ReadStats()
    assert [r.id for r in read_all(path, skip_bad=True, stats=stats, max_record_bytes=4096)] == ["a", "e"]
    assert stats.first_errors == [
        "line 4: not UTF-8 text (byte 11 of the line: invalid continuation byte)",  # a row over lines 3-4
        "line 5: record is 5,007 bytes, over the limit of 4,096 (--max-record-bytes)",
        "line 6: record is 6,008 bytes, over the limit of 4,096 (--max-record-bytes)",  # lines 6-8, each shorter
    ]


def test_csv_keeps_its_quoting_across_an_over_long_line(tmp_path):
    """The line over the limit is never read whole, yet the rows after it are found where they are."""
    path = tmp_path / "c.csv"
    path.write_bytes(
        b'id,title,text\nf,"F\n' + b"q" * 5000 + b'\n",end\n'  # an over-long line inside a quoted field
        b'h,"H\n' + b"w" * 5000 + b'",x\n'  # an over-long line that ends a quoted field
        b'i,"I ' + b'""' * 3000 + b'",y\n'  # escaped quotes, even count
        b"g,Last,fine\n"
    )
    stats = ReadStats()
    assert [(r.id, r.line) for r in read_all(path, skip_bad=True, stats=stats, max_record_bytes=4096)] == [("g", 8)]
    assert [e.split(":")[0] for e in stats.first_errors] == ["line 3", "line 6", "line 7"]  # the long lines


@pytest.mark.parametrize(
    "tail, line",
    [
        (b'b,"oops a stray quote\nc,cherry\nd,date\n', 3),  # swallows every line after it
        (b'b,bread\nc,"cherry\n', 4),  # on the last line
    ],
)
def test_csv_quote_never_closed_names_its_line_instead_of_eating_the_rest(tmp_path, tail, line):
    """Python's csv reads an unclosed quote to the end of the file as one field: four records became two."""
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,text\na,apple\n" + tail)
    for skip_bad in (False, True):
        with pytest.raises(CorpusError, match=rf"c\.csv:{line}: bad CSV \(a quoted field is never closed\)"):
            read_all(path, skip_bad=skip_bad)
