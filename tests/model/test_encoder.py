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


LONG_TEXTS = {
    "words": "hello world " * 5000,
    "whitespace first": " " * 20000 + "word " * 3000,  # the prefix alone has no tokens: read further
    "words over 100 chars": ("x" * 150 + " ") * 400,  # one [UNK] per 151 characters
    "no whitespace": "a" * 50000,
    "cjk": "漢字" * 10000,
    "combining accents": ("e\u0301" * 5000 + " ") * 3,
    "no-break spaces": "word\u00a0" * 5000,
}


@pytest.mark.parametrize("name", sorted(LONG_TEXTS))
def test_a_long_text_gets_the_tokens_of_the_whole_text(encoder, name):
    """The tokenizer is handed a prefix (issue 16: a 100 MB record drove a build past 6 GB); the
    tokens are still those of the whole text, also where the prefix alone would differ."""
    text = LONG_TEXTS[name]
    assert len(text) > encoder._max_chars
    assert encoder._encode(text).ids == encoder._tokenizer.encode(text).ids


def test_a_huge_text_embeds_as_its_first_tokens(encoder):
    huge = "a strategy game of ancient warfare. " * 300_000  # 10.8 MB
    head = huge[: encoder._max_chars]
    assert np.array_equal(encoder.embed([huge]), encoder.embed([head]))
    assert np.array_equal(encoder.embed([huge, "tmux"], batch_size=2)[0], encoder.embed([head])[0])
