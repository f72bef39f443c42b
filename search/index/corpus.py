"""Read a corpus (JSON Lines or CSV, optionally gzipped) into validated records.

Every problem names the file and the line, so a user can open the file and fix it.  Lines are
read as bytes with a size limit and decoded one by one (lines.py): a record over
``max_record_bytes``, a line that is not UTF-8 and a ``"\ud800"`` escape are problems of their
line, skipped under ``skip_bad``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from search.errors import CorpusError, StorageError
from search.index.lines import MAX_RECORD_BYTES, LineError, csv_rows, jsonl_rows, unpaired_surrogate
from search.index.records import shard_of

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


def detect_format(path: Path | str) -> str:
    name = _name(path).lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise CorpusError("unknown corpus format (expected .jsonl, .ndjson, .csv, optionally .gz)", path=str(path))


class _Digesting(io.RawIOBase):
    """Passes a binary stream through, feeding every byte read to ``digest`` (the corpus sha256
    is taken while reading, so an S3 corpus is read once)."""

    def __init__(self, raw, digest):
        super().__init__()
        self.raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_raw(path: Path | str):
    """A binary stream of the corpus: a local file, or an S3 object streamed (storage/objects.py)."""
    if is_s3(path):
        from search.storage.objects import ObjectReader

        return ObjectReader(str(path))
    return open(path, "rb")


def _open_binary(path: Path | str, digest=None):
    raw = _open_raw(path)
    if digest is not None:
        raw = _Digesting(raw, digest)
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    if _name(path).lower().endswith(".gz"):
        unzipped = gzip.GzipFile(fileobj=buffered, mode="rb")
        unzipped.myfileobj = buffered  # type: ignore[assignment]  # closed with it, as gzip.open does for a name
        return unzipped
    return buffered


def _open_text(path: Path | str, digest=None) -> io.TextIOBase:
    return io.TextIOWrapper(_open_binary(path, digest), encoding="utf-8", newline="")


def is_s3(path) -> bool:
    return str(path).startswith("s3://")


def _name(path: Path | str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_s3(path) else Path(path).name


def _raw_rows(
    path: Path | str, fmt: str, digest=None, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row or None, problem or None); line numbers are 1-based physical lines."""
    with _open_binary(path, digest) as fh:
        yield from (jsonl_rows if fmt == "jsonl" else csv_rows)(fh, max_record_bytes)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def read_corpus(
    path: str | Path,
    spec: CorpusSpec,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    shard: tuple[int, int] | None = None,
    digest=None,
) -> Iterator[Record]:
    """Yield valid records in file order; raise CorpusError at the first bad one unless ``skip_bad``.

    ``path`` may be ``s3://bucket/key``.  ``shard=(I, N)`` keeps the records whose id falls in
    shard I (records.shard_of); a bad record without an id is counted by shard ``line % N``.
    ``digest`` (a hashlib object) is fed the file's bytes as they are read."""
    if is_s3(path) and not str(path)[len("s3://") :].partition("/")[2].strip("/"):
        raise StorageError("names a bucket, not an object", uri=str(path))
    if not is_s3(path):
        path = Path(path)
        if path.is_dir():
            raise CorpusError("is a folder, not a corpus file", path=str(path))
        if not path.is_file():
            raise CorpusError("corpus file not found", path=str(path))
    stats = stats if stats is not None else ReadStats()
    seen: set[str] = set()
    index, count = shard if shard is not None else (0, 1)
    try:
        for number, raw_row, problem in _raw_rows(path, detect_format(path), digest, max_record_bytes):
            row = raw_row or {}  # None exactly when the line has a problem
            if problem is None:
                record_id = _as_text(row.get(spec.id_field)).strip()
                if count > 1 and record_id and shard_of(record_id, count) != index:
                    continue  # another shard's record: that shard checks it
                title = _as_text(row.get(spec.title_field)).strip() if spec.title_field else ""
                text = _as_text(row.get(spec.text_field)).strip()
                if not record_id:
                    problem = f"missing id field {spec.id_field!r}"
                elif record_id in seen:
                    problem = f"duplicate id {record_id!r}"
                elif not (text or (spec.embed_title and title)):
                    problem = f"empty text field {spec.text_field!r}"
            if problem is None:
                problem = unpaired_surrogate(
                    {
                        spec.id_field: record_id,
                        spec.title_field or "title": title,
                        spec.text_field: text,
                        **{name: _as_text(row.get(name)) for name in spec.fields},
                    }
                )
            if problem is not None:
                if not skip_bad:
                    raise CorpusError(problem, path=str(path), line=number)
                if count > 1 and number % count != index and not (row and _as_text(row.get(spec.id_field)).strip()):
                    continue  # an id-less bad record is counted once, by shard line % N
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
    except LineError as exc:
        raise CorpusError(exc.problem, path=str(path), line=exc.number) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorpusError(f"cannot read ({exc})", path=str(path)) from None
    except csv.Error as exc:
        raise CorpusError(f"bad CSV ({exc})", path=str(path)) from None
