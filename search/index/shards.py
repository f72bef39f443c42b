"""One shard of a build: the records of shard I of N (records.shard_of) and their vectors.

    shard folder/
      manifest.json      format search-shard/1, shard I of N, corpus sha256, spec, model, dtype, files
      records.sqlite     the shard's records (the metadata schema; ``row`` is the corpus line)
      text-hashes.npy    (count, 32) uint8, sha256 of each embedded text, in line order
      embeddings.npy     (count, dimension) stored vectors, in line order (+ scales.npy for int8)
      title-*.npy        the title vectors, scales and hashes, in line order (titles.py; optional)

``search merge`` puts shards back in corpus order (by line) and finishes the index exactly as a
single build does (builder.finish_index), so the result is byte-identical to one.  Every shard
reads the whole corpus (to find its records and the file's sha256); only its own records are
embedded.  A shard folder is also a reuse source for the next build of the same shard.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from search.errors import CorpusError, IndexBuildError
from search.fileutil import describe_files, read_json, write_json_atomic
from search.index import publish
from search.index.builder import BuildOptions, check_field_names, corpus_name, ingest, model_info, write_titles
from search.index.corpus import CorpusSpec, ReadStats, read_corpus
from search.index.format import DTYPES, MANIFEST_NAME, RECORDS_NAME
from search.index.metadata import MetadataWriter
from search.index.reuse import write_vectors

SHARD_FORMAT = "search-shard/1"


def build_shard(
    corpus: str | Path, encoder, out: str | Path, spec: CorpusSpec, options: BuildOptions, shard: tuple[int, int]
) -> dict:
    """Write shard ``shard = (I, N)`` of ``corpus`` to the folder ``out``; returns its manifest."""
    if options.dtype not in DTYPES:
        raise IndexBuildError(f"dtype {options.dtype!r} is not one of {', '.join(DTYPES)}")
    check_field_names(spec.fields)
    out = Path(out)
    check_shard_target(out)
    tmp = publish.make_temp(out)
    with publish.cleaned_up(tmp, out):
        manifest = _build_shard_into(corpus, encoder, tmp, spec, options, shard)
        own = check_shard_target(out)
        if out.exists():
            publish.swap(tmp, out, own)  # deletes only the replaced shard's own files
        else:
            os.rename(tmp, out)
    return manifest


def check_shard_target(out: Path) -> tuple[str, ...]:
    """A shard may replace nothing, an empty folder or an earlier shard folder holding only what its
    manifest lists; anything else is refused.  Returns the names the replaced shard owns."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise IndexBuildError(f"--out {out} is not a folder; give the shard its own folder")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if not entries:
        return ()
    try:
        manifest = read_json(out / MANIFEST_NAME)
    except (OSError, ValueError):
        manifest = {}
    files = manifest.get("files")
    if not str(manifest.get("format", "")).startswith("search-shard/") or not isinstance(files, dict):
        raise IndexBuildError(f"--out {out} holds something other than a shard; give the shard its own folder")
    own = set(files) | {MANIFEST_NAME}
    publish.refuse_strays(out, entries, own, "shard")
    return tuple(sorted(own & entries))


def _build_shard_into(corpus, encoder, tmp: Path, spec: CorpusSpec, options: BuildOptions, shard) -> dict:
    started = time.monotonic()
    index, count_of = shard
    stats = ReadStats()
    digest = hashlib.sha256()
    writer = MetadataWriter(tmp / RECORDS_NAME)
    records = read_corpus(
        corpus,
        spec,
        skip_bad=options.skip_bad,
        stats=stats,
        shard=shard,
        digest=digest,
        max_record_bytes=options.max_record_bytes,
    )
    hashes = ingest(records, writer, encoder, spec, options, key=lambda n, record: record.line)
    try:
        build = write_vectors(tmp, encoder, writer, spec, hashes, options)
        build.update(write_titles(tmp, encoder, writer, options))
    finally:
        writer.close()
    names = sorted(p.name for p in tmp.iterdir())
    files = describe_files(tmp, names)
    version = hashlib.sha256("".join(files[n]["sha256"] for n in names).encode()).hexdigest()[:16]
    manifest = {
        "format": SHARD_FORMAT,
        "version": version,
        "shard": {"index": index, "count": count_of},
        "count": len(hashes),
        "dimension": encoder.dimension,
        "dtype": options.dtype,
        "model": model_info(encoder),
        "spec": asdict(spec),
        "corpus": {
            "file": corpus_name(corpus),
            "sha256": digest.hexdigest(),
            "skipped": stats.skipped,
            "first_errors": stats.first_errors,
        },
        "files": files,
        "build": dict(
            build,
            skip_bad=options.skip_bad,
            max_record_bytes=options.max_record_bytes,
            title_vectors=options.title_vectors,
        ),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return manifest


def check_no_records(manifests: list[dict], where: str) -> None:
    if sum(int(m["count"]) for m in manifests) == 0:
        raise CorpusError("no usable records", path=where)
