"""The quality gate: embed the verification sets with the PyTorch fp32 original and with the bundle
*through the shipped encoder*, and refuse a bundle whose vectors drift too far.

Two sets: ``sentences.txt`` (577 texts from one word to past the 256-token limit) and
``short-texts.txt`` (612 one-line texts of at most 12 words: Debian package synopses and short
queries, see ``verification/make_short_texts.py``), because what quantisation does to short
texts, the ones a search box sees, hides behind the long ones in a mixed mean."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from export.common import GateError

VERIFICATION = Path(__file__).resolve().parents[1] / "verification"
DEFAULT_VERIFY_FILE = VERIFICATION / "sentences.txt"
SHORT_TEXTS_FILE = VERIFICATION / "short-texts.txt"
SHORT_MAX_WORDS = 12
RECALL_K = 10


def _lines(path: Path) -> list[str]:
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


def _spread(texts: list[str], limit: int | None) -> list[str]:
    """An even spread of ``limit`` of ``texts`` (all of them without a limit)."""
    if limit and limit < len(texts):
        texts = [texts[round(i * (len(texts) - 1) / max(1, limit - 1))] for i in range(limit)]
    return texts


def load_verification_texts(extra: Path | None, limit: int | None) -> list[str]:
    """The shipped set (or an even spread of ``limit`` of it, which keeps the mix of short
    and long texts) plus every text of ``extra``."""
    texts = _spread(_lines(DEFAULT_VERIFY_FILE), limit)
    if extra is not None:
        texts += _lines(extra)
    return list(dict.fromkeys(texts))


def load_short_texts(limit: int | None) -> list[str]:
    """The short set (or an even spread of ``limit`` of it)."""
    return list(dict.fromkeys(_spread(_lines(SHORT_TEXTS_FILE), limit)))


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


def check(figures: dict, short: dict, thresholds: dict) -> None:
    """Raise GateError naming the first threshold the figures miss (``thresholds``: min_mean_cosine,
    min_min_cosine for every text of both sets, min_short_mean_cosine)."""
    for name, got, floor, flag in (
        ("mean cosine", figures["mean_cosine"], thresholds["min_mean_cosine"], "--min-mean-cosine"),
        ("min cosine", figures["min_cosine"], thresholds["min_min_cosine"], "--min-min-cosine"),
        (
            "short-text mean cosine",
            short["mean_cosine"],
            thresholds["min_short_mean_cosine"],
            "--min-short-mean-cosine",
        ),
        ("short-text min cosine", short["min_cosine"], thresholds["min_min_cosine"], "--min-min-cosine"),
    ):
        if got < floor:
            raise GateError(f"{name} {got:.6f} < {flag} {floor}")
