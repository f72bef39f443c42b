"""The model bundle: an ONNX model, its tokenizer and a manifest that says how to use them.

``export_onnx.py`` writes bundles; the encoder reads them.  The manifest is the
single source of truth for pooling, normalisation, sequence length and prefixes,
so the run time never guesses from the model's own config files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from search.errors import ModelLoadError
from search.fileutil import read_json
from search.index.format import MANIFEST_NAME

BUNDLE_FORMAT = "search-model-bundle/1"
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    source_model: str
    model_file: str
    tokenizer_file: str
    dimension: int
    pooling: str
    normalize: bool
    max_seq_length: int
    query_prefix: str
    document_prefix: str
    quantization: dict | None
    fingerprint: str
    files: dict = field(repr=False)
    manifest: dict = field(repr=False)

    @property
    def quantized(self) -> bool:
        return bool(self.quantization)

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.tokenizer_file

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        path = Path(folder)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ModelLoadError(
                f"{manifest_path}: no model bundle manifest (run `python export_onnx.py --out {path}`)"
            )
        try:
            m = read_json(manifest_path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{manifest_path}: unreadable manifest ({exc})") from None
        if m.get("format") != BUNDLE_FORMAT:
            raise ModelLoadError(f"{manifest_path}: format {m.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        try:
            bundle = cls(
                path=path,
                source_model=str(m["source_model"]),
                model_file=str(m["model_file"]),
                tokenizer_file=str(m["tokenizer_file"]),
                dimension=int(m["dimension"]),
                pooling=str(m["pooling"]),
                normalize=bool(m["normalize"]),
                max_seq_length=int(m["max_seq_length"]),
                query_prefix=str(m.get("query_prefix", "")),
                document_prefix=str(m.get("document_prefix", "")),
                quantization=m.get("quantization") or None,
                fingerprint=str(m["fingerprint"]),
                files=dict(m["files"]),
                manifest=m,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{manifest_path}: missing or invalid key {exc}") from None
        if bundle.pooling not in POOLINGS:
            raise ModelLoadError(f"{manifest_path}: pooling {bundle.pooling!r} is not one of {POOLINGS}")
        for name, info in bundle.files.items():
            file_path = path / name
            if not file_path.is_file():
                raise ModelLoadError(f"{file_path}: listed in the manifest but missing")
            # A size check is free; the full sha256 is checked when the bundle is fetched
            # or on `search info --verify`, not on every cold start.
            if file_path.stat().st_size != int(info["bytes"]):
                raise ModelLoadError(f"{file_path}: size differs from the manifest (truncated or replaced)")
        return bundle


def compute_fingerprint(files: dict, settings: dict) -> str:
    """Identity of what a vector means: model and tokenizer bytes plus the pooling settings."""
    payload = json.dumps(
        {"files": {k: v["sha256"] for k, v in sorted(files.items())}, "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def encoding_settings(manifest: dict) -> dict:
    """The manifest keys that change vectors, hashed into the fingerprint."""
    keys = ("dimension", "pooling", "normalize", "max_seq_length", "query_prefix", "document_prefix")
    return {k: manifest[k] for k in keys}
