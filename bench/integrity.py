"""Time to detection of one flipped bit by the background verification, on one core.

    python -m bench.integrity [--index build/index] [--trials 5] [--out bench/results/integrity.json]

For each trial a copy of the index gets one bit flipped (the worst case: the last byte the
verification reads; then random positions over all the files' bytes), a ``LiveIndex`` with
``verify=True`` opens it, and the clock runs from the moment ``load()`` returns (the index is
serving) until the verification has marked it corrupt.  Measured idle, and while one thread runs
hybrid searches back to back on the same core (the verification runs at nice 19, so it mostly
gets what the searches leave).  The whole process is pinned to one core.  Also reports the
searches per second with and without the verification running, and the time to verify a clean
copy (every byte read once: the upper bound).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import MODEL, ROOT

QUERIES = ["space shooter", "chess engine", "racing car game", "puzzle with blocks", "real-time strategy"]
DEFAULT_INDEX = ROOT / "build" / "index"


def _files_in_read_order(folder: Path) -> list[tuple[str, int]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return [(name, int(info["bytes"])) for name, info in sorted(manifest["files"].items())]


def _flip(folder: Path, name: str, offset: int) -> None:
    with open(folder / name, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


class Searches:
    """Hybrid searches back to back in one thread until stopped; counts them."""

    def __init__(self, searcher, live):
        self.searcher, self.live = searcher, live
        self.count, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            index = self.live.loaded
            try:
                self.searcher.search(QUERIES[i % len(QUERIES)] + f" {i}", k=10, index=index, mode="hybrid")
            except Exception:  # noqa: BLE001 - a corrupt verdict may land mid-search; keep the load on
                pass
            self.count += 1
            i += 1

    def __enter__(self):
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._started

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _detect(source: Path, work: Path, name: str | None, offset: int | None, searcher=None) -> dict:
    from search.storage.live import LiveIndex

    copy = work / "index"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    if name is not None and offset is not None:
        _flip(copy, name, offset)
    live = LiveIndex(str(copy), verify=True)
    searches = Searches(searcher, live) if searcher is not None else None
    t0 = time.perf_counter()
    live.load()
    t_loaded = time.perf_counter()
    integrity = live.integrity
    assert integrity is not None  # verify=True
    if searches is not None:
        with searches:
            integrity.join()
    else:
        integrity.join()
    t_done = time.perf_counter()
    return {
        "file": name,
        "offset": offset,
        "state": integrity.state,
        "load_ms": round((t_loaded - t0) * 1000, 2),
        "detect_ms": round((t_done - t_loaded) * 1000, 2),
        "searches_per_s": round(searches.rate, 1) if searches is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--trials", type=int, default=5, help="random flipped bits per condition")
    parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the first allowed)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    logging.getLogger("search").setLevel(logging.CRITICAL)  # each trial's "index corrupt" is expected
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})

    from search.index.reader import SearchIndex
    from search.model.encoder import Encoder
    from search.searcher import Searcher

    files = _files_in_read_order(args.index)
    total = sum(size for _, size in files)
    last_name, last_size = files[-1]
    rng = random.Random(args.seed)

    def random_position() -> tuple[str, int]:
        at = rng.randrange(total)
        for name, size in files:
            if at < size:
                return name, at
            at -= size
        raise AssertionError("unreachable")

    encoder = Encoder.load(args.model, threads=1)
    searcher = Searcher(encoder, SearchIndex.open(args.index), cache_size=0)
    searcher.search("warm up", k=10, mode="hybrid")
    out: dict = {"index": str(args.index), "bytes": total, "files": len(files), "core": core, "conditions": {}}
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        work = Path(tmp)
        for label, busy in (("idle", None), ("searching", searcher)):
            clean = _detect(args.index, work, None, None, busy)
            worst = _detect(args.index, work, last_name, last_size - 1, busy)
            trials = [_detect(args.index, work, *random_position(), busy) for _ in range(args.trials)]
            assert clean["state"] == "verified" and all(t["state"] == "corrupt" for t in [worst, *trials])
            out["conditions"][label] = {
                "clean_verify_ms": clean["detect_ms"],
                "worst_case_detect_ms": worst["detect_ms"],
                "random_detect_ms_median": statistics.median(t["detect_ms"] for t in trials),
                "random_detect_ms_max": max(t["detect_ms"] for t in trials),
                "searches_per_s_while_verifying": clean["searches_per_s"],
                "trials": [clean, worst, *trials],
            }
        with Searches(searcher, _Fixed(searcher.index)) as alone:
            time.sleep(2.0)
        out["searches_per_s_without_verification"] = round(alone.rate, 1)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    for label, c in out["conditions"].items():
        print(
            f"{label:>9}: clean verify {c['clean_verify_ms']:.0f} ms, worst-case detection "
            f"{c['worst_case_detect_ms']:.0f} ms, random bit median {c['random_detect_ms_median']:.0f} ms "
            f"(max {c['random_detect_ms_max']:.0f}), searches/s while verifying: {c['searches_per_s_while_verifying']}"
        )
    print(
        f"index {total / 1e6:.1f} MB in {len(files)} files, core {core}; "
        f"searches/s without verification: {out['searches_per_s_without_verification']}"
    )


class _Fixed:
    def __init__(self, index):
        self.loaded = index


if __name__ == "__main__":
    main()
