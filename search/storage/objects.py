"""Upload of index and bundle folders (data first, manifest last); chosen files of a folder;
a streamed object (a corpus) that resumes where a broken body stopped."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import StorageError
from search.fileutil import sha256_file
from search.index.format import MANIFEST_NAME
from search.storage.transfer import (
    _EXPECTED,
    DATA_PREFIX_KEY,
    SAFE_NAME_RE,
    SHA256_RE,
    UPLOAD_READ_TIMEOUT_S,
    S3Location,
    TransferOptions,
    _ByteProgress,
    _Subscriber,
    _transfer_manager,
    parse_manifest,
    s3_client,
    storage_error,
    version_label,
)


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
    may be downloading that one right now).  Only objects upload wrote are deleted: keys of the
    form ``data/<version>/<file>`` carrying the ``sha256`` metadata it sets (one HEAD each), so other
    objects under ``data/`` (the prefix may be a bucket's root) are never touched."""
    keep_keys = tuple(loc.key(p) for p in keep if p)
    doomed = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key("data/")):
            doomed += [
                o["Key"]
                for o in page.get("Contents", [])
                if not o["Key"].startswith(keep_keys) and _ours(client, loc, o)
            ]
        for i in range(0, len(doomed), 1000):
            client.delete_objects(
                Bucket=loc.bucket, Delete={"Objects": [{"Key": k} for k in doomed[i : i + 1000]], "Quiet": True}
            )
    except _EXPECTED as exc:
        raise storage_error(exc, loc, "data/") from None
    return len(doomed)


def _ours(client, loc: S3Location, listed: dict) -> bool:
    """Whether a listed object under ``data/`` is a data file upload wrote."""
    parts = listed["Key"][len(loc.key("data/")) :].split("/")
    if len(parts) != 2 or not all(SAFE_NAME_RE.match(part) for part in parts):
        return False
    head = client.head_object(Bucket=loc.bucket, Key=listed["Key"])
    return bool(SHA256_RE.match(str(head.get("Metadata", {}).get("sha256", ""))))


# -- manifests and chosen files (build inputs: a previous index or shard, shard folders) ---------
def read_manifest(uri: str, *, client=None, options: TransferOptions = TransferOptions()) -> dict | None:
    """The manifest at ``uri`` (an index or shard prefix), or None when there is none yet."""
    from botocore import exceptions as bx

    loc = S3Location.parse(uri)
    client = client or s3_client(options=options)
    try:
        body = client.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))["Body"].read()
    except bx.ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise storage_error(exc, loc, MANIFEST_NAME) from None
    except _EXPECTED as exc:
        raise storage_error(exc, loc, MANIFEST_NAME) from None
    return parse_manifest(body, loc.uri(MANIFEST_NAME))


def download_files(
    uri: str,
    dest: str | Path,
    *,
    names: list[str] | None = None,
    manifest: dict | None = None,
    client=None,
    options: TransferOptions = TransferOptions(),
    show_progress: bool = False,
) -> dict:
    """Download the listed files of the folder at ``uri`` (all when ``names`` is None) into ``dest``,
    sha256-checked like a cache download, plus its manifest; returns the manifest."""
    from search.storage.cache import _download_files, _verify

    loc = S3Location.parse(uri)
    client = client or s3_client(options=options)
    manifest = manifest if manifest is not None else read_manifest(uri, client=client, options=options)
    if manifest is None:
        raise StorageError("not found (404 NoSuchKey)", uri=loc.uri(MANIFEST_NAME))
    files = manifest["files"] if names is None else {n: manifest["files"][n] for n in names if n in manifest["files"]}
    subset = dict(manifest, files=files)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _download_files(client, loc, subset, dest, options, show_progress)
        _verify(dest, loc, subset)
        (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise storage_error(exc, loc, MANIFEST_NAME) from None
    return manifest


# -- streamed reads (a corpus) --------------------------------------------------------------------
class ObjectReader(io.RawIOBase):
    """A readable stream of one S3 object: one GET, and when the body breaks off (truncated,
    timed out, connection reset) a ranged GET from where it stopped, pinned to the first ETag,
    up to ``max_attempts`` times in a row.  The client's own retries and timeouts apply to each GET."""

    def __init__(self, uri: str, *, client=None, options: TransferOptions = TransferOptions()):
        super().__init__()
        self.uri = uri
        self.loc = S3Location.parse(uri)
        if not self.loc.prefix:
            raise StorageError("names a bucket, not an object", uri=uri)
        self.key = self.loc.prefix.rstrip("/")
        self.name = uri
        self.options = options
        self.client = client or s3_client(options=options)
        self.offset = 0
        self.etag: str | None = None
        self.size: int | None = None
        self._body: Any = None  # botocore's StreamingBody of the current GET
        self._open()

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self.loc.bucket, "Key": self.key}
        if self.offset:
            args["Range"] = f"bytes={self.offset}-"
            args["IfMatch"] = self.etag
        try:
            resp = self.client.get_object(**args)
        except _EXPECTED as exc:
            raise storage_error(exc, S3Location(self.loc.bucket, ""), self.key) from None
        if self.etag is None:
            self.etag = str(resp.get("ETag", ""))
            self.size = int(resp.get("ContentLength") or 0)
        self._body = resp["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        from botocore import exceptions as bx
        from urllib3 import exceptions as ux

        failures = 0
        while True:
            try:
                data = self._body.read(len(buffer))
            except (
                bx.IncompleteReadError,
                bx.ReadTimeoutError,
                bx.ResponseStreamingError,
                ux.HTTPError,
                OSError,
            ) as exc:
                failures += 1
                if failures >= self.options.max_attempts:
                    raise StorageError(
                        f"body broke off at byte {self.offset} on {failures} attempts in a row "
                        f"({type(exc).__name__}: {exc})",
                        uri=self.uri,
                    ) from None
                self._body.close()
                self._open()
                continue
            if not data and self.size is not None and self.offset < self.size:
                failures += 1  # a body that ends early without an error (a lying proxy)
                if failures >= self.options.max_attempts:
                    raise StorageError(
                        f"body ended at byte {self.offset} of {self.size} on {failures} attempts in a row",
                        uri=self.uri,
                    )
                self._body.close()
                self._open()
                continue
            n = len(data)
            buffer[:n] = data
            self.offset += n
            return n

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()
