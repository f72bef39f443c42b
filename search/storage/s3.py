"""Index and model-bundle folders in S3: verified download into a local cache, and upload.

    s3://bucket/prefix/manifest.json           written last by `python -m search upload`
    s3://bucket/prefix/data/<version>/<file>   every file the manifest lists (immutable per version)

The code lives in ``transfer.py`` (client, retries, deadlines, errors), ``cache.py`` (download
into the local cache) and ``objects.py`` (upload, streamed reads); this module keeps the names
the rest of the package and the tests import.
"""

from search.index.format import MANIFEST_NAME
from search.storage.cache import (
    CacheLock,
    Fetched,
    cache_root,
    fetch_bundle,
    fetch_folder,
    manifest_etag,
    remove_cached,
)
from search.storage.objects import UploadReport, upload_folder
from search.storage.transfer import (
    CHUNK_BYTES,
    DATA_PREFIX_KEY,
    TEMP_PREFIX,
    S3Location,
    TransferOptions,
    deadline_after,
    deadline_for_lambda,
    is_s3_uri,
    parse_manifest,
    s3_client,
    storage_error,
    time_left,
    version_label,
)

__all__ = [
    "CHUNK_BYTES",
    "DATA_PREFIX_KEY",
    "MANIFEST_NAME",
    "TEMP_PREFIX",
    "CacheLock",
    "Fetched",
    "S3Location",
    "TransferOptions",
    "UploadReport",
    "cache_root",
    "deadline_after",
    "deadline_for_lambda",
    "fetch_bundle",
    "fetch_folder",
    "is_s3_uri",
    "manifest_etag",
    "parse_manifest",
    "remove_cached",
    "s3_client",
    "storage_error",
    "time_left",
    "upload_folder",
    "version_label",
]
