"""``python -m search``: build, query, info, serve, upload, eval.

Errors the user can fix print one line and exit 1; usage errors print one line and exit 2; a
closed stdout (``search query ... | head``) ends the command quietly with 141, like SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from search.errors import ConfigError, SearchError
from search.settings import ARG_SETTINGS, DEFAULT_INDEX_URI, DEFAULT_MODEL_DIR, Settings


def _filters(pairs: list[str] | None) -> dict[str, list[str]]:
    """``["section=games", "section=x11", "lang=en"]`` -> ``{"section": ["games", "x11"], "lang": ["en"]}``."""
    out: dict[str, list[str]] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--filter {pair!r}: expected FIELD=VALUE")
        out.setdefault(name.strip(), []).extend(v for v in value.split(",") if v != "" or value == "")
    return out


from search.index.lines import MAX_RECORD_BYTES  # noqa: E402 - the default of --max-record-bytes


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
    settings = Settings.resolve(threads=args.threads)
    searcher = Searcher.open(
        args.model, args.index, threads=settings.threads, cache_size=0, hybrid_candidates=settings.hybrid_candidates
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
    for name in m["fields"]:
        top = ", ".join(f"{v or '(empty)'} ({c})" for v, c in index.metadata.field_values(name, limit=5))
        print(f"  field {name}: {top}")
    for name, f in sorted(m["files"].items()):
        print(f"  file {name}: {f['bytes']} bytes, sha256 {f['sha256'][:16]}…")
    if args.verify:
        print("  all sha256 checksums verified")
    return 0


def cmd_serve(args) -> int:
    import os

    import uvicorn

    from search.model.bundle import ModelBundle

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
    from search.settings import SPEC

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


def _endpoint_url(raw: str) -> str:
    """An S3 endpoint must be an http(s) URL with a host (boto3 raises a bare ValueError otherwise)."""
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != -1
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError("expected an http:// or https:// URL, such as http://localhost:9000")
    return raw


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _byte_size(raw: str) -> int:
    """``4096``, ``512K``, ``4M``, ``1GiB`` (binary units) -> bytes, at least 1."""
    text = raw.strip().lower()
    number = text.rstrip("bgikm")
    try:
        size = int(float(number) * _UNITS[text[len(number) :].strip()])
    except (KeyError, ValueError, OverflowError):
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError("expected a size such as 4096, 512K, 4M or 1G (bytes, binary units)")
    return size


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("expected a port number from 0 to 65535")
    return port


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


# ---------------------------------------------------------------------------------------------
# `search eval`: search quality on the user's own queries (search/evaluation.py, docs/quality.md).
# Kept in one block: the parser below only calls _add_eval_parser.


def _eval_modes(value: str) -> list[str]:
    from search.searcher import MODES

    modes = list(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"--mode {value!r}: choose from {', '.join(MODES)} (comma-separated)")
    return modes


def _eval_k(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"-k {value!r}: expected a whole number >= 1")
    return k


def _listing(unknown: dict[str, list[int]], limit: int = 10) -> str:
    def lines(numbers: list[int]) -> str:
        return ("line " if len(numbers) == 1 else "lines ") + ", ".join(map(str, numbers))

    shown = [f"{i!r} ({lines(n)})" for i, n in sorted(unknown.items(), key=lambda kv: kv[1][0])[:limit]]
    more = len(unknown) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def cmd_eval(args) -> int:
    from search import evaluation as ev
    from search.errors import EvalError
    from search.searcher import Searcher

    cases = ev.load_queries(args.queries)  # a bad file fails before the model loads
    settings = getattr(args, "settings", None) or Settings.resolve(threads=args.threads)
    searcher = Searcher.open(
        args.model,
        args.index,
        threads=settings.threads,
        cache_size=len(cases) + 1,  # semantic and hybrid embed each query once between them
        hybrid_candidates=settings.hybrid_candidates,
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
        if not kept:
            raise EvalError("no query has an accepted id in this index", path=args.queries)
        rankings, notes = ev.rank_with(searcher, kept, args.mode, args.k)
    finally:
        searcher.index.close()
    warnings += notes
    evaluation = ev.evaluate(rankings, [c.accepted for c in kept], args.k, [c.kind for c in kept])
    missed = ev.misses(evaluation, kept, rankings)
    if args.details:
        try:
            Path(args.details).write_text(ev.misses_tsv(missed), encoding="utf-8")
        except OSError as exc:
            raise EvalError(f"cannot write the details file ({exc.strerror or exc})", path=args.details) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
    print("\n".join(ev.format_table(evaluation)))
    if evaluation.paired:
        print()
        print(f"paired, query by query on reciprocal rank@{args.k} (ties dropped; exact two-sided sign test):")
        print("\n".join(ev.format_paired(evaluation)))
    print()
    runs = len(kept) * len(args.mode)
    head = f"misses (no accepted id in the top {args.k}): {len(missed)} of {runs} query runs"
    if args.details:
        print(f"{head}, listed in {args.details}")
    else:
        print(head + (":" if missed else ""))
        for m in missed:
            print("  " + ev.format_miss(m))
    return 0


def _add_eval_parser(sub, common) -> None:
    p = sub.add_parser(
        "eval",
        help="measure search quality on your own queries",
        description="Run each query of a query file in each mode and report hit@1, hit@k, MRR@k and nDCG@k "
        "per mode and per kind, paired wins and losses between modes with a sign-test p-value, and the misses. "
        "Query file: one `query<TAB>accepted ids, comma-separated[<TAB>kind]` a line; # starts a comment. "
        "See docs/quality.md.",
    )
    common(p)
    p.add_argument("--queries", required=True, help="query file (TSV, see above)")
    p.add_argument(
        "--mode",
        type=_eval_modes,
        default=["hybrid", "semantic", "keyword"],
        help="comma-separated modes to compare (default: hybrid,semantic,keyword)",
    )
    p.add_argument("-k", type=_eval_k, default=10, help="cut-off for hit@k, MRR@k and nDCG@k (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--details", default=None, metavar="FILE", help="write the misses here (TSV) instead of stdout")
    p.add_argument("--strict", action="store_true", help="an accepted id missing from the index is an error")
    p.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------------------------------------


INDEX_HELP = f"index folder (default: SEARCH_INDEX_URI or {DEFAULT_INDEX_URI})"


def resolve_settings(args, env=None) -> Settings:
    """Argument > environment variable > default, once for every command: the options that are
    settings (``ARG_SETTINGS``) get their resolved values, so each command reads ``args.model``,
    ``args.index``, ``args.out``, ``args.threads`` ... and ``args.settings`` as they apply."""
    settings = Settings.from_args(args, env)
    for dest, name in ARG_SETTINGS.items():
        if hasattr(args, dest):
            setattr(args, dest, getattr(settings, name))
    args.settings = settings
    if args.func is not cmd_serve:  # only the server reads an index from S3
        for dest in ("index", "out"):
            uri = getattr(args, dest, None)
            if dest == "out" and args.command in ("build", "merge"):
                continue  # builds and merges write to S3 too (search/index/pipeline.py)
            if isinstance(uri, str) and uri.startswith("s3://"):
                raise ConfigError(
                    f"--{dest} / SEARCH_INDEX_URI is {uri!r}: `{args.command}` works on a local index folder "
                    f"(give one with --{dest})"
                )
    return settings


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first); subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m search", description="Semantic search: build an index, query it, serve it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, index=True):
        p.add_argument(
            "--model", default=None, help=f"model bundle folder (default: SEARCH_MODEL_DIR or {DEFAULT_MODEL_DIR})"
        )
        if index:
            p.add_argument("--index", default=None, help=INDEX_HELP)
        p.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPU threads (default: SEARCH_THREADS or the CPUs this process may use)",
        )

    p = sub.add_parser(
        "build",
        help="embed a corpus into an index folder",
        description="Read a JSON Lines or CSV corpus (optionally .gz), embed every record and "
        "write an index folder atomically.",
    )
    p.add_argument(
        "--corpus", required=True, help="corpus file or s3://bucket/key: .jsonl, .ndjson or .csv, optionally .gz"
    )
    common(p, index=False)
    p.add_argument(
        "--out", default=None, help=f"index folder to write (default: SEARCH_INDEX_URI or {DEFAULT_INDEX_URI})"
    )
    p.add_argument("--id-field", default="id", help="record key holding the unique id (default: %(default)s)")
    p.add_argument("--text-field", default="text", help="record key holding the text (default: %(default)s)")
    p.add_argument(
        "--title-field", default="title", help="record key holding the title; empty for none (default: %(default)s)"
    )
    p.add_argument("--no-title", action="store_true", help="do not prepend the title to the embedded text")
    p.add_argument("--fields", default="", help="comma-separated record keys to store and filter on")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "int8"],
        help="embedding storage: float32 (default), float16 (half size), int8 (quarter size, per-row scale)",
    )
    p.add_argument(
        "--no-scan-copy",
        action="store_true",
        help="float32/float16: leave out the int8 scan copy (a quarter of the float32 size; "
        "searches read it instead of every stored vector, with the same results)",
    )
    p.add_argument(
        "--no-prefilter",
        action="store_true",
        help="leave out the int4 prefilter copy (an eighth of the float32 size; a first pass over it "
        "skips rows that cannot reach the top, with the same results)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument(
        "--max-record-bytes",
        type=_byte_size,
        default=MAX_RECORD_BYTES,
        metavar="SIZE",
        help="a corpus line (CSV: record) longer than this is a bad record, e.g. 512K, 4M (default: 1M = 1 MiB)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also replace an index at --out that is damaged or of another format version "
        "(an intact index is replaced anyway; anything that is not an index never is)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--reuse",
        default=None,
        metavar="DIR|s3://bucket/prefix/",
        help="take the vectors of unchanged texts from this index or shard folder (default: the one at --out)",
    )
    p.add_argument("--no-reuse", action="store_true", help="embed every text, reusing nothing")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build only shard I of N (records by a stable hash of the id) into the folder --out; "
        "`search merge` assembles the index",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "merge",
        help="assemble an index from shard folders",
        description="Merge the N shard folders of `search build --shard I/N` into one index, "
        "byte-identical to a single build of the corpus. Folders may be s3:// prefixes.",
    )
    p.add_argument("shards", nargs="+", metavar="SHARD", help="shard folders or s3:// prefixes, all N of them")
    p.add_argument("--out", required=True, help="index folder or s3://bucket/prefix/ to write")
    p.add_argument("--no-scan-copy", action="store_true", help="leave out the int8 scan copy (as in build)")
    p.add_argument("--no-prefilter", action="store_true", help="leave out the int4 prefilter copy (as in build)")
    p.add_argument("--force", action="store_true", help="also replace a damaged index at --out (as in build)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "query",
        help="search an index from the command line",
        description="Find the items best matching TEXT: by meaning, by keywords, or both.",
    )
    p.add_argument("text", help="the query")
    common(p)
    p.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    p.add_argument("--offset", type=int, default=0, help="skip this many results (pagination)")
    p.add_argument(
        "--mode",
        default="hybrid",
        choices=["semantic", "keyword", "hybrid"],
        help="semantic (meaning), keyword (BM25 over id, title, text) or hybrid (both, fused; "
        "exact name matches first) (default: %(default)s)",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="drop results scoring below this (cosine in "
        "semantic mode; 0..1 relative BM25 in keyword mode; 0..1 fused score in hybrid mode)",
    )
    p.add_argument(
        "--filter",
        action="append",
        metavar="FIELD=VALUE",
        help="keep items whose FIELD equals VALUE; repeat or use commas for any-of",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("info", help="describe an index", description="Print what an index manifest says.")
    p.add_argument("--index", default=None, help=INDEX_HELP)
    p.add_argument("--verify", action="store_true", help="also check every file's sha256")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "serve",
        help="serve the HTTP API locally with uvicorn",
        description="Serve the search API (the same app the Lambda handler wraps).",
    )
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes, each with its own model copy (default: %(default)s)"
    )
    p.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        help="searches run in parallel per process; 0 runs "
        "them on the event loop, which then waits for each (default: SEARCH_CPU_WORKERS or 2)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "upload",
        help="publish an index (or model bundle) folder to S3",
        description="Upload the data files, then the manifest (so readers never see a manifest "
        "naming missing files). Running functions pick the new version up on their next check.",
    )
    p.add_argument("destination", help="s3://bucket/prefix/")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--index", default=None, help=INDEX_HELP)
    what.add_argument(
        "--model", dest="model_bundle", default=None, help="upload this model bundle folder instead of an index"
    )
    p.add_argument(
        "--endpoint-url",
        type=_endpoint_url,
        default=None,
        help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set)",
    )
    p.add_argument(
        "--prune", action="store_true", help="delete data of versions other than this one and the one it replaces"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_upload)
    _add_eval_parser(sub, common)  # search eval, see its block above
    return parser


def _not_utf8(argv: list[str]) -> int | None:
    """Position of the first argument that is not valid UTF-8 (Python keeps such bytes as lone
    surrogates, which fail later wherever the text is encoded), or None."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return position
    return None


def _silence_stdout() -> None:
    """After a closed pipe: send what is still buffered to /dev/null, so the exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    bad = _not_utf8(argv)
    if bad is not None:
        print(f"error: command-line argument {bad} is not valid UTF-8", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        resolve_settings(args)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
