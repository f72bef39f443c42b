"""The metadata store: one SQLite file, row ``n`` of the table is row ``n`` of the embeddings.

Opened read-only and immutable, so a lookup reads a few pages and never the
whole file; nothing is parsed at start.  Filter fields are also written as
integer code arrays (``field-<name>.npy``) so filtering is a vectorised
``isin`` over a memory map; their value dictionaries live here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from search.errors import IndexCorruptError, IndexLoadError

SQLITE_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file, not the query, is at fault

SCHEMA = """
CREATE TABLE items (
    row    INTEGER PRIMARY KEY,   -- vector row, 0-based
    id     TEXT NOT NULL UNIQUE,
    title  TEXT NOT NULL,
    text   TEXT NOT NULL,
    fields TEXT NOT NULL          -- JSON object of stored fields
);
CREATE TABLE field_values (
    field  TEXT NOT NULL,
    code   INTEGER NOT NULL,
    value  TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (field, code),
    UNIQUE (field, value)
);
"""


class MetadataWriter:
    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.executescript(SCHEMA)

    def add_items(self, rows: Iterable[tuple[int, str, str, str, dict]]) -> None:
        self.conn.executemany(
            "INSERT INTO items (row, id, title, text, fields) VALUES (?, ?, ?, ?, ?)",
            ((r, i, ti, tx, json.dumps(f, ensure_ascii=False, sort_keys=True)) for r, i, ti, tx, f in rows),
        )

    def iter_names(self, batch: int = 1024) -> Iterable[tuple[str, str]]:
        """(id, title) of every row in row order."""
        cursor = self.conn.execute("SELECT id, title FROM items ORDER BY row")
        while chunk := cursor.fetchmany(batch):
            yield from chunk

    def iter_texts(self, batch: int = 1024) -> Iterable[tuple[str, str]]:
        cursor = self.conn.execute("SELECT title, text FROM items ORDER BY row")
        while chunk := cursor.fetchmany(batch):
            yield from chunk

    def field_column(self, name: str) -> Iterable[str]:
        cursor = self.conn.execute("SELECT json_extract(fields, ?) FROM items ORDER BY row", (f'$."{name}"',))
        for (value,) in cursor:
            yield "" if value is None else str(value)

    def add_field_values(self, name: str, values: list[tuple[int, str, int]]) -> None:
        self.conn.executemany(
            "INSERT INTO field_values (field, code, value, count) VALUES (?, ?, ?, ?)",
            ((name, code, value, count) for code, value, count in values),
        )

    def close(self) -> None:
        self.conn.commit()
        self.conn.execute("VACUUM")
        self.conn.close()


class MetadataReader:
    """Thread-safe point lookups; a lock around one read-only connection is plenty for µs queries."""

    def __init__(self, path: Path):
        self.path = path
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._conn.execute("SELECT row, id, title, text, fields FROM items LIMIT 0")
            self._conn.execute("SELECT field, code, value, count FROM field_values LIMIT 0")
        except sqlite3.DatabaseError as exc:
            raise IndexLoadError(f"not a valid metadata store ({exc})", path=str(path)) from None
        self._lock = threading.Lock()

    def _failed(self, exc: sqlite3.DatabaseError) -> IndexLoadError:
        code = getattr(exc, "sqlite_errorcode", None)
        if str(exc).startswith("Could not decode to UTF-8"):  # Python's sqlite3, on a damaged text value
            # (its message quotes the damaged text: not repeated here)
            return IndexCorruptError(
                "metadata store is corrupt (a stored text is not valid UTF-8)", path=str(self.path)
            )
        if (code is not None and code & 0xFF in SQLITE_DAMAGED) or "malformed" in str(exc):
            return IndexCorruptError(f"metadata store is corrupt ({exc})", path=str(self.path))
        return IndexLoadError(f"metadata store query failed ({exc})", path=str(self.path))

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc) from None

    def fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run one read query (the keyword index uses this; see lexical.py)."""
        return self._query(sql, args)

    def scan(self, sql: str, args: tuple, take: Callable[[list[tuple]], bool], *, batch: int = 256) -> None:
        """Feed the query's rows to ``take`` in chunks until it returns True or rows run out,
        so a filtered keyword search reads only as far down the ranking as it needs."""
        try:
            with self._lock:
                cursor = self._conn.execute(sql, args)
                try:
                    while chunk := cursor.fetchmany(batch):
                        if take(chunk):
                            break
                finally:
                    cursor.close()
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc) from None

    def rows(self, rows: list[int]) -> dict[int, dict]:
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        found = self._query(f"SELECT row, id, title, text, fields FROM items WHERE row IN ({marks})", tuple(rows))
        out = {r: {"id": i, "title": ti, "text": tx, "fields": self._fields(r, f)} for r, i, ti, tx, f in found}
        if len(out) < len(set(rows)):  # every row asked for has a vector, so it has a record
            missing = min(set(rows) - set(out))
            raise IndexCorruptError(f"row {missing} has a vector but no items row", path=str(self.path))
        return out

    def _fields(self, row: int, text) -> dict:
        try:
            fields = json.loads(text)
        except (TypeError, ValueError):
            fields = None
        if not isinstance(fields, dict):
            raise IndexCorruptError(f"row {row}: the fields column is not a JSON object", path=str(self.path))
        return fields

    def row_of(self, item_id: str) -> int | None:
        found = self._query("SELECT row FROM items WHERE id = ?", (item_id,))
        return found[0][0] if found else None

    def codes_for(self, field: str, values: Iterable[str]) -> list[int]:
        values = list(values)
        marks = ",".join("?" * len(values))
        found = self._query(f"SELECT code FROM field_values WHERE field = ? AND value IN ({marks})", (field, *values))
        return [c for (c,) in found]

    def field_values(self, field: str, limit: int = 200) -> list[tuple[str, int]]:
        """Most common values first: what a filter control offers."""
        return [
            (v, c)
            for v, c in self._query(
                "SELECT value, count FROM field_values WHERE field = ? ORDER BY count DESC, value LIMIT ?",
                (field, limit),
            )
        ]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
