"""Vectors of an earlier build, taken over row by row when the embedded text is the same.

A source is an index or a shard folder (local, or ``s3://`` — then only its text hashes and
stored vectors are downloaded) built with the same model fingerprint, session settings, dtype
and dimension.  Anything else is not reused, and ``reason`` says why in one line.  A reused row
gets the source's stored bytes (and int8 scale), which are what embedding its text again would
store, so an incremental build is byte-identical to a full one.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.errors import SearchError
from search.fileutil import new_memmap, read_json, sha256_file
from search.index.format import (
    EMBEDDINGS_NAME,
    HASHES_NAME,
    MANIFEST_NAME,
    SCALES_NAME,
    TITLE_FILES,
    TITLE_HASHES_NAME,
    TITLE_SCALES_NAME,
    TITLE_VECTORS_NAME,
)
from search.index.metadata import MetadataWriter
from search.index.records import HashColumn, match_rows
from search.index.workers import embed_stream
from search.progress import Progress

COPY_BLOCK_ROWS = 65536
FORMATS = ("search-index/", "search-shard/")


@dataclass
class Reuse:
    source: str
    hashes: np.ndarray | None = None  # (n, 32) uint8
    embeddings: np.ndarray | None = None
    scales: np.ndarray | None = None
    reason: str | None = None  # why nothing is reused (None = usable, or nothing there)
    cleanup: list[Path] = field(default_factory=list)
    titles: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # hashes, int8 rows, scales (titles.py)

    @property
    def usable(self) -> bool:
        return self.hashes is not None

    def close(self) -> None:
        self.hashes = self.embeddings = self.scales = self.titles = None
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def incompatibility(manifest: dict, *, model: dict, dtype: str, dimension: int) -> str | None:
    """Why vectors of the build described by ``manifest`` cannot be reused, or None."""
    fmt = str(manifest.get("format", ""))
    if not fmt.startswith(FORMATS):
        return f"it is not an index or shard folder (format {fmt!r})"
    if HASHES_NAME not in manifest.get("files", {}):
        return f"it has no {HASHES_NAME} (built before incremental builds)"
    old = manifest.get("model") or {}
    if old.get("fingerprint") != model["fingerprint"]:
        return "it was built with another model (fingerprint differs)"
    if old.get("session") != model.get("session"):
        return f"it was built with other session settings ({old.get('session')} vs {model.get('session')})"
    if manifest.get("dtype") != dtype:
        return f"it stores {manifest.get('dtype')} vectors, this build {dtype}"
    if int(manifest.get("dimension", -1)) != dimension:
        return f"its vectors have {manifest.get('dimension')} dimensions, the model {dimension}"
    return None


def open_reuse(location: str | Path, *, model: dict, dtype: str, dimension: int, work_dir: Path) -> Reuse:
    """The reusable vectors at ``location``; ``Reuse.usable`` is False when there are none
    (``reason`` None: nothing there yet; else why not).  ``work_dir`` holds an S3 download."""
    source = str(location)
    try:
        if source.startswith("s3://"):
            from search.storage.objects import download_files, read_manifest

            manifest = read_manifest(source)
            if manifest is None:
                return Reuse(source)
            reason = incompatibility(manifest, model=model, dtype=dtype, dimension=dimension)
            if reason:
                return Reuse(source, reason=reason)
            folder = Path(work_dir)
            shutil.rmtree(folder, ignore_errors=True)
            names = [HASHES_NAME, EMBEDDINGS_NAME] + ([SCALES_NAME] if dtype == "int8" else [])
            names += [n for n in TITLE_FILES if n in manifest.get("files", {})]
            download_files(source, folder, names=names, manifest=manifest)  # sha256-checked on the way in
            reuse = _open_local(folder, manifest, source, dtype, checked=True)
            reuse.cleanup.append(folder)
            return reuse
        folder = Path(source)
        if not (folder / MANIFEST_NAME).is_file():
            empty = not folder.is_dir() or not any(folder.iterdir())  # nothing there yet: nothing to say
            return Reuse(source, reason=None if empty else "it holds no manifest.json")
        manifest = read_json(folder / MANIFEST_NAME)
        reason = incompatibility(manifest, model=model, dtype=dtype, dimension=dimension)
        if reason:
            return Reuse(source, reason=reason)
        return _open_local(folder, manifest, source, dtype)
    except (SearchError, OSError, ValueError, KeyError) as exc:
        return Reuse(source, reason=f"it cannot be read ({exc})")


def damaged_file(folder: Path, manifest: dict, names: list[str]) -> str | None:
    """Why one of these files of ``folder`` cannot be trusted (not listed in its manifest, missing,
    or its size or sha256 not what the manifest says), or None.  Reused bytes are copied as they
    are into a new index whose manifest then vouches for them: a damaged source must not be reused."""
    files = manifest.get("files")
    for name in names:
        info = files.get(name) if isinstance(files, dict) else None
        if not isinstance(info, dict):
            return f"its manifest does not list {name}"
        path = folder / name
        if not path.is_file():
            return f"its {name} is missing"
        if path.stat().st_size != info.get("bytes") or sha256_file(path) != info.get("sha256"):
            return f"its {name} differs from its manifest (damaged)"
    return None


def _open_local(folder: Path, manifest: dict, source: str, dtype: str, *, checked: bool = False) -> Reuse:
    """The reusable arrays of ``folder``; ``checked``: its files were just sha256-checked (an S3 download)."""
    count = int(manifest["count"])
    names = [HASHES_NAME, EMBEDDINGS_NAME] + ([SCALES_NAME] if dtype == "int8" else [])
    with_titles = all(n in manifest.get("files", {}) for n in TITLE_FILES)
    problem = None if checked else damaged_file(folder, manifest, names + (list(TITLE_FILES) if with_titles else []))
    if problem:
        return Reuse(source, reason=problem)
    hashes = np.load(folder / HASHES_NAME, mmap_mode="r", allow_pickle=False)
    embeddings = np.load(folder / EMBEDDINGS_NAME, mmap_mode="r", allow_pickle=False)
    scales = np.load(folder / SCALES_NAME, mmap_mode="r", allow_pickle=False) if dtype == "int8" else None
    if hashes.shape != (count, 32) or embeddings.shape[0] != count or (scales is not None and len(scales) != count):
        return Reuse(source, reason="its files do not match its manifest's count")
    titles = None
    if with_titles:
        titles = (
            np.load(folder / TITLE_HASHES_NAME, mmap_mode="r", allow_pickle=False),
            np.load(folder / TITLE_VECTORS_NAME, mmap_mode="r", allow_pickle=False),
            np.load(folder / TITLE_SCALES_NAME, mmap_mode="r", allow_pickle=False),
        )
        if titles[0].shape != (count, 32) or titles[1].shape[0] != count or len(titles[2]) != count:
            titles = None  # not reused: the titles are embedded again
    return Reuse(source, hashes=hashes, embeddings=embeddings, scales=scales, titles=titles)


def write_vectors(tmp: Path, encoder, writer: MetadataWriter, spec, hashes: HashColumn, options) -> dict:
    """``embeddings.npy`` (+ ``scales.npy``) and ``text-hashes.npy`` for the rows in ``writer``:
    rows whose text hash the reuse source knows are copied, the rest embedded.  Returns the
    manifest's build record: how many rows were reused and how many embedded."""
    from search.scoring.quantize import quantize_int8

    column = hashes.array()
    count = len(column)
    dim = encoder.dimension
    np.save(tmp / HASHES_NAME, column)
    target = new_memmap(tmp / EMBEDDINGS_NAME, dtype=options.dtype, shape=(count, dim))
    scales = new_memmap(tmp / SCALES_NAME, dtype=np.float32, shape=(count,)) if options.dtype == "int8" else None
    reuse: Reuse | None = options.reuse if options.reuse is not None and options.reuse.usable else None
    old = match_rows(np.asarray(reuse.hashes), column) if reuse is not None else np.full(count, -1, np.int64)
    have = old >= 0
    reused_rows = np.flatnonzero(have)
    for start in range(0, len(reused_rows) if reuse is not None else 0, COPY_BLOCK_ROWS):
        assert reuse is not None and reuse.embeddings is not None
        block = reused_rows[start : start + COPY_BLOCK_ROWS]
        src = old[block]
        order = np.argsort(src, kind="stable")  # read the source in file order
        target[block[order]] = reuse.embeddings[src[order]]
        if scales is not None and reuse.scales is not None:
            scales[block[order]] = reuse.scales[src[order]]
    need = count - len(reused_rows)
    if options.show_progress and reuse is not None:
        print(
            f"reusing {len(reused_rows)} vectors from {reuse.source}; embedding {need} new or changed texts",
            file=sys.stderr,
        )
    progress = Progress("embedding", need, unit="docs", enabled=options.show_progress and need > 0)
    texts = (spec.document_text(title, text) for row, (title, text) in enumerate(writer.iter_texts()) if not have[row])
    vectors = embed_stream(encoder, texts, workers=options.workers, expected=need)  # processes for big jobs
    for row, vector in zip(np.flatnonzero(~have), vectors, strict=False):
        if scales is not None:
            target[row], scales[row] = quantize_int8(vector)
        else:
            target[row] = vector
        progress.update()
    progress.close()
    target.flush()
    del target
    if scales is not None:
        scales.flush()
        del scales
    return {
        "reused": int(len(reused_rows)),
        "embedded": int(need),
        "reuse_source": reuse.source if reuse is not None else None,
    }
