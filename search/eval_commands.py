"""The commands ``python -m search eval`` and ``tune``: search quality on the user's own judged queries
(search/evaluation.py, search/tuning.py, docs/quality.md). Each takes the parsed arguments
(``search/cli.py``) and returns the exit code."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from search.fileutil import write_text_atomic
from search.settings import SPEC, Settings

__all__ = ["cmd_eval", "cmd_tune"]


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
        write_text_atomic(target, text, (st.st_mode & 0o777) if st else 0o666)
    except OSError as exc:
        raise EvalError(f"cannot write the details file ({exc.strerror or exc})", path=details) from None


def cmd_eval(args) -> int:
    from search import eval_report as report
    from search import evaluation as ev

    if args.details:
        _check_details(args.details, args.queries)
    kept, warnings, searcher = _open_judged(args)
    modes, unavailable = list(args.mode), searcher.keyword_status()
    if unavailable and "keyword" in modes and len(modes) > 1:  # measure the others (keyword alone: one error line)
        modes.remove("keyword")
        warnings.append(f"keyword mode left out: keyword search is unavailable ({unavailable})")
    try:
        rankings, notes = ev.rank_with(searcher, kept, modes, args.k)
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
            "modes": modes,
            **evaluation.as_dict(),
            "per_query": [
                {
                    "line": c.line,
                    "kind": c.kind,
                    "query": c.query,
                    "rank": {m: evaluation.scores[m][q].rank for m in modes},
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
    runs = len(kept) * len(modes)
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
