"""The quality gate: embed a verification set with the PyTorch fp32 original and with the bundle
*through the shipped encoder*, and refuse a bundle whose vectors drift too far."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from export.common import GateError

VERIFICATION = Path(__file__).resolve().parents[1] / "verification"
DEFAULT_VERIFY_FILE = VERIFICATION / "sentences.txt"
RECALL_K = 10


def load_verification_texts(extra: Path | None, limit: int | None) -> list[str]:
    """The shipped set (or an even spread of ``limit`` of it, which keeps the mix of short
    and long texts) plus every text of ``extra``."""
    texts = [t.strip() for t in DEFAULT_VERIFY_FILE.read_text(encoding="utf-8").splitlines() if t.strip()]
    if limit and limit < len(texts):
        texts = [texts[round(i * (len(texts) - 1) / max(1, limit - 1))] for i in range(limit)]
    if extra is not None:
        texts += [t.strip() for t in extra.read_text(encoding="utf-8").splitlines() if t.strip()]
    return list(dict.fromkeys(texts))


def torch_reference(model, tokenizer, texts: list[str], pooling: str, max_len: int) -> np.ndarray:
    """fp32 PyTorch vectors, pooled exactly as sentence-transformers does."""
    import torch

    inputs = ("input_ids", "attention_mask", "token_type_ids")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
    with torch.no_grad():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            hidden = model(**{k: v for k, v in enc.items() if k in inputs}).last_hidden_state
            if pooling == "cls":
                vec = hidden[:, 0]
            else:
                m = enc["attention_mask"].unsqueeze(-1).float()
                vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(vec, dim=1).numpy()
    return out


def bundle_vectors(folder: Path, texts: list[str], threads: int | None) -> np.ndarray:
    """Embed through the shipped encoder (one text per run), with a progress count."""
    from search.model.encoder import Encoder

    encoder = Encoder.load(folder, threads=threads)
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    tty, step = sys.stderr.isatty(), 50
    for start in range(0, len(texts), step):
        out[start : start + step] = encoder.embed(texts[start : start + step], kind="document")
        done = min(start + step, len(texts))
        print(
            f"\r  embedded {done}/{len(texts)}" if tty else f"  embedded {done}/{len(texts)}",
            end="" if tty and done < len(texts) else "\n",
            file=sys.stderr,
            flush=True,
        )
    return out


def compare(reference: np.ndarray, candidate: np.ndarray, k: int = RECALL_K) -> dict:
    cos = np.sum(reference * candidate, axis=1)
    k = min(k, len(reference) - 1)
    recall = 1.0
    if k > 0:

        def neighbours(v):
            sims = v @ v.T
            np.fill_diagonal(sims, -np.inf)
            return np.argsort(-sims, axis=1, kind="stable")[:, :k]

        ref_nn, cand_nn = neighbours(reference), neighbours(candidate)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_nn, cand_nn)]))
    return {
        "mean_cosine": round(float(cos.mean()), 6),
        "min_cosine": round(float(cos.min()), 6),
        "recall_at_10": round(recall, 6),
        "texts": len(reference),
    }


def check(figures: dict, min_mean_cosine: float, min_min_cosine: float) -> None:
    """Raise GateError naming the first threshold the figures miss."""
    if figures["mean_cosine"] < min_mean_cosine:
        raise GateError(f"mean cosine {figures['mean_cosine']:.4f} < --min-mean-cosine {min_mean_cosine}")
    if figures["min_cosine"] < min_min_cosine:
        raise GateError(f"min cosine {figures['min_cosine']:.4f} < --min-min-cosine {min_min_cosine}")
