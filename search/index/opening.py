"""Opening an index folder: the manifest checked, every listed file's size, every array mapped.

    open_parts(path, ...)            the parts of one SearchIndex, each file opened by name
    open_consistently(path, once)    ``once()`` done again while the folder was replaced meanwhile
    folder_id(path)                  which folder ``path`` names now

A rebuild publishes by renaming a new folder over the index path (publish.py), and files are opened
by name: an open that overlaps the rename could map the vectors of one version and the metadata of
the other.  So the folder's identity is taken before and after an open, and the open is done again
when it changed.  Every file the index reads must be listed in the manifest: only listed files are
size-checked here and sha256-checked by verification (verify.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from search.errors import IndexLoadError
from search.fileutil import read_json
from search.index.format import (
    EMBEDDINGS_NAME,
    MANIFEST_NAME,
    METADATA_NAME,
    PREFILTER_NAME,
    PREFILTER_RESIDUALS_NAME,
    PREFILTER_SCALES_NAME,
    SCALES_NAME,
    SCAN_NAME,
    SCAN_RESIDUALS_NAME,
    SCAN_SCALES_NAME,
    TITLE_SCALES_NAME,
    TITLE_VECTORS_NAME,
    field_file,
)
from search.index.manifest import check_manifest, check_model_match, load_matrix
from search.index.metadata import MetadataReader
from search.index.verify import verify_files
from search.scoring.kernel_protocol import ScanBlock
from search.scoring.prefilter import Prefilter

OPEN_ATTEMPTS = 3  # opens of a folder that was replaced meanwhile (a rebuild published) before giving up
T = TypeVar("T")


def folder_id(path: Path) -> tuple[int, int, int] | None:
    """Which folder ``path`` names now: (st_dev, st_ino, st_ctime_ns), None when there is none.  The
    change time tells a new folder that was given the inode number of a deleted one apart from it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def open_consistently(path: Path, once: Callable[[], T]) -> tuple[T, tuple[int, int, int] | None]:
    """``once()`` (an open of the folder at ``path``) and the identity of the folder it opened, done
    again when the folder was replaced while it ran (its result then closed: it may mix versions)."""
    for _attempt in range(OPEN_ATTEMPTS):
        before = folder_id(path)
        try:
            opened = once()
        except IndexLoadError:
            if folder_id(path) == before:
                raise
            continue  # failed because the folder was being replaced: open the new one
        if folder_id(path) == before:
            return opened, before
        opened.close()  # type: ignore[attr-defined]
    raise IndexLoadError(
        f"replaced by another version while it was being opened, {OPEN_ATTEMPTS} times in a row", path=str(path)
    )


def open_parts(path: Path, *, model_fingerprint: str | None, dimension: int | None, verify: bool) -> tuple:
    """(manifest, embeddings, scales, codes, metadata, scan, prefilter, titles) of the index at ``path``."""
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        if path.exists():  # e.g. the corpus file given as --index
            raise IndexLoadError("not a folder (an index is a folder built by `search build`)", path=str(path))
        raise IndexLoadError("index folder not found", path=str(path))
    if not manifest_path.is_file():
        raise IndexLoadError("missing file (no index manifest here)", path=str(manifest_path))
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:
        raise IndexLoadError(f"unreadable manifest ({exc})", path=str(manifest_path)) from None
    count, dim, dtype, files, fields, index_fingerprint = check_manifest(manifest, manifest_path)
    check_model_match(dim, index_fingerprint, model_fingerprint=model_fingerprint, dimension=dimension, path=str(path))
    for name, info in files.items():
        file_path = path / name
        try:
            size = file_path.stat().st_size if file_path.is_file() else None
        except OSError:  # removed between the two calls
            size = None
        if size is None:
            raise IndexLoadError("missing file listed in the manifest", path=str(file_path))
        if size != info["bytes"]:
            raise IndexLoadError(
                f"size {size} but the manifest says {info['bytes']} (truncated or replaced)", path=str(file_path)
            )

    if verify:
        verify_files(path, manifest)

    def load(name: str, dtype: str, shape: tuple) -> np.ndarray:
        _listed(files, name, manifest_path)
        return load_matrix(path / name, dtype, shape)

    embeddings = load(EMBEDDINGS_NAME, dtype, (count, dim))
    scales = load(SCALES_NAME, "float32", (count,)) if dtype == "int8" else None
    codes = {f: load(field_file(f), "int32", (count,)) for f in fields}
    scan = None
    if manifest.get("scan"):
        if dtype == "int8":
            raise IndexLoadError("an int8 index has no scan copy", path=str(manifest_path))
        scan = ScanBlock(
            embeddings,
            load(SCAN_NAME, "int8", (count, dim)),
            load(SCAN_SCALES_NAME, "float32", (count,)),
            load(SCAN_RESIDUALS_NAME, "float32", (count,)),
        )
    prefilter = _load_prefilter(load, count, dim) if manifest.get("prefilter") else None
    titles = None
    if manifest.get("titles"):
        titles = (
            load(TITLE_VECTORS_NAME, "int8", (count, dim)),
            load(TITLE_SCALES_NAME, "float32", (count,)),
        )
    _listed(files, METADATA_NAME, manifest_path)
    metadata = MetadataReader(path / METADATA_NAME)
    return manifest, embeddings, scales, codes, metadata, scan, prefilter, titles


def _listed(files: dict, name: str, manifest_path: Path) -> None:
    """Every file the index reads must be in the manifest's list: only listed files have their size
    checked at open and their sha256 by verification, so an unlisted one could be damaged unseen."""
    if name not in files:
        raise IndexLoadError(
            f"manifest key files: does not list {name}, which this index reads (its size and sha256 would go unchecked)",
            path=str(manifest_path),
        )


def _load_prefilter(load, count: int, dim: int) -> Prefilter | None:
    """The int4 copy, validated; None where the compiled kernel (or its int4 entry point) is missing."""
    from search.scoring import native

    packed = load(PREFILTER_NAME, "uint8", (count, dim // 2))
    scales = load(PREFILTER_SCALES_NAME, "float32", (count,))
    residuals = load(PREFILTER_RESIDUALS_NAME, "float32", (count,))
    kernel = native.load()
    if kernel is None or dim % 2:
        return None
    return Prefilter(packed, scales, residuals, kernel)
