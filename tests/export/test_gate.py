"""export/gate.py without a model: the thresholds it applies, and the short-text set it reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export import gate
from export.common import GateError

REPO = Path(__file__).resolve().parents[2]
PACKAGES = REPO.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"
THRESHOLDS = {"min_mean_cosine": 0.99, "min_min_cosine": 0.95, "min_short_mean_cosine": 0.999}


def figures(mean: float, low: float) -> dict:
    return {"mean_cosine": mean, "min_cosine": low, "recall_at_10": 0.9, "texts": 600}


def test_a_bundle_that_meets_every_threshold_passes():
    gate.check(figures(0.9997, 0.9988), figures(0.9997, 0.9991), THRESHOLDS)


@pytest.mark.parametrize(
    ("long", "short", "named"),
    [
        (figures(0.989, 0.99), figures(0.9997, 0.999), "mean cosine 0.989000 < --min-mean-cosine 0.99"),
        (figures(0.9997, 0.94), figures(0.9997, 0.999), "min cosine 0.940000 < --min-min-cosine 0.95"),
        # the per-tensor int8 bundle shipped until 2026-12-01: passes the long set, fails the short one
        (figures(0.995667, 0.989604), figures(0.995706, 0.98997), "short-text mean cosine 0.995706 < --min-short"),
        (figures(0.9997, 0.99), figures(0.9995, 0.93), "short-text min cosine 0.930000 < --min-min-cosine 0.95"),
    ],
)
def test_the_first_threshold_missed_is_named(long, short, named):
    with pytest.raises(GateError, match=named.replace(".", r"\.")):
        gate.check(long, short, THRESHOLDS)


def test_short_texts_are_short_distinct_and_not_in_the_long_set():
    lines = gate.SHORT_TEXTS_FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 600 and all(line == line.strip() and line for line in lines)
    assert len(set(lines)) == len(lines)
    assert max(len(line.split()) for line in lines) <= gate.SHORT_MAX_WORDS
    assert not set(lines) & set(gate.load_verification_texts(None, None))
    assert sum(len(line.split()) <= 3 for line in lines) >= 50  # query-like
    assert gate.load_short_texts(None) == lines
    spread = gate.load_short_texts(20)
    assert len(spread) == 20 and spread[0] == lines[0] and spread[-1] == lines[-1]


@pytest.mark.skipif(not PACKAGES.is_file(), reason=f"{PACKAGES} not here (the shared data folder)")
def test_short_texts_come_out_byte_identical_from_their_recipe(tmp_path):
    out = tmp_path / "short.txt"
    proc = subprocess.run(
        [sys.executable, str(REPO / "verification" / "make_short_texts.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == gate.SHORT_TEXTS_FILE.read_bytes()
