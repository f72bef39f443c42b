"""Index and model-bundle folders in S3: verified download into a local cache, and upload.

    s3://bucket/prefix/manifest.json           written last by `python -m search upload`
    s3://bucket/prefix/data/<version>/<file>   every file the manifest lists (immutable per version)

A manifest without ``data_prefix`` (a folder copied with ``aws s3 sync``) has its files beside it.

Download (``fetch_folder``): the manifest first, then every listed file through the boto3
transfer manager (parallel ranged GETs), sha256 and size checked, written into a temporary
folder and published with one atomic rename into ``<cache_dir>/s3-<bucket>-<hash>/<version>-<hash>/``.
A file lock makes concurrent processes download once; a published folder is complete by
construction, so a later start reuses it after one manifest GET and no data GET.

Every failure is a ``StorageError`` naming ``s3://bucket/key``.  Requests use botocore's
``standard`` retries and short explicit timeouts, and stop retrying when the caller's deadline
(``time.monotonic()`` seconds, e.g. derived from the Lambda context) has passed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from search.errors import StorageError
from search.fileutil import sha256_file
from search.index.format import MANIFEST_NAME
from search.storage.transfer import (
    _EXPECTED,
    DATA_PREFIX_KEY,
    LOCK_FILE,
    LOCK_POLL_S,
    MB,
    TEMP_PREFIX,
    S3Location,
    TransferOptions,
    _ByteProgress,
    _deadline,
    _Subscriber,
    _transfer_manager,
    deadline_after,
    is_s3_uri,
    parse_manifest,
    s3_client,
    storage_error,
    version_label,
)


def cache_root(cache_dir: str | Path, loc: S3Location) -> Path:
    """One folder per bucket/prefix under the cache dir."""
    return Path(cache_dir) / f"s3-{loc.bucket}-{hashlib.sha256(loc.prefix.encode()).hexdigest()[:10]}"


def _read_manifest(client, loc: S3Location, options: TransferOptions) -> tuple[bytes, str]:
    """GET the manifest (small), retrying a body that breaks off; returns bytes and ETag."""
    from botocore import exceptions as bx

    for attempt in range(1, options.max_attempts + 1):
        try:
            resp = client.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))
            return resp["Body"].read(), str(resp.get("ETag", ""))
        except (bx.IncompleteReadError, bx.ReadTimeoutError, bx.ResponseStreamingError) as exc:
            if attempt == options.max_attempts:
                raise storage_error(exc, loc, MANIFEST_NAME) from None
        except _EXPECTED as exc:
            raise storage_error(exc, loc, MANIFEST_NAME) from None
    raise AssertionError("unreachable")


def manifest_etag(client, uri: str, *, deadline: float | None = None) -> str:
    """HEAD the manifest: the cheap "has a new version been published?" check."""
    loc = S3Location.parse(uri)
    with _deadline(client, deadline):
        try:
            return str(client.head_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME)).get("ETag", ""))
        except _EXPECTED as exc:
            raise storage_error(exc, loc, MANIFEST_NAME) from None


# -- locking and cache housekeeping --------------------------------------------------------------
class CacheLock:
    """An exclusive ``flock`` on ``<root>/.lock``; released by the kernel if the holder dies."""

    def __init__(self, root: Path, *, deadline: float | None = None, uri: str | None = None):
        self.root, self.deadline, self.uri = root, deadline, uri
        self.fh: IO[str] | None = None

    def __enter__(self) -> CacheLock:
        self.fh = fh = open(self.root / LOCK_FILE, "a+")
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (fcntl.LOCK_NB if self.deadline is not None else 0))
                return self
            except BlockingIOError:  # LOCK_NB: only with a deadline
                if self.deadline is None or time.monotonic() >= self.deadline:
                    fh.close()
                    raise StorageError(
                        f"another process still holds the download lock on {self.root}; "
                        "gave up waiting (time budget exhausted)",
                        uri=self.uri,
                    ) from None
                time.sleep(LOCK_POLL_S)

    def __exit__(self, *exc) -> None:
        assert self.fh is not None  # __enter__ opened it
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _remove_stale_temps(root: Path) -> list[str]:
    """Temporary folders left by a killed download.  Called under the lock, so none is in use."""
    removed = []
    for p in root.iterdir():
        if p.name.startswith(TEMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _is_complete(folder: Path, body: bytes, manifest: dict) -> bool:
    """A published folder passed its sha256 check before the rename; sizes catch later damage cheaply."""
    try:
        if (folder / MANIFEST_NAME).read_bytes() != body:
            return False
        return all((folder / n).stat().st_size == int(i["bytes"]) for n, i in manifest["files"].items())
    except OSError:
        return False


def remove_cached(path: str | Path, *, wait_s: float = 5.0) -> bool:
    """Delete a published copy (after a hot swap).  Safe while mapped: Linux keeps the pages of an
    unlinked file until the last map is gone.  Taken under the lock so no other process is opening it."""
    path = Path(path)
    if not path.is_dir() or path.name.startswith("."):
        return False
    try:
        with CacheLock(path.parent, deadline=deadline_after(wait_s)):
            shutil.rmtree(path, ignore_errors=True)
    except (StorageError, OSError):
        return False
    return not path.exists()


def _ensure_space(root: Path, needed: int, reserve: int, keep: Path, uri: str) -> None:
    free = shutil.disk_usage(root).free
    if free - needed >= reserve:
        return
    for p in root.iterdir():  # older versions first to go; open maps elsewhere survive (see remove_cached)
        if p.is_dir() and not p.name.startswith(".") and p != keep:
            shutil.rmtree(p, ignore_errors=True)
    free = shutil.disk_usage(root).free
    if free - needed < reserve:
        raise StorageError(
            f"not enough free space in {root}: the download needs {needed / MB:.1f} MB, "
            f"{free / MB:.1f} MB free and {reserve / MB:.1f} MB must stay spare; raise the "
            "function's ephemeral storage or point SEARCH_CACHE_DIR at a larger disk",
            uri=uri,
        )


# -- download ------------------------------------------------------------------------------------
@dataclass
class Fetched:
    path: Path  # the published local folder
    manifest: dict
    etag: str  # of the manifest object
    version: str
    reused: bool  # True: no data GET was made
    downloaded_bytes: int
    seconds: float
    opened: Any = None  # what ``open_with`` returned


def _download_files(
    client, loc: S3Location, manifest: dict, tmp: Path, options: TransferOptions, show_progress: bool
) -> None:
    data_prefix = str(manifest.get(DATA_PREFIX_KEY, ""))
    files = manifest["files"]
    total = sum(int(i["bytes"]) for i in files.values())
    progress = _ByteProgress("downloading", total, show_progress)
    with _transfer_manager(client, options) as tm:
        futures = []
        for name, _info in sorted(files.items(), key=lambda kv: -int(kv[1]["bytes"])):  # biggest first
            key = loc.key(data_prefix + name)
            sub = _Subscriber(progress)
            futures.append((data_prefix + name, tm.download(loc.bucket, key, str(tmp / name), subscribers=[sub])))
        for name, future in futures:
            try:
                future.result()
            except _EXPECTED as exc:
                raise storage_error(exc, loc, name) from None
    progress.close()


def _verify(tmp: Path, loc: S3Location, manifest: dict) -> None:
    data_prefix = str(manifest.get(DATA_PREFIX_KEY, ""))
    for name, info in manifest["files"].items():
        size = (tmp / name).stat().st_size
        if size != int(info["bytes"]):
            raise StorageError(
                f"size {size} but the manifest says {info['bytes']} (truncated body; checksum not matched)",
                uri=loc.uri(data_prefix + name),
            )
        digest = sha256_file(tmp / name)
        if digest != info["sha256"]:
            raise StorageError(
                f"checksum mismatch: sha256 {digest[:16]}… but the manifest says "
                f"{info['sha256'][:16]}… (corrupted in transit or replaced after the manifest "
                "was written)",
                uri=loc.uri(data_prefix + name),
            )


def fetch_folder(
    uri: str,
    cache_dir: str | Path,
    *,
    client=None,
    deadline: float | None = None,
    options: TransferOptions = TransferOptions(),
    check: Callable[[dict], None] | None = None,
    open_with: Callable[[Path], Any] | None = None,
    show_progress: bool = False,
) -> Fetched:
    """Make ``uri`` (an index or model bundle prefix) available locally; returns where.

    ``check(manifest)`` runs before any data GET (e.g. refuse an index built with another model);
    ``open_with(path)`` runs under the cache lock so no other process removes the folder meanwhile.
    """
    started = time.monotonic()
    loc = S3Location.parse(uri)
    client = client or s3_client(options=options)
    with _deadline(client, deadline):
        body, etag = _read_manifest(client, loc, options)
        manifest = parse_manifest(body, loc.uri(MANIFEST_NAME))
        if check is not None:
            check(manifest)
        version = version_label(manifest, body)
        root = cache_root(cache_dir, loc)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the cache dir {root} ({exc.strerror})", uri=uri) from None
        target = root / f"{version}-{hashlib.sha256(body).hexdigest()[:12]}"
        downloaded = 0
        with CacheLock(root, deadline=deadline, uri=uri):
            _remove_stale_temps(root)
            reused = _is_complete(target, body, manifest)
            if not reused:
                shutil.rmtree(target, ignore_errors=True)  # damaged copy (should not happen) is replaced
                needed = sum(int(i["bytes"]) for i in manifest["files"].values()) + len(body)
                _ensure_space(root, needed, options.reserve_bytes, target, uri)
                tmp = root / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    tmp.mkdir()
                    _download_files(client, loc, manifest, tmp, options, show_progress)
                    _verify(tmp, loc, manifest)
                    (tmp / MANIFEST_NAME).write_bytes(body)
                    os.rename(tmp, target)  # the publish: readers see nothing or everything
                except BaseException as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if isinstance(exc, OSError):
                        raise storage_error(exc, loc, MANIFEST_NAME) from None
                    raise
                downloaded = needed
            opened = open_with(target) if open_with is not None else None
    return Fetched(target, manifest, etag, version, reused, downloaded, time.monotonic() - started, opened)


# -- model bundle --------------------------------------------------------------------------------
def fetch_bundle(
    uri: str,
    cache_dir: str | Path,
    *,
    deadline: float | None = None,
    client=None,
    options: TransferOptions = TransferOptions(),
) -> Path:
    """A model bundle folder for ``SEARCH_MODEL_DIR``: a local path as is, ``s3://`` downloaded and
    verified like an index (same manifest shape: ``files`` with sha256 and bytes)."""
    if not is_s3_uri(uri):
        return Path(uri)
    return fetch_folder(uri, cache_dir, client=client, deadline=deadline, options=options).path
