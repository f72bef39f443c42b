"""Build workers as processes (search/index/workers.py): the same vectors, bit for bit, as the
tiny_encoder in the build process; a broken model is one line."""

import io

import pytest

from search.errors import ModelLoadError
from search.index import workers
from search.index.builder import BuildOptions
from search.index.corpus import CorpusSpec
from search.index.pipeline import build
from tests.conftest import write_jsonl


def data_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def test_a_build_on_worker_processes_is_byte_identical(tmp_path, tiny_encoder, demo_records, monkeypatch):
    corpus = write_jsonl(tmp_path / "c.jsonl", demo_records[::9])
    spec = CorpusSpec(fields=("section",))
    for name, count in (("threads", 1), ("processes", 2)):
        monkeypatch.setattr(workers, "MIN_TEXTS", 0)
        monkeypatch.setattr(workers, "CHUNK_TEXTS", 7)  # several chunks per worker, out of step
        options = BuildOptions(dtype="int8", workers=count, show_progress=False)
        build(str(corpus), str(tmp_path / name), tiny_encoder, spec, options, reuse=None, stream=io.StringIO())
    assert data_files(tmp_path / "threads") == data_files(tmp_path / "processes")


def test_the_pool_keeps_input_order_and_closes_its_processes(tiny_encoder, monkeypatch):
    monkeypatch.setattr(workers, "CHUNK_TEXTS", 3)
    texts = [f"text number {i}" for i in range(20)]
    with workers.WorkerPool(tiny_encoder.bundle.path, 2, tiny_encoder.dimension) as pool:
        got = list(pool.embed_stream(iter(texts)))
        procs = pool.procs
    assert [v.tobytes() for v in got] == [v.tobytes() for v in tiny_encoder.embed(texts)]
    assert all(p.returncode == 0 for p in procs)


def test_a_broken_model_is_one_line(tmp_path, tiny_encoder):
    with pytest.raises(ModelLoadError, match=r"no model bundle manifest"):
        workers.WorkerPool(tmp_path, 2, tiny_encoder.dimension)
