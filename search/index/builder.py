"""corpus -> index folder.  Written in a temporary sibling folder and renamed into place
only when complete, so a failed or killed build never leaves a half index where readers look.

Two passes keep memory flat on large corpora: records go to SQLite first (validated,
line numbers on errors), then texts stream back out in row order to the encoder,
whose vectors land in a preallocated ``.npy`` memory map.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from search.errors import CorpusError, IndexBuildError
from search.fileutil import describe_files, new_memmap, write_json_atomic
from search.index import publish
from search.index.corpus import CorpusSpec, ReadStats, is_s3, read_corpus
from search.index.format import (
    DTYPES,
    EMBEDDINGS_NAME,
    FIELD_NAME_RE,
    HASHES_NAME,
    INDEX_FORMAT,
    MANIFEST_NAME,
    METADATA_NAME,
    PREFILTER_FILES,
    PREFILTER_NAME,
    PREFILTER_RESIDUALS_NAME,
    PREFILTER_SCALES_NAME,
    RESERVED_FIELD_NAMES,
    SCALES_NAME,
    SCAN_FILES,
    SCAN_NAME,
    SCAN_RESIDUALS_NAME,
    SCAN_SCALES_NAME,
    TITLE_FILES,
    TITLE_VECTORS_NAME,
    field_file,
)
from search.index.keyword import write_lexical_index
from search.index.lines import MAX_RECORD_BYTES
from search.index.metadata import MetadataWriter
from search.index.records import HashColumn, text_hash
from search.index.reuse import write_vectors
from search.index.titles import write_title_vectors
from search.progress import Progress
from search.scoring.quantize import quantize_int4_rows, quantize_int8_rows, residual_norms

INSERT_BATCH = 1000


class VectorSource(Protocol):
    """What the builder needs from an encoder: the real ``Encoder``, or precomputed vectors in row
    order (tests/vectors.py, bench/hybrid_quality.py), so their index files come from this code."""

    @property
    def dimension(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def bundle(self) -> Any: ...  # source_model, quantization (and document_prefix, path for Encoder)

    def embed_stream(
        self, texts: Iterable[str], *, workers: int = 1, kind: str = "document"
    ) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class BuildOptions:
    dtype: str = "float32"
    workers: int = 1  # single-text runs in flight at once
    skip_bad: bool = False
    show_progress: bool = True
    scan_copy: bool = True  # float32/float16: also write the int8 scan copy (see index.py)
    prefilter: bool = True  # any dtype: also write the int4 prefilter copy (see prefilter.py)
    reuse: object = None  # a reuse.Reuse (vectors of an earlier compatible build), or None
    force: bool = False  # may replace a damaged index or one of another format (never anything else)
    max_record_bytes: int = MAX_RECORD_BYTES  # a longer corpus line is a bad record (see lines.py)
    title_vectors: bool = True  # also embed each title alone (titles.py; hybrid's max-sim for terse queries)


def check_field_names(fields) -> None:
    """Names a field may have: a file name part (``field-<name>.npy``), and not a search parameter."""
    for name in fields:
        if not FIELD_NAME_RE.match(name):
            raise IndexBuildError(f"field name {name!r} is not allowed (letters, digits, _ . -)")
        if name in RESERVED_FIELD_NAMES:
            names = ", ".join(sorted(RESERVED_FIELD_NAMES))
            raise IndexBuildError(
                f"field name {name!r} is one of GET /search's own parameters ({names}), so it could not be "
                "filtered on; rename it in the corpus"
            )


def build_index(
    corpus: str | Path, encoder: VectorSource, out: str | Path, spec: CorpusSpec, options: BuildOptions = BuildOptions()
) -> dict:
    """Build and publish the index at ``out``; returns its manifest."""
    if options.dtype not in DTYPES:
        raise IndexBuildError(f"dtype {options.dtype!r} is not one of {', '.join(DTYPES)}")
    check_field_names(spec.fields)
    out = Path(out)
    publish.check_target(out, corpus=corpus, force=options.force)  # refuse before any work (see publish.py)
    tmp = publish.make_temp(out)
    with publish.cleaned_up(tmp, out):  # on failure only the folder this build made is removed
        manifest = _build_into(corpus if is_s3(corpus) else Path(corpus), encoder, tmp, spec, options)
        publish.publish(tmp, out, corpus=corpus, force=options.force)
    return manifest


def _build_into(corpus: Path | str, encoder: VectorSource, tmp: Path, spec: CorpusSpec, options: BuildOptions) -> dict:
    started = time.monotonic()
    stats = ReadStats()
    digest = hashlib.sha256()
    writer = MetadataWriter(tmp / METADATA_NAME)
    hashes = ingest(
        read_corpus(
            corpus,
            spec,
            skip_bad=options.skip_bad,
            max_record_bytes=options.max_record_bytes,
            stats=stats,
            digest=digest,
        ),
        writer,
        encoder,
        spec,
        options,
        key=lambda row, record: row,
    )
    count = len(hashes)
    if count == 0:
        raise CorpusError("no usable records", path=str(corpus))
    build = write_vectors(tmp, encoder, writer, spec, hashes, options)
    build.update(write_titles(tmp, encoder, writer, options))
    model = model_info(encoder)
    corpus_info = {
        "file": corpus_name(corpus),
        "sha256": digest.hexdigest(),
        "records": count,
        "skipped": stats.skipped,
        "first_errors": stats.first_errors,
    }
    return finish_index(tmp, writer, count, encoder.dimension, model, spec, options, corpus_info, build, started)


def ingest(records, writer: MetadataWriter, encoder: VectorSource, spec: CorpusSpec, options: BuildOptions, key):
    """Records -> metadata rows (``key(n, record)`` is the stored row number) and their text hashes."""
    progress = Progress("reading", unit="records", enabled=options.show_progress)
    prefix = getattr(encoder.bundle, "document_prefix", "")  # what Encoder.embed puts before a document
    hashes = HashColumn()
    batch: list = []
    for n, record in enumerate(records):
        batch.append((key(n, record), record.id, record.title, record.text, record.fields))
        hashes.add(text_hash(prefix + spec.document_text(record.title, record.text)))
        if len(batch) >= INSERT_BATCH:
            writer.add_items(batch)
            progress.update(len(batch))
            batch = []
    writer.add_items(batch)
    progress.update(len(batch))
    progress.close()
    return hashes


def write_titles(tmp: Path, encoder: VectorSource, writer: MetadataWriter, options: BuildOptions) -> dict:
    """The title vectors (titles.py) unless turned off; the build record's title counts."""
    if not options.title_vectors:
        return {}
    return write_title_vectors(tmp, encoder, writer, options) or {}


def model_info(encoder: VectorSource) -> dict:
    return {
        "fingerprint": encoder.fingerprint,
        "source_model": encoder.bundle.source_model,
        "quantization": encoder.bundle.quantization,
        "session": getattr(encoder, "session_settings", None),
    }


def corpus_name(corpus: Path | str) -> str:
    return str(corpus).rstrip("/").rsplit("/", 1)[-1]


def finish_index(
    tmp: Path,
    writer: MetadataWriter,
    count: int,
    dimension: int,
    model: dict,
    spec: CorpusSpec,
    options: BuildOptions,
    corpus_info: dict,
    build: dict,
    started: float,
) -> dict:
    """Everything after the vectors, shared by a build and a merge (so both give the same bytes):
    scan and prefilter copies, field codes, keyword index, manifest."""
    scan = options.scan_copy and options.dtype != "int8"
    if scan:
        _write_scan_copy(tmp, count)
    prefilter = options.prefilter and dimension % 2 == 0
    if prefilter:
        _write_prefilter(tmp, count, options.dtype)
    empty = [name for name in spec.fields if _write_field(tmp, writer, name, count) == 0]
    if empty:  # most likely a misspelt --fields name: the summary line says so
        build["fields_without_values"] = empty
    lexical = write_lexical_index(writer.conn)  # keyword index inside metadata.sqlite: its sha256 covers it
    writer.close()

    names = sorted(p.name for p in tmp.iterdir())
    files = describe_files(tmp, names)
    version = hashlib.sha256("".join(files[n]["sha256"] for n in names).encode()).hexdigest()[:16]
    manifest = {
        "format": INDEX_FORMAT,
        "version": version,
        "count": count,
        "dimension": dimension,
        "dtype": options.dtype,
        "model": model,
        "fields": list(spec.fields),
        "lexical": lexical,
        "scan": {"dtype": "int8", "files": list(SCAN_FILES)} if scan else None,
        "prefilter": {"dtype": "int4", "files": list(PREFILTER_FILES)} if prefilter else None,
        "text_hashes": HASHES_NAME,
        "titles": {"dtype": "int8", "files": list(TITLE_FILES)} if (tmp / TITLE_VECTORS_NAME).is_file() else None,
        "corpus": corpus_info,
        "spec": asdict(spec),
        "files": files,
        "build": build,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return manifest


SCAN_BLOCK_ROWS = 65536


def _write_scan_copy(tmp: Path, count: int) -> None:
    """int8 rows + scales of the stored vectors, and how far each stored vector is from its int8
    form (L2 norm of the difference, rounded up): the search's error bound needs it."""
    stored = np.load(tmp / EMBEDDINGS_NAME, mmap_mode="r")
    dim = stored.shape[1]
    scan = new_memmap(tmp / SCAN_NAME, dtype=np.int8, shape=(count, dim))
    scales = new_memmap(tmp / SCAN_SCALES_NAME, dtype=np.float32, shape=(count,))
    residuals = new_memmap(tmp / SCAN_RESIDUALS_NAME, dtype=np.float32, shape=(count,))
    for start in range(0, count, SCAN_BLOCK_ROWS):
        block = np.asarray(stored[start : start + SCAN_BLOCK_ROWS], dtype=np.float32)
        rows, row_scales = quantize_int8_rows(block)
        stop = start + len(block)
        scan[start:stop], scales[start:stop] = rows, row_scales
        residuals[start:stop] = residual_norms(block, rows, row_scales)
    for arr in (scan, scales, residuals):
        arr.flush()
    del stored, scan, scales, residuals


def _write_prefilter(tmp: Path, count: int, dtype: str) -> None:
    """The int4 copy of what the index stores (int8 rows times their scales), see prefilter.py."""
    stored = np.load(tmp / EMBEDDINGS_NAME, mmap_mode="r")
    row_scales = np.load(tmp / SCALES_NAME, mmap_mode="r") if dtype == "int8" else None
    dim = stored.shape[1]
    packed = new_memmap(tmp / PREFILTER_NAME, dtype=np.uint8, shape=(count, dim // 2))
    scales = new_memmap(tmp / PREFILTER_SCALES_NAME, dtype=np.float32, shape=(count,))
    residuals = new_memmap(tmp / PREFILTER_RESIDUALS_NAME, dtype=np.float32, shape=(count,))
    for start in range(0, count, SCAN_BLOCK_ROWS):
        block = np.asarray(stored[start : start + SCAN_BLOCK_ROWS], dtype=np.float32)
        if row_scales is not None:
            block = block * np.asarray(row_scales[start : start + len(block)], dtype=np.float32)[:, None]
        stop = start + len(block)
        packed[start:stop], scales[start:stop], residuals[start:stop] = quantize_int4_rows(block)
    for arr in (packed, scales, residuals):
        arr.flush()
    del stored, row_scales, packed, scales, residuals


def _write_field(tmp: Path, writer: MetadataWriter, name: str, count: int) -> int:
    """The field's codes and values; returns how many records have a value for it."""
    column = list(writer.field_column(name))
    counts = Counter(column)
    codes_of = {value: code for code, value in enumerate(sorted(counts))}
    writer.add_field_values(name, [(code, value, counts[value]) for value, code in codes_of.items()])
    codes = new_memmap(tmp / field_file(name), dtype=np.int32, shape=(count,))
    codes[:] = np.fromiter((codes_of[v] for v in column), dtype=np.int32, count=count)
    codes.flush()
    del codes
    return count - counts[""]
