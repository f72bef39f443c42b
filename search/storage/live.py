"""The index a running process serves, found by ``SEARCH_INDEX_URI``, and swapped when a new version appears.

    /mnt/efs/index, build/index    opened in place (memory-mapped, no copy), optional page-in
    s3://bucket/prefix/            downloaded once per environment into the cache dir (see storage.py)

Callers use ``load(deadline=)`` at start, ``current()`` once per request (and keep using that object
for the whole request), and ``maybe_refresh()`` on warmup events and from time to time.

Hot swap: at most every ``refresh_seconds`` (0 = only when forced) the manifest's ETag (S3) or
file identity (local) is compared with the loaded one; a new version is opened beside the old one
and swapped in with one assignment.  The old index is not closed under in-flight queries: it is
dropped, and CPython frees its maps and SQLite handle when the last request holding it finishes.
A downloaded old copy's files are deleted at once (Linux keeps mapped pages of unlinked files).

Integrity (``verify=True``): opening checks sizes only, so every index that goes live is then
read whole by a low-priority thread (``Integrity``: each file's sha256, the metadata store's
quick_check).  Until it passes, ``integrity.state`` is ``verifying`` (searches are answered);
on a mismatch, or a data fault a query runs into (``report_corrupt``), it is ``corrupt``:
``current()`` raises IndexCorruptError and an S3 copy is deleted and downloaded again (at most
every ``repair_seconds``).  A copy just downloaded was sha256-checked on the way in: verified.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from search.errors import IndexCorruptError, IndexLoadError, SearchError
from search.index.format import MANIFEST_NAME
from search.index.manifest import check_model_match
from search.index.reader import SearchIndex
from search.index.verify import Integrity
from search.retry import RetryGate
from search.storage import s3 as storage

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # after a failed first load, callers get the same error until this has passed
CHECK_BUDGET_S = 10.0  # a refresh without a caller deadline gives up after this (HEAD)
REFRESH_BUDGET_S = 300.0  # ... and a new version's download after this
REPAIR_SECONDS = 60.0  # a corrupt S3 copy is downloaded again at most this often


class LiveIndex:
    def __init__(
        self,
        uri: str,
        *,
        cache_dir: str = "/tmp/search",
        refresh_seconds: int = 0,
        model_fingerprint: str | None = None,
        dimension: int | None = None,
        page_in: bool = False,
        retry_seconds: float = RETRY_SECONDS,
        options: storage.TransferOptions = storage.TransferOptions(),
        client=None,
        verify: bool = False,
        repair_seconds: float = REPAIR_SECONDS,
    ):
        self.uri = str(uri)
        self.cache_dir = cache_dir
        self.refresh_seconds = refresh_seconds
        self.model_fingerprint = model_fingerprint
        self.dimension = dimension
        self.page_in = page_in
        self.retry = RetryGate(retry_seconds)  # after a failed first load (see search/retry.py)
        self.options = options
        self.is_s3 = storage.is_s3_uri(self.uri)
        self._client = client
        self._index: SearchIndex | None = None
        self._stamp: object = None  # manifest ETag (S3) or (inode, mtime, size) (local)
        self._cached_path: Path | None = None
        self._load_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refresh_thread: threading.Thread | None = None
        self._last_check = 0.0
        self.swaps = 0
        self.timings: dict[str, float] = {}  # ms of the last load/swap: s3_client, fetch|open, page_in
        self.downloaded_bytes = 0  # by the last load/swap (0: reused a cached copy)
        self.verify = verify
        self.repair_seconds = repair_seconds
        self.integrity: Integrity | None = None  # of the current index, when verify is on
        self._repair_at = -repair_seconds
        self._repair_thread: threading.Thread | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def error(self) -> SearchError | None:
        """Why the last load or refresh failed (None: it worked)."""
        return self.retry.error

    @error.setter
    def error(self, value: SearchError | None) -> None:  # a refresh's outcome: no retry timing
        self.retry.error = value

    @property
    def retry_seconds(self) -> float:
        return self.retry.seconds

    @retry_seconds.setter
    def retry_seconds(self, value: float) -> None:
        self.retry.seconds = value

    @property
    def ready(self) -> bool:
        return self._index is not None

    @property
    def version(self) -> str | None:
        index = self._index
        return index.version if index is not None else None

    def load(self, *, deadline: float | None = None) -> SearchIndex:
        """The loaded index, loading it first if needed.  After a failure, the same error is raised
        again without new work until ``retry_seconds`` have passed (so a burst of requests does not
        stampede S3)."""
        index = self._index
        if index is not None:
            return index
        with self._load_lock:
            if self._index is not None:
                return self._index
            self.retry.check()
            try:
                index, stamp, cached = self._open_latest(deadline)
            except SearchError as exc:
                self.retry.failed(exc)
                raise
            self._index, self._stamp, self._cached_path = index, stamp, cached
            self._last_check = time.monotonic()
            self.retry.succeeded()
            self._watch(index, verified=self.is_s3 and self.downloaded_bytes > 0)
            return index

    def current(self) -> SearchIndex:
        index = self._index
        if index is None:
            raise self.error or IndexLoadError("index not loaded yet", path=self.uri)
        integrity = self.integrity
        if integrity is not None and integrity.state == "corrupt" and integrity.index is index:
            self._maybe_repair()
            error = integrity.error
            raise IndexCorruptError(error.reason if error else "corrupt", path=error.path if error else self.uri)
        return index

    @property
    def loaded(self) -> SearchIndex | None:
        """The index in use, damaged or not (``current()`` refuses a damaged one)."""
        return self._index

    @property
    def corrupt(self) -> bool:
        integrity = self.integrity
        return integrity is not None and integrity.state == "corrupt" and integrity.index is self._index

    def report_corrupt(self, exc: IndexCorruptError) -> None:
        """A data fault a query ran into (a metadata row, a stored vector): the index is damaged."""
        index = self._index
        if index is None or not str(exc.path or "").startswith(str(index.path)):
            return  # about an index no longer live
        if self.integrity is None or self.integrity.index is not index:
            self.integrity = Integrity(index)
        self.integrity.stop()
        self.integrity.fail(exc)
        self._maybe_repair()

    def _watch(self, index: SearchIndex, *, verified: bool = False) -> None:
        """Start verifying the index that just went live (and stop checking the one it replaced)."""
        if not self.verify:
            return
        old, self.integrity = self.integrity, Integrity(index, verified=verified)
        if old is not None:
            old.stop()
        self.integrity.start()

    def _maybe_repair(self) -> None:
        """An S3 copy found damaged is deleted and downloaded again, in the background, rate-limited."""
        if not self.is_s3 or time.monotonic() - self._repair_at < self.repair_seconds:
            return
        if self._repair_thread is not None and self._repair_thread.is_alive():
            return
        self._repair_at = time.monotonic()
        self._repair_thread = threading.Thread(target=self._repair, daemon=True, name="index-repair")
        self._repair_thread.start()

    def _repair(self) -> bool:
        with self._refresh_lock:
            broken = self._cached_path
            if broken is not None:
                storage.remove_cached(broken)  # the maps of the damaged copy stay valid until dropped
            try:
                index, stamp, cached = self._open_latest(storage.deadline_after(REFRESH_BUDGET_S))
            except SearchError as exc:
                self.error = exc
                logger.error("index repair failed", extra={"reason": str(exc)})
                return False
            with self._load_lock:
                self._index, self._stamp, self._cached_path = index, stamp, cached
            self.swaps += 1
            self._watch(index, verified=self.downloaded_bytes > 0)
            logger.info("index repaired", extra={"version": index.version})
            return True

    def maybe_refresh(self, *, force: bool = False, wait: bool = True, deadline: float | None = None) -> bool:
        """Pick up a new index version if there is one; True when swapped.

        Without ``force`` nothing happens until ``refresh_seconds`` (0 = never) have passed since the
        last check.  ``wait=False`` does the check and any download in a background thread and returns
        False at once (for request paths); warmup events call ``force=True``.
        """
        if self._index is None:
            try:
                self.load(deadline=deadline)
                return True
            except SearchError:
                return False
        if not force and (self.refresh_seconds <= 0 or time.monotonic() - self._last_check < self.refresh_seconds):
            return False
        if not wait:
            if self._refresh_thread is None or not self._refresh_thread.is_alive():
                self._refresh_thread = threading.Thread(
                    target=self._refresh, args=(deadline,), daemon=True, name="index-refresh"
                )
                self._refresh_thread.start()
            return False
        return self._refresh(deadline)

    def status(self) -> dict:
        """For ``/readyz`` and ``/info``: ready or why not, the version in use, last error."""
        index = self._index
        return {
            "ready": index is not None,
            "uri": self.uri,
            "source": "s3" if self.is_s3 else "path",
            "version": index.version if index is not None else None,
            "count": index.count if index is not None else None,
            "local_path": str(index.path) if index is not None else None,
            "swaps": self.swaps,
            "error": str(self.error) if self.error is not None else None,
            "downloaded_mb": round(self.downloaded_bytes / 1e6, 3),
            "timings_ms": dict(self.timings),
            "integrity": self.integrity.state if self.integrity is not None else "off",
        }

    # -- internals ----------------------------------------------------------------------------
    def _s3(self):
        if self._client is None:
            t0 = time.monotonic()
            self._client = storage.s3_client(options=self.options)  # importing boto3 is most of this
            self.timings["s3_client"] = round((time.monotonic() - t0) * 1000, 1)
        return self._client

    def _check_manifest(self, manifest: dict) -> None:
        """Refuse an index built with another model before downloading it."""
        try:
            dim, fingerprint = int(manifest["dimension"]), str(manifest["model"]["fingerprint"])
        except (KeyError, TypeError, ValueError):
            return  # SearchIndex.open reports a malformed manifest with the path
        check_model_match(
            dim, fingerprint, model_fingerprint=self.model_fingerprint, dimension=self.dimension, path=self.uri
        )

    def _open(self, path: Path) -> SearchIndex:
        return SearchIndex.open(path, model_fingerprint=self.model_fingerprint, dimension=self.dimension)

    def _open_latest(self, deadline: float | None, known_stamp: object = None):
        """(index, stamp, cached folder or None); index None when the stamp says nothing changed."""
        t0 = time.monotonic()
        if self.is_s3:
            client = self._s3()
            t0 = time.monotonic()
            fetched = storage.fetch_folder(
                self.uri,
                self.cache_dir,
                client=client,
                deadline=deadline,
                options=self.options,
                check=self._check_manifest,
                open_with=self._open,
            )
            stamp: object = fetched.etag
            index, cached = fetched.opened, fetched.path
            self.timings["fetch"] = round((time.monotonic() - t0) * 1000, 1)
            self.downloaded_bytes = fetched.downloaded_bytes
        else:
            stamp = _local_stamp(self.uri)
            index, cached = self._open(Path(self.uri)), None
            self.timings["open"] = round((time.monotonic() - t0) * 1000, 1)
        if self.page_in:
            t1 = time.monotonic()
            index.page_in()
            self.timings["page_in"] = round((time.monotonic() - t1) * 1000, 1)
        return index, stamp, cached

    def _refresh(self, deadline: float | None) -> bool:
        if not self._refresh_lock.acquire(blocking=False):
            return False  # another thread is already checking
        try:
            self._last_check = time.monotonic()
            stamp: object
            if self.is_s3:
                stamp = storage.manifest_etag(
                    self._s3(), self.uri, deadline=deadline or storage.deadline_after(CHECK_BUDGET_S)
                )
            else:
                stamp = _local_stamp(self.uri)
            if stamp == self._stamp:
                self.error = None  # whatever failed before is no longer what is published
                return False
            index, stamp, cached = self._open_latest(deadline or storage.deadline_after(REFRESH_BUDGET_S))
            old, old_cached = self._index, self._cached_path
            self._stamp = stamp
            if old is not None and index.version == old.version and index.path == old.path:
                index.close()  # same content republished (new ETag): keep the mapped one
                return False
            with self._load_lock:
                self._index, self._cached_path = index, cached  # the swap: one assignment
            self.swaps += 1
            self.error = None
            self._watch(index, verified=self.is_s3 and self.downloaded_bytes > 0)
            if old_cached is not None and old_cached != cached:
                storage.remove_cached(old_cached)
            del old  # the last reference here; in-flight requests may still hold theirs
            return True
        except SearchError as exc:
            self.error = exc  # keep serving the old version; /readyz shows a reason code, the log why
            logger.warning("index refresh failed", extra={"reason": str(exc)})
            return False
        finally:
            self._refresh_lock.release()


def _local_stamp(path: str) -> object:
    """Changes when the manifest is replaced (a rebuild renames a new folder into place)."""
    try:
        st = os.stat(Path(path) / MANIFEST_NAME)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
