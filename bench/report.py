"""bench/results/README.md (targets beside figures, the command for each) and the latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import RESULTS

PLOT = "search-latency.png"
PROFILE = "profile-warm-request.txt"
PROFILE_LINES = 50


def _f(results: dict, key: str, fmt: str = "{}") -> str | None:
    value = results.get(key)
    return None if value is None else fmt.format(value)


def _status(ok) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, target, status, command) for every figure present in ``r``."""
    out = []

    def add(figure, measured, target, ok, command):
        if measured is not None:
            out.append((figure, measured, target, _status(ok), f"`{command}`"))

    def g(key: str) -> Any:  # a figure is a number once its key is present (each row checks the key first)
        return r.get(key)

    if "embed.speedup" in r:
        add(
            "query embedding, one thread (median per short query)",
            f"ours {g('embed.ours_ms_p50')} ms vs sentence-transformers fp32 {g('embed.sentence_transformers_ms_p50')} ms "
            f"= **{g('embed.speedup')}x**",
            "≥ 5x faster (issue 15: quality first, from the 8x of the per-tensor bundle)",
            g("embed.speedup") >= 5,
            "python -m bench --only embed",
        )
    for key, storage in (
        ("request", "float32 storage (the default, with its int8 scan copy)"),
        ("request.int8", "int8 storage (`--dtype int8`)"),
    ):
        if f"{key}.p50_ms" not in r:
            continue
        timing = ", ".join(
            f"{k.split('.')[-1].replace('_ms_p50', '')} {v} ms"
            for k, v in sorted(r.items())
            if k.startswith(f"{key}.timing.")
        )
        add(
            f"warm request via handler.handler, HTTP API v2 event, 64k index, {storage}, one thread, query cache off",
            f"default (hybrid) mode: p50 **{g(f'{key}.p50_ms')} ms**, p99 **{g(f'{key}.p99_ms')} ms**"
            + (f" (server timing p50: {timing})" if timing else "")
            + (
                f"; `mode=semantic`: p50 **{g(f'{key}.semantic.p50_ms')} ms**, p99 **{g(f'{key}.semantic.p99_ms')} ms**"
                if f"{key}.semantic.p50_ms" in r
                else ""
            )
            + f"; {g(f'{key}.n')} distinct queries each",
            "p50 ≤ 5 ms, p99 ≤ 10 ms",
            g(f"{key}.p50_ms") <= 5 and g(f"{key}.p99_ms") <= 10,
            "python -m bench --only request",
        )
    if "cold.speedup" in r:
        add(
            "cold start: fresh process, import + load + first search via handler.handler, 64k index",
            f"ours **{g('cold.ours_s')} s** (of which `import handler` {g('cold.ours_import_s')} s; wall incl. "
            f"interpreter {g('cold.ours_wall_s')} s) vs PyTorch service "
            f"{g('cold.pytorch_s')} s (wall {g('cold.pytorch_wall_s')} s) = **{g('cold.speedup')}x**",
            "≤ 0.8 s and ≥ 5x faster",
            g("cold.ours_s") <= 0.8 and g("cold.speedup") >= 5,
            "python -m bench --only cold",
        )
    sizes = r.get("scale.sizes") or []
    if sizes:
        big = max(sizes)
        np_ms = g(f"scale.{big}.numpy_float32_ms")
        labels = {
            "int8": "int8 storage with its int4 prefilter copy (the default for `--dtype int8`)",
            "int8_no_prefilter": "int8 storage without the int4 prefilter copy (`--no-prefilter`)",
            "float32_scan": "float32 storage with its int8 scan copy and int4 prefilter copy (the default)",
            "float32_scan_no_prefilter": "float32 storage with its int8 scan copy, no int4 prefilter copy",
            "float16": "float16 storage, no scan copy",
            "float32": "float32 storage, no scan copy",
            "int8_onnxruntime": "int8 storage, onnxruntime MatMulInteger (where int8dot.c is not built)",
        }
        for dtype, label in labels.items():
            one, batch = g(f"scale.{big}.{dtype}_ms"), g(f"scale.{big}.{dtype}_batch8_ms_per_query")
            if one is None:
                continue
            ratio1 = np_ms / one
            if dtype == "int8":
                kernel = g("scale.int8_kernel")
                target, ok = "≤ 30 ms and ≥ 2.5x numpy float32", one <= 30 and ratio1 >= 2.5
                label += f", kernel: {kernel}" if kernel else ""
            else:
                target, ok = "report", None
            batch_text = f"; batch of 8: {batch} ms/query = {np_ms / batch:.2f}x" if batch else ""
            add(
                f"exact search, {big:,} x 384, {label}, one thread (top-10, exact)",
                f"single query: **{one} ms** = **{ratio1:.2f}x**{batch_text}; "
                f"numpy float32 `matrix @ query`: {np_ms} ms",
                target,
                ok,
                "python -m bench --only scale",
            )
    if "memory.peak_rss_mb" in r:
        add(
            f"memory: peak RSS of the serving process, 64k index, warm, after {g('memory.queries'):,} queries",
            f"**{g('memory.peak_rss_mb')} MB** peak (anonymous {g('memory.rss_anon_mb')} MB, file pages "
            f"{g('memory.rss_file_mb')} MB)",
            "≤ 300 MB",
            g("memory.peak_rss_mb") <= 300,
            "python -m bench --only request",
        )
    if "memory.anon_growth_mb" in r:
        lo, hi = r.get("memory.anon_growth_from_to", ["?", "?"])
        add(
            f"memory: anonymous RSS growth from {lo:,} to {hi:,} rows (index memory-mapped)",
            f"**{g('memory.anon_growth_mb')} MB** ({g(f'scale.{lo}.rss_anon_mb')} -> {g(f'scale.{hi}.rss_anon_mb')} MB)",
            "flat (index size: " + f"{hi * 384 / 1e6:.0f} MB int8)",
            abs(g("memory.anon_growth_mb")) <= 32,
            "python -m bench --only scale",
        )
    if "build.speedup" in r:
        add(
            f"index build, both cores, {g('build.docs')} docs (seeded sample of the corpus)",
            f"int8 bundle **{g('build.int8_docs_per_s')} docs/s** vs fp32 ONNX {g('build.fp32_docs_per_s')} docs/s "
            f"= **{g('build.speedup')}x**"
            + (f"; full 64k build: {g('build.64k_docs_per_s')} docs/s" if "build.64k_docs_per_s" in r else ""),
            "≥ 200 docs/s and ≥ 1.8x fp32",
            g("build.int8_docs_per_s") >= 200 and g("build.speedup") >= 1.8,
            "python -m bench --only build",
        )
    if "incremental.share" in r:
        add(
            f"incremental rebuild, {g('incremental.records'):,} records ({g('incremental.changed')} changed, "
            f"{g('incremental.deleted')} deleted, {g('incremental.added')} added): time as a share of a full build",
            f"**{g('incremental.share') * 100:.2f}%** ({g('incremental.rebuild_s')} s vs {g('incremental.full_s')} s; "
            f"{g('incremental.embedded')} embedded, {g('incremental.reused'):,} reused; byte-identical: "
            f"{'yes' if g('incremental.byte_identical') else '**no**'})",
            "≤ 5%, byte-identical to --no-reuse",
            g("incremental.share") <= g("incremental.target_share") and bool(g("incremental.byte_identical")),
            "python -m bench --only incremental",
        )
    for kind in ("short", "long"):
        if f"cores.{kind}.threads.w1.docs_per_s" in r:
            tokens = g(f"cores.{kind}_mean_tokens")
            best = max(("threads", "processes"), key=lambda m: r.get(f"cores.{kind}.{m}.w2.docs_per_s", 0))
            add(
                f"build embedding, {kind} texts (~{tokens} tokens): docs/s per core, 1 and 2 workers",
                f"1 worker **{g(f'cores.{kind}.threads.w1.docs_per_s_per_core')}** docs/s per core; 2 workers "
                f"**{g(f'cores.{kind}.{best}.w2.docs_per_s_per_core')}** per core ({best}, "
                f"{g(f'cores.{kind}.{best}.w2.docs_per_s')} docs/s, {g(f'cores.{kind}.{best}.w2.cpu_percent')}% CPU, "
                f"{g(f'cores.{kind}.{best}.scaling_2w')}x of 1 worker)",
                "2 workers ≥ 1.8x of 1 worker",
                g(f"cores.{kind}.{best}.scaling_2w") >= 1.8,
                "python -m bench --only cores",
            )
    if "load.requests_per_s" in r:
        add(
            "load: `python -m search serve`, 64k index, wrk -t1 -c4, distinct queries, cache off",
            f"**{g('load.requests_per_s')} req/s**, p50 {g('load.p50_ms')} ms, p99 {g('load.p99_ms')} ms, "
            f"non-2xx {g('load.non_2xx')}; `/livez` p99 **{g('load.livez_p99_ms')} ms** "
            f"({g('load.livez_samples')} probes)",
            "report; /livez p99 ≤ 50 ms",
            g("load.livez_p99_ms") <= 50,
            "python -m bench --only load",
        )
    elif "load.skipped" in r:
        add(
            "load: local server",
            f"skipped: {g('load.skipped')}",
            "report; /livez p99 ≤ 50 ms",
            None,
            "python -m bench --only load",
        )
    if "package.total_unzipped_mib" in r:
        parts = ", ".join(
            f"{name.replace('_', ' ')} {g(f'package.{name}.unzipped_mib')} MiB ({g(f'package.{name}.zipped_mib')} zipped)"
            for name in ("function", "runtime_layer", "model_layer")
        )
        add(
            "zip variant package (sam build + sam package): function and layers unzipped together",
            f"**{g('package.total_unzipped_mib')} MiB** of {g('package.limit_unzipped_mib')} MiB: {parts}",
            "≤ Lambda's 250 MB unzipped",
            g("package.total_unzipped_mib") <= g("package.limit_unzipped_mib"),
            "python -m bench --only package",
        )
    if "pagein.ms" in r:
        add(
            "page-in: SearchIndex.page_in() on the 64k index, files dropped from the page cache",
            f"**{g('pagein.ms')} ms** for {g('pagein.mb')} MB ({g('pagein.mb_per_s')} MB/s; already cached: "
            f"{g('pagein.already_cached_ms')} ms)",
            "report",
            None,
            "python -m bench --only pagein",
        )
    if "quality.model.pytorch_fp32.mrr10" in r:
        q = f"known-item task, {g('quality.documents'):,} documents, {g('quality.queries'):,} title queries"
        for name, label in (
            ("pytorch_fp32", "PyTorch fp32 (reference)"),
            ("onnx_fp32", "ONNX fp32"),
            ("onnx_int8", "ONNX int8 (shipped)"),
        ):
            ratio: Any = {
                "onnx_int8": g("quality.onnx_int8_vs_pytorch_mrr"),
                "onnx_fp32": g("quality.onnx_fp32_vs_pytorch_mrr"),
            }.get(name)
            add(
                f"{q}: {label}",
                f"MRR@10 **{g(f'quality.model.{name}.mrr10')}**, recall@10 {g(f'quality.model.{name}.recall10')}"
                + (f" = {ratio * 100:.2f}% of PyTorch" if ratio else ""),
                "≥ 99% of PyTorch MRR@10" if name == "onnx_int8" else "report",
                (ratio >= 0.99) if name == "onnx_int8" else None,
                "python -m bench --only quality",
            )
        for dtype in ("float32", "float16", "int8"):
            ratio = g(f"quality.storage.{dtype}_vs_float32_mrr")
            add(
                f"{q}: {dtype} storage (shipped model)",
                f"MRR@10 **{g(f'quality.storage.{dtype}.mrr10')}**, recall@10 {g(f'quality.storage.{dtype}.recall10')}"
                + (f" = {ratio * 100:.2f}% of float32" if ratio else ""),
                "≥ 99.5% of float32 MRR@10" if ratio else "reference",
                (ratio >= 0.995) if ratio else None,
                "python -m bench --only quality",
            )
        for name in ("int8", "fp32"):
            if f"quality.export_gate.{name}.mean_cosine" in r:
                add(
                    f"export quality gate, {name} bundle vs PyTorch fp32 ({g(f'quality.export_gate.{name}.texts')} texts)",
                    f"mean cosine {g(f'quality.export_gate.{name}.mean_cosine')}, min cosine "
                    f"{g(f'quality.export_gate.{name}.min_cosine')}, neighbour recall@10 "
                    f"{g(f'quality.export_gate.{name}.recall_at_10')}",
                    "gate: mean ≥ 0.99, min ≥ 0.95",
                    None,
                    "python export_onnx.py --out build/model",
                )
    from bench import heldout  # the judged query sets under eval/ (bench/heldout.py)

    for figure, measured, target, ok in heldout.target_rows(r):
        add(figure, measured, target, ok, heldout.COMMAND)
    return out


def plot(r: dict, path: Path) -> bool:
    sizes = sorted(r.get("scale.sizes") or [])
    if not sizes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    styles = {"numpy_float32": ("numpy float32 matrix @ query (no top-k)", "black", ":")}
    for key, (label, colour, line) in styles.items():
        ax.plot(sizes, [r[f"scale.{n}.{key}_ms"] for n in sizes], line, color=colour, marker="o", label=label)
    colours = {"float32": "tab:blue", "float16": "tab:orange", "int8": "tab:green"}
    for dtype, colour in colours.items():
        ax.plot(
            sizes,
            [r[f"scale.{n}.{dtype}_ms"] for n in sizes],
            "-",
            color=colour,
            marker="o",
            label=f"{dtype}: one query",
        )
        ax.plot(
            sizes,
            [r[f"scale.{n}.{dtype}_batch8_ms_per_query"] for n in sizes],
            "--",
            color=colour,
            marker="s",
            label=f"{dtype}: per query, 8 at once",
        )
    if all(f"scale.{n}.float32_scan_ms" in r for n in sizes):
        ax.plot(
            sizes,
            [r[f"scale.{n}.float32_scan_ms"] for n in sizes],
            "-",
            color="tab:purple",
            marker="^",
            label="float32 + int8 scan + int4 prefilter copies (default): one query",
        )
    if all(f"scale.{n}.int8_no_prefilter_ms" in r for n in sizes):
        ax.plot(
            sizes,
            [r[f"scale.{n}.int8_no_prefilter_ms"] for n in sizes],
            ":",
            color="tab:green",
            marker="v",
            label="int8 without the int4 prefilter copy: one query",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("index size (rows of 384-d unit vectors)")
    ax.set_ylabel("ms per query, one thread (exact top-10)")
    ax.set_title("Exact search latency by index size and storage dtype")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_readme(data: dict) -> Path:
    r = data["results"]
    meta = data["meta"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); machine-readable figures in `latest.json`. "
        "Every comparison is a ratio taken in the same run, sides interleaved where drift could favour one. "
        f"**Taken on a shared {meta.get('cpus')}-core machine while other jobs ran** "
        f"({meta.get('cpu_model')}), so absolute times are pessimistic and vary from run to run; "
        "the ratios are the figures to trust.",
        "",
        f"Report written {meta.get('finished')}, commit `{meta.get('commit')}`, Python {meta.get('python')}. "
        "Each figure's last run: "
        + ", ".join(
            f"{name} {run['finished'][11:16]}Z{' (--quick)' if run.get('quick') else ''}"
            for name, run in sorted(data.get("runs", {}).items(), key=lambda kv: kv[1]["finished"])
        )
        + ".",
        "",
        "| figure | measured | target | status | command |",
        "|---|---|---|---|---|",
    ]
    for row in rows(r):
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Notes: one thread = `SEARCH_THREADS`, `OMP/OPENBLAS/MKL_NUM_THREADS` = 1 in a fresh child process. "
        "Exact search uses `search/kernels.py` (int8: the compiled `search/native/int8dot.c` (AVX-512 VNNI / AVX2) "
        "or onnxruntime `MatMulInteger` where it is not built, with exact float rescoring of every row that can "
        "still reach the top-k; float32/float16 with a scan copy: the same int8 pass, rescored from the stored "
        "vectors; float16: onnxruntime Cast+MatMul; float32: numpy). A Lambda "
        "invocation carries one query, so the single-query column is what a request pays; the batch column is "
        "what a batch request (or a server batching concurrent queries) pays per query.",
        "",
    ]
    if (RESULTS / PLOT).is_file():
        lines += [f"![exact search latency vs index size and dtype]({PLOT})", ""]
    hybrid = {k: v for k, v in r.items() if k.startswith("hybrid.")}
    if hybrid:
        lines += [
            "## Hybrid (semantic + keyword) figures",
            "",
            "Command: `python -m bench --only hybrid`",
            "",
            "| key | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in sorted(hybrid.items())]
        lines.append("")
    from bench import heldout

    lines += heldout.report_lines(r)
    profile = RESULTS / PROFILE
    if profile.is_file():
        text = profile.read_text().splitlines()
        lines += [
            "## Where the warm request spends its time",
            "",
            f"py-spy (all threads, 500 Hz) attached to a process answering {r.get('profile.requests', '?')} "
            "warm requests through `handler.handler` one after another, 64k index, one thread "
            f"(`python -m bench --only profile`; the list is `{PROFILE}`):",
            "",
            "```",
        ]
        lines += text[:PROFILE_LINES] + ["```", ""]
    path = RESULTS / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
