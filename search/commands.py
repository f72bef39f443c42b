"""The commands of ``python -m search`` (build, merge, query, info, serve, upload, eval): each takes the
parsed arguments (``search/cli.py``) with their settings resolved and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

from search.cli_args import _endpoint_url, _filters, port_problem
from search.errors import ConfigError, SearchError
from search.settings import SPEC, Settings


def cmd_build(args) -> int:
    from search.index.builder import BuildOptions
    from search.index.corpus import CorpusSpec
    from search.model.encoder import Encoder

    fields = tuple(f.strip() for f in (args.fields or "").split(",") if f.strip())
    spec = CorpusSpec(
        id_field=args.id_field,
        text_field=args.text_field,
        title_field=args.title_field or None,
        embed_title=not args.no_title,
        fields=fields,
    )
    settings = Settings.resolve(threads=args.threads)
    workers = settings.threads or __import__("search.model.cpu", fromlist=["x"]).available_cpus()
    # One text per run, several runs in flight, one onnxruntime thread each: keeps both cores
    # busy without batching (batches would change int8 vectors, see encoder.py).
    encoder = Encoder.load(args.model, threads=1)
    from search.index import pipeline
    from search.index.records import parse_shard

    shard = parse_shard(args.shard) if args.shard else None
    outcome = pipeline.build(
        args.corpus,
        args.out,
        encoder,
        spec,
        BuildOptions(
            dtype=args.dtype,
            workers=workers,
            skip_bad=args.skip_bad,
            show_progress=not args.quiet,
            scan_copy=not args.no_scan_copy,
            prefilter=not args.no_prefilter,
            force=args.force,
            max_record_bytes=args.max_record_bytes,
            title_vectors=not args.no_title_vectors,
        ),
        shard=shard,
        reuse=None if args.no_reuse else (args.reuse or pipeline.DEFAULT),
    )
    print(pipeline.summary(outcome, "built shard" if shard else "built"))
    return 0


def cmd_merge(args) -> int:
    from search.index import pipeline
    from search.index.builder import BuildOptions

    options = BuildOptions(
        show_progress=not args.quiet,
        scan_copy=not args.no_scan_copy,
        prefilter=not args.no_prefilter,
        force=args.force,
    )
    outcome = pipeline.merge(args.shards, args.out, options)
    print(pipeline.summary(outcome, "merged"))
    return 0


def cmd_query(args) -> int:
    from search.searcher import Searcher

    filters = _filters(args.filter)  # a malformed --filter is a usage error, before any loading
    settings = getattr(args, "settings", None) or Settings.resolve(threads=args.threads)
    searcher = Searcher.open(
        args.model,
        args.index,
        threads=settings.threads,
        cache_size=0,
        hybrid_candidates=settings.hybrid_candidates,
        sentence_share=settings.hybrid_sentence_share,
    )
    result = searcher.search(
        args.text, k=args.k, offset=args.offset, min_score=args.min_score, filters=filters, mode=args.mode
    )
    if args.json:
        print(
            json.dumps(
                {
                    "query": args.text,
                    "mode": result.mode,
                    "results": result.hits,
                    "timing_ms": result.timing_ms,
                    **({"note": result.note} if result.note else {}),
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    if not result.hits:
        print("no results")
        return 0
    width = max(len(h["id"]) for h in result.hits)
    for rank, hit in enumerate(result.hits, start=1 + args.offset):
        print(f"{rank:>3}  {hit['score']:.3f}  {hit['id']:<{width}}  {hit['title']}  [{'+'.join(hit['signals'])}]")
    print(f"({result.mode}: " + ", ".join(f"{v:.1f} ms {n}" for n, v in result.timing_ms.items() if n != "total") + ")")
    return 0


def cmd_info(args) -> int:
    from search.index.reader import SearchIndex

    index = SearchIndex.open(args.index, verify=args.verify)
    m = index.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    size = sum(f["bytes"] for f in m["files"].values())
    corpus = m.get("corpus", {})
    print(f"index {args.index} (format {m['format']}, version {m['version']})")
    print(f"  {m['count']} items, {m['dimension']}-dimensional {m['dtype']} vectors, {size / 1e6:.1f} MB on disk")
    print(f"  built {m['built_at']} from {corpus.get('file')} ({corpus.get('skipped', 0)} bad records skipped)")
    print(
        f"  model {m['model']['source_model']}, fingerprint {m['model']['fingerprint'][:12]}, "
        f"quantization {'int8' if m['model'].get('quantization') else 'none'}"
    )
    if m.get("scan"):
        how = "compiled int8 kernel" if index.kernel.scanned else "not used here: the compiled int8 kernel is not built"
        print(f"  int8 scan copy: {', '.join(m['scan']['files'])} ({how})")
    if m.get("prefilter"):
        how = (
            "compiled int4 kernel" if index.prefilter is not None else "not used here: the compiled kernel is not built"
        )
        print(f"  int4 prefilter copy: {', '.join(m['prefilter']['files'])} ({how})")
    if m.get("titles"):
        print(
            f"  title vectors: {', '.join(m['titles']['files'])} (hybrid, keyword-style queries: the better of document and title)"
        )
    for name in m["fields"]:
        top = ", ".join(f"{v or '(empty)'} ({c})" for v, c in index.metadata.field_values(name, limit=5))
        print(f"  field {name}: {top}")
    for name, f in sorted(m["files"].items()):
        print(f"  file {name}: {f['bytes']} bytes, sha256 {f['sha256'][:16]}…")
    if args.verify:
        print("  all sha256 checksums verified")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from search.model.bundle import ModelBundle

    if problem := port_problem(args.host, args.port):
        raise SearchError(problem)
    settings = args.settings
    ModelBundle.load(settings.model_dir)  # fail here with one line, not later in a worker
    if not settings.index_uri.startswith("s3://") and not (Path(settings.index_uri) / "manifest.json").is_file():
        raise SearchError(f"{settings.index_uri}: no index here (build one with `python -m search build`)")
    # Each worker process builds the app from the environment: hand it exactly these settings.
    os.environ.update(_settings_env(settings))
    uvicorn.run(
        "search.serve.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
    )  # the app logs requests, without query strings
    return 0


def _settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name, (var, _default, _parse) in SPEC.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, tuple):
            value = ",".join(value)
        env[var] = str(value)
    return env


def cmd_upload(args) -> int:
    if args.endpoint_url is None:  # boto3 reads these itself: check them the same way
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(var):
                try:
                    _endpoint_url(os.environ[var])
                except argparse.ArgumentTypeError as exc:
                    raise ConfigError(f"{var}: {exc}") from None
    from search.storage import s3 as storage

    if args.model_bundle:
        from search.model.bundle import ModelBundle

        folder, what = args.model_bundle, "model bundle"
        ModelBundle.load(folder)  # refuse to publish a broken bundle
    else:
        from search.index.reader import SearchIndex

        folder, what = args.index, "index"
        SearchIndex.open(folder, verify=True).close()  # refuse to publish a corrupt index
    report = storage.upload_folder(
        folder, args.destination, endpoint_url=args.endpoint_url, show_progress=not args.quiet, prune=args.prune
    )
    print(
        f"uploaded {what} {folder} version {report.version} to {report.uri}: {len(report.uploaded)} files sent "
        f"({report.bytes_sent / 1e6:.1f} MB), {len(report.unchanged)} unchanged"
        + (f", {report.pruned} old objects pruned" if args.prune else "")
        + f" in {report.seconds:.1f}s"
    )
    return 0


# `search eval`: search quality on the user's own queries (search/evaluation.py, docs/quality.md).


def _listing(unknown: dict[str, list[int]], limit: int = 10) -> str:
    def lines(numbers: list[int]) -> str:
        return ("line " if len(numbers) == 1 else "lines ") + ", ".join(map(str, numbers))

    shown = [f"{i!r} ({lines(n)})" for i, n in sorted(unknown.items(), key=lambda kv: kv[1][0])[:limit]]
    more = len(unknown) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _open_judged(args):
    """The query file's cases that the index can judge, warnings about the rest, and a searcher
    (for ``search eval`` and ``search tune``); a bad file fails before the model loads."""
    from search import evaluation as ev
    from search.errors import EvalError
    from search.searcher import Searcher

    cases = ev.load_queries(args.queries)
    settings = getattr(args, "settings", None) or Settings.resolve(threads=args.threads)
    searcher = Searcher.open(
        args.model,
        args.index,
        threads=settings.threads,
        cache_size=len(cases) + 1,  # each query is embedded once, whatever the modes or shares
        hybrid_candidates=settings.hybrid_candidates,
        sentence_share=settings.hybrid_sentence_share,
    )
    try:
        metadata = searcher.index.metadata
        kept, unknown = ev.check_ids(cases, lambda item_id: metadata.row_of(item_id) is not None)
        warnings = []
        if unknown:
            message = f"{len(unknown)} accepted id(s) not in the index: {_listing(unknown)}"
            if args.strict:
                raise EvalError(message, path=args.queries)
            warnings.append(f"{args.queries}: {message}")
        left_out = sorted({c.line for c in cases} - {c.line for c in kept})
        if left_out:
            warnings.append(
                f"{args.queries}: {len(left_out)} queries left out, none of their accepted ids is in the index "
                f"(line{'s' if len(left_out) > 1 else ''} {', '.join(map(str, left_out[:20]))}"
                + (" ..." if len(left_out) > 20 else "")
                + ")"
            )
        repeated = ev.repeats(kept)
        if repeated:
            shown = ", ".join(f"line {line} repeats line {earlier}" for line, earlier in repeated[:10])
            warnings.append(
                f"{args.queries}: {len(repeated)} queries repeat an earlier one ({shown}"
                + (" ..." if len(repeated) > 10 else "")
                + "); each copy counts in the figures"
            )
        if not kept:  # the warnings are not printed: the error names the ids itself
            raise EvalError(
                f"no query has an accepted id in this index ({len(unknown)} id(s) not in it: {_listing(unknown)})",
                path=args.queries,
            )
    except BaseException:
        searcher.index.close()
        raise
    return kept, warnings, searcher


def _check_details(details: str, queries: str) -> None:
    """Fail before any search when ``--details`` cannot be written or is the query file itself."""
    from search.errors import EvalError

    path = Path(details)
    if path.is_dir():
        raise EvalError("is a folder, not a file for the misses", path=details)
    if not path.parent.is_dir():
        raise EvalError("cannot write the details file (its folder does not exist)", path=details)
    try:
        same = path.exists() and os.path.samefile(path, queries)
    except OSError:
        same = False
    if same:
        raise EvalError("is the query file: the misses would overwrite it", path=details)


def _write_details(details: str, text: str) -> None:
    """Write the misses TSV whole or not at all: a regular file (or a new one) is written beside
    itself and renamed into place, so a failed write leaves what was there; a device or a pipe
    (``/dev/stdout``) is written to directly."""
    from search.errors import EvalError

    try:
        try:
            st = os.stat(details)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(details, "w", encoding="utf-8") as fh:
                fh.write(text)
            return
        target = os.path.realpath(details) if st is not None else details  # a symlink's target is replaced
        tmp = Path(target).with_name(f".{Path(target).name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (st.st_mode & 0o777) if st else 0o666)
        try:
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # ours: O_EXCL made it
            raise
    except OSError as exc:
        raise EvalError(f"cannot write the details file ({exc.strerror or exc})", path=details) from None


def cmd_eval(args) -> int:
    from search import eval_report as report
    from search import evaluation as ev

    if args.details:
        _check_details(args.details, args.queries)
    kept, warnings, searcher = _open_judged(args)
    try:
        rankings, notes = ev.rank_with(searcher, kept, args.mode, args.k)
    finally:
        searcher.index.close()
    warnings += notes
    evaluation = ev.evaluate(rankings, [c.accepted for c in kept], args.k, [c.kind for c in kept])
    missed = ev.misses(evaluation, kept, rankings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.details:
        _write_details(args.details, report.misses_tsv(missed))
    if args.json:
        out = {
            "index": str(args.index),
            "queries_file": str(args.queries),
            "queries": len(kept),
            "modes": args.mode,
            **evaluation.as_dict(),
            "per_query": [
                {
                    "line": c.line,
                    "kind": c.kind,
                    "query": c.query,
                    "rank": {m: evaluation.scores[m][q].rank for m in args.mode},
                }
                for q, c in enumerate(kept)
            ],
            "misses": [m.as_dict() for m in missed],
            "warnings": warnings,
        }
        if args.details:
            out["details_file"] = str(args.details)
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    kinds: dict[str, int] = {}
    for c in kept:
        if c.kind:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
    print(
        f"{len(kept)} queries from {args.queries} on {args.index}, top {args.k}"
        + (f"; kinds: {', '.join(f'{k} {n}' for k, n in kinds.items())}" if kinds else "")
    )
    print()
    print("\n".join(report.format_table(evaluation)))
    if evaluation.paired:
        print()
        print(
            f"paired, query by query on reciprocal rank@{args.k} (ties dropped; exact two-sided sign test; "
            f"bootstrap {report.interval_label()} of the MRR difference):"
        )
        print("\n".join(report.format_paired(evaluation)))
    print()
    runs = len(kept) * len(args.mode)
    head = f"misses (no accepted id in the top {args.k}): {len(missed)} of {runs} query runs"
    if args.details:
        print(f"{head}, listed in {args.details}")
    else:
        print(head + (":" if missed else ""))
        for m in missed:
            print("  " + report.format_miss(m))
    return 0


def cmd_tune(args) -> int:
    from search import tuning
    from search.eval_report import format_table

    kept, warnings, searcher = _open_judged(args)
    try:
        result = tuning.tune(searcher, kept, args.k, args.grid)
    finally:
        searcher.index.close()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    setting = SPEC["hybrid_sentence_share"][0]  # the variable that sets the share
    if args.json:
        out = {"index": str(args.index), "queries_file": str(args.queries), "k": args.k, **result.as_dict()}
        out["warnings"] = warnings
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(
        f"{len(result.sentences)} sentence queries from {args.queries} on {args.index}, top {args.k} "
        f"({result.left_out} keyword-style queries left out: the share does not change them)"
    )
    print()
    print("\n".join(format_table(result.evaluation, first="share")))
    print()
    k, versus = args.k, result.versus_current
    best, current, recommended = (tuning.label(s) for s in (result.best, result.current, result.recommended))
    if versus is None:
        print(f"best: the current share {current} (MRR@{k} {result.mrr(result.current):.3f})")
    else:
        gap = versus.difference_interval
        gain = f"; 95% interval of the gain {gap[0]:+.3f} .. {gap[1]:+.3f}" if gap else ""
        print(
            f"best: share {best}, MRR@{k} {result.mrr(result.best):.3f} against {result.mrr(result.current):.3f} at "
            f"the current {current}; {versus.wins} queries better, {versus.losses} worse, {versus.ties} tied, "
            f"sign-test p = {versus.p:.3g}{gain}"
        )
    if result.recommended != result.current:
        print(f"recommended: {setting}={recommended} (or --sentence-share {recommended})")
    else:
        reason = "" if versus is None else f" (the gain is not significant at p <= {tuning.MAX_P:g})"
        print(f"recommended: keep {setting}={current}{reason}")
    return 0
