"""Read a corpus (JSON Lines or CSV, optionally gzipped) into validated records.

Every problem names the file and the line, so a user can open the file and fix it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from search.errors import CorpusError

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class CorpusSpec:
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = "title"
    embed_title: bool = True
    fields: tuple[str, ...] = ()

    def document_text(self, title: str, text: str) -> str:
        """What gets embedded: the title on its own line before the text, unless turned off."""
        if self.embed_title and title:
            return f"{title}\n{text}" if text else title
        return text


@dataclass
class Record:
    line: int
    id: str
    title: str
    text: str
    fields: dict[str, str]


@dataclass
class ReadStats:
    records: int = 0
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise CorpusError("unknown corpus format (expected .jsonl, .ndjson, .csv, optionally .gz)", path=str(path))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _raw_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row or None, problem or None); line numbers are 1-based physical lines."""
    with _open_text(path) as fh:
        if fmt == "jsonl":
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, None, f"broken JSON ({exc.msg} at column {exc.colno})"
                    continue
                if not isinstance(row, dict):
                    yield number, None, "line is not a JSON object"
                    continue
                yield number, row, None
        else:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, row, None


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def read_corpus(
    path: str | Path, spec: CorpusSpec, *, skip_bad: bool = False, stats: ReadStats | None = None
) -> Iterator[Record]:
    """Yield valid records in file order; raise CorpusError at the first bad one unless ``skip_bad``."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError("corpus file not found", path=str(path))
    stats = stats if stats is not None else ReadStats()
    seen: set[str] = set()
    try:
        for number, row, problem in _raw_rows(path, detect_format(path)):
            if problem is None:
                record_id = _as_text(row.get(spec.id_field)).strip()
                title = _as_text(row.get(spec.title_field)).strip() if spec.title_field else ""
                text = _as_text(row.get(spec.text_field)).strip()
                if not record_id:
                    problem = f"missing id field {spec.id_field!r}"
                elif record_id in seen:
                    problem = f"duplicate id {record_id!r}"
                elif not (text or (spec.embed_title and title)):
                    problem = f"empty text field {spec.text_field!r}"
            if problem is not None:
                if not skip_bad:
                    raise CorpusError(problem, path=str(path), line=number)
                stats.skipped += 1
                if len(stats.first_errors) < 5:
                    stats.first_errors.append(f"line {number}: {problem}")
                continue
            seen.add(record_id)
            stats.records += 1
            yield Record(
                line=number,
                id=record_id,
                title=title,
                text=text,
                fields={name: _as_text(row.get(name)) for name in spec.fields},
            )
    except UnicodeDecodeError as exc:
        raise CorpusError(f"not UTF-8 text ({exc.reason})", path=str(path)) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorpusError(f"cannot read ({exc})", path=str(path)) from None
    except csv.Error as exc:
        raise CorpusError(f"bad CSV ({exc})", path=str(path)) from None
