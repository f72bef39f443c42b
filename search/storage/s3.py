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

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import StorageError
from search.fileutil import sha256_file
from search.progress import Progress

MANIFEST_NAME = "manifest.json"
DATA_PREFIX_KEY = "data_prefix"  # manifest key added by upload: where the files live, relative to the prefix
CONNECT_TIMEOUT_S = 2.0  # botocore default is 60 s, longer than API Gateway's 29 s
READ_TIMEOUT_S = 5.0  # socket inactivity, not a total; the deadline bounds the total
UPLOAD_READ_TIMEOUT_S = 60.0  # a multipart PUT may take a while to be acknowledged
MAX_ATTEMPTS = 4  # per request, botocore "standard" mode (backoff with jitter)
CHUNK_BYTES = 8 * 1024 * 1024  # ranged GET / multipart part size
CONCURRENCY = 8  # parallel ranged GETs
MIN_PART_BYTES = 8 * 1024 * 1024  # multipart upload part size floor (S3 minimum is 5 MiB)
RESERVE_BYTES = 16 * 1024 * 1024  # free space left in the cache dir after a download
LAMBDA_RESERVE_S = 1.0  # time kept back from the Lambda deadline to send the answer
MIN_RETRY_WINDOW_S = 0.5  # do not start another attempt with less time than this left
LOCK_POLL_S = 0.05
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MB = 1e6


@dataclass(frozen=True)
class TransferOptions:
    chunk_bytes: int = CHUNK_BYTES
    concurrency: int = CONCURRENCY
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS
    reserve_bytes: int = RESERVE_BYTES


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not is_s3_uri(uri):
            raise StorageError("not an s3:// URI", uri=uri)
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise StorageError(f"{bucket!r} is not a valid bucket name", uri=uri)
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def uri(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith("s3://")


def deadline_after(seconds: float | None) -> float | None:
    """A deadline ``seconds`` from now (None = no overall limit)."""
    return None if seconds is None else time.monotonic() + seconds


def deadline_for_lambda(context, *, reserve_s: float = LAMBDA_RESERVE_S) -> float | None:
    """The deadline a Lambda invocation allows, keeping ``reserve_s`` to answer (503 + reason)."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return None
    return deadline_after(max(0.0, context.get_remaining_time_in_millis() / 1000 - reserve_s))


def time_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


# -- client --------------------------------------------------------------------------------------
class _OutOfTime(Exception):
    pass


class _DeadlineHook:
    """Stops botocore retrying (and starting requests) once the caller's deadline has passed."""

    def __init__(self):
        self.deadline: float | None = None

    def before_send(self, request=None, **_):
        left = time_left(self.deadline)
        if left is not None and left <= 0:
            raise _OutOfTime("the time budget ran out before the request was sent")

    def needs_retry(self, response=None, caught_exception=None, attempts=None, **_):
        """Runs before botocore's own retry handler.  If the longest backoff botocore might pick next
        (throttling: up to 2**(attempt-1) s) would leave less than MIN_RETRY_WINDOW_S, stop now."""
        if isinstance(caught_exception, _OutOfTime):
            raise caught_exception
        left = time_left(self.deadline)
        longest_backoff = min(2.0 ** ((attempts or 1) - 1), 20.0)
        if left is None or left >= longest_backoff + MIN_RETRY_WINDOW_S:
            return None  # let the standard retry handler decide
        if caught_exception is not None:
            from botocore.exceptions import ConnectionError, HTTPClientError

            if not isinstance(caught_exception, (ConnectionError, HTTPClientError)):
                return None  # not something botocore retries: its own error says more
            raise _OutOfTime(
                f"{type(caught_exception).__name__} on attempt {attempts} ({caught_exception}); "
                "another attempt would not fit in the time left"
            )
        status = response[0].status_code if response and response[0] is not None else 0
        if status >= 500 or status == 429:
            code = (response[1] or {}).get("Error", {}).get("Code", "")
            raise _OutOfTime(
                f"S3 answered {status} {code} on attempt {attempts}; another attempt would not fit in the time left"
            )
        return None


def s3_client(
    *, endpoint_url: str | None = None, options: TransferOptions = TransferOptions(), read_timeout: float | None = None
):
    """An S3 client with standard retries and short timeouts.  ``endpoint_url`` None lets boto3
    honour ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (moto, MinIO, ...)."""
    import boto3
    from botocore.config import Config

    # response_checksum_validation="when_required": every byte is checked against the manifest's sha256
    # anyway, and it lets s3transfer skip a HEAD per file (size and ETag come from the first ranged GET,
    # later ranges carry If-Match so a file replaced mid-download fails instead of mixing versions).
    config = Config(
        retries={"mode": "standard", "max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout,
        read_timeout=read_timeout or options.read_timeout,
        max_pool_connections=options.concurrency + 2,
        response_checksum_validation="when_required",
    )
    client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)
    hook = _DeadlineHook()
    client.meta.events.register_first("before-send.s3", hook.before_send)
    client.meta.events.register_first("needs-retry.s3", hook.needs_retry)
    client._search_deadline = hook  # noqa: SLF001 - one place sets it, see _deadline()
    return client


class _deadline:
    """``with _deadline(client, d):`` applies a deadline to every request made inside."""

    def __init__(self, client, deadline: float | None):
        self.hook = getattr(client, "_search_deadline", None)
        self.deadline = deadline

    def __enter__(self):
        if self.hook is not None:
            self.saved, self.hook.deadline = self.hook.deadline, self.deadline

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.deadline = self.saved


# -- errors --------------------------------------------------------------------------------------
def storage_error(exc: BaseException, loc: S3Location, name: str) -> StorageError:
    """One readable line for anything boto3, s3transfer or the OS raised while handling a key."""
    from botocore import exceptions as bx
    from s3transfer.exceptions import RetriesExceededError

    uri = loc.uri(name)
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, RetriesExceededError):
        last = exc.last_exception
        return StorageError(
            f"body truncated or connection dropped on every attempt ({type(last).__name__}: {last})", uri=uri
        )
    if isinstance(exc, _OutOfTime):
        return StorageError(f"gave up, time budget exhausted: {exc}", uri=uri)
    if isinstance(exc, bx.ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, status = str(err.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
        tries = int(meta.get("RetryAttempts") or 0) + 1
        if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
            return StorageError("not found (404 NoSuchKey)", uri=uri)
        if code == "NoSuchBucket":
            return StorageError(f"bucket {loc.bucket!r} does not exist (404 NoSuchBucket)", uri=uri)
        if status == 403 or code in ("AccessDenied", "Forbidden", "403"):
            return StorageError(
                f"access denied (403 {code or 'Forbidden'}): allow s3:GetObject on this key to the function's role",
                uri=uri,
            )
        if status == 412 or code == "PreconditionFailed":
            return StorageError(
                "replaced while it was being downloaded (412 PreconditionFailed); the next "
                "attempt reads the new manifest",
                uri=uri,
            )
        if status >= 500 or status == 429 or "Throttl" in code or code == "SlowDown":
            return StorageError(f"S3 unavailable ({status} {code}) after {tries} attempts", uri=uri)
        return StorageError(f"S3 error {status} {code}: {err.get('Message', '')}".strip(), uri=uri)
    if isinstance(exc, bx.FlexibleChecksumError):
        return StorageError(f"checksum mismatch reported by S3's checksum ({exc})", uri=uri)
    if isinstance(exc, bx.IncompleteReadError):
        return StorageError(f"body truncated ({exc})", uri=uri)
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError("no AWS credentials found (role, AWS_PROFILE or AWS_ACCESS_KEY_ID)", uri=uri)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return StorageError(f"cannot reach the S3 endpoint ({exc})", uri=uri)
    if isinstance(exc, bx.ReadTimeoutError):
        return StorageError(f"S3 read timed out ({exc})", uri=uri)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while writing ({exc.filename or 'cache dir'})", uri=uri)
    if isinstance(exc, (bx.BotoCoreError, OSError)):
        return StorageError(f"{type(exc).__name__}: {exc}", uri=uri)
    return StorageError(f"unexpected {type(exc).__name__}: {exc}", uri=uri)


_EXPECTED = (Exception,)  # translated by storage_error; BaseException (KeyboardInterrupt) passes through


# -- manifest ------------------------------------------------------------------------------------
def parse_manifest(body: bytes, uri: str) -> dict:
    """The manifest as a dict after checking what download needs: safe names, sizes, sha256s."""
    try:
        manifest = json.loads(body)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
        for name, info in files.items():
            if not SAFE_NAME_RE.match(name) or name == MANIFEST_NAME:
                raise ValueError(f"unsafe file name {name!r}")
            if not SHA256_RE.match(str(info["sha256"])) or int(info["bytes"]) < 0:
                raise ValueError(f"bad sha256/bytes for {name!r}")
        data_prefix = str(manifest.get(DATA_PREFIX_KEY, ""))
        if data_prefix and not re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.-]*/)+", data_prefix):
            raise ValueError(f"unsafe {DATA_PREFIX_KEY} {data_prefix!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StorageError(f"not a usable manifest ({type(exc).__name__}: {exc})", uri=uri) from None
    return manifest


def version_label(manifest: dict, body: bytes) -> str:
    """The index version (or bundle fingerprint) when it is a safe name, else a hash of the manifest."""
    label = str(manifest.get("version") or str(manifest.get("fingerprint", ""))[:16])
    return label if SAFE_NAME_RE.match(label) and len(label) <= 64 else hashlib.sha256(body).hexdigest()[:16]


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
        self.fh = None

    def __enter__(self) -> CacheLock:
        self.fh = open(self.root / LOCK_FILE, "a+")
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | (fcntl.LOCK_NB if self.deadline is not None else 0))
                return self
            except BlockingIOError:
                if time.monotonic() >= self.deadline:
                    self.fh.close()
                    raise StorageError(
                        f"another process still holds the download lock on {self.root}; "
                        "gave up waiting (time budget exhausted)",
                        uri=self.uri,
                    ) from None
                time.sleep(LOCK_POLL_S)

    def __exit__(self, *exc) -> None:
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


class _ByteProgress:
    """Bytes from several transfer threads shown as whole MB on one progress line."""

    def __init__(self, label: str, total_bytes: int, enabled: bool):
        self.line = Progress(label, max(1, round(total_bytes / MB)), unit="MB", enabled=enabled)
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n
            step = int(self.bytes / MB) - self.line.done
            if step > 0:
                self.line.update(step)

    def close(self) -> None:
        self.line.done = self.line.total  # sub-MB remainder
        self.line.close()


class _Subscriber:
    """s3transfer subscriber: reports transferred bytes to the progress line."""

    def __init__(self, progress: _ByteProgress):
        self.progress = progress

    def on_progress(self, future, bytes_transferred, **_):
        self.progress.add(bytes_transferred)

    def on_done(self, future, **_):
        pass


def _transfer_manager(client, options: TransferOptions, *, upload: bool = False):
    from s3transfer.manager import TransferConfig, TransferManager

    # S3 refuses multipart parts under 5 MiB; ranged GETs may be any size.
    chunk = max(options.chunk_bytes, MIN_PART_BYTES) if upload else options.chunk_bytes
    config = TransferConfig(
        multipart_threshold=chunk,
        multipart_chunksize=chunk,
        max_request_concurrency=options.concurrency,
        num_download_attempts=options.max_attempts,
    )
    return TransferManager(client, config)


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


# -- upload --------------------------------------------------------------------------------------
@dataclass
class UploadReport:
    uri: str
    version: str
    uploaded: list[str]
    unchanged: list[str]
    bytes_sent: int
    pruned: int
    seconds: float


def upload_folder(
    folder: str | Path,
    uri: str,
    *,
    client=None,
    endpoint_url: str | None = None,
    options: TransferOptions = TransferOptions(),
    show_progress: bool = True,
    prune: bool = False,
) -> UploadReport:
    """Upload every file the folder's manifest lists, then the manifest (so a reader never sees a
    manifest naming missing files).  Files go under ``data/<version>/``, so readers of the previous
    version keep finding theirs; a file already there with the same sha256 is not sent again."""
    started = time.monotonic()
    folder = Path(folder)
    loc = S3Location.parse(uri)
    try:
        body = (folder / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {folder / MANIFEST_NAME} ({exc.strerror})", uri=uri) from None
    manifest = parse_manifest(body, str(folder / MANIFEST_NAME))
    manifest.pop(DATA_PREFIX_KEY, None)  # a folder fetched from S3 can be uploaded elsewhere
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != int(info["bytes"]) or sha256_file(path) != info["sha256"]:
            raise StorageError(f"{path} is missing or differs from its manifest; rebuild before uploading", uri=uri)
    version = version_label(manifest, body)
    data_prefix = f"data/{version}/"
    client = client or s3_client(endpoint_url=endpoint_url, options=options, read_timeout=UPLOAD_READ_TIMEOUT_S)
    from botocore import exceptions as bx

    previous_prefix = None
    try:
        old = json.loads(client.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))["Body"].read())
        previous_prefix = old.get(DATA_PREFIX_KEY) if isinstance(old, dict) else None
    except bx.ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise storage_error(exc, loc, MANIFEST_NAME) from None
    except ValueError:
        pass  # an unreadable old manifest is simply replaced
    except _EXPECTED as exc:
        raise storage_error(exc, loc, MANIFEST_NAME) from None

    uploaded, unchanged = [], []
    todo = []
    for name, info in sorted(manifest["files"].items()):
        key = loc.key(data_prefix + name)
        try:
            head = client.head_object(Bucket=loc.bucket, Key=key)
            if (
                head.get("ContentLength") == int(info["bytes"])
                and head.get("Metadata", {}).get("sha256") == info["sha256"]
            ):
                unchanged.append(name)
                continue
        except bx.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise storage_error(exc, loc, data_prefix + name) from None
        except _EXPECTED as exc:
            raise storage_error(exc, loc, data_prefix + name) from None
        todo.append((name, key, info))
    total = sum(int(i["bytes"]) for _, _, i in todo)
    progress = _ByteProgress("uploading", total, show_progress and total > 0)
    with _transfer_manager(client, options, upload=True) as tm:
        futures = []
        for name, key, info in todo:
            sub = _Subscriber(progress)
            futures.append(
                (
                    name,
                    tm.upload(
                        str(folder / name),
                        loc.bucket,
                        key,
                        extra_args={"Metadata": {"sha256": info["sha256"]}},
                        subscribers=[sub],
                    ),
                )
            )
        for name, future in futures:
            try:
                future.result()
            except _EXPECTED as exc:
                raise storage_error(exc, loc, data_prefix + name) from None
            uploaded.append(name)
    progress.close()

    published = dict(manifest, **{DATA_PREFIX_KEY: data_prefix})
    try:
        client.put_object(
            Bucket=loc.bucket,
            Key=loc.key(MANIFEST_NAME),
            ContentType="application/json",
            CacheControl="no-cache",
            Body=(json.dumps(published, indent=2, sort_keys=True) + "\n").encode(),
        )
    except _EXPECTED as exc:
        raise storage_error(exc, loc, MANIFEST_NAME) from None
    pruned = _prune(client, loc, keep={data_prefix, previous_prefix}) if prune else 0
    return UploadReport(loc.uri(), version, uploaded, unchanged, total, pruned, time.monotonic() - started)


def _prune(client, loc: S3Location, keep: set) -> int:
    """Delete ``data/<version>/`` folders other than the new one and the one it replaced (a reader
    may be downloading that one right now)."""
    keep_keys = tuple(loc.key(p) for p in keep if p)
    doomed = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key("data/")):
            doomed += [o["Key"] for o in page.get("Contents", []) if not o["Key"].startswith(keep_keys)]
        for i in range(0, len(doomed), 1000):
            client.delete_objects(
                Bucket=loc.bucket, Delete={"Objects": [{"Key": k} for k in doomed[i : i + 1000]], "Quiet": True}
            )
    except _EXPECTED as exc:
        raise storage_error(exc, loc, "data/") from None
    return len(doomed)


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
