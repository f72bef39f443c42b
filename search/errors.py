"""One error hierarchy for the whole package.

    SearchError                      base; ``str(err)`` is one readable line
    ├── ConfigError                  a setting or CLI argument is invalid
    ├── ModelLoadError               model bundle missing, corrupt or unusable
    ├── EncodeError                  a text cannot be embedded (empty, whitespace)
    ├── CorpusError                  a bad corpus record; carries ``path`` and ``line``
    ├── IndexLoadError               index folder missing, corrupt or mismatched; carries ``path``
    │   ├── IndexMismatchError       index built with another model / dimension
    │   └── IndexCorruptError        the data does not match the manifest, or the metadata store is damaged
    ├── IndexBuildError              the build could not complete (nothing is published)
    ├── StorageError                 fetching or publishing an index failed; carries ``uri``
    ├── QueryError                   a query the index cannot answer (bad filter field, ...)
    └── EvalError                    a bad evaluation query file (``search eval``); carries ``path`` and ``line``

Callers catch ``SearchError`` at the edges (CLI, HTTP, Lambda) and show the
message; nothing below the edges prints or exits.
"""

from __future__ import annotations


class SearchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SearchError):
    pass


class ModelLoadError(SearchError):
    pass


class EncodeError(SearchError):
    pass


class CorpusError(SearchError):
    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class IndexLoadError(SearchError):
    def __init__(self, message: str, *, path: str | None = None):
        self.path, self.reason = path, message
        super().__init__(f"{path}: {message}" if path else message)


class IndexMismatchError(IndexLoadError):
    pass


class IndexCorruptError(IndexLoadError):
    """Found after the index was opened: a file's sha256, ``PRAGMA quick_check``, a stored row that
    is not what the builder wrote.  The message names the file (and the row); the HTTP API answers
    503 ``index_corrupt`` without it."""


class IndexBuildError(SearchError):
    pass


class StorageError(SearchError):
    def __init__(self, message: str, *, uri: str | None = None):
        self.uri, self.reason = uri, message
        super().__init__(f"{uri}: {message}" if uri else message)


class QueryError(SearchError):
    pass


class EvalError(SearchError):
    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
