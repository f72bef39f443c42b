#!/usr/bin/env python3
"""Measure model bundles against PyTorch fp32 the way the export gate does, plus their query time.

    HF_HUB_OFFLINE=1 python verification/compare_bundles.py BUNDLE [BUNDLE ...] [--rounds 5]

For each bundle: mean and min cosine and neighbour recall@10 against the PyTorch original on the
long set (verification/sentences.txt) and the short set (verification/short-texts.txt), the model
size, and the time to embed one short text as a query with one thread (``embed_query``, one text
per call, every text of the short set once per round after a warm-up pass).  The rounds alternate
between the bundles, so a machine that gets busier mid-run slows every bundle alike; the figures
are the medians of the rounds, wall-clock and CPU time (the process's, so time spent waiting for a
core on a shared machine is left out).  The figures for docs/decisions/ come from this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import gate  # noqa: E402
from export.source import load_torch_model, read_sentence_config, resolve_model  # noqa: E402
from search.model.encoder import Encoder  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Gate figures and short-query time of model bundles.")
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--rounds", type=int, default=5, help="timed passes over the short set per bundle")
    args = p.parse_args(argv)
    sets = {"long": gate.load_verification_texts(None, None), "short": gate.load_short_texts(None)}
    import torch

    torch.set_num_threads(1)
    folder, _ = resolve_model(None)
    pooling, max_len = read_sentence_config(folder, None)
    model, tokenizer = load_torch_model(folder)
    refs = {k: gate.torch_reference(model, tokenizer, texts, pooling, max_len) for k, texts in sets.items()}
    encoders = {b: Encoder.load(b, threads=1) for b in args.bundles}
    report = {}
    for b, enc in encoders.items():
        figures = {k: gate.compare(refs[k], enc.embed(texts, kind="document")) for k, texts in sets.items()}
        report[str(b)] = {
            "model_bytes": (b / enc.bundle.model_path.name).stat().st_size,
            **figures,
            "ms": [],
            "cpu_ms": [],
        }
    short = sets["short"]
    for enc in encoders.values():  # warm-up
        for text in short:
            enc.embed_query(text)
    for _ in range(args.rounds):
        for b, enc in encoders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for text in short:
                enc.embed_query(text)
            report[str(b)]["ms"].append((time.perf_counter() - t0) / len(short) * 1e3)
            report[str(b)]["cpu_ms"].append((time.process_time() - c0) / len(short) * 1e3)
    for r in report.values():
        for key in ("ms", "cpu_ms"):
            r[f"short_query_{key}_median"] = round(statistics.median(r[key]), 3)
            r[key] = [round(x, 3) for x in r[key]]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
