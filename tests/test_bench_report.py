"""bench/report.py renders the build figures of issue 17 (incremental share, docs/s per core) with
their targets, from the keys bench/incremental.py and bench/cores.py emit."""

import json

import bench.__main__ as bench_main
from bench import report


def _incremental(share: float, identical: bool = True) -> dict:
    return {
        "incremental.records": 63955,
        "incremental.changed": 639,
        "incremental.deleted": 64,
        "incremental.added": 63,
        "incremental.reused": 63202,
        "incremental.embedded": 702,
        "incremental.rebuild_s": 9.8,
        "incremental.full_s": 380.2,
        "incremental.share": share,
        "incremental.target_share": 0.05,
        "incremental.byte_identical": identical,
    }


def _cores(kind: str, w1: float, w2_threads: float, w2_processes: float) -> dict:
    out = {f"cores.{kind}_mean_tokens": 11.3, f"cores.{kind}.threads.w1.docs_per_s": w1}
    out[f"cores.{kind}.threads.w1.docs_per_s_per_core"] = w1
    for mode, total in (("threads", w2_threads), ("processes", w2_processes)):
        out[f"cores.{kind}.{mode}.w2.docs_per_s"] = total
        out[f"cores.{kind}.{mode}.w2.docs_per_s_per_core"] = round(total / 2, 1)
        out[f"cores.{kind}.{mode}.w2.cpu_percent"] = 198
        out[f"cores.{kind}.{mode}.scaling_2w"] = round(total / w1, 2)
    return out


def _row(rows, start: str):
    (found,) = [row for row in rows if row[0].startswith(start)]
    return found


def test_the_incremental_share_is_met_only_when_small_and_byte_identical():
    assert _row(report.rows(_incremental(0.0256)), "incremental rebuild")[3] == "met"
    assert "**2.56%**" in _row(report.rows(_incremental(0.0256)), "incremental rebuild")[1]
    assert _row(report.rows(_incremental(0.08)), "incremental rebuild")[3] == "**missed**"
    assert _row(report.rows(_incremental(0.01, identical=False)), "incremental rebuild")[3] == "**missed**"


def test_docs_per_core_rows_take_the_better_two_worker_path():
    rows = report.rows({**_cores("short", 530.4, 964.1, 1046.9), **_cores("long", 47.8, 95.5, 95.0)})
    short, long = _row(rows, "build embedding, short"), _row(rows, "build embedding, long")
    assert "processes, 1046.9 docs/s" in short[1] and "threads, 95.5 docs/s" in long[1]
    assert short[3] == long[3] == "met"
    slow = report.rows(_cores("short", 500.0, 600.0, 650.0))  # 1.3x: a build held to one core
    assert _row(slow, "build embedding, short")[3] == "**missed**"


def test_report_only_rewrites_the_readme_and_keeps_the_run_s_figures_and_meta(tmp_path, monkeypatch):
    meta = {"finished": "2026-12-01T23:27:01+00:00", "commit": "abc1234", "figures_run": ["request"]}
    latest = tmp_path / "latest.json"
    latest.write_text(
        json.dumps({"results": _incremental(0.02), "runs": {}, "meta": meta}, indent=2, sort_keys=True) + "\n"
    )
    before = latest.read_bytes()
    monkeypatch.setattr(bench_main, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert bench_main.main(["--report-only"]) == 0
    assert latest.read_bytes() == before
    assert "commit `abc1234`" in (tmp_path / "README.md").read_text(encoding="utf-8")
