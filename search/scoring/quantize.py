"""Row quantisation for storage, in one place: the int8 rows of ``--dtype int8`` and of the scan
copy, and the int4 rows of the prefilter copy, each with its per-row scale and the residual norm
that the kernels' error bounds need.  The builder writes with these functions and the benchmarks
generate synthetic indexes with them, so a stored row means one thing everywhere.

Symmetric per row: ``x ~ values * scale`` with the row's largest magnitude mapped to ``levels``
(127 for int8, 7 for int4).  The residual ``||x - values * scale||`` is computed in float64 and
rounded *up* to float32: it is an error bound and must never round down.

int4 packing: byte ``j`` of a row holds dimension ``j`` in its low nibble and ``j + d/2`` in its
high nibble, each as value + 8, so the compiled kernel (``native/int8dot.c``) unpacks with a mask
and a shift.  The query side (two int8 columns per query) is ``Int8Kernel.quantize_queries``.
"""

from __future__ import annotations

import numpy as np

INT8_LEVELS = 127
NIBBLE_MAX = 7  # symmetric 4-bit values: -7..7 (stored + 8: 1..15)
NIBBLE_OFFSET = 8


def symmetric_rows(block: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, d) int8 in -levels..levels, scales (n,) float32) with ``block ~ values * scales``."""
    peak = np.abs(block).max(axis=1)
    scales = np.where(peak > 0, peak.astype(np.float64) / levels, 1.0).astype(np.float32)
    values = np.clip(np.rint(block / scales[:, None]), -levels, levels).astype(np.int8)
    return values, scales


def residual_norms(block: np.ndarray, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``||v - values x scale||`` per row, rounded up to float32 (an error bound: never round down)."""
    diff = block.astype(np.float64) - values.astype(np.float64) * scales.astype(np.float64)[:, None]
    return np.nextafter(np.linalg.norm(diff, axis=1).astype(np.float32), np.float32(np.inf))


def quantize_int8_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_int8`` for every row of ``block`` at once."""
    return symmetric_rows(block, INT8_LEVELS)


def quantize_int8(vector: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Symmetric per-row int8: ``vector ≈ q * scale``; the row's largest component maps to ±127."""
    rows, scales = quantize_int8_rows(np.asarray(vector, dtype=np.float32)[None, :])
    return rows[0], scales[0]


def quantize_int4_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed (n, d/2) uint8, scales (n,) float32, residual norms (n,) float32 rounded up) of
    float rows; ``block`` is what the index stores, as float32 (int8 rows already times their scale)."""
    block = np.asarray(block, dtype=np.float32)
    dim = block.shape[1]
    if dim % 2:
        raise ValueError(f"int4 packing needs an even dimension, not {dim}")
    nibbles, scales = symmetric_rows(block, NIBBLE_MAX)
    return pack_int4(nibbles), scales, residual_norms(block, nibbles, scales)


def pack_int4(nibbles: np.ndarray) -> np.ndarray:
    """(n, d) values in -7..7 -> (n, d/2) bytes (see the module docstring)."""
    half = nibbles.shape[1] // 2
    stored = nibbles.astype(np.uint8) + NIBBLE_OFFSET  # wraps negatives the right way: -7 + 8 = 1
    return stored[:, :half] | (stored[:, half:] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_int4``: (n, d/2) bytes -> (n, d) int8 values."""
    packed = np.asarray(packed, dtype=np.uint8)
    low = (packed & 0x0F).astype(np.int8) - NIBBLE_OFFSET
    high = (packed >> 4).astype(np.int8) - NIBBLE_OFFSET
    return np.concatenate([low, high], axis=1)
