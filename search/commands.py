"""The commands of ``python -m search`` (build, merge, query, info, serve, upload; eval and tune are in
``search/eval_commands.py``): each takes the parsed arguments (``search/cli.py``) with their settings
resolved and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
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
