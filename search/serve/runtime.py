"""What one process serves with: settings, encoder, live index, searcher, CPU executor.

One ``Runtime`` per process (a Lambda execution environment, a uvicorn worker), made lazily by
``get_runtime()``; ``handler.py`` and ``python -m search serve`` both use it, so both answer alike.

    runtime = get_runtime()
    searcher, index = runtime.pin()      # loads on first use; one index version for the request
    await runtime.run(fn, ...)           # CPU work on the bounded executor, never the event loop

Loading happens once: at Lambda init (handler.py), at server start (the app's lifespan), or on the
first request, whichever comes first.  A failed load is remembered and answered with 503 (the
reason on ``/readyz``) and retried at most every ``RETRY_SECONDS``, not on every request.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from search.errors import (
    ConfigError,
    IndexCorruptError,
    IndexLoadError,
    IndexMismatchError,
    ModelLoadError,
    SearchError,
    StorageError,
)
from search.model.cpu import available_cpus
from search.model.encoder import QUERY, Encoder
from search.retry import RetryGate
from search.searcher import Searcher
from search.serve.errors import INDEX_CORRUPT
from search.serve.observability import logger, tracer
from search.settings import Settings
from search.storage.live import LiveIndex
from search.storage.s3 import fetch_bundle, is_s3_uri, time_left

RETRY_SECONDS = 5.0  # a failed load is retried at most this often
CPU_WORKER_NICE = 5  # CPU workers yield to the event loop thread (health checks, parsing) when cores are busy
WARMUP_RESERVE_S = 2.0  # a warmup's verification stops waiting this long before the invocation's deadline
WARMUP_TEXT = "warm up the model"  # embedded on warmup so the first real query finds onnxruntime warm


class Overloaded(Exception):
    """More CPU jobs are waiting than ``max_pending`` allows (the API answers 503 + Retry-After)."""


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.encoder: Encoder | None = None
        self.live: LiveIndex | None = None
        self.searcher: Searcher | None = None
        self.retry = RetryGate(RETRY_SECONDS)  # a failed load is remembered, then tried again
        self.state = "cold"  # cold -> loading -> ready | failed
        self.load_ms: dict[str, float] = {}
        self.keyword_note: str | None = None  # why keyword/hybrid search is unavailable, if it is
        self.invocations = 0  # Lambda invocations seen by handler.py (cold start = the first)
        self.pending = 0  # CPU jobs submitted and not finished (queued + running)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------
    @property
    def error(self) -> SearchError | None:
        """Why the last load failed (None: it worked, or none was tried)."""
        return self.retry.error

    @property
    def ready(self) -> bool:
        return self.searcher is not None

    def load(self, *, deadline: float | None = None) -> Searcher:
        """The searcher, loading model and index first if needed.  Thread-safe; raises SearchError."""
        searcher = self.searcher
        if searcher is not None:
            return searcher
        with self._lock:
            if self.searcher is not None:
                return self.searcher
            self.retry.check()
            self.state = "loading"
            try:
                self.searcher = self._load(deadline)
            except SearchError as exc:
                self._fail(exc)
                logger.error("load failed", extra={"reason": str(exc)})
                raise
            except Exception as exc:  # a bug or an environment problem: keep the process up, say so
                logger.exception("load failed unexpectedly")
                error = SearchError(f"loading failed unexpectedly ({type(exc).__name__}); see the logs")
                self._fail(error)
                raise error from exc
            self.retry.succeeded()
            self.state = "ready"
            assert self.live is not None  # set by _load
            logger.info("loaded", extra={"timings_ms": self.load_ms, "index_version": self.live.version})
            return self.searcher

    def _load(self, deadline: float | None) -> Searcher:
        s = self.settings
        t0 = time.perf_counter()
        if self.encoder is None:
            # Threads per onnxruntime run: the CPUs shared out among the executor's workers, so
            # parallel searches do not oversubscribe the cores (SEARCH_THREADS overrides).
            threads = s.threads or max(1, available_cpus() // max(1, s.cpu_workers))
            model_dir: str | Path = s.model_dir
            if is_s3_uri(s.model_dir):  # default is baked into the image; S3 is opt-in
                model_dir = fetch_bundle(s.model_dir, s.cache_dir, deadline=deadline)
            self.encoder = Encoder.load(model_dir, threads=threads)
        t1 = time.perf_counter()
        if self.live is None:
            if s.index_uri.startswith("s3://"):
                tracer.patch(["botocore"])  # downloads appear in the X-Ray trace when tracing is on
            self.live = LiveIndex(
                s.index_uri,
                cache_dir=s.cache_dir,
                refresh_seconds=s.refresh_seconds,
                model_fingerprint=self.encoder.fingerprint,
                dimension=self.encoder.dimension,
                page_in=s.page_in,
                verify=s.verify_index,
            )
        index = self.live.load(deadline=deadline)
        searcher = Searcher(
            self.encoder,
            index,
            cache_size=s.query_cache_size,
            hybrid_candidates=s.hybrid_candidates,
            sentence_share=s.hybrid_sentence_share,
        )
        self._check_keyword(searcher, index)
        self.load_ms = {"model": _ms(t1 - t0), "index": _ms(time.perf_counter() - t1)}
        return searcher

    def _check_keyword(self, searcher: Searcher, index) -> None:
        """Open the keyword side now (not in a request) and remember why it is missing, if it is."""
        self.keyword_note = searcher.keyword_status(index)

    def _fail(self, error: SearchError) -> None:
        self.retry.failed(error)
        self.state = "failed"

    def start_loading(self) -> None:
        """Load in the background (server start, a readiness probe on a cold process)."""
        if self.state in ("cold", "failed") and not self.ready:
            self.executor.submit(self._load_quietly)

    def _load_quietly(self) -> None:
        try:
            self.load()
        except SearchError:
            pass  # recorded in self.error; /readyz reports it

    def pin(self):
        """``(searcher, index)`` for one request: the index is fixed for the whole request even if a
        new version is swapped in meanwhile.  Also lets the live index check for a new version now
        and then (rate-limited by it; the download runs in the background)."""
        searcher = self.load()
        index = self.live.current()
        if searcher.index is not index:
            # The searcher's default follows the live version, so a swapped-out index is referenced
            # only by requests still running on it and is unmapped when they finish.
            searcher.index = index
        self.live.maybe_refresh(wait=False)
        return searcher, index

    def report_corrupt(self, exc: IndexCorruptError) -> None:
        """A query ran into damaged index data: log where, and stop answering from that copy."""
        if self.live is None or self.live.corrupt:
            return  # known already (current() raised it)
        logger.error("index data fault", extra={"reason": str(exc)})
        self.live.report_corrupt(exc)

    def status(self) -> dict[str, Any]:
        """For /readyz: ready or why not, as a reason code (REASONS); the detail (paths, bucket and
        key names) is in the log only.  No inference, no I/O."""
        out: dict[str, Any] = {"ready": self.ready, "state": self.state}
        if self.error is not None:
            out["reason"] = reason_code(self.error)
        elif not self.ready:
            out["reason"] = "loading" if self.state == "loading" else "not_loaded"
        live = self.live
        if self.ready and live is not None and live.integrity is not None:
            if live.corrupt:
                out.update(ready=False, state="corrupt", reason=INDEX_CORRUPT)
            elif live.integrity.state == "verifying":
                out["state"] = "verifying"  # still answering: a cold start does not wait for it
        index = live.loaded if live is not None else None
        if live is not None and index is not None:
            out["index"] = {"version": index.version, "count": index.count}
            if self.keyword_note:
                out["keyword"] = self.keyword_note  # still ready: hybrid answers semantically
            if live.error is not None:
                out["index_refresh_error"] = reason_code(live.error)  # still serving the loaded version
        out["pending"] = self.pending
        return out

    # -- warmup -----------------------------------------------------------------------------
    def warm(self, *, deadline: float | None = None) -> dict[str, Any]:
        """Load whatever is not loaded, look for a new index version, page the vectors in and run the
        model once.  Returns what it did and how long each step took.  ``deadline`` (monotonic
        seconds) bounds any S3 traffic by the invocation's time left."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            searcher = self.load(deadline=deadline)
        except SearchError as exc:
            return {
                "warm": False,
                "state": self.state,
                "error": {"code": "not_ready", "message": str(exc)},
                "timings_ms": {"total": _ms(time.perf_counter() - t0)},
            }
        timings["load"] = _ms(time.perf_counter() - t0)
        assert self.live is not None  # set by load()
        t = time.perf_counter()
        swapped = bool(self.live.maybe_refresh(force=True, deadline=deadline))  # one HEAD per warmup
        timings["refresh"] = _ms(time.perf_counter() - t)
        integrity = self.live.integrity
        if integrity is not None and integrity.state == "verifying":
            t = time.perf_counter()
            left = time_left(deadline)
            integrity.wait(None if left is None else max(0.0, left - WARMUP_RESERVE_S))
            timings["verify"] = _ms(time.perf_counter() - t)
        try:
            index = self.live.current()
        except SearchError as exc:
            return {
                "warm": False,
                "state": "corrupt" if self.live.corrupt else self.state,
                "error": {"code": INDEX_CORRUPT if self.live.corrupt else "not_ready", "message": str(exc)},
                "timings_ms": {**timings, "total": _ms(time.perf_counter() - t0)},
            }
        searcher.index = index
        self._check_keyword(searcher, index)
        if self.settings.page_in:
            t = time.perf_counter()
            index.page_in()
            timings["page_in"] = _ms(time.perf_counter() - t)
        t = time.perf_counter()
        searcher.encoder.embed([WARMUP_TEXT], kind=QUERY)  # not via the query cache
        timings["embed"] = _ms(time.perf_counter() - t)
        timings["total"] = _ms(time.perf_counter() - t0)
        return {
            "warm": True,
            "state": self.state,
            "index": {"version": index.version, "count": index.count},
            "swapped": swapped,
            "timings_ms": timings,
        }

    # -- CPU executor -----------------------------------------------------------------------
    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._executor_lock:
                if self._executor is None:
                    # at least one thread: background loads use it even when searches run inline
                    self._executor = ThreadPoolExecutor(
                        max_workers=max(1, self.settings.cpu_workers),
                        thread_name_prefix="search-cpu",
                        initializer=_lower_thread_priority,
                    )
        return self._executor

    async def run(self, fn: Callable, *args, **kwargs):
        """Run ``fn`` on the CPU executor.  The event loop stays free for /livez and /readyz;
        beyond ``max_pending`` waiting jobs, raise Overloaded instead of queueing without end.

        ``cpu_workers=0`` runs ``fn`` right here, on the event loop's thread: what a Lambda execution
        environment wants, since it serves one event at a time and the thread hop costs ~0.9 ms
        (the worker's wake-up, and caches warmed by one thread and used by another)."""
        if self.settings.cpu_workers == 0:
            return fn(*args, **kwargs)
        if self.pending >= self.settings.max_pending:
            raise Overloaded()
        self.pending += 1  # only touched from the event loop thread
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        finally:
            self.pending -= 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


# /readyz reason codes: what each means, for the 503's message (the detail is logged at the failure)
REASONS = {
    "loading": "the model and index are loading",
    "not_loaded": "not loaded yet",
    INDEX_CORRUPT: "the index is damaged and does not answer",
    "index_mismatch": "the index was built with another model",
    "index_invalid": "the index could not be opened",
    "model_invalid": "the model could not be loaded",
    "storage_error": "fetching the index or model failed",
    "config_error": "a setting is invalid",
    "load_failed": "loading failed unexpectedly",
}


def reason_code(error: SearchError) -> str:
    if isinstance(error, IndexCorruptError):
        return INDEX_CORRUPT
    if isinstance(error, IndexMismatchError):
        return "index_mismatch"
    if isinstance(error, IndexLoadError):
        return "index_invalid"
    if isinstance(error, ModelLoadError):
        return "model_invalid"
    if isinstance(error, StorageError):
        return "storage_error"
    if isinstance(error, ConfigError):
        return "config_error"
    return "load_failed"


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings | None = None) -> Runtime:
    """The process-wide runtime, created on first call (from ``settings`` or the environment)."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(settings or Settings.resolve())
    return _runtime


def peek_runtime() -> Runtime | None:
    """The process-wide runtime if one exists (without creating it)."""
    return _runtime


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Replace the process-wide runtime (tests; a fresh 'execution environment').  Returns the old one."""
    global _runtime
    with _runtime_lock:
        old, _runtime = _runtime, runtime
    return old


def _lower_thread_priority() -> None:
    """Linux schedules threads separately: a higher nice value on the CPU workers (and on the
    onnxruntime threads they start, which inherit it) lets the event loop run first when every core
    is busy, so /livez and /readyz answer promptly under load.  Raising nice needs no privileges."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CPU_WORKER_NICE)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: only scheduling order is lost


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
