"""S3 requests for index and model folders: locations, the client (standard retries, short
timeouts, a caller's deadline), one readable error per failure, the manifest check, and the
transfer manager with its progress line.  ``cache.py`` downloads, ``objects.py`` uploads and
streams; ``s3.py`` re-exports the public names.

Every failure is a ``StorageError`` naming ``s3://bucket/key``.  Requests use botocore's
``standard`` retries and short explicit timeouts, and stop retrying when the caller's deadline
(``time.monotonic()`` seconds, e.g. derived from the Lambda context) has passed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass

from search.errors import StorageError
from search.index.format import MANIFEST_NAME
from search.progress import Progress

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
        self.line.done = self.line.total or self.line.done  # sub-MB remainder
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
