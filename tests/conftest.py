"""Shared fixtures.  `make test` exports the model and builds the demo index before pytest runs,
so these paths exist; running pytest by hand without them fails with the command to run.

Test tiers: a test that uses the exported model (the `model_dir`, `demo_index` or `encoder` fixture)
is marked `model`, one that starts moto's S3 server `s3`; `make test-fast` runs everything that is
neither `model`, `s3` nor `slow`.  Tests whose
behaviour does not depend on the real model use `tiny_model_dir` / `tiny_index` / `tiny_encoder`
(tests/tiny_model.py: a real bundle the real Encoder loads, built in milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DEMO_CORPUS = ROOT / "data" / "demo-games.jsonl"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"


DEMO_FIELDS = ("section", "version", "homepage")  # as `make index` builds the demo index
# Fixtures that need the exported model, or run the export itself (tests/export/test_export.py).
MODEL_FIXTURES = frozenset(
    {"model_dir", "demo_index", "encoder", "source_dir", "int8_bundle", "fp32_bundle", "cls_prefix_bundle", "st_model"}
)


# Fixtures that start moto's S3 server (tests/s3helpers.py): integration tests, not in the fast tier.
S3_FIXTURES = frozenset({"moto_url"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if MODEL_FIXTURES & used:
            item.add_marker(pytest.mark.model)
        if S3_FIXTURES & used:
            item.add_marker(pytest.mark.s3)


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
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny_model import demo_texts, write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny-model"), demo_texts(DEMO_CORPUS))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from search.model.encoder import Encoder

    return Encoder.load(tiny_model_dir, threads=1)


@pytest.fixture(scope="session")
def tiny_index(tiny_encoder, tmp_path_factory) -> Path:
    """The demo corpus built with the tiny model, with the demo index's fields."""
    from search.index.builder import BuildOptions, build_index
    from search.index.corpus import CorpusSpec

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    build_index(DEMO_CORPUS, tiny_encoder, out, CorpusSpec(fields=DEMO_FIELDS), BuildOptions(show_progress=False))
    return out


@pytest.fixture(scope="session")
def demo_records() -> list[dict]:
    with open(DEMO_CORPUS, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_jsonl(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) + "\n")
    return path
