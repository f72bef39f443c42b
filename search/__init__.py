"""Serverless semantic search: ONNX sentence embeddings over a memory-mapped exact index.

The public surface is ``__all__``; each name is imported on first use, so importing a submodule
(``search.errors``, ``search.model.bundle`` in the export stage) does not load the whole package."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Searcher": "search.searcher",
    "SearchIndex": "search.index.reader",
    "Encoder": "search.model.encoder",
    "build_index": "search.index.builder",
    "BuildOptions": "search.index.builder",
    "CorpusSpec": "search.index.corpus",
    "LiveIndex": "search.storage.live",
    "Settings": "search.settings",
    "SearchError": "search.errors",
    "ConfigError": "search.errors",
    "ModelLoadError": "search.errors",
    "EncodeError": "search.errors",
    "CorpusError": "search.errors",
    "IndexLoadError": "search.errors",
    "IndexMismatchError": "search.errors",
    "IndexCorruptError": "search.errors",
    "IndexBuildError": "search.errors",
    "StorageError": "search.errors",
    "QueryError": "search.errors",
    "EvalError": "search.errors",
}
__all__ = [
    "BuildOptions",
    "ConfigError",
    "CorpusError",
    "CorpusSpec",
    "EncodeError",
    "Encoder",
    "EvalError",
    "IndexBuildError",
    "IndexCorruptError",
    "IndexLoadError",
    "IndexMismatchError",
    "LiveIndex",
    "ModelLoadError",
    "QueryError",
    "SearchError",
    "SearchIndex",
    "Searcher",
    "Settings",
    "StorageError",
    "build_index",
]

if TYPE_CHECKING:
    from search.errors import (
        ConfigError,
        CorpusError,
        EncodeError,
        EvalError,
        IndexBuildError,
        IndexCorruptError,
        IndexLoadError,
        IndexMismatchError,
        ModelLoadError,
        QueryError,
        SearchError,
        StorageError,
    )
    from search.index.builder import BuildOptions, build_index
    from search.index.corpus import CorpusSpec
    from search.index.reader import SearchIndex
    from search.model.encoder import Encoder
    from search.searcher import Searcher
    from search.settings import Settings
    from search.storage.live import LiveIndex


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
