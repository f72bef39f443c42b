"""What ``GET /info`` says: the model, the index (with the most common values per field, which the
search page's filter menus show) and, with SEARCH_INFO_VERSIONS, the package versions."""

from __future__ import annotations

import platform
from functools import lru_cache

from search import __version__
from search.serve.runtime import Runtime

INFO_FIELD_VALUES = 50  # most common values per field shown by /info (the page's filter menus)


def model_info(runtime: Runtime) -> dict:
    assert runtime.encoder is not None  # runtime.ready
    bundle = runtime.encoder.bundle
    return {
        "name": bundle.source_model,
        "dimension": bundle.dimension,
        "quantization": bundle.quantization,
        "quantized": bundle.quantized,
        "pooling": bundle.pooling,
        "max_seq_length": bundle.max_seq_length,
        "fingerprint": bundle.fingerprint[:12],
    }


_index_info_cache: dict[tuple, dict] = {}


def index_info(index) -> dict:
    """Facts and the most common values per field; computed once per index version."""
    key = (id(index), index.version)
    cached = _index_info_cache.get(key)
    if cached is None:
        m = index.manifest
        cached = {
            "version": index.version,
            "count": index.count,
            "fields": index.fields,
            "dimension": index.dimension,
            "dtype": index.dtype,
            "built_at": m.get("built_at"),
            "filters": {
                f: [{"value": v, "count": c} for v, c in index.metadata.field_values(f, INFO_FIELD_VALUES)]
                for f in index.fields
            },
        }
        _index_info_cache.clear()  # one version at a time
        _index_info_cache[key] = cached
    return cached


@lru_cache(maxsize=1)
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"search": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnxruntime", "tokenizers", "fastapi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out
