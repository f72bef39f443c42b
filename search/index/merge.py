"""``search merge``: shard folders -> one index, byte-identical to a single build of the corpus.

Rows come back in corpus order (each shard's records carry their line; a k-way merge by line),
their vectors and text hashes are copied block by block, and the rest (scan and prefilter
copies, field codes, keyword index, manifest) is written by the same code as a single build
(builder.finish_index).  Shards must be all N shards of one corpus (same sha256), spec, model,
session settings and dtype; a duplicate id across shards is an error, as in a single build.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from search.errors import IndexBuildError
from search.fileutil import new_memmap, read_json
from search.index import publish
from search.index.builder import INSERT_BATCH, BuildOptions, check_field_names, finish_index
from search.index.corpus import CorpusSpec
from search.index.format import (
    DTYPES,
    EMBEDDINGS_NAME,
    HASHES_NAME,
    MANIFEST_NAME,
    METADATA_NAME,
    RECORDS_NAME,
    SCALES_NAME,
    TITLE_FILES,
    TITLE_HASHES_NAME,
    TITLE_SCALES_NAME,
    TITLE_VECTORS_NAME,
)
from search.index.metadata import MetadataWriter
from search.index.records import HASH_BYTES
from search.index.reuse import damaged_file
from search.index.shards import SHARD_FORMAT, check_no_records
from search.progress import Progress

COPY_BLOCK_ROWS = 65536
MAX_ERRORS = 5


def load_shards(folders: list[Path]) -> list[tuple[Path, dict]]:
    """(folder, manifest) sorted by shard index, after checking they belong together."""
    found = []
    for folder in folders:
        path = Path(folder) / MANIFEST_NAME
        try:
            manifest = read_json(path)
        except (OSError, ValueError) as exc:
            raise IndexBuildError(f"{folder}: not a shard folder ({MANIFEST_NAME}: {exc})") from None
        if manifest.get("format") != SHARD_FORMAT:
            raise IndexBuildError(f"{folder}: not a shard folder (format {manifest.get('format')!r})")
        check_shard(Path(folder), manifest)
        found.append((Path(folder), manifest))
    if not found:
        raise IndexBuildError("merge needs at least one shard folder")
    first = found[0][1]
    total = int(first["shard"]["count"])
    same = ("dtype", "dimension", "model", "spec")
    for folder, m in found[1:]:
        for key in same:
            if m.get(key) != first.get(key):
                raise IndexBuildError(f"{folder}: its {key} differs from {found[0][0]}'s; build every shard alike")
        for key in ("skip_bad", "max_record_bytes", "title_vectors"):
            if m["build"].get(key) != first["build"].get(key):
                raise IndexBuildError(f"{folder}: built with another {key} than {found[0][0]}; build every shard alike")
        if m["corpus"]["sha256"] != first["corpus"]["sha256"]:
            raise IndexBuildError(f"{folder}: built from another corpus (sha256 differs from {found[0][0]}'s)")
        if int(m["shard"]["count"]) != total:
            raise IndexBuildError(f"{folder}: shard of {m['shard']['count']}, {found[0][0]} of {total}")
    indexes = sorted(int(m["shard"]["index"]) for _, m in found)
    if indexes != list(range(total)):
        dup = sorted({i for i in indexes if indexes.count(i) > 1})
        missing = sorted(set(range(total)) - set(indexes))
        what = f"shard {dup[0]}/{total} given twice" if dup else f"shard {missing[0]}/{total} missing"
        raise IndexBuildError(f"merge needs each of the {total} shards once: {what}")
    return sorted(found, key=lambda fm: int(fm[1]["shard"]["index"]))


def check_shard(folder: Path, manifest: dict) -> None:
    """The keys merge reads, and every file the manifest lists present with its size and sha256:
    merged bytes are copied as they are into an index whose manifest then vouches for them, so a
    damaged shard must fail the merge (naming the shard and the file), not be merged."""

    def bad(problem: str) -> IndexBuildError:
        return IndexBuildError(f"{folder}: {problem}; rebuild the shard")

    def whole(value, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    shard, corpus, files = manifest.get("shard"), manifest.get("corpus"), manifest.get("files")
    if not (isinstance(shard, dict) and whole(shard.get("count"), 1) and whole(shard.get("index"), 0)):
        raise bad("its manifest key shard must be {index, count} (whole numbers)")
    for key in ("count", "dimension"):
        if not whole(manifest.get(key), 0 if key == "count" else 1):
            raise bad(f"its manifest key {key} must be a whole number")
    if manifest.get("dtype") not in DTYPES:
        raise bad(f"its manifest key dtype must be one of {', '.join(DTYPES)}")
    if not (isinstance(corpus, dict) and isinstance(corpus.get("sha256"), str)):
        raise bad("its manifest key corpus must be an object with the corpus sha256")
    for key in ("build", "spec", "model"):
        if not isinstance(manifest.get(key), dict):
            raise bad(f"its manifest key {key} must be an object")
    if not isinstance(files, dict):
        raise bad("its manifest key files must be an object")
    needed = [RECORDS_NAME, HASHES_NAME, EMBEDDINGS_NAME] + ([SCALES_NAME] if manifest["dtype"] == "int8" else [])
    problem = damaged_file(folder, manifest, needed + sorted(set(files) - set(needed)))
    if problem:
        raise bad(problem)


def merge_shards(folders: list[Path], out: str | Path, options: BuildOptions = BuildOptions()) -> dict:
    """Merge local shard folders into the index at ``out`` (published like a build); returns its manifest."""
    shards = load_shards(folders)
    check_no_records([m for _, m in shards], str(folders[0]))
    first = shards[0][1]
    spec_dict = dict(first["spec"], fields=tuple(first["spec"].get("fields", ())))
    spec = CorpusSpec(**spec_dict)
    check_field_names(spec.fields)  # shards written before shard builds checked them
    options = dataclasses.replace(options, dtype=first["dtype"])
    publish.check_target(out, force=options.force)
    tmp = publish.make_temp(out)
    with publish.cleaned_up(tmp, out):
        manifest = _merge_into(shards, tmp, spec, options)
        publish.publish(tmp, out, force=options.force)
    return manifest


def _rows(folder: Path, shard: int):
    """(line, shard, local row, id, title, text, fields) of one shard in line order."""
    uri = f"{(folder / RECORDS_NAME).resolve().as_uri()}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        cursor = conn.execute("SELECT row, id, title, text, fields FROM items ORDER BY row")
        local = 0
        while chunk := cursor.fetchmany(1024):
            for line, item_id, title, text, fields in chunk:
                yield line, shard, local, item_id, title, text, fields
                local += 1
    finally:
        conn.close()


def _merge_into(shards: list[tuple[Path, dict]], tmp: Path, spec: CorpusSpec, options: BuildOptions) -> dict:
    started = time.monotonic()
    first = shards[0][1]
    count = sum(int(m["count"]) for _, m in shards)
    dim = int(first["dimension"])
    writer = MetadataWriter(tmp / METADATA_NAME)
    owner = np.empty(count, dtype=np.int32)  # which shard each row comes from (in order within a shard)
    progress = Progress("merging", count, unit="records", enabled=options.show_progress)
    batch: list = []
    row = 0
    streams = [_rows(folder, s) for s, (folder, _m) in enumerate(shards)]
    for _line, shard, _local, item_id, title, text, fields in heapq.merge(*streams, key=lambda r: r[0]):
        batch.append((row, item_id, title, text, json.loads(fields)))
        owner[row] = shard
        row += 1
        if len(batch) >= INSERT_BATCH:
            _insert(writer, batch, shards)
            progress.update(len(batch))
            batch = []
    _insert(writer, batch, shards)
    progress.update(len(batch))
    progress.close()
    if row != count:
        raise IndexBuildError(f"the shards' records ({row}) differ from their manifests' counts ({count})")

    hashes = new_memmap(tmp / HASHES_NAME, dtype=np.uint8, shape=(count, HASH_BYTES))
    target = new_memmap(tmp / EMBEDDINGS_NAME, dtype=options.dtype, shape=(count, dim))
    int8 = options.dtype == "int8"
    scales = new_memmap(tmp / SCALES_NAME, dtype=np.float32, shape=(count,)) if int8 else None
    for s, (folder, m) in enumerate(shards):
        if int(m["count"]) == 0:
            continue
        rows = np.flatnonzero(owner == s)
        src_hashes = np.load(folder / HASHES_NAME, mmap_mode="r")
        src = np.load(folder / EMBEDDINGS_NAME, mmap_mode="r")
        src_scales = np.load(folder / SCALES_NAME, mmap_mode="r") if int8 else None
        if len(src) != len(rows) or len(src_hashes) != len(rows) or src.shape[1] != dim:
            raise IndexBuildError(f"{folder}: its vectors do not match its records; rebuild the shard")
        for start in range(0, len(rows), COPY_BLOCK_ROWS):
            part = rows[start : start + COPY_BLOCK_ROWS]
            target[part] = src[start : start + len(part)]
            hashes[part] = src_hashes[start : start + len(part)]
            if scales is not None and src_scales is not None:
                scales[part] = src_scales[start : start + len(part)]
        del src, src_hashes, src_scales
    for arr in (hashes, target, scales):
        if arr is not None:
            arr.flush()
    del hashes, target, scales
    titles = _merge_titles(shards, owner, tmp, count, dim)

    errors = sorted(
        (e for _, m in shards for e in m["corpus"].get("first_errors", [])),
        key=lambda e: int(e.split(":", 1)[0].split()[-1]) if e.startswith("line ") else 0,
    )
    corpus_info = {
        "file": first["corpus"]["file"],
        "sha256": first["corpus"]["sha256"],
        "records": count,
        "skipped": sum(int(m["corpus"].get("skipped", 0)) for _, m in shards),
        "first_errors": errors[:MAX_ERRORS],
    }
    build = {
        "reused": sum(int(m["build"]["reused"]) for _, m in shards),
        "embedded": sum(int(m["build"]["embedded"]) for _, m in shards),
        "shards": len(shards),
    }
    if titles:
        for key in ("titles_reused", "titles_embedded"):
            build[key] = sum(int(m["build"].get(key, 0)) for _, m in shards)
    return finish_index(tmp, writer, count, dim, first["model"], spec, options, corpus_info, build, started)


def _merge_titles(shards: list[tuple[Path, dict]], owner: np.ndarray, tmp: Path, count: int, dim: int) -> bool:
    """The title files (titles.py) in row order, if any shard has them: a shard without them had no
    titled row, and its rows stay zero with scale 0, as a single build writes them."""
    having = [s for s, (_f, m) in enumerate(shards) if all(n in m.get("files", {}) for n in TITLE_FILES)]
    if not having:
        return False
    hashes = new_memmap(tmp / TITLE_HASHES_NAME, dtype=np.uint8, shape=(count, HASH_BYTES))
    target = new_memmap(tmp / TITLE_VECTORS_NAME, dtype=np.int8, shape=(count, dim))
    scales = new_memmap(tmp / TITLE_SCALES_NAME, dtype=np.float32, shape=(count,))
    scales[:] = 0.0
    for s in having:
        folder = shards[s][0]
        rows = np.flatnonzero(owner == s)
        parts = [np.load(folder / n, mmap_mode="r") for n in (TITLE_HASHES_NAME, TITLE_VECTORS_NAME, TITLE_SCALES_NAME)]
        if any(len(p) != len(rows) for p in parts):
            raise IndexBuildError(f"{folder}: its title vectors do not match its records; rebuild the shard")
        for start in range(0, len(rows), COPY_BLOCK_ROWS):
            part = rows[start : start + COPY_BLOCK_ROWS]
            for dst, src in zip((hashes, target, scales), parts, strict=True):
                dst[part] = src[start : start + len(part)]
        del parts
    for arr in (hashes, target, scales):
        arr.flush()
    del hashes, target, scales
    return True


def _insert(writer: MetadataWriter, batch: list, shards) -> None:
    try:
        writer.add_items(batch)
    except sqlite3.IntegrityError:
        for row, item_id, *_ in batch:
            found = writer.conn.execute("SELECT row FROM items WHERE id = ?", (item_id,)).fetchone()
            if found is not None and found[0] != row:
                raise IndexBuildError(
                    f"duplicate id {item_id!r} in more than one shard (rows {found[0]} and {row}); "
                    "were the shards built from the same corpus?"
                ) from None
        raise IndexBuildError("duplicate id across shards") from None
