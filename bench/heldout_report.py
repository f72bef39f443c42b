"""The figures and the README section of bench/heldout.py: flat ``heldout.<set>.*`` keys from an
Evaluation, issue 15's target checks, the per-query details and the report tables (pure)."""

from __future__ import annotations

import re

from bench.heldout_intervals import difference_text, gap_text, interval_of

COMMAND = "python -m bench --only heldout"
ENV_SETS = "BENCH_HELDOUT_SETS"
SYSTEMS = ("pytorch", "semantic", "keyword", "bm25s", "hybrid", "tuned")
LABELS = {
    "pytorch": "PyTorch fp32 semantic (sentence-transformers, exact cosine)",
    "semantic": "ONNX int8 semantic (`mode=semantic`, the shipped bundle)",
    "keyword": "keyword (`mode=keyword`)",
    "bm25s": "bm25s (plain BM25, dev-only baseline)",
    "hybrid": "hybrid (`mode=hybrid`, the default)",
    "tuned": "hybrid with the sentence share `search tune` picks on the corpus's other tuning sets",
}
PAIRS = (
    ("hybrid", "semantic"),
    ("hybrid", "keyword"),
    ("keyword", "bm25s"),
    ("semantic", "pytorch"),
    ("tuned", "hybrid"),
)
SLACK = 0.01  # hybrid may trail the better single mode by this much MRR@10, per kind
INT8_RATIO = 0.99
NAME_HIT1 = 0.99


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
        out[q + "mrr_difference"] = round(pair.mrr_difference, 4)
        if pair.difference_interval is not None:
            out[q + "difference_low"], out[q + "difference_high"] = (round(v, 4) for v in pair.difference_interval)
    out.update(targets(name, evaluation))
    return out


def meets_per_kind(hybrid, best_single):
    """issue 15's per-kind check: hybrid's MRR@10 within SLACK of the best single mode's (or arrays)."""
    return hybrid >= best_single - SLACK - 1e-12


def targets(name: str, evaluation) -> dict:
    """issue 15's checks for one set: ``heldout.<set>.target.<check>`` = {value, target, met}."""
    from search.evaluation import ALL

    m = evaluation.metrics
    p = f"heldout.{name}.target."
    out: dict = {}
    for kind in evaluation.kinds:
        single = "semantic" if m["semantic"][kind].mrr >= m["keyword"][kind].mrr else "keyword"
        best = m[single][kind].mrr
        have = m["hybrid"][kind].mrr
        out[f"{p}hybrid_vs_best_single.{kind}"] = {
            "value": round(have, 4),
            "target": round(best - SLACK, 4),
            "margin": round(have - (best - SLACK), 4),
            "met": meets_per_kind(have, best),
            "against": single,
            "interval": interval_of(evaluation, "hybrid", single, kind),  # of hybrid - that mode
        }
    ref = m["pytorch"][ALL].mrr
    ratio = m["semantic"][ALL].mrr / ref if ref else float("nan")
    out[p + "int8_vs_pytorch"] = {
        "value": round(ratio, 4),
        "target": INT8_RATIO,
        "met": bool(ratio >= INT8_RATIO),
        "interval": interval_of(evaluation, "semantic", "pytorch", ALL),  # of the MRR difference
    }
    if "keyword" in evaluation.kinds:
        kw, base = m["keyword"]["keyword"].mrr, m["bm25s"]["keyword"].mrr
        out[p + "keyword_vs_bm25s"] = {
            "value": round(kw, 4),
            "target": round(base, 4),
            "margin": round(kw - base, 4),
            "met": kw >= base - 1e-12,
            "interval": interval_of(evaluation, "keyword", "bm25s", "keyword"),  # of the MRR difference
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
                missed = "" if c["met"] else " **missed**" + gap_text(c, "hybrid", c.get("against", "best"))
                parts.append(f"{kind} {c['value']:.3f} vs {c['target']:.3f}{missed}")
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
                    f"{r[p + 'semantic.all.mrr10']} vs {r[p + 'pytorch.all.mrr10']} = **{c['value'] * 100:.1f}%**"
                    + gap_text(c, "int8", "PyTorch"),
                    f"≥ {INT8_RATIO * 100:.0f}%",
                    c["met"],
                )
            )
        if "keyword_vs_bm25s" in t:
            c = t["keyword_vs_bm25s"]
            out.append(
                (
                    f"{where}: keyword MRR@10 vs bm25s on keyword-style queries",
                    f"**{c['value']:.3f}** vs {c['target']:.3f}" + gap_text(c, "keyword", "bm25s"),
                    "≥ bm25s",
                    c["met"],
                )
            )
        if "names_hit1" in t:
            c = t["names_hit1"]
            out.append((f"{where}: name queries, hybrid hit@1", f"**{c['value']:.3f}**", f"≥ {NAME_HIT1}", c["met"]))
    for corpus, pool in settings_round_pools(r).items():
        where = f"{corpus}, held-out rounds together ({', '.join(pool['sets'])}; {pool['queries']} queries)"
        verdicts = pool["verdicts"]
        parts = [
            f"{kind} {v['value']:.3f} vs {v['target']:.3f}{'' if v['met'] else ' **missed**'}"
            for kind, v in verdicts.items()
        ]
        out.append(
            (
                f"{where}: hybrid MRR@10 per kind vs max(semantic, keyword) - {SLACK}",
                "; ".join(parts),
                "≥ for every kind",
                all(v["met"] for v in verdicts.values()),
            )
        )
        a = pool["all"]
        if a.get("pytorch"):
            ratio = a["semantic"] / a["pytorch"]
            out.append(
                (
                    f"{where}: ONNX int8 semantic MRR@10 vs PyTorch fp32",
                    f"{a['semantic']:.3f} vs {a['pytorch']:.3f} = **{ratio * 100:.1f}%**",
                    f"≥ {INT8_RATIO * 100:.0f}%",
                    ratio >= INT8_RATIO,
                )
            )
        kw = pool["kinds"].get("keyword", {})
        if "keyword" in kw and "bm25s" in kw:
            gap = kw["keyword"] - kw["bm25s"]  # shown when three decimals would hide it
            out.append(
                (
                    f"{where}: keyword MRR@10 vs bm25s on keyword-style queries",
                    f"**{kw['keyword']:.3f}** vs {kw['bm25s']:.3f}" + (f" ({gap:+.4f})" if abs(gap) < 0.001 else ""),
                    "≥ bm25s",
                    gap >= -1e-12,
                )
            )
    return out


def pooled_lines(r: dict) -> list[str]:
    """Every set of a corpus together (each set's figures weighted by its queries): a 60-query set
    moves 0.008 MRR@10 when one query moves from first to second place, so a ratio such as
    int8 / PyTorch is read over all of a corpus's queries too."""
    corpora: dict[str, list[str]] = {}
    for name in set_names(r):
        if f"heldout.{name}.pytorch.all.mrr10" in r:
            corpora.setdefault(str(r.get(f"heldout.{name}.corpus", name.split("-")[0])), []).append(name)
    if not corpora:
        return []

    def mean(names: list[str], key: str) -> float:
        weights = [r[f"heldout.{n}.queries"] for n in names]
        return sum(r[f"heldout.{n}.{key}"] * w for n, w in zip(names, weights)) / sum(weights)

    lines = [
        "### Every set of a corpus together (tuning and held-out)",
        "",
        "| corpus | sets | queries | hybrid | `search tune` share | semantic | PyTorch fp32 | int8 vs PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for corpus, names in sorted(corpora.items()):
        queries = sum(r[f"heldout.{n}.queries"] for n in names)
        sem, torch = mean(names, "semantic.all.mrr10"), mean(names, "pytorch.all.mrr10")
        tuned = (
            f"{mean(names, 'tuned.all.mrr10'):.3f}" if all(f"heldout.{n}.tuned.all.mrr10" in r for n in names) else "-"
        )
        lines.append(
            f"| {corpus} | {len(names)} | {queries} | {mean(names, 'hybrid.all.mrr10'):.3f} | {tuned} | {sem:.3f} | "
            f"{torch:.3f} | {sem / torch * 100:.1f}% |"
        )
    return [*lines, ""]


def settings_round_pools(r: dict) -> dict[str, dict]:
    """Per corpus, its sets first run held out with the settings that ship now, together (each
    kind weighted by its queries): {"sets", "queries", "all": {system: mrr}, "kinds": {kind:
    {system: mrr}}, "verdicts": {kind: {value, target, met}}, "paired": {pair: (wins, losses)}}.
    Three 60-query rounds resolve a per-kind target three times better than one."""
    pools: dict[str, dict] = {}
    for name in set_names(r):
        p = f"heldout.{name}."
        if not r.get(p + "settings_round") or p + "hybrid.all.mrr10" not in r:
            continue
        pool = pools.setdefault(str(r.get(p + "corpus", name.split("-")[0])), {"sets": [], "sums": {}})
        pool["sets"].append(name)
        for pair in ("hybrid_vs_semantic", "hybrid_vs_keyword"):
            q = f"{p}paired.{pair}.all."
            if q + "wins" in r:
                wins, losses = pool.setdefault("paired", {}).get(pair, (0, 0))
                pool["paired"][pair] = (wins + r[q + "wins"], losses + r[q + "losses"])
        for kind in ["all", *(r.get(p + "kinds") or [])]:
            for system in SYSTEMS:
                q = f"{p}{system}.{kind}."
                if q + "mrr10" in r:
                    n, total = pool["sums"].get((kind, system), (0, 0.0))
                    pool["sums"][(kind, system)] = (n + r[q + "n"], total + r[q + "mrr10"] * r[q + "n"])
    out = {}
    for corpus, pool in sorted(pools.items()):
        means: dict[str, dict[str, float]] = {}
        for (kind, system), (n, total) in pool["sums"].items():
            means.setdefault(kind, {})[system] = total / n if n else 0.0
        queries = pool["sums"][("all", "hybrid")][0]
        overall = means.pop("all")
        verdicts = {}
        for kind, m in means.items():  # issue 15's per-kind check, as targets() makes it for one set
            best = max(m.get("semantic", 0.0), m.get("keyword", 0.0))
            verdicts[kind] = {"value": m["hybrid"], "target": best - SLACK, "met": meets_per_kind(m["hybrid"], best)}
        out[corpus] = {
            "sets": sorted(pool["sets"], key=_round_order),
            "queries": queries,
            "all": overall,
            "kinds": means,
            "verdicts": verdicts,
            "paired": pool.get("paired", {}),
        }
    return out


def _round_order(name: str) -> list:
    """debian-fresh2 before debian-fresh10: the numbers in a set's name compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def settings_round_lines(r: dict) -> list[str]:
    """settings_round_pools' table, the pooled sign tests (each query is in one set) and chance_lines."""
    from bench.heldout_chance import chance_lines
    from search.evaluation import sign_test

    pools = settings_round_pools(r)
    if not pools:
        return []
    lines = [
        "### The held-out rounds run with these settings, together",
        "",
        "Each set below was run once as a held-out set with the ranking that ships now, before "
        "anything was tuned on it (`SETTINGS_ROUND` in eval/check_sets.py). Per kind: hybrid MRR@10 "
        f"vs the better of semantic and keyword - {SLACK}.",
        "",
        "| corpus | sets | queries | hybrid | `search tune` share | semantic | keyword | bm25s | PyTorch fp32 | "
        "int8 vs PyTorch | per kind |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus, pool in pools.items():
        a = pool["all"]
        kinds = [
            f"{kind} {v['value']:.3f} vs {v['target']:.3f}"
            + ("" if v["met"] else f" **missed by {v['target'] - v['value']:.3f}**")
            for kind, v in pool["verdicts"].items()
        ]
        ratio = f"{a['semantic'] / a['pytorch'] * 100:.1f}%" if a.get("pytorch") else "-"
        shown = ("hybrid", "tuned", "semantic", "keyword", "bm25s", "pytorch")
        cells = [f"{a[s]:.3f}" if s in a else "-" for s in shown]
        lines.append(
            f"| {corpus} | {', '.join(pool['sets'])} | {pool['queries']} | {' | '.join(cells)} | {ratio} | "
            f"{'; '.join(kinds)} |"
        )
    paired = [
        f"{corpus}: hybrid better than {pair.split('_vs_')[1]} on {w} queries, worse on {lo} (sign test p = {sign_test(w, lo):.2g})"
        for corpus, pool in pools.items()
        for pair, (w, lo) in pool["paired"].items()
    ]
    if paired:
        lines += ["", "Query by query, over the same rounds: " + "; ".join(paired) + "."]
    return [*lines, "", *chance_lines(r)]


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
        *settings_round_lines(r),
        *pooled_lines(r),
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
        if r.get(p + "tuned_share") is not None:
            evidence = f", best {r[p + 'tuned_best']:g} at p = {r[p + 'tuned_p']:.3g}" if r.get(p + "tuned_p") else ""
            lines += [
                "",
                f"`search tune` share for this corpus: {r[p + 'tuned_share']:g} (the default: "
                f"{r.get(p + 'sentence_share', 1.0):g}), from {r.get(p + 'tuned_from_queries', 0)} sentence queries "
                f"of its other tuning sets{evidence}.",
            ]
        lines += [
            "",
            "| A vs B | queries | A better | B better | ties | p | MRR@10 A - B (95% bootstrap interval) |",
            "|---|---|---|---|---|---|---|",
        ]
        for a, b in PAIRS:
            for kind in ["all", *kinds]:
                if kind != "all" and (a, b) != ("hybrid", "semantic") and not (b == "bm25s" and kind == "keyword"):
                    continue
                q = f"{p}paired.{a}_vs_{b}.{kind}."
                if q + "wins" in r:
                    lines.append(
                        f"| {a} vs {b} | {kind} | {r[q + 'wins']} | {r[q + 'losses']} | {r[q + 'ties']} | "
                        f"{r[q + 'p']:.3g} | {difference_text(r, q)} |"
                    )
        lines.append("")
    return lines
