"""Corpus lines read as bytes, with a size limit: the rows ``corpus.py`` validates.

* A line over ``max_record_bytes`` is never held whole: its size is counted while the rest of it
  is skipped, and it becomes a problem of its line (an error, or a skip under ``--skip-bad``).
  Without a limit one 100 MB record drove a build past 6 GB.
* Every line is decoded on its own, so a byte that is not UTF-8 names its line and
  ``--skip-bad`` skips that line (a text-mode file fails for the whole file, without a line).
* A JSON string may spell an unpaired surrogate (``"\\ud800"``); Python accepts it, but it is not
  text anything downstream can store or encode: ``unpaired_surrogate`` finds it.

Rows are ``(line number, row or None, problem or None)``; line numbers count ``\\n`` from 1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

MAX_RECORD_BYTES = 1 << 20  # 1 MiB: the default of ``search build --max-record-bytes``
DRAIN_BYTES = 1 << 20  # read step while skipping the rest of an over-long line
BOM = b"\xef\xbb\xbf"

Row = tuple[int, "dict | None", "str | None"]


class LineError(Exception):
    """A problem after which the rest of the file cannot be read reliably (a broken CSV quote)."""

    def __init__(self, number: int, problem: str):
        self.number, self.problem = number, problem
        super().__init__(problem)


@dataclass(frozen=True)
class Line:
    number: int
    text: str | None  # decoded, with its line ending (bad bytes as U+FFFD); None when over the limit
    size: int  # bytes, without the line ending
    problem: str | None = None
    quotes: int = 0  # over the limit: how many '"' it held (CSV keeps its quoting state, see csv_rows)


def over_limit(size: int, limit: int) -> str:
    return f"record is {size:,} bytes, over the limit of {limit:,} (--max-record-bytes)"


def read_lines(fh: BinaryIO, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Line]:
    number = 0
    while True:
        limit = max_bytes + 2 + (len(BOM) if number == 0 else 0)  # room for "\r\n" (and a BOM)
        chunk = fh.readline(limit)
        if not chunk:
            return
        number += 1
        if not chunk.endswith(b"\n") and len(chunk) >= limit:
            size, quotes = len(chunk), chunk.count(b'"')  # longer than the limit: count, keep none
            while not chunk.endswith(b"\n"):
                chunk = fh.readline(DRAIN_BYTES)
                if not chunk:
                    break
                size, quotes = size + len(chunk), quotes + chunk.count(b'"')
            size -= 2 if chunk.endswith(b"\r\n") else 1 if chunk.endswith(b"\n") else 0
            yield Line(number, None, size, over_limit(size, max_bytes), quotes)
            continue
        if number == 1 and chunk.startswith(BOM):
            chunk = chunk[len(BOM) :]
        size = len(chunk) - (2 if chunk.endswith(b"\r\n") else 1 if chunk.endswith(b"\n") else 0)
        if size > max_bytes:
            yield Line(number, None, size, over_limit(size, max_bytes), chunk.count(b'"'))
            continue
        try:
            yield Line(number, chunk.decode("utf-8"), size)
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason})"
            yield Line(number, chunk.decode("utf-8", "replace"), size, problem)


def jsonl_rows(fh: BinaryIO, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Row]:
    for line in read_lines(fh, max_bytes):
        text = line.text
        if line.problem is not None or text is None:
            yield line.number, None, line.problem or "unreadable line"
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line.number, None, f"broken JSON ({exc.msg} at column {exc.colno})"
            continue
        except RecursionError:
            yield line.number, None, "broken JSON (nested too deeply)"
            continue
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            yield line.number, None, f"broken JSON ({str(exc).split(':')[0]})"
            continue
        if not isinstance(row, dict):
            yield line.number, None, "line is not a JSON object"
            continue
        yield line.number, row, None


def csv_rows(fh: BinaryIO, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Row]:
    """A CSV row may span lines (quoted newlines): it takes the problem of any of its lines, and
    its size is the sum of theirs.  A line that is not UTF-8 reaches the CSV reader with U+FFFD
    for its bad bytes, and a line over the limit as a placeholder with as many quote characters
    modulo 2 (a quote first toggles the quoting state in the excel dialect, inside a quoted field
    or at a field's start): either way the row it belongs to is still found where it ends, then
    reported (or skipped) as a whole.  A quote never closed (Python's reader would take the rest of
    the file as one field) stops the read at the line of the row it opened in."""
    problems: dict[int, str] = {}
    sizes: dict[int, int] = {}
    texts: list[str] = []  # the lines of the row being read (the reader never reads ahead)

    def feed() -> Iterator[str]:
        for line in read_lines(fh, max_bytes):
            sizes[line.number] = line.size
            if line.problem is not None:
                problems[line.number] = line.problem
            texts.append(line.text if line.text is not None else '"' * (line.quotes % 2) + "-\n")
            yield texts[-1]

    if csv.field_size_limit() <= max_bytes:  # a field may be as long as a record
        csv.field_size_limit(max_bytes + 1)
    reader = csv.DictReader(feed())
    try:
        reader.fieldnames  # noqa: B018 - reads the header line
        previous = reader.line_num
        if 1 in problems:
            raise LineError(1, f"header line: {problems[1]}")
        held: tuple[Row, list[str]] | None = None  # each row waits for the next: is it the last one?
        for row in reader:
            span = range(previous + 1, reader.line_num + 1)
            previous = reader.line_num
            bad = next((n for n in span if n in problems), None)
            problem = problems[bad] if bad is not None else None
            for n in span:
                problems.pop(n, None)
            size = sum(sizes.pop(n, 0) for n in span)
            if problem is None and size > max_bytes:
                bad, problem = span[0], over_limit(size, max_bytes)
            if held is not None:
                yield held[0]
            item: Row = ((span[0] if bad is None else bad), None, problem) if problem else (reader.line_num, row, None)
            held = (item, texts[-len(span) :])
            texts.clear()
        if held is not None:
            if _quote_left_open(held[1]):
                raise LineError(previous - len(held[1]) + 1, "bad CSV (a quoted field is never closed)")
            yield held[0]
    except csv.Error as exc:
        raise LineError(reader.line_num, f"bad CSV ({exc})") from None


def _quote_left_open(lines: list[str]) -> bool:
    """Whether the last row's lines end inside a quoted field.  The lenient reader (which reads
    ``"a"b`` as ``ab``) takes such a field to the end of the file, so one stray quote made every
    record after it part of one field; the strict reader says so."""
    if not any('"' in text for text in lines):
        return False
    try:
        for _ in csv.reader(lines, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def unpaired_surrogate(values: Mapping[str, str]) -> str | None:
    """The problem of the first value holding an unpaired surrogate (from a ``"\\ud800"`` escape)."""
    for name, value in values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {name!r} holds an unpaired surrogate (an escape such as \\ud800), not valid text"
    return None
