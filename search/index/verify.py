"""Integrity of an opened index: every file's sha256 against the manifest, and SQLite's quick_check.

Opening an index checks sizes only (cold start must not read every byte); this reads every byte
once, afterwards, in small reads so it can run beside searches at low priority.  A damaged copy
(a flipped byte on a local disk, EFS, or a reused S3 cache) is an IndexCorruptError naming the
file; it never turns into silently wrong answers.

    verify_files(folder, manifest, pause=...)   raises IndexCorruptError on the first mismatch
    Integrity(index).start()                    the same in a low-priority thread: verifying -> verified | corrupt
    ScoreGuard                                  the query path's cheap check (no NaN or |score| > 1 returned)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from search.errors import IndexCorruptError, IndexLoadError
from search.index.format import METADATA_NAME

logger = logging.getLogger(__name__)
READ_BYTES = 256 * 1024  # per read: small, so a low-priority thread gives the core back often


def sha256_paced(path: Path, pause: Callable[[], None] | None = None) -> str:
    """sha256 of a file read ``READ_BYTES`` at a time, calling ``pause()`` between reads."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(READ_BYTES):
            digest.update(block)  # hashlib releases the GIL for blocks this size
            if pause is not None:
                pause()
    return digest.hexdigest()


def quick_check(path: Path) -> None:
    """``PRAGMA quick_check`` on the metadata store (read-only); IndexCorruptError unless "ok"."""
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchmany(3)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise IndexCorruptError(f"PRAGMA quick_check failed ({exc})", path=str(path)) from None
    if rows != [("ok",)]:
        first = "; ".join(str(r[0])[:200] for r in rows)
        raise IndexCorruptError(f"PRAGMA quick_check: {first}", path=str(path))


def verify_files(folder: Path, manifest: dict, *, pause: Callable[[], None] | None = None) -> int:
    """Check the metadata store, then every file the manifest lists; returns the bytes read."""
    folder = Path(folder)
    files: dict = manifest["files"]
    if METADATA_NAME in files:
        quick_check(folder / METADATA_NAME)
    total = 0
    for name, info in sorted(files.items()):
        path = folder / name
        try:
            digest = sha256_paced(path, pause)
        except OSError as exc:
            raise IndexCorruptError(f"unreadable ({exc.strerror})", path=str(path)) from None
        if digest != info["sha256"]:
            raise IndexCorruptError("sha256 differs from the manifest (corrupt)", path=str(path))
        total += int(info["bytes"])
    return total


class ScoreGuard:
    """The query path's cheap check: a cosine score is finite and within [-1 - SLACK, 1 + SLACK].

    A row that scores otherwise has damaged bytes (a NaN, an exponent turned ~1e38).  It is ranked
    out before it reaches the top-k (a NaN floor would otherwise drop every other row too) and
    logged once per index, naming the row; the background verification then finds the file."""

    SLACK = 0.05  # int8 rows dequantised: cosines of unit vectors stay well inside 1 +- 0.05

    def __init__(self, path: Path):
        self.path = path
        self.bad_rows = 0  # how many implausible scores were ranked out (all searches, this index)

    def keep(self, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(scores) & (np.abs(scores) <= 1.0 + self.SLACK)
        if ok.all():
            return rows, scores
        self._found(int(np.asarray(rows)[~ok][0]), float(scores[~ok][0]), int((~ok).sum()))
        return rows[ok], scores[ok]

    def plausible(self, row: int, score: float) -> bool:
        if math.isfinite(score) and abs(score) <= 1.0 + self.SLACK:
            return True
        self._found(row, score, 1)
        return False

    def _found(self, row: int, score: float, count: int) -> None:
        if not self.bad_rows:
            logger.error(
                "implausible score ranked out (index damaged?)",
                extra={"index": str(self.path), "row": row, "score": str(score)},
            )
        self.bad_rows += count


VERIFY_NICE = 19  # the verification thread runs only when nothing else wants the core


class _Stopped(Exception):
    pass


class Integrity:
    """The background verification of one opened index: verifying -> verified | corrupt."""

    def __init__(self, index, *, verified: bool = False):
        self.index = index
        self.state = "verified" if verified else "verifying"
        self.error: IndexCorruptError | None = None
        self.seconds: float | None = 0.0 if verified else None  # time to verify (or to find damage)
        self._started = time.monotonic()
        self._hurry = threading.Event()
        self._stop = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if verified:
            self._done.set()

    def start(self) -> None:
        if self.state == "verifying" and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="index-verify")
            self._thread.start()

    def _run(self) -> None:
        if not self._hurry.is_set():
            _lower_priority(VERIFY_NICE)
        try:
            self.index.verify(pause=self._pause)
            self.state = "verified"
        except _Stopped:
            return
        except IndexCorruptError as exc:
            self.fail(exc)
        except IndexLoadError as exc:  # the folder was replaced since it was opened (a new version)
            logger.warning("index not verified", extra={"reason": str(exc)})
            self.state = "unverified"
        except Exception:  # a bug must not leave the state at verifying forever unnoticed
            logger.exception("index verification failed unexpectedly")
            self.state = "unverified"
        finally:
            if self.seconds is None:
                self.seconds = round(time.monotonic() - self._started, 3)
            self._done.set()

    def _pause(self) -> None:
        if self._stop:
            raise _Stopped()
        if not self._hurry.is_set():
            time.sleep(0)  # let waiting threads (the event loop, searches) take the GIL

    def fail(self, exc: IndexCorruptError) -> None:
        if self.state != "corrupt":
            self.state, self.error = "corrupt", exc
            self.seconds = round(time.monotonic() - self._started, 3)
            logger.error("index corrupt", extra={"reason": str(exc)})

    def join(self, timeout: float | None = None) -> bool:
        """Wait at the thread's own pace; True when done."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Finish at full pace (a warmup has the environment to itself); True when done."""
        self._hurry.set()
        return self._done.wait(timeout)

    def stop(self) -> None:
        self._stop = True


def _lower_priority(nice: int) -> None:
    """Linux schedules threads separately: a high nice value on this thread only."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass
