"""``python -m bench``: the benchmarks behind ``make bench``; results in bench/results/.

Figures (``--only`` takes a comma list; default: all):
  embed    query embedding, one thread: ours vs sentence-transformers fp32
  request  warm request p50/p99 via handler.handler (HTTP API v2 event, 64k index) + peak RSS
  cold     cold start in a fresh process: ours vs a PyTorch/sentence-transformers service
  scale    exact search at 64k/100k/1M x 384 per storage dtype vs numpy float32; anon RSS growth; plot
  build    index build docs/s on both cores: int8 bundle vs fp32 ONNX
  cores    embedding docs/s per core, 1 and 2 workers, short and long texts, threads vs processes
  incremental  64k corpus, 1% changed / 0.1% deleted / 0.1% added: rebuild time as a share of a full build
  load     `python -m search serve` under wrk, with /livez p99 meanwhile
  pagein   SearchIndex.page_in() time on the 64k index, cold page cache
  quality  known-item recall@10 / MRR@10: PyTorch fp32, ONNX fp32, ONNX int8, each storage dtype
  profile  py-spy profile of the warm request path, all threads (top lines go into the README)
  hybrid   semantic vs keyword vs hybrid figures (bench/hybrid_quality.py)
  heldout  the judged query sets under eval/: PyTorch, int8 semantic, keyword, bm25s, hybrid
           (bench/heldout.py; BENCH_HELDOUT_SETS=a,b selects sets)
  package  the zip variant's parts, unzipped and zipped, as `sam build` / `sam package` make them
  image    the container image from the real Dockerfile in Debian's engine (bench/image.py): layer
           sizes, build time, cold start through AWS's emulator, contents (skips without root/dockerd)

Needs build/model (`make model`); builds and caches build/bench/debian-64k (and -text), the fp32
export build/bench/model-fp32 and synthetic vectors under build/bench/ on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import RESULTS, ROOT, log

ORDER = (
    "embed",
    "request",
    "cold",
    "scale",
    "build",
    "cores",
    "incremental",
    "load",
    "pagein",
    "quality",
    "profile",
    "hybrid",
    "heldout",
    "package",
    "image",
)


def _figures() -> dict:
    from bench import cores, embed, image, incremental, package, quality, request, scale, system

    def hybrid(quick: bool) -> dict:
        from bench import hybrid_quality
        from bench.common import INDEX_64K, MODEL, TEXT_INDEX_64K, ensure_index

        ensure_index(INDEX_64K)
        ensure_index(TEXT_INDEX_64K, no_title=True)
        sizes: dict[str, Any] = {"name_sample": 200, "known_item_sample": 300, "latency_queries": 60} if quick else {}
        return hybrid_quality.run(INDEX_64K, MODEL, TEXT_INDEX_64K, progress=log, **sizes)

    def heldout(quick: bool) -> dict:
        from bench import heldout as sets

        return sets.measure(quick)

    return {
        "embed": embed.measure,
        "request": request.measure_warm,
        "cold": request.measure_cold,
        "scale": scale.measure,
        "build": system.measure_build,
        "cores": cores.measure,
        "incremental": incremental.measure,
        "load": system.measure_load,
        "pagein": system.measure_pagein,
        "quality": quality.measure,
        "profile": request.measure_profile,
        "hybrid": hybrid,
        "heldout": heldout,
        "package": package.measure,
        "image": image.measure,
    }


def _meta(quick: bool, ran: list[str]) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "quick": quick,
        "figures_run": ran,
        "shared_machine": True,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated figures (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated figures to leave out")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (for development)")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite README.md and the plot")
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and the plot from latest.json")
    args = parser.parse_args(argv)
    wanted = [] if args.report_only else [f.strip() for f in args.only.split(",") if f.strip()]
    skip = {f.strip() for f in args.skip.split(",") if f.strip()}
    unknown = sorted(set(wanted) - set(ORDER)) + sorted(skip - set(ORDER))
    if unknown:
        print(f"error: unknown figure(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    figures = _figures()
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    data = json.loads(latest.read_text()) if latest.is_file() else {"results": {}, "runs": {}}
    ran, failed = [], []
    for name in [f for f in ORDER if f in wanted and f not in skip]:
        log(f"== {name}")
        t0 = time.monotonic()
        try:
            result = figures[name](args.quick)
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            log(f"{name} failed: {exc}")
            failed.append(name)
            continue
        prefix = {"request": ("request.", "memory.peak", "memory.rss"), "scale": ("scale.", "memory.anon")}.get(
            name, (f"{name}.",)
        )
        if name == "heldout":  # only the sets this run measured (BENCH_HELDOUT_SETS)
            from bench.heldout import result_prefixes

            prefix = result_prefixes()
        data["results"] = {k: v for k, v in data["results"].items() if not k.startswith(prefix)}
        data["results"].update(result)
        data["runs"][name] = {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - t0, 1),
            "quick": args.quick,
            "command": f"python -m bench --only {name}" + (" --quick" if args.quick else ""),
        }
        for key, value in result.items():
            log(f"  {key} = {value}")
        ran.append(name)
        latest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")  # keep what finished
    if not args.report_only:  # a re-render measures nothing: the figures keep their run's commit and date
        data["meta"] = _meta(args.quick, ran)
        latest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if not args.no_report:
        from bench import report

        report.plot(data["results"], RESULTS / report.PLOT)
        log(f"wrote {report.write_readme(data)}")
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
