"""Keyword search: an SQLite FTS5 index over id, title and text, inside ``metadata.sqlite``.

Written once at build time beside the items table (an external-content FTS5 table, so the
text is not stored twice) and read through the metadata store's read-only connection: a
query touches a few b-tree pages, nothing is loaded at open.  BM25 is FTS5's own.

Keyword format 2 (this module writes it): FTS5's ``porter`` stemmer over ``unicode61
remove_diacritics 2`` ("hash passwords" matches "password hashing"), column weights id 1,
title 1, text 2, and a ``term_docs`` table holding every stem's document count, so the
query planner knows how common each word is with one b-tree probe per word (fts5vocab walks
whole posting lists: 1.1 ms for five words on 64k items).  Format 1 indexes (no stemming)
still open for keyword mode; hybrid mode needs format 2 and says so.

User text never reaches FTS5 as syntax: it is cut into word tokens and every token is
written as a double-quoted string, so ``AND``, ``NEAR``, ``*``, ``:``, ``^``, parentheses
and quotes are plain words or separators.  A query with no word characters gives no
keyword results.

``item_names`` maps a hash of each normalised id and title to rows, so "the query is this
item's name" is one index probe instead of a scan (``names.py``).

``ranked()`` also returns the query's *ideal* BM25: what an item of average length holding
every scored word once in each column would get.  ``bm25 / ideal`` (capped at 1) is how much
of the query an item covers, weighted by how rare each word is; hybrid fusion uses it
instead of BM25 relative to the best match, which handed a full keyword score to a query's
best match even when that match was one word of a sentence.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import unicodedata
import weakref
from dataclasses import dataclass

import numpy as np

from search.errors import IndexBuildError, IndexLoadError
from search.index.names import MAX_EXACT_ROWS, NAMES_TABLE, exact_matches, name_hash, name_key, write_names  # noqa: F401 - imported from here too
from search.index.names import WORD_RE as _TOKEN_RE

ENGINE = "sqlite-fts5"
FORMAT = 2  # 1: unicode61 without stemming, weights 10/4/1, a common_terms table only
FTS_TABLE = "items_fts"
TERMS_TABLE = "term_docs"
COLUMNS = ("id", "title", "text")
# bm25 column weights (id, title, text).  Chosen on the tuning sets (eval/debian-tune.tsv,
# eval/npm-tune.tsv; docs/decisions/2026-12-01-hybrid-coverage-fusion.md): the old 10/4/1 let
# any item *named* after a query word win ("dataframe library" -> gspread-dataframe); with
# 1/1/2 the name still counts twice where id == title, and the description decides the rest.
WEIGHTS = (1.0, 1.0, 2.0)
TOKENIZER = "porter unicode61 remove_diacritics 2"
BM25_K1, BM25_B = 1.2, 0.75  # FTS5's constants (fts5_aux.c), for the ideal score
MAX_QUERY_TOKENS = 32  # longer queries keep their first 32 distinct words (bounded work)
# BM25 scores every item holding any query word, about 2 µs each here: "the" (54k of 64k items)
# costs 120 ms and ranks nothing.  Words in more than max(COMMON_MIN_DOCS, COMMON_FRACTION of the
# items) are "common": they do not decide which items match while rarer words are there.
COMMON_MIN_DOCS = 1000
COMMON_FRACTION = 0.01
# A query of common words only ("web framework") is still answered: its least common words
# decide, as long as the items they match stay within COMMON_BUDGET x common_docs.
COMMON_BUDGET = 8
ANCHOR_COMMON = True  # common words still add to the score of items matched by rarer ones
# ... except words in more than a fifth of the items ("the", "for", "package"): FTS5's BM25 gives
# them next to no weight, yet seeking through their posting lists doubled the keyword time.
ANCHOR_MAX_FRACTION = 0.2
MAX_MATCH_TOKENS = 8  # deciding words sent to FTS5 at most
SCAN_BATCH = 256  # keyword rows fetched per step while filtering


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


_stemmers = threading.local()


def stems(tokens: list[str]) -> list[str]:
    """Each token's stem as FTS5's porter tokenizer stores it (SQLite's own stemmer, so the query
    side can never disagree with the index): one insert into a per-thread in-memory FTS5 table,
    about 80 µs for a short query.  A token that yields no term keeps its folded form."""
    conn = getattr(_stemmers, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.executescript(
            f"CREATE VIRTUAL TABLE s USING fts5(x, tokenize='{TOKENIZER}');"
            "CREATE VIRTUAL TABLE v USING fts5vocab(s, 'instance');"
        )
        _stemmers.conn = conn
    with conn:
        conn.executemany("INSERT INTO s(rowid, x) VALUES (?, ?)", list(enumerate(tokens)))
        found = dict(conn.execute("SELECT doc, term FROM v ORDER BY doc, offset DESC"))
        conn.execute("DELETE FROM s")
    return [found.get(i, fold_diacritics(t)) for i, t in enumerate(tokens)]


def idf(docs: int, count: int) -> float:
    """FTS5's BM25 inverse document frequency (fts5_aux.c), floored as it does."""
    value = math.log((count - docs + 0.5) / (docs + 0.5))
    return value if value > 0 else 1e-6


def match_expression(tokens: list[str]) -> str:
    """An FTS5 MATCH string that can only mean "any of these words": each token is a quoted
    string (an embedded quote doubled), joined by OR.  BM25 ranks items with more and rarer
    words higher, so OR keeps recall for descriptive queries without losing precision."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in tokens)


# -- build ------------------------------------------------------------------------------------
def fts5_available(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.fts5_probe")
        return True
    except sqlite3.DatabaseError:  # "no such module: fts5" (or not allowed to create one)
        return False


def write_lexical_index(conn: sqlite3.Connection, items_table: str = "items") -> dict:
    """Create and fill the FTS5, name and term tables from ``items``; returns the manifest entry."""
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
    """)
    count = write_names(conn, items_table)
    common_docs = max(COMMON_MIN_DOCS, int(COMMON_FRACTION * count))
    conn.executescript(f"""
        CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, {FTS_TABLE}, 'row');
        CREATE TABLE {TERMS_TABLE} (term TEXT PRIMARY KEY, docs INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO {TERMS_TABLE} SELECT term, doc FROM temp.vocab ORDER BY term;
    """)
    (tokens,) = conn.execute("SELECT coalesce(sum(cnt), 0) FROM temp.vocab").fetchone()
    conn.execute("DROP TABLE temp.vocab")
    return {
        "engine": ENGINE,
        "format": FORMAT,
        "file": "metadata.sqlite",
        "table": FTS_TABLE,
        "names_table": NAMES_TABLE,
        "terms_table": TERMS_TABLE,
        "common_docs": common_docs,
        "avg_tokens": round(tokens / count, 6) if count else 0.0,  # BM25's avgdl: all columns
        "columns": list(COLUMNS),
        "weights": list(WEIGHTS),
        "tokenizer": TOKENIZER,
        "sqlite_version": sqlite3.sqlite_version,
    }


@dataclass(frozen=True)
class QueryPlan:
    """What FTS5 is asked: the MATCH string and, per phrase in it, the stem's document count."""

    match: str
    phrase_docs: tuple[int, ...]


# -- query ------------------------------------------------------------------------------------
class LexicalIndex:
    """Keyword queries over an opened index's metadata store (shares its connection and lock)."""

    anchor_common = ANCHOR_COMMON

    def __init__(self, metadata, info: dict, count: int):
        self.metadata = metadata
        self.count = count
        self.anchor_max_docs = int(ANCHOR_MAX_FRACTION * count)
        self.table = _identifier(info.get("table", FTS_TABLE), "table", metadata)
        self.names_table = _identifier(info.get("names_table", NAMES_TABLE), "names_table", metadata)
        self.terms_table = _identifier(info.get("terms_table", TERMS_TABLE), "terms_table", metadata)
        self.weights = _numbers(info.get("weights", WEIGHTS), "weights", len(COLUMNS), metadata)
        (self.common_docs,) = _numbers([info.get("common_docs", COMMON_MIN_DOCS)], "common_docs", 1, metadata)
        (self.avg_tokens,) = _numbers([info.get("avg_tokens", 1.0)], "avg_tokens", 1, metadata)
        marks = ", ".join(repr(w) for w in self.weights)
        self._sql = (
            f"SELECT rowid, -bm25({self.table}, {marks}) FROM {self.table} "
            f"WHERE {self.table} MATCH ? ORDER BY bm25({self.table}, {marks}), rowid"
        )
        self._sql_top = self._sql + " LIMIT ?"  # unfiltered: SQLite keeps a top-N heap, no full sort
        # a phrase matched once in every column of an item of average length (see ideal_score)
        freq = sum(self.weights)
        self._ideal_tf = freq * (BM25_K1 + 1) / (freq + BM25_K1)

    @classmethod
    def open(cls, metadata, manifest: dict) -> LexicalIndex:
        """Raise LexicalUnavailable (with the reason) when keyword search cannot work here."""
        info = manifest.get("lexical")
        if not isinstance(info, dict) or info.get("engine") != ENGINE:
            raise LexicalUnavailable(
                "index was built without a keyword index (rebuild it to get one)", path=str(metadata.path)
            )
        if info.get("format") != FORMAT:
            raise LexicalUnavailable(
                f"index has keyword format {info.get('format', 1)}, this version reads {FORMAT} (rebuild the index)",
                path=str(metadata.path),
            )
        index = cls(metadata, info, int(manifest["count"]))
        try:  # one tiny read: proves FTS5 is compiled in and the tables are there, loads nothing
            metadata.fetch(f"SELECT rowid FROM {index.table} LIMIT 0")
            metadata.fetch(f"SELECT term FROM {index.terms_table} LIMIT 0")
            metadata.fetch(f"SELECT row, hash FROM {index.names_table} LIMIT 0")  # exact name matches
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
        return self.ranked(text, limit=limit, mask=mask, min_score=min_score)[0]

    def ranked(
        self, text: str, *, limit: int, mask: np.ndarray | None = None, min_score: float | None = None
    ) -> tuple[list[KeywordHit], float]:
        """``search``'s hits and the query's ideal BM25 (see ideal_score; 1.0 without hits)."""
        plan = self.plan(text)
        if plan is None or limit < 1:
            return [], 1.0
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
            self.metadata.scan(self._sql_top, (plan.match, limit), take, batch=limit)
        else:  # filtered: read down the ranking only until enough rows pass
            self.metadata.scan(self._sql, (plan.match,), take, batch=max(SCAN_BATCH, limit))
        return hits, self.ideal_score(plan)

    def ideal_score(self, plan: QueryPlan) -> float:
        """The BM25 of an item of average length holding every phrase of the plan once in each
        column: FTS5's formula with freq = the sum of the column weights and |D| = avgdl."""
        return sum(idf(docs, self.count) for docs in plan.phrase_docs) * self._ideal_tf or 1.0

    def match_for(self, text: str) -> str | None:
        plan = self.plan(text)
        return None if plan is None else plan.match

    def plan(self, text: str) -> QueryPlan | None:
        """The FTS5 query for a search box text, or None when no word is worth sending.

        Words are grouped by stem.  Uncommon stems (at most MAX_MATCH_TOKENS) decide which items
        match; with none, the least common stems decide while the items they match stay within
        COMMON_BUDGET x common_docs (never words in more than a fifth of the items).  With ``anchor_common`` the other common stems (but not the
        very common, see ANCHOR_MAX_FRACTION) still add to the BM25 of those items:
            (deciding ...) AND (anchors ... deciding ...)
        matches exactly the items holding a deciding word, and BM25 sums over every phrase (the
        deciding words, listed twice, count double)."""
        tokens = query_tokens(text)
        if not tokens:
            return None
        by_stem: dict[str, str] = {}
        for token, stem in zip(tokens, stems(tokens), strict=True):
            by_stem.setdefault(stem, token)
        marks = ",".join("?" * len(by_stem))
        docs = dict(
            self.metadata.fetch(f"SELECT term, docs FROM {self.terms_table} WHERE term IN ({marks})", tuple(by_stem))
        )
        known = [s for s in by_stem if s in docs]  # a stem no item holds matches nothing
        if not known:
            return None
        deciding = [s for s in known if docs[s] <= self.common_docs][:MAX_MATCH_TOKENS]
        if not deciding:
            budget, spent = COMMON_BUDGET * self.common_docs, 0
            for stem in sorted(known, key=lambda s: (docs[s], s)):
                if docs[stem] > self.anchor_max_docs or spent + docs[stem] > budget:
                    break  # a word in a fifth of the items ranks nothing, and costs the most
                deciding.append(stem)
                spent += docs[stem]
            if not deciding:
                return None
        chosen = set(deciding)
        anchors = [s for s in known if s not in chosen and docs[s] <= self.anchor_max_docs][:MAX_MATCH_TOKENS]
        words = [by_stem[s] for s in deciding]
        if self.anchor_common and anchors:
            match = f"({match_expression(words)}) AND ({match_expression([by_stem[s] for s in anchors] + words)})"
            phrases = deciding + anchors + deciding
        else:
            match, phrases = match_expression(words), deciding
        return QueryPlan(match, tuple(int(docs[s]) for s in phrases))

    def exact_matches(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """Rows named by the query in three tiers (names.exact_matches)."""
        return exact_matches(self.metadata, self.names_table, text)


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


def _identifier(value, key: str, metadata) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise LexicalUnavailable(f"manifest key lexical.{key} is not a table name", path=str(metadata.path))
    return value


def _numbers(value, key: str, length: int, metadata) -> tuple[float, ...]:
    ok = isinstance(value, list | tuple) and len(value) == length
    numbers = tuple(float(v) for v in value) if ok and all(isinstance(v, int | float) for v in value) else ()
    if not numbers or not all(math.isfinite(v) and v >= 0 for v in numbers):
        raise LexicalUnavailable(
            f"manifest key lexical.{key} must be {length} finite number(s) >= 0", path=str(metadata.path)
        )
    return numbers
