"""Names and keywords: semantic vs keyword vs hybrid ranking on the full 64k Debian corpus.

    python -m bench.hybrid_quality --index build/bench/debian-64k --model build/model \
        --known-item-index build/bench/debian-64k-text [--compare-fusion] [--json out.json]

Three figures, each per mode (semantic, keyword, hybrid), all through ``Searcher.search``:

1. name task: a fixed seeded sample of package ids; the query is the id with "-" and "_" turned
   into spaces; success = that package at rank 1.  Also reported: how many hybrid successes
   came from the exact-name rule, and hybrid's rank-1 rate from the fused ranking alone.
2. known-item task (the bench issue's): an index whose items hold the text only (no title, so
   neither side can look the title up); each sampled package's title is the query; a hit is
   that package or any package with the same text; MRR@10 and recall@10.
3. latency: p50 / p99 of ``Searcher.search`` per mode on the warm path (model and index
   loaded, embedding cache off so every query is embedded), modes interleaved query by query
   so drift on a shared machine hits them alike; hybrid p50 / semantic p50 is the figure.

``run(index_dir, model_dir, ...)`` returns a flat dict (keys listed in RESULT_KEYS) for
``make bench``; ``--compare-fusion`` adds the measurement that chose the weighted sum over
reciprocal rank fusion, and its weight (``hybrid.compare.*``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from search.fileutil import write_json_atomic
from search.hybrid import weighted_fuse
from search.index.builder import BuildOptions, build_index
from search.index.corpus import CorpusSpec
from search.index.keyword import lexical_for
from search.index.reader import SearchIndex
from search.searcher import MODES, Searcher

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"
SEED = 20240508
NAME_SAMPLE = 1000
KNOWN_ITEM_SAMPLE = 2000
LATENCY_QUERIES = 300
TOP = 10
RESULT_KEYS = (
    "hybrid.index",
    "hybrid.name.seed",
    "hybrid.known_item.index",
    "hybrid.latency.queries",
    "hybrid.name.sample",
    "hybrid.name.rank1.semantic",
    "hybrid.name.rank1.keyword",
    "hybrid.name.rank1.hybrid",
    "hybrid.name.hybrid_exact_rule_share",
    "hybrid.name.rank1.hybrid_fused_only",
    "hybrid.known_item.sample",
    "hybrid.known_item.mrr10.semantic",
    "hybrid.known_item.mrr10.keyword",
    "hybrid.known_item.mrr10.hybrid",
    "hybrid.known_item.recall10.semantic",
    "hybrid.known_item.recall10.keyword",
    "hybrid.known_item.recall10.hybrid",
    "hybrid.known_item.hybrid_vs_semantic_mrr",
    "hybrid.latency.p50_ms.semantic",
    "hybrid.latency.p50_ms.keyword",
    "hybrid.latency.p50_ms.hybrid",
    "hybrid.latency.p99_ms.semantic",
    "hybrid.latency.p99_ms.keyword",
    "hybrid.latency.p99_ms.hybrid",
    "hybrid.latency.hybrid_vs_semantic_p50",
)


def name_query(item_id: str) -> str:
    return item_id.replace("-", " ").replace("_", " ")


def _all_ids(index) -> list[str]:
    return [i for (i,) in index.metadata.fetch("SELECT id FROM items ORDER BY row")]


# -- 1. names -----------------------------------------------------------------------------------
def name_task(searcher: Searcher, sample: int = NAME_SAMPLE, seed: int = SEED, progress=None) -> dict:
    ids = _all_ids(searcher.index)
    chosen = random.Random(seed).sample(ids, min(sample, len(ids)))
    lexical_for(searcher.index)
    first = {m: 0 for m in MODES}
    exact_first = fused_first = 0
    for n, item_id in enumerate(chosen, 1):
        query = name_query(item_id)
        for mode in MODES:
            hits = searcher.search(query, k=1, mode=mode).hits
            if hits and hits[0]["id"] == item_id:
                first[mode] += 1
                if mode == "hybrid" and "exact" in hits[0]["signals"]:
                    exact_first += 1
        # the fused ranking alone, without the exact-name rule
        semantic, keyword, cosine, ideal = _candidates(searcher, query)
        fused = weighted_fuse(semantic, keyword, cosine, ideal=ideal)
        if fused and ids[fused[0].row] == item_id:
            fused_first += 1
        if progress and n % 100 == 0:
            progress(f"name task {n}/{len(chosen)}")
    total = len(chosen)
    out: dict[str, float] = {"hybrid.name.sample": total, "hybrid.name.seed": seed}
    out.update({f"hybrid.name.rank1.{m}": round(first[m] / total, 4) for m in MODES})
    out["hybrid.name.hybrid_exact_rule_share"] = round(exact_first / max(first["hybrid"], 1), 4)
    out["hybrid.name.rank1.hybrid_fused_only"] = round(fused_first / total, 4)
    return out


# -- 2. known items -------------------------------------------------------------------------------
def known_item_queries(corpus: Path, ids_in_index: set[str], sample: int, seed: int):
    """(title, {ids counted as a hit}) for packages with a unique title and non-empty text."""
    titles: dict[str, list[str]] = defaultdict(list)
    by_text: dict[str, set[str]] = defaultdict(set)
    text_of: dict[str, str] = {}
    opener = gzip.open if str(corpus).endswith(".gz") else open
    with opener(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["id"] not in ids_in_index or rec["id"] in text_of or not rec.get("text", "").strip():
                continue
            text_of[rec["id"]] = rec["text"].strip()
            by_text[rec["text"].strip()].add(rec["id"])
            titles[rec.get("title", "").strip()].append(rec["id"])
    pool = sorted((t, ids[0]) for t, ids in titles.items() if t and len(ids) == 1)
    chosen = random.Random(seed).sample(pool, min(sample, len(pool)))
    return [(title, by_text[text_of[item_id]]) for title, item_id in chosen]


class _StoredVectors:
    """Stands where the encoder stands in build_index: yields an existing index's vectors in row
    order (as tests/vectors.py does), so a title-free copy is written by the real builder code."""

    def __init__(self, index):
        self.index = index
        self.dimension = index.dimension
        self.fingerprint = index.manifest["model"]["fingerprint"]
        self.bundle = SimpleNamespace(
            source_model=index.manifest["model"]["source_model"],
            quantization=index.manifest["model"].get("quantization"),
        )

    def embed_stream(self, texts, *, workers=1, kind="document"):
        for row, _ in enumerate(texts):
            yield self.index.vector(row)


def title_free(index_dir: Path, corpus: Path, progress=None) -> Path:
    """The known-item index must not hold titles, or keyword and exact matching would look the
    title queries up directly.  An index built with --no-title embeds the text only but still
    stores the title: derive ``<name>-notitle`` beside it (same vectors, no titles; cached)."""
    index_dir = Path(index_dir)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    spec = manifest.get("spec", {})
    if not spec.get("title_field"):
        return index_dir
    if spec.get("embed_title", True):
        raise SystemExit(f"{index_dir} embeds titles: the known-item task needs a text-only index")
    out = index_dir.with_name(index_dir.name + "-notitle")
    if (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text()).get(
        "derived_from"
    ) == manifest["version"]:
        return out
    if progress:
        progress(f"deriving {out.name} (same vectors, titles left out)")
    source = SearchIndex.open(index_dir)
    fields = tuple(manifest.get("fields", ()))
    built = build_index(
        corpus,
        _StoredVectors(source),
        out,
        CorpusSpec(
            id_field=spec.get("id_field", "id"),
            text_field=spec.get("text_field", "text"),
            title_field=None,
            embed_title=False,
            fields=fields,
        ),
        BuildOptions(dtype=manifest["dtype"], skip_bad=True, show_progress=False),
    )
    copy = SearchIndex.open(out)
    same = copy.count == source.count and all(
        copy.metadata.rows([r])[r]["id"] == source.metadata.rows([r])[r]["id"]
        for r in range(0, source.count, max(1, source.count // 500))
    )
    copy.close()
    source.close()
    if not same:
        raise SystemExit(f"{out}: rows do not line up with {index_dir}; build a text-only index with --title-field ''")
    built["derived_from"] = manifest["version"]
    write_json_atomic(out / "manifest.json", built)
    return out


def known_item_task(
    searcher: Searcher, corpus: Path = SHARED_CORPUS, sample: int = KNOWN_ITEM_SAMPLE, seed: int = SEED, progress=None
) -> dict:
    if searcher.index.manifest.get("spec", {}).get("title_field"):
        raise SystemExit("the known-item index must not store titles (see title_free)")
    queries = known_item_queries(corpus, set(_all_ids(searcher.index)), sample, seed)
    rr: dict[str, list[float]] = {m: [] for m in MODES}
    for n, (title, good) in enumerate(queries, 1):
        for mode in MODES:
            ranked = [h["id"] for h in searcher.search(title, k=TOP, mode=mode).hits]
            rank = next((i for i, item_id in enumerate(ranked, 1) if item_id in good), None)
            rr[mode].append(1.0 / rank if rank else 0.0)
        if progress and n % 200 == 0:
            progress(f"known-item task {n}/{len(queries)}")
    out: dict[str, float] = {"hybrid.known_item.sample": len(queries)}
    for m in MODES:
        out[f"hybrid.known_item.mrr10.{m}"] = round(statistics.fmean(rr[m]), 4)
        out[f"hybrid.known_item.recall10.{m}"] = round(sum(r > 0 for r in rr[m]) / len(rr[m]), 4)
    out["hybrid.known_item.hybrid_vs_semantic_mrr"] = round(
        out["hybrid.known_item.mrr10.hybrid"] / out["hybrid.known_item.mrr10.semantic"], 4
    )
    return out


# -- 3. latency -----------------------------------------------------------------------------------
def latency(searcher: Searcher, queries: list[str], rounds: int = 1) -> dict:
    """Warm path, embedding cache off; each query runs once per mode, the mode order rotating."""
    searcher.cache.size = 0
    for q in queries[:20]:  # warm-up: page in the index and the keyword tables
        for mode in MODES:
            searcher.search(q, k=TOP, mode=mode)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for n, q in enumerate(queries):
            order = MODES[n % 3 :] + MODES[: n % 3]
            for mode in order:
                t0 = time.perf_counter()
                searcher.search(q, k=TOP, mode=mode)
                times[mode].append((time.perf_counter() - t0) * 1000)
    out = {}
    for m in MODES:
        out[f"hybrid.latency.p50_ms.{m}"] = round(statistics.median(times[m]), 3)
        out[f"hybrid.latency.p99_ms.{m}"] = round(float(np.percentile(times[m], 99)), 3)
    out["hybrid.latency.hybrid_vs_semantic_p50"] = round(
        out["hybrid.latency.p50_ms.hybrid"] / out["hybrid.latency.p50_ms.semantic"], 3
    )
    out["hybrid.latency.queries"] = len(queries) * rounds
    return out


# -- the choice of fusion ---------------------------------------------------------------------------
def _candidates(searcher: Searcher, query: str):
    """What Searcher.search(mode="hybrid") fuses: semantic rows, keyword (row, bm25), cosines."""
    index = searcher.index
    vec = searcher.embed_query(query)
    semantic = index.search(vec, k=searcher.hybrid_candidates)
    keyword, ideal = lexical_for(index).ranked(query, limit=searcher.hybrid_candidates)
    cosine = {h.row: h.score for h in semantic}
    for h in keyword:
        if h.row not in cosine:
            cosine[h.row] = float(index.vector(h.row) @ vec)
    return [h.row for h in semantic], [(h.row, h.score) for h in keyword], cosine, ideal


def rrf(lists: list[list[int]], k: int) -> list[int]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the lists holding an item."""
    score: dict[int, float] = defaultdict(float)
    for rows in lists:
        for rank, row in enumerate(rows, 1):
            score[row] += 1.0 / (k + rank)
    return sorted(score, key=lambda r: (-score[r], r))


def compare_fusion(searcher: Searcher, queries: list[tuple[str, set[str]]], weights=(0.25, 0.5, 0.75, 1.0)) -> dict:
    """MRR@10 of each side alone, RRF (k = 5, 20, 60) and the weighted sum for several semantic
    keyword weights (coverage fusion, see search/hybrid.py), all from the same candidate lists and without the exact-name rule (so the fusion
    itself is compared)."""
    ids = _all_ids(searcher.index)
    rr = defaultdict(list)
    for query, good in queries:
        semantic, keyword, cosine, ideal = _candidates(searcher, query)
        variants = {"semantic": semantic, "keyword": [r for r, _ in keyword]}
        for k in (5, 20, 60):
            variants[f"rrf_k{k}"] = rrf([semantic, [r for r, _ in keyword]], k)
        for w in weights:
            fused = weighted_fuse(semantic, keyword, cosine, ideal=ideal, keyword_weight=w)
            variants[f"coverage_{w}"] = [f.row for f in fused]
        for name, rows in variants.items():
            rank = next((i for i, r in enumerate(rows[:TOP], 1) if ids[r] in good), None)
            rr[name].append(1.0 / rank if rank else 0.0)
    return {name: round(statistics.fmean(v), 4) for name, v in rr.items()}


def run(
    index_dir,
    model_dir,
    known_item_index=None,
    *,
    corpus: Path = SHARED_CORPUS,
    name_sample: int = NAME_SAMPLE,
    known_item_sample: int = KNOWN_ITEM_SAMPLE,
    latency_queries: int = LATENCY_QUERIES,
    compare: bool = False,
    seed: int = SEED,
    progress=None,
) -> dict:
    """All hybrid figures; ``known_item_index`` (text only, no titles) is optional."""
    say = progress or (lambda msg: None)
    results: dict = {"hybrid.index": str(index_dir)}
    searcher = Searcher.open(model_dir, index_dir, threads=1)
    say("name task")
    results.update(name_task(searcher, name_sample, seed, say))
    ids = _all_ids(searcher.index)
    rng = random.Random(seed + 1)
    titles = [r["title"] for r in searcher.index.metadata.rows(rng.sample(range(len(ids)), latency_queries)).values()]
    mixed = [name_query(i) for i in rng.sample(ids, latency_queries // 2)] + titles[: latency_queries // 2]
    rng.shuffle(mixed)
    say("latency")
    results.update(latency(searcher, mixed))
    if compare:
        say("fusion comparison: name task")
        sample = random.Random(seed).sample(ids, min(name_sample, len(ids)))
        for name, mrr in compare_fusion(searcher, [(name_query(i), {i}) for i in sample]).items():
            results[f"hybrid.compare.name_mrr10.{name}"] = mrr
    searcher.index.close()
    if known_item_index:
        known_item_index = title_free(Path(known_item_index), corpus, say)
        results["hybrid.known_item.index"] = str(known_item_index)
        known = Searcher.open(model_dir, known_item_index, threads=1)
        say("known-item task")
        results.update(known_item_task(known, corpus, known_item_sample, seed, say))
        if compare:
            say("fusion comparison: known-item task")
            queries = known_item_queries(corpus, set(_all_ids(known.index)), known_item_sample, seed)
            for name, mrr in compare_fusion(known, queries).items():
                results[f"hybrid.compare.known_item_mrr10.{name}"] = mrr
        known.index.close()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hybrid_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="build/bench/debian-64k", help="64k index, title + text (default: %(default)s)")
    p.add_argument("--model", default="build/model", help="model bundle (default: %(default)s)")
    p.add_argument("--known-item-index", default=None, help="64k index built with --title-field '' (text only)")
    p.add_argument("--corpus", default=str(SHARED_CORPUS), help="the corpus, for the known-item titles")
    p.add_argument("--name-sample", type=int, default=NAME_SAMPLE)
    p.add_argument("--known-item-sample", type=int, default=KNOWN_ITEM_SAMPLE)
    p.add_argument("--latency-queries", type=int, default=LATENCY_QUERIES)
    p.add_argument("--compare-fusion", action="store_true", help="also measure RRF against weighted sums")
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args(argv)
    started = time.monotonic()
    results = run(
        args.index,
        args.model,
        args.known_item_index,
        corpus=Path(args.corpus),
        name_sample=args.name_sample,
        known_item_sample=args.known_item_sample,
        latency_queries=args.latency_queries,
        compare=args.compare_fusion,
        progress=lambda msg: print(f"[{time.monotonic() - started:6.0f}s] {msg}", file=sys.stderr),
    )
    results["hybrid.seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
