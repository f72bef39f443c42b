"""The index manifest (``manifest.json``): its name, format and the checks every value and file pass at open.

A malformed manifest is an IndexLoadError naming the file and the key, never a TypeError from
deep inside the reader or the keyword index.
"""

from __future__ import annotations

import math
import re
import tokenize
from pathlib import Path

import numpy as np

from search.errors import IndexLoadError, IndexMismatchError
from search.index.format import DTYPES, FIELD_NAME_RE, INDEX_FORMAT

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a plain name inside the index folder
LEXICAL_NAME_KEYS = ("table", "names_table", "terms_table")
LEXICAL_NUMBER_KEYS = ("common_docs", "avg_tokens")


def check_manifest(manifest: dict, manifest_path: Path) -> tuple[int, int, str, dict, list, str]:
    """(count, dimension, dtype, files, fields, model fingerprint), every value checked for type and
    range: a malformed manifest is an IndexLoadError naming the file and the key, never a
    TypeError from deep inside."""

    def bad(key: str, problem: str) -> IndexLoadError:
        return IndexLoadError(f"manifest key {key}: {problem}", path=str(manifest_path))

    def get(key: str):
        if key not in manifest:
            raise bad(key, "missing")
        return manifest[key]

    def whole(key: str, low: int) -> int:
        value = get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, f"must be a whole number >= {low}")
        return value

    if get("format") != INDEX_FORMAT:
        raise bad("format", f"{str(manifest['format'])[:40]!r}, expected {INDEX_FORMAT!r}")
    count, dim = whole("count", 0), whole("dimension", 1)
    dtype = get("dtype")
    if dtype not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}")
    if not isinstance(get("version"), str):
        raise bad("version", "must be a string")
    model = get("model")
    if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
        raise bad("model", "must be an object with a string fingerprint")
    fields = get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, str) and FIELD_NAME_RE.match(f) for f in fields):
        raise bad("fields", "must be a list of field names (letters, digits, _ . -)")
    files = get("files")
    if not isinstance(files, dict):
        raise bad("files", "must be an object of file name -> {bytes, sha256}")
    for name, info in files.items():
        if not FILE_NAME_RE.match(name) or ".." in name:
            raise bad("files", "lists a name that is not a plain file name in the index folder")
        if not isinstance(info, dict):
            raise bad(f"files.{name}", "must be an object with bytes and sha256")
        size, digest = info.get("bytes"), info.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"files.{name}.bytes", "must be a whole number >= 0")
        if not isinstance(digest, str) or not SHA256_RE.match(digest):
            raise bad(f"files.{name}.sha256", "must be 64 lowercase hex digits")
    _check_lexical(manifest.get("lexical"), bad)
    return count, dim, dtype, files, fields, model["fingerprint"]


def check_model_match(
    dim: int, fingerprint: str, *, model_fingerprint: str | None, dimension: int | None, path: str
) -> None:
    """The one check that an index's vectors mean what the loaded model's vectors mean: the same
    dimension and model fingerprint (None: not checked).  SearchIndex.open runs it on open, LiveIndex
    on a remote manifest before downloading anything."""
    if dimension is not None and dim != dimension:
        raise IndexMismatchError(f"index dimension {dim} but the model gives {dimension}", path=path)
    if model_fingerprint is not None and fingerprint != model_fingerprint:
        raise IndexMismatchError(
            f"built with model {fingerprint[:12]}, but the loaded model is {model_fingerprint[:12]}; "
            "rebuild the index with this model",
            path=path,
        )


def _check_lexical(info, bad) -> None:
    """The keyword index's manifest entry (keyword.py reads it), when there is one."""
    from search.index.keyword import COLUMNS

    if info is None:
        return
    if not isinstance(info, dict):
        raise bad("lexical", "must be an object")

    def finite(value) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0

    weights = info.get("weights")
    if weights is not None and not (
        isinstance(weights, list) and len(weights) == len(COLUMNS) and all(finite(w) for w in weights)
    ):
        raise bad("lexical.weights", f"must be {len(COLUMNS)} finite numbers >= 0 ({', '.join(COLUMNS)})")
    for key in LEXICAL_NUMBER_KEYS:
        if key in info and not finite(info[key]):
            raise bad(f"lexical.{key}", "must be a finite number >= 0")
    for key in LEXICAL_NAME_KEYS:
        if key in info and not (isinstance(info[key], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", info[key])):
            raise bad(f"lexical.{key}", "must be a table name (letters, digits, _)")


def load_matrix(path: Path, dtype: str, shape: tuple) -> np.ndarray:
    """A memory-mapped .npy of exactly this dtype and shape, or an IndexLoadError naming the file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    # a damaged header reaches numpy's header parser: SyntaxError, or tokenize's TokenError from its fallback
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        raise IndexLoadError(f"not a readable .npy file ({exc})", path=str(path)) from None
    if not isinstance(arr, np.ndarray):  # np.load opens a zip archive as an NpzFile, whatever the name
        close = getattr(arr, "close", None)
        if close is not None:
            close()
        raise IndexLoadError("not a .npy file (an .npz archive?)", path=str(path))
    if arr.dtype != np.dtype(dtype):
        raise IndexLoadError(f"dtype {arr.dtype} but the manifest says {dtype}", path=str(path))
    if arr.shape != tuple(shape):
        raise IndexLoadError(f"shape {arr.shape} but the manifest says {tuple(shape)}", path=str(path))
    return arr
