"""The name table of the keyword index: "the query is this item's name" as one index probe.

``item_names`` (inside ``metadata.sqlite``, written by ``keyword.write_lexical_index``) maps a
signed 64-bit hash of each normalised id and title to rows; a lookup re-checks the real id and
title and sorts the rows into three tiers (the id as typed, the id as a name, the title as a
name), which hybrid fusion puts before everything else.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3

NAMES_TABLE = "item_names"
MAX_EXACT_ROWS = 50  # an exact title shared by many items ("transitional package") stays bounded

# A word, for names and for keyword queries (keyword.query_tokens): unicode61 splits on everything
# that is not a letter, a number or a private-use character; "_" is punctuation to it, so it splits there too.
WORD_RE = re.compile(r"[^\W_]+")


def name_key(text: str) -> str:
    """What counts as "the same name": the same words in the same order, ignoring case and the
    punctuation between them, so "GIMP", "gimp data" and "g++ 12" name gimp, gimp-data and g++-12."""
    return " ".join(WORD_RE.findall(text.casefold()))


def name_hash(key: str) -> int:
    """A signed 64-bit hash of a name key: the name table stores these (a third of the size of
    the keys themselves); lookups re-check the real id and title, so a collision costs nothing."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def write_names(conn: sqlite3.Connection, items_table: str = "items") -> int:
    """Create and fill the name table from ``items``; returns the number of items."""
    conn.executescript(f"""
        CREATE TABLE {NAMES_TABLE} (hash INTEGER NOT NULL, row INTEGER NOT NULL,
                                    PRIMARY KEY (hash, row)) WITHOUT ROWID;
    """)
    names = conn.execute(f"SELECT row, id, title FROM {items_table}").fetchall()
    keys = {
        (name_hash(name_key(text)), row) for row, item_id, title in names for text in (item_id, title) if text.strip()
    }
    conn.executemany(f"INSERT INTO {NAMES_TABLE} (hash, row) VALUES (?, ?)", sorted(keys))
    return len(names)


def exact_matches(metadata, names_table: str, text: str) -> tuple[list[int], list[int], list[int]]:
    """Rows named by the query, in three tiers: the id as typed (ignoring case unless some id
    matches case and all: "re.match" names re.match before re.Match), the id as a name (see
    name_key: "gimp data" names gimp-data), the title as a name.  At most MAX_EXACT_ROWS in all."""
    key = name_key(text)
    if not key:
        return [], [], []
    stripped = text.strip()
    typed = stripped.casefold()
    found = metadata.fetch(
        f"SELECT n.row, i.id, i.title FROM {names_table} AS n JOIN items AS i ON i.row = n.row "
        f"WHERE n.hash = ? ORDER BY n.row LIMIT ?",
        (name_hash(key), MAX_EXACT_ROWS * 2),
    )
    case_exact = any(item_id == stripped for _row, item_id, _title in found)
    tiers: tuple[list[int], list[int], list[int]] = ([], [], [])
    for row, item_id, title in found:
        if item_id == stripped or (not case_exact and item_id.casefold() == typed):
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
