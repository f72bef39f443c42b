"""Keyword search: an SQLite FTS5 index over id, title and text, inside ``metadata.sqlite``.

Written once at build time beside the items table (an external-content FTS5 table, so the
text is not stored twice) and read through the metadata store's read-only connection: a
query touches a few b-tree pages, nothing is loaded at open.  BM25 is FTS5's own, with the
id and title weighted above the text.

User text never reaches FTS5 as syntax: it is cut into word tokens and every token is
written as a double-quoted string, so ``AND``, ``NEAR``, ``*``, ``:``, ``^``, parentheses
and quotes are plain words or separators.  A query with no word characters gives no
keyword results.

Two small tables beside it: ``item_names`` maps a hash of each normalised id and title to
rows, so "the query is this item's name" is one index probe instead of a scan; ``common_terms``
lists the words too common to be worth scoring (see COMMON_MIN_DOCS).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import unicodedata
import weakref
from dataclasses import dataclass

import numpy as np

from search.errors import IndexBuildError, IndexLoadError

ENGINE = "sqlite-fts5"
FTS_TABLE = "items_fts"
NAMES_TABLE = "item_names"
COMMON_TABLE = "common_terms"
COLUMNS = ("id", "title", "text")
# bm25 column weights (id, title, text): a word in the id or title says far more about what
# an item *is* than the same word somewhere in a paragraph.  Not finely tuned: on the 64k
# known-item task (keyword side alone) 10/4/1, 3/4/1 and 1/1/1 were within 0.02 MRR@10.
WEIGHTS = (10.0, 4.0, 1.0)
TOKENIZER = "unicode61 remove_diacritics 2"
MAX_QUERY_TOKENS = 32  # longer queries keep their first 32 distinct words (bounded work)
# BM25 scores every item holding any query word, about 2 µs each here: "the" (54k of 64k items)
# costs 120 ms and ranks nothing.  Words in more than max(COMMON_MIN_DOCS, COMMON_FRACTION of the
# items) are "common": listed at build time, left out of the keyword query (their weight in BM25
# is small anyway), so a keyword query scores at most a few thousand items.
COMMON_MIN_DOCS = 1000
COMMON_FRACTION = 0.01
ANCHOR_COMMON = True  # common words still add to the score of items matched by rare ones
# ... except words in more than a fifth of the items ("the", "for", "package"): FTS5's BM25 gives
# them next to no weight, yet seeking through their posting lists doubled the keyword time.
# Measured on the 64k known-item task: MRR@10 0.616 with or without them, p50 1.5 ms vs 3.5 ms.
ANCHOR_MAX_FRACTION = 0.2
MAX_MATCH_TOKENS = 8  # uncommon words sent to FTS5 at most: <= 8 x 1000 items scored
MAX_EXACT_ROWS = 50  # an exact title shared by many items ("transitional package") stays bounded
SCAN_BATCH = 256  # keyword rows fetched per step while filtering

# unicode61 splits on everything that is not a letter, a number or a private-use character;
# "_" is punctuation to it, so it splits there too.
_TOKEN_RE = re.compile(r"[^\W_]+")


class LexicalUnavailable(IndexLoadError):
    """The index has no usable keyword side (built without it, or this sqlite3 lacks FTS5)."""


@dataclass(frozen=True)
class KeywordHit:
    row: int
    score: float  # BM25 relevance, higher is better (FTS5's bm25() negated)


# -- query text -------------------------------------------------------------------------------
def query_tokens(text: str) -> list[str]:
    """Distinct lower-case word tokens of ``text`` in order, at most MAX_QUERY_TOKENS."""
    seen: dict[str, None] = {}
    for token in _TOKEN_RE.findall(text.casefold()):
        seen.setdefault(token, None)
        if len(seen) >= MAX_QUERY_TOKENS:
            break
    return list(seen)


def fold_diacritics(token: str) -> str:
    """Roughly what the unicode61 tokenizer stores for a word ("café" -> "cafe"), for looking
    words up in the common-terms table; a miss only means a word is not recognised as common."""
    if token.isascii():
        return token
    return "".join(ch for ch in unicodedata.normalize("NFKD", token) if not unicodedata.combining(ch))


def match_expression(tokens: list[str]) -> str:
    """An FTS5 MATCH string that can only mean "any of these words": each token is a quoted
    string (an embedded quote doubled), joined by OR.  BM25 ranks items with more and rarer
    words higher, so OR keeps recall for descriptive queries without losing precision."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in tokens)


def name_key(text: str) -> str:
    """What counts as "the same name": the same words in the same order, ignoring case and the
    punctuation between them, so "GIMP", "gimp data" and "g++ 12" name gimp, gimp-data and g++-12."""
    return " ".join(_TOKEN_RE.findall(text.casefold()))


def name_hash(key: str) -> int:
    """A signed 64-bit hash of a name key: the name table stores these (a third of the size of
    the keys themselves); lookups re-check the real id and title, so a collision costs nothing."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


# -- build ------------------------------------------------------------------------------------
def fts5_available(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.fts5_probe")
        return True
    except sqlite3.DatabaseError:  # "no such module: fts5" (or not allowed to create one)
        return False


def write_lexical_index(conn: sqlite3.Connection, items_table: str = "items") -> dict:
    """Create and fill the FTS5 and name tables from ``items``; returns the manifest entry."""
    if not fts5_available(conn):
        raise IndexBuildError(
            f"this Python's sqlite3 (SQLite {sqlite3.sqlite_version}) has no FTS5, so the "
            "keyword index cannot be built; use a Python whose SQLite has FTS5 (python.org, "
            "Debian, Ubuntu, Fedora and Amazon Linux 2023 builds do)"
        )
    cols = ", ".join(COLUMNS)
    conn.executescript(f"""
        CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5({cols}, content='{items_table}', content_rowid='row',
                                                     tokenize='{TOKENIZER}');
        INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild');
        INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('optimize');
        CREATE TABLE {NAMES_TABLE} (hash INTEGER NOT NULL, row INTEGER NOT NULL,
                                    PRIMARY KEY (hash, row)) WITHOUT ROWID;
    """)
    names = conn.execute(f"SELECT row, id, title FROM {items_table}").fetchall()
    keys = {
        (name_hash(name_key(text)), row) for row, item_id, title in names for text in (item_id, title) if text.strip()
    }
    conn.executemany(f"INSERT INTO {NAMES_TABLE} (hash, row) VALUES (?, ?)", sorted(keys))

    count = len(names)
    common_docs = max(COMMON_MIN_DOCS, int(COMMON_FRACTION * count))
    conn.executescript(f"""
        CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, {FTS_TABLE}, 'row');
        CREATE TABLE {COMMON_TABLE} (term TEXT PRIMARY KEY, docs INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO {COMMON_TABLE} SELECT term, doc FROM temp.vocab WHERE doc > {common_docs};
        DROP TABLE temp.vocab;
    """)
    return {
        "engine": ENGINE,
        "file": "metadata.sqlite",
        "table": FTS_TABLE,
        "names_table": NAMES_TABLE,
        "common_table": COMMON_TABLE,
        "common_docs": common_docs,
        "columns": list(COLUMNS),
        "weights": list(WEIGHTS),
        "tokenizer": TOKENIZER,
        "sqlite_version": sqlite3.sqlite_version,
    }


# -- query ------------------------------------------------------------------------------------
class LexicalIndex:
    """Keyword queries over an opened index's metadata store (shares its connection and lock)."""

    anchor_common = ANCHOR_COMMON

    def __init__(self, metadata, info: dict, count: int):
        self.metadata = metadata
        self.anchor_max_docs = int(ANCHOR_MAX_FRACTION * count)
        self.table = str(info.get("table", FTS_TABLE))
        self.names_table = str(info.get("names_table", NAMES_TABLE))
        self.common_table = str(info.get("common_table", COMMON_TABLE))
        weights = info.get("weights", WEIGHTS)
        self.weights = tuple(float(w) for w in weights)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.table + self.names_table + self.common_table) or len(
            self.weights
        ) != len(COLUMNS):
            raise LexicalUnavailable("the manifest's lexical entry is malformed", path=str(metadata.path))
        marks = ", ".join(repr(w) for w in self.weights)
        self._sql = (
            f"SELECT rowid, -bm25({self.table}, {marks}) FROM {self.table} "
            f"WHERE {self.table} MATCH ? ORDER BY bm25({self.table}, {marks}), rowid"
        )
        self._sql_top = self._sql + " LIMIT ?"  # unfiltered: SQLite keeps a top-N heap, no full sort

    @classmethod
    def open(cls, metadata, manifest: dict) -> LexicalIndex:
        """Raise LexicalUnavailable (with the reason) when keyword search cannot work here."""
        info = manifest.get("lexical")
        if not isinstance(info, dict) or info.get("engine") != ENGINE:
            raise LexicalUnavailable(
                "index was built without a keyword index (rebuild it to get one)", path=str(metadata.path)
            )
        index = cls(metadata, info, int(manifest["count"]))
        try:  # one tiny read: proves FTS5 is compiled in and the table is there, loads nothing
            metadata.fetch(f"SELECT rowid FROM {index.table} LIMIT 0")
        except IndexLoadError as exc:
            if "no such module" in str(exc):
                raise LexicalUnavailable(
                    f"this Python's sqlite3 (SQLite {sqlite3.sqlite_version}) has no "
                    "FTS5; keyword and hybrid search are off",
                    path=str(metadata.path),
                ) from None
            raise LexicalUnavailable(f"keyword index unreadable ({exc.reason})", path=str(metadata.path)) from None
        return index

    def search(
        self, text: str, *, limit: int, mask: np.ndarray | None = None, min_score: float | None = None
    ) -> list[KeywordHit]:
        """The best ``limit`` keyword matches (BM25 desc, ties by row), only rows where ``mask``
        is true and the score is at least ``min_score``."""
        match = self.match_for(text)
        if match is None or limit < 1:
            return []
        hits: list[KeywordHit] = []

        def take(chunk: list[tuple]) -> bool:
            for row, score in chunk:
                if min_score is not None and score < min_score:
                    return True  # sorted by score: nothing later can pass
                if mask is None or mask[row]:
                    hits.append(KeywordHit(int(row), float(score)))
                    if len(hits) >= limit:
                        return True
            return False

        if mask is None:
            self.metadata.scan(self._sql_top, (match, limit), take, batch=limit)
        else:  # filtered: read down the ranking only until enough rows pass
            self.metadata.scan(self._sql, (match,), take, batch=max(SCAN_BATCH, limit))
        return hits

    def match_for(self, text: str) -> str | None:
        """The FTS5 MATCH string for a query, or None when no word is worth sending.

        Uncommon words (at most MAX_MATCH_TOKENS) decide which items match.  With
        ``anchor_common`` the common words (but not the very common, see ANCHOR_MAX_FRACTION)
        still add to the BM25 of those items, at the cost of seeking through their posting
        lists:  (rare ...) AND (common ... rare ...)
        matches exactly the items holding a rare word, and BM25 sums over every phrase (the
        rare words, listed twice, count double).  A query of common words only gives None."""
        tokens = query_tokens(text)
        if not tokens:
            return None
        marks = ",".join("?" * len(tokens))
        folded = [fold_diacritics(t) for t in tokens]
        common = dict(
            self.metadata.fetch(f"SELECT term, docs FROM {self.common_table} WHERE term IN ({marks})", tuple(folded))
        )
        rare = [t for t, f in zip(tokens, folded) if f not in common][:MAX_MATCH_TOKENS]
        if not rare:
            return None
        frequent = [t for t, f in zip(tokens, folded) if f in common and common[f] <= self.anchor_max_docs]
        if self.anchor_common and frequent:
            return f"({match_expression(rare)}) AND ({match_expression(frequent[:MAX_MATCH_TOKENS] + rare)})"
        return match_expression(rare)

    def exact_matches(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """Rows named by the query, in three tiers: the id as typed (ignoring case), the id as a
        name (see name_key: "gimp data" names gimp-data), the title as a name.  At most
        MAX_EXACT_ROWS in all."""
        key = name_key(text)
        if not key:
            return [], [], []
        typed = text.strip().casefold()
        found = self.metadata.fetch(
            f"SELECT n.row, i.id, i.title FROM {self.names_table} AS n JOIN items AS i ON i.row = n.row "
            f"WHERE n.hash = ? ORDER BY n.row LIMIT ?",
            (name_hash(key), MAX_EXACT_ROWS * 2),
        )
        tiers: tuple[list[int], list[int], list[int]] = ([], [], [])
        for row, item_id, title in found:
            if item_id.casefold() == typed:
                tiers[0].append(row)
            elif name_key(item_id) == key:
                tiers[1].append(row)
            elif name_key(title) == key:
                tiers[2].append(row)
        room = MAX_EXACT_ROWS
        for tier in tiers:
            del tier[room:]
            room -= len(tier)
        return tiers


_opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_opened_lock = threading.Lock()


def lexical_for(index) -> LexicalIndex:
    """The keyword side of an opened SearchIndex, opened once per index object (an index swapped
    in by a refresh gets its own); raises LexicalUnavailable with the reason, also cached."""
    with _opened_lock:
        found = _opened.get(index)
        if found is None:
            try:
                found = LexicalIndex.open(index.metadata, index.manifest)
            except LexicalUnavailable as exc:
                found = (exc.reason, exc.path)
            _opened[index] = found
    if isinstance(found, tuple):  # a fresh exception each time: a cached one would pile up tracebacks
        raise LexicalUnavailable(found[0], path=found[1])
    return found
