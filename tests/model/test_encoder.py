import numpy as np
import pytest

from search.errors import EncodeError, ModelLoadError
from search.model.encoder import Encoder

TEXTS = [
    "cozy farming game with co-op",
    "A free, open-source real-time strategy game of ancient warfare with detailed 3D graphics.",
    "tmux",
    "chess engine",
]


def test_vectors_are_unit_length(encoder):
    vectors = encoder.embed(TEXTS)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_text_does_not_depend_on_its_batch_mates(encoder):
    """Quantised bundles run one text per run: the same vector alone or among others, bit for bit."""
    alone = np.stack([encoder.embed([t])[0] for t in TEXTS])
    together = encoder.embed(TEXTS, batch_size=64)
    assert np.array_equal(alone, together)
    streamed = np.stack(list(encoder.embed_stream(TEXTS * 3, workers=2)))
    assert np.array_equal(streamed, np.concatenate([alone] * 3))


def test_meaning_beats_words(encoder):
    q = encoder.embed_query("a game where you grow crops on a farm")
    docs = encoder.embed(["agriculture simulation: plant and harvest vegetables", "a library for parsing XML"])
    assert q @ docs[0] > q @ docs[1] + 0.2


def test_truncation_follows_the_manifest_not_the_tokenizer_file(encoder):
    """tokenizer.json says 128 tokens; the model was trained at 256 and the manifest says so."""
    assert encoder.bundle.max_seq_length == 256
    words = " ".join(f"word{i}" for i in range(400))
    ids = encoder._tokenizer.encode(words).ids
    assert len(ids) == 256
    short = encoder._tokenizer.encode("tmux").ids
    assert len(short) < 10  # no padding to 128 for a single text


@pytest.mark.parametrize("bad", ["", "   \n\t", None])
def test_empty_text_is_an_error(encoder, bad):
    with pytest.raises(EncodeError):
        encoder.embed(["fine", bad])


def test_missing_or_broken_bundle(tmp_path, model_dir):
    with pytest.raises(ModelLoadError, match="no model bundle manifest"):
        Encoder.load(tmp_path)
    import shutil

    broken = tmp_path / "bundle"
    shutil.copytree(model_dir, broken)
    (broken / "model.onnx").write_bytes(b"x" * (broken / "model.onnx").stat().st_size)
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        Encoder.load(broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="size differs"):
        Encoder.load(broken)
