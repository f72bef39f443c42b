"""Title vectors: each row's title embedded on its own, a second view for hybrid's cosine.

A document's vector mixes its title with a long description, so a short query that says what
the title says ("partition editor", "drum machine") can sit far from it.  Hybrid search scores
every candidate of a keyword-style query (hybrid.keyword_style) by the better of its document
and its title cosine (max-sim over the two), so the title counts where it matches best
(searcher.py); sentences and semantic mode keep the document cosine alone.  Built by default
(``build --no-title-vectors`` leaves them out), for titles that say more than the id: used for
every query they lowered descriptive needs on held-out data; for keyword-style queries only they
lifted every Debian set, see docs/decisions/2026-12-01-title-vectors.md.

    title-int8.npy     (count, dimension) int8, one row per item (zeros where there is no title)
    title-scales.npy   (count,) float32: vector = int8 row x scale; 0 marks "no title"
    title-hashes.npy   (count, 32) uint8: sha256 of each embedded title, for incremental builds

Stored int8 whatever the index dtype: a title only re-ranks candidates, and int8 per row keeps
its cosine within ~0.005.  Reused row by row from an earlier compatible build as the document
vectors are (reuse.py), so incremental builds, shards and merges stay byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from search.fileutil import new_memmap
from search.index.format import TITLE_HASHES_NAME, TITLE_SCALES_NAME, TITLE_VECTORS_NAME
from search.index.metadata import MetadataWriter
from search.index.names import name_key
from search.index.records import HASH_BYTES, HashColumn, match_rows, text_hash
from search.index.workers import embed_stream
from search.progress import Progress

NO_TITLE = bytes(HASH_BYTES)  # the hash column's entry for a row without a title
PLAUSIBLE_COSINE = 1.05  # int8 rounding moves a cosine by ~0.005; past this the row is damaged


def embeddable_titles(writer: MetadataWriter) -> Iterator[str]:
    """Each row's title as it is embedded, in row order; "" for no title vector: an empty title, or
    one that only repeats the id ("express" for express, "json.dumps" for json.dumps), which the
    exact-name match already ranks and which says nothing of what the item does."""
    for item_id, title in writer.iter_names():
        title = (title or "").strip()
        yield "" if not title or name_key(title) == name_key(item_id) else title


def title_hashes(writer: MetadataWriter, prefix: str) -> HashColumn:
    """Each row's title hash in row order (NO_TITLE where embeddable_titles gives "")."""
    column = HashColumn()
    for title in embeddable_titles(writer):
        column.add(text_hash(prefix + title) if title else NO_TITLE)
    return column


def write_title_vectors(tmp: Path, encoder, writer: MetadataWriter, options) -> dict | None:
    """The three title files for the rows in ``writer`` (reused where the reuse source has the same
    title hash, else embedded); None, and no files, when no row has a title."""
    from search.scoring.quantize import quantize_int8

    prefix = getattr(encoder.bundle, "document_prefix", "")
    column = title_hashes(writer, prefix).array()
    count = len(column)
    present = ~np.all(column == 0, axis=1)
    if not present.any():
        return None
    dim = encoder.dimension
    np.save(tmp / TITLE_HASHES_NAME, column)
    target = new_memmap(tmp / TITLE_VECTORS_NAME, dtype=np.int8, shape=(count, dim))
    scales = new_memmap(tmp / TITLE_SCALES_NAME, dtype=np.float32, shape=(count,))
    scales[:] = 0.0
    reuse = options.reuse if options.reuse is not None and options.reuse.titles is not None else None
    have = np.zeros(count, dtype=bool)
    if reuse is not None:
        old_hashes, old_vectors, old_scales = reuse.titles
        old = match_rows(np.asarray(old_hashes), column)
        have = (old >= 0) & present
        rows = np.flatnonzero(have)
        order = np.argsort(old[rows], kind="stable")  # read the source in file order
        target[rows[order]] = old_vectors[old[rows][order]]
        scales[rows[order]] = old_scales[old[rows][order]]
    todo = present & ~have
    need = int(todo.sum())
    progress = Progress("embedding titles", need, unit="titles", enabled=options.show_progress and need > 0)
    titles = (title for row, title in enumerate(embeddable_titles(writer)) if todo[row])
    vectors = embed_stream(encoder, titles, workers=options.workers, expected=need)
    for row, vector in zip(np.flatnonzero(todo), vectors, strict=False):
        target[row], scales[row] = quantize_int8(vector)
        progress.update()
    progress.close()
    for arr in (target, scales):
        arr.flush()
    del target, scales
    return {"titles_reused": int(have.sum()), "titles_embedded": need}


def title_cosines(vectors: np.ndarray, scales: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosines of the listed rows' titles with the query; -inf where a row has no title (or a
    damaged one: a non-finite or impossible cosine is never let through)."""
    from search.scoring.kernels import rowwise_dot

    scale = np.asarray(scales[rows], dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out = rowwise_dot(vectors[rows], query) * scale
        usable = (scale > 0) & np.isfinite(out) & (np.abs(out) <= PLAUSIBLE_COSINE)
    return np.where(usable, out, -np.inf).astype(np.float32)
