"""Text -> unit vector with ``tokenizers`` + ``onnxruntime`` (no PyTorch at run time).

Why one text per run for quantised bundles: dynamic int8 quantisation computes
activation scales over the whole input tensor, so the other texts of a batch
change a text's vector.  One text per run keeps every vector independent of its
batch-mates (and is no slower on a couple of cores: no padding is computed).
fp32 bundles are batch-invariant, so they may run padded batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from search.errors import EncodeError, ModelLoadError
from search.model.bundle import ModelBundle
from search.model.cpu import available_cpus

QUERY, DOCUMENT = "query", "document"
# onnxruntime's fused SkipLayerNormalization kernel is slower on the quantised graph than the Add +
# LayerNormalization it replaces.  Measured, one thread, the shipped int8 bundle, per text: 9 tokens
# 1.51 -> 1.39 ms, 64 tokens 7.36 -> 6.35 ms, 128 tokens 14.6 -> 13.1 ms.  The vectors move at int8
# rounding level only (mean cosine 0.99975 between the two; export gate vs PyTorch 0.99567 -> 0.99568;
# known-item MRR@10 99.05% -> 99.21% of PyTorch).  Indexes record it (``session_settings``).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# The tokenizer normalises the whole string before it truncates to max_seq_length tokens: a 100 MB
# record drove a build past 6 GB.  It is handed a prefix of CHARS_PER_TOKEN x max_seq_length
# characters (8192 for 256 tokens) instead, and the result is checked to be what the whole text
# gives (see _encode); only texts that fail the check are tokenized again from a 4x longer prefix.
# Measured on the 63,956 texts of debian-bookworm-packages.jsonl.gz (title + text, as built): the
# 1,310 that reach 256 tokens need at most 1,647 characters (p99 1,373, median 1,111); token ids of
# capped and whole texts identical for all 63,956, none tokenized twice.
CHARS_PER_TOKEN = 32
_SPACES = (" ", "\n", "\t", "\r")


class Encoder:
    """Loaded once per process; ``embed`` is thread-safe (onnxruntime's ``run`` is)."""

    loads = 0  # how many encoders this process has built; tests check "loaded once"

    def __init__(self, bundle: ModelBundle, *, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.bundle = bundle
        self.threads = threads or available_cpus()
        try:
            tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ModelLoadError(f"{bundle.tokenizer_path}: cannot load tokenizer ({exc})") from None
        # The shipped tokenizer.json may pad everything to 128 and truncate at 128;
        # the manifest's max length wins, and single texts are never padded.
        tokenizer.enable_truncation(max_length=bundle.max_seq_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._max_tokens = bundle.max_seq_length
        self._max_chars = CHARS_PER_TOKEN * bundle.max_seq_length
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(bundle.model_path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
        except Exception as exc:
            raise ModelLoadError(f"{bundle.model_path}: onnxruntime cannot load the model ({exc})") from None
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_name = self._session.get_outputs()[0].name
        Encoder.loads += 1

    @classmethod
    def load(cls, folder, *, threads: int | None = None) -> Encoder:
        return cls(ModelBundle.load(folder), threads=threads)

    @property
    def dimension(self) -> int:
        return self.bundle.dimension

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    @property
    def session_settings(self) -> dict:
        """What besides the model decides the vectors (recorded in index manifests)."""
        return {"disabled_optimizers": list(DISABLED_OPTIMIZERS)}

    @property
    def batch_invariant(self) -> bool:
        return not self.bundle.quantized

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text], kind=QUERY)[0]

    def embed(self, texts: Sequence[str], *, kind: str = DOCUMENT, batch_size: int = 1) -> np.ndarray:
        """Unit vectors, shape (len(texts), dimension), float32.

        ``batch_size > 1`` is honoured only for batch-invariant (fp32) bundles.
        """
        prefix = self.bundle.query_prefix if kind == QUERY else self.bundle.document_prefix
        prepared = [prefix + _check_text(t, i) for i, t in enumerate(texts)]
        if not self.batch_invariant:
            batch_size = 1
        out = np.empty((len(prepared), self.dimension), dtype=np.float32)
        for start in range(0, len(prepared), max(1, batch_size)):
            chunk = prepared[start : start + batch_size]
            out[start : start + len(chunk)] = self._run(chunk)
        return out

    def embed_stream(self, texts: Iterable[str], *, workers: int = 1, kind: str = DOCUMENT) -> Iterator[np.ndarray]:
        """Vectors in input order, one run per text, ``workers`` runs in flight (for index builds)."""
        if workers <= 1:
            for text in texts:
                yield self.embed([text], kind=kind)[0]
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # Bounded look-ahead keeps memory flat on large corpora.
            pending: list = []
            for text in texts:
                pending.append(pool.submit(self.embed, [text], kind=kind))
                if len(pending) >= workers * 8:
                    yield pending.pop(0).result()[0]
            for fut in pending:
                yield fut.result()[0]

    def _encode(self, text: str):
        """``tokenizer.encode(text)``, from a prefix of the text where that gives the same tokens."""
        cap = self._max_chars
        while len(text) > cap:
            encoding = self._tokenizer.encode(text[:cap])
            if self._complete(encoding, text, cap):
                return encoding
            cap *= 4
        return self._tokenizer.encode(text)

    def _complete(self, encoding, text: str, cap: int) -> bool:
        """Whether the tokens of ``text[:cap]`` are those of the whole ``text``: the truncation kept
        max_seq_length tokens, all of them ending before a whitespace inside the prefix.  The BERT
        normaliser and pre-tokenizer work character by character and split at whitespace, so what
        follows that whitespace cannot change them."""
        if len(text) <= cap:
            return True
        if len(encoding.ids) < self._max_tokens:
            return False
        last_end = max((end for _start, end in encoding.offsets), default=0)
        return last_end <= max(text.rfind(space, 0, cap) for space in _SPACES)

    def _run(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            encodings = [self._encode(texts[0])]
        else:
            encodings = self._tokenizer.encode_batch([t[: self._max_chars] for t in texts])
            encodings = [
                e if self._complete(e, t, self._max_chars) else self._encode(t) for e, t in zip(encodings, texts)
            ]
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        # Feed only what the graph declares (some exports drop token_type_ids).
        hidden = self._session.run([self._output_name], {n: feeds[n] for n in self._input_names})[0]
        if hidden.ndim == 3:
            hidden = _pool(hidden.astype(np.float32, copy=False), mask, self.bundle.pooling)
        if self.bundle.normalize:
            norms = np.linalg.norm(hidden, axis=1, keepdims=True)
            hidden = hidden / np.maximum(norms, 1e-12)
        return hidden.astype(np.float32, copy=False)


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "cls":
        return hidden[:, 0, :]
    weights = mask[:, :, None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _check_text(text, position: int) -> str:
    if not isinstance(text, str):
        raise EncodeError(f"text #{position} is {type(text).__name__}, not a string")
    if not text.strip():
        raise EncodeError(f"text #{position} is empty or whitespace only")
    return text
