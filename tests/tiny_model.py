"""A tiny model bundle for the fast test tier: a real bundle (manifest, tokenizer.json, model.onnx)
that the real `Encoder` loads, so everything after the encoder runs its shipped code.

The model is a word-level tokenizer over the demo corpus's words and one embedding lookup per token;
the encoder's own mean pooling and normalisation make each text the mean of its words' random
vectors.  Texts that share words are close, texts that share none are near orthogonal: enough for
tests of search, ranking plumbing, filters, paging, storage and serving, where the behaviour does
not depend on the real model's meaning.  Tests about what the real model finds keep `model_dir`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from search.fileutil import describe_files, write_json_atomic
from search.index.format import MANIFEST_NAME
from search.model.bundle import BUNDLE_FORMAT, compute_fingerprint, encoding_settings

TINY_DIMENSION = 64
SPECIAL_TOKENS = ("[PAD]", "[UNK]")
WORD_RE = re.compile(r"\w+")


def vocabulary(texts) -> list[str]:
    words = {w for text in texts for w in WORD_RE.findall(text.lower())}
    return list(SPECIAL_TOKENS) + sorted(words)


def _tokenizer_json(vocab: list[str]) -> str:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tokenizer = Tokenizer(WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer.to_str()


def _model_onnx(vocab_size: int, dimension: int, seed: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab_size, dimension)).astype(np.float32)
    table[0] = 0.0  # [PAD]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0)],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dimension])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.tiny_model")
    model.ir_version = 8
    return model.SerializeToString()


def write_tiny_bundle(folder: Path, texts, *, dimension: int = TINY_DIMENSION, seed: int = 7) -> Path:
    """A model bundle at ``folder`` whose vocabulary is the words of ``texts``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(texts)
    (folder / "tokenizer.json").write_text(_tokenizer_json(vocab), encoding="utf-8")
    (folder / "model.onnx").write_bytes(_model_onnx(len(vocab), dimension, seed))
    manifest = {
        "format": BUNDLE_FORMAT,
        "source_model": "tests/tiny_model.py",
        "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
        "dimension": dimension,
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "query_prefix": "",
        "document_prefix": "",
        "quantization": None,
        "files": describe_files(folder, ["model.onnx", "tokenizer.json"]),
    }
    manifest["fingerprint"] = compute_fingerprint(manifest["files"], encoding_settings(manifest))
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return folder


def demo_texts(corpus: Path) -> list[str]:
    with open(corpus, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    return [" ".join(str(v) for v in rec.values() if isinstance(v, str)) for rec in records]
