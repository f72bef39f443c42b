"""Upload of index and bundle folders (data first, manifest last)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from search.errors import StorageError
from search.fileutil import sha256_file
from search.storage.transfer import (
    _EXPECTED,
    DATA_PREFIX_KEY,
    MANIFEST_NAME,
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
