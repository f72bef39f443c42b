"""``python -m search``: build, merge, query, info, serve, upload, eval, tune.

Errors the user can fix print one line and exit 1; usage errors print one line and exit 2; a
closed stdout (``search query ... | head``) ends the command quietly with 141, like SIGPIPE;
SIGTERM ends a build or merge as Ctrl-C does (its temporary folder removed), with 143.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from search.cli_args import (
    _byte_size,
    _endpoint_url,
    _eval_modes,
    _min_score,
    _not_utf8,
    _offset,
    _port,
    _shard,
    _share,
    _shares,
    _threads,
    _top_k,
    _workers,
)
from search.commands import cmd_build, cmd_info, cmd_merge, cmd_query, cmd_serve, cmd_upload
from search.errors import ConfigError, SearchError
from search.eval_commands import cmd_eval, cmd_tune
from search.hybrid import SENTENCE_SHARE
from search.index.lines import MAX_RECORD_BYTES  # the default of --max-record-bytes
from search.settings import ARG_SETTINGS, DEFAULT_INDEX_URI, DEFAULT_MODEL_DIR, SPEC, Settings
from search.tuning import GRID, label

SHARE_VARIABLE = SPEC["hybrid_sentence_share"][0]  # SEARCH_HYBRID_SENTENCE_SHARE


def _add_eval_parser(sub, common) -> None:
    p = _judged_parser(
        sub,
        common,
        "eval",
        "measure search quality on your own queries",
        "Run each query of a query file in each mode and report hit@1, hit@k, MRR@k (with a 95% bootstrap "
        "interval) and nDCG@k per mode and per kind, paired wins and losses between modes with a sign-test "
        "p-value and the MRR difference with its interval, and the misses. "
        "Query file: one `query<TAB>accepted ids, comma-separated[<TAB>kind]` a line; # starts a comment. "
        "See docs/quality.md.",
    )
    p.add_argument(
        "--mode",
        type=_eval_modes,
        default=["hybrid", "semantic", "keyword"],
        help="comma-separated modes to compare (default: hybrid,semantic,keyword)",
    )
    p.add_argument("--details", default=None, metavar="FILE", help="write the misses here (TSV) instead of stdout")
    add_share_option(p)
    p.set_defaults(func=cmd_eval)


def _add_tune_parser(sub, common) -> None:
    p = _judged_parser(
        sub,
        common,
        "tune",
        "choose hybrid mode's sentence share on your own queries",
        "Rank the sentence queries (not the 1-3 word keyword-style ones) of a query file in hybrid "
        "mode once per sentence share, report hit@1, hit@k, MRR@k and nDCG@k per share and kind, and recommend "
        "a share: the best one when it beats the current one query by query with sign-test p <= 0.1, "
        "else the current one. Same query file as `search eval`. See docs/quality.md.",
    )
    p.add_argument(
        "--grid",
        type=_shares,
        default=GRID,
        help="comma-separated shares to try, each 0..1; the current share is always tried "
        f"(default: {','.join(map(label, GRID))})",
    )
    add_share_option(p, "the current share, which the others are compared with")
    p.set_defaults(func=cmd_tune)


def _judged_parser(sub, common, name: str, summary: str, description: str):
    """A command over a judged query file (`search eval`, `search tune`): the index, the file, k,
    JSON and strictness; the caller adds its own options."""
    p = sub.add_parser(name, help=summary, description=description)
    common(p)
    p.add_argument("--queries", required=True, help="query file: query<TAB>accepted ids[<TAB>kind] a line")
    p.add_argument("-k", type=_top_k, default=10, help="cut-off for hit@k, MRR@k and nDCG@k (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--strict", action="store_true", help="an accepted id missing from the index is an error")
    return p


def add_share_option(p, what: str = "in hybrid mode, the share of the keyword weight that sentences get") -> None:
    p.add_argument(
        "--sentence-share",
        dest="sentence_share",
        type=_share,
        default=None,
        metavar="X",
        help=f"{what}, 0..1 (default: {SHARE_VARIABLE} or {SENTENCE_SHARE:g})",
    )


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
            type=_threads,
            default=None,
            help="CPU threads, or auto (default: SEARCH_THREADS or auto: the CPUs this process may use)",
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
    p.add_argument(
        "--no-title-vectors",
        action="store_true",
        help="leave out the title vectors (each title that is more than the id, embedded alone, int8); with them "
        "hybrid ranks keyword-style queries by the better of document and title cosine",
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
        type=_shard,
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
    p.add_argument("-k", type=_top_k, default=10, help="number of results, 1-10000 (default: %(default)s)")
    p.add_argument("--offset", type=_offset, default=0, help="skip this many results (pagination)")
    p.add_argument(
        "--mode",
        default="hybrid",
        choices=["semantic", "keyword", "hybrid"],
        help="semantic (meaning), keyword (BM25 over id, title, text) or hybrid (both, fused; "
        "exact name matches first) (default: %(default)s)",
    )
    p.add_argument(
        "--min-score",
        type=_min_score,
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
    add_share_option(p)
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
        "--workers",
        type=_workers,
        default=1,
        help="processes, each with its own model copy, 1-64 (default: %(default)s)",
    )
    p.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        help="searches run in parallel per process; 0 runs "
        "them on the event loop, which then waits for each (default: SEARCH_CPU_WORKERS or 2)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default: %(default)s)")
    add_share_option(p)
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
    _add_eval_parser(sub, common)  # search eval and search tune, see their blocks above
    _add_tune_parser(sub, common)
    return parser


def _silence_stdout() -> None:
    """After a closed pipe: send what is still buffered to /dev/null, so the exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class Terminated(BaseException):
    """SIGTERM during a build or merge (``timeout``, ``docker stop``, a scheduler): raised like
    KeyboardInterrupt, so the build removes its temporary folder on the way out."""


def _terminated(signum, _frame) -> None:
    raise Terminated()


def _run(args) -> int:
    """The command, with SIGTERM as an exception while a build or merge writes (unless ignored)."""
    if args.func not in (cmd_build, cmd_merge) or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return args.func(args)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        code = _run(args)
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
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
