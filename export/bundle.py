"""The bundle on disk: model.onnx, tokenizer.json and manifest.json, published all at once.

The bundle is built in a temp sibling folder and renamed into place, so ``--out`` holds a
complete, verified bundle or nothing.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from search.fileutil import describe_files, write_json_atomic
from search.index.format import MANIFEST_NAME
from search.model.bundle import BUNDLE_FORMAT, compute_fingerprint, encoding_settings

MODEL_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"


def copy_tokenizer(folder: Path, tokenizer, dst: Path) -> None:
    """The source folder's tokenizer.json into ``dst`` (written by the fast tokenizer if absent)."""
    if (folder / TOKENIZER_FILE).is_file():
        shutil.copyfile(folder / TOKENIZER_FILE, dst / TOKENIZER_FILE)
    else:  # older folders ship only vocab.txt; the fast tokenizer can write the JSON form
        tokenizer.backend_tokenizer.save(str(dst / TOKENIZER_FILE))


def manifest_for(folder: Path, **fields) -> dict:
    """The manifest of the bundle files in ``folder``: ``fields`` (source_model ... versions), the
    file list with sizes and sha256, the creation time and the fingerprint."""
    manifest = {
        "format": BUNDLE_FORMAT,
        "source_model": fields.pop("source_model"),
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        **fields,
        "files": describe_files(folder, [MODEL_FILE, TOKENIZER_FILE]),
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    manifest["fingerprint"] = compute_fingerprint(manifest["files"], encoding_settings(manifest))
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json_atomic(folder / MANIFEST_NAME, manifest)


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished bundle into place (an existing one is replaced only with --force)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
