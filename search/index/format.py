"""The index folder's format: every file name and format constant, defined here once.

    <index>/
      manifest.json            MANIFEST_NAME: format, count, dimension, dtype, model, fields, files
      embeddings.npy           EMBEDDINGS_NAME: (count, dimension) float32 | float16 | int8
      scales.npy               SCALES_NAME: int8 only, per-row float32 scale (vector = row * scale)
      scan-int8.npy            SCAN_FILES: float32/float16 (optional): the int8 scan copy, its row
      scan-scales.npy            scales and each stored vector's L2 distance from its int8 form
      scan-residuals.npy         (an error bound; see search/scoring/kernels.py)
      prefilter-int4.npy       PREFILTER_FILES: any dtype (optional): the int4 copy of the first
      prefilter-scales.npy       pass, its row scales and residual norms (an upper bound of each
      prefilter-residuals.npy    row's score; see search/scoring/prefilter.py)
      field-<name>.npy         field_file(name): int32 value codes per row, one per stored field
      text-hashes.npy          HASHES_NAME: per-row hash of the embedded text (incremental builds)
      title-int8.npy           TITLE_FILES (optional): each title embedded alone, int8 rows, their
      title-scales.npy           scales (0: no title) and the titles' hashes (see titles.py)
      title-hashes.npy
      metadata.sqlite          METADATA_NAME: id, title, text, fields per row; the keyword index

A shard folder (search/index/shards.py) holds RECORDS_NAME instead of the metadata.  The model
bundle (search/model/bundle.py) and the S3 layout (search/storage/) name their manifest with the
same MANIFEST_NAME.  Nothing here imports anything: every layer may read it.
"""

from __future__ import annotations

import re

INDEX_FORMAT = "search-index/1"
MANIFEST_NAME = "manifest.json"
DTYPES = ("float32", "float16", "int8")
FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# GET /search's own parameters (serve/routes.py): a stored field of one of these names could not be filtered on
RESERVED_FIELD_NAMES = frozenset({"q", "k", "offset", "min_score", "mode"})

EMBEDDINGS_NAME = "embeddings.npy"
SCALES_NAME = "scales.npy"
SCAN_NAME, SCAN_SCALES_NAME, SCAN_RESIDUALS_NAME = "scan-int8.npy", "scan-scales.npy", "scan-residuals.npy"
SCAN_FILES = (SCAN_NAME, SCAN_SCALES_NAME, SCAN_RESIDUALS_NAME)
PREFILTER_NAME = "prefilter-int4.npy"
PREFILTER_SCALES_NAME = "prefilter-scales.npy"
PREFILTER_RESIDUALS_NAME = "prefilter-residuals.npy"
PREFILTER_FILES = (PREFILTER_NAME, PREFILTER_SCALES_NAME, PREFILTER_RESIDUALS_NAME)
HASHES_NAME = "text-hashes.npy"
TITLE_VECTORS_NAME, TITLE_SCALES_NAME, TITLE_HASHES_NAME = "title-int8.npy", "title-scales.npy", "title-hashes.npy"
TITLE_FILES = (TITLE_VECTORS_NAME, TITLE_SCALES_NAME, TITLE_HASHES_NAME)
METADATA_NAME = "metadata.sqlite"
RECORDS_NAME = "records.sqlite"


def field_file(name: str) -> str:
    """The codes file of a stored field (``name`` matches FIELD_NAME_RE)."""
    return f"field-{name}.npy"
