"""Shared fixtures.  `make test` exports the model and builds the demo index before pytest runs,
so these paths exist; running pytest by hand without them fails with the command to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DEMO_CORPUS = ROOT / "data" / "demo-games.jsonl"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"


def _need(path: Path, what: str) -> Path:
    if not (path / "manifest.json").is_file():
        pytest.fail(f"{what} missing at {path}: run `make test` (it builds it first)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _need(ROOT / "build" / "model", "model bundle")


@pytest.fixture(scope="session")
def demo_index(model_dir) -> Path:
    return _need(ROOT / "build" / "index", "demo index")


@pytest.fixture(scope="session")
def encoder(model_dir):
    from search.model.encoder import Encoder

    return Encoder.load(model_dir, threads=1)


@pytest.fixture(scope="session")
def demo_records() -> list[dict]:
    with open(DEMO_CORPUS, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_jsonl(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) + "\n")
    return path
