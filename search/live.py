"""The index a running process serves, by location (``SEARCH_INDEX_URI``).

Today: a local or EFS folder, opened in place.  The storage issue extends this with
``s3://`` downloads and hot swap; callers only use ``load``, ``current``, ``maybe_refresh``.
"""

from __future__ import annotations

import threading

from .errors import IndexLoadError
from .index import SearchIndex


class LiveIndex:
    def __init__(self, uri: str, *, cache_dir: str = "/tmp/search", refresh_seconds: int = 0,
                 model_fingerprint: str | None = None, dimension: int | None = None):
        self.uri = uri
        self.cache_dir = cache_dir
        self.refresh_seconds = refresh_seconds
        self.model_fingerprint = model_fingerprint
        self.dimension = dimension
        self._index: SearchIndex | None = None
        self._lock = threading.Lock()

    def load(self, *, deadline: float | None = None) -> SearchIndex:
        with self._lock:
            if self._index is None:
                self._index = SearchIndex.open(self.uri, model_fingerprint=self.model_fingerprint,
                                               dimension=self.dimension)
            return self._index

    def current(self) -> SearchIndex:
        index = self._index
        if index is None:
            raise IndexLoadError("index not loaded yet", path=self.uri)
        return index

    def maybe_refresh(self, *, force: bool = False) -> bool:
        """Pick up a new index version if there is one; True when swapped."""
        return False
