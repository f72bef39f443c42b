"""An incremental rebuild's time as a share of a full build, on the 64k Debian corpus.

The catalogue a day later: 1% of the records with a changed text, 0.1% deleted, 0.1% added
(seeded).  Both builds run as users run them (``python -m search build``, every CPU):

    full         --no-reuse on the edited corpus
    incremental  the edited corpus onto a copy of yesterday's index (reuse is the default)

The share is wall time incremental / full (process start and model load included on both sides);
the two indexes are checked byte-identical (every data file).  Yesterday's index is cached in
build/bench/incremental/base.  ``--quick``: the first 8,000 records.

    python -m bench --only incremental
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import BUILD, CORPUS, FIELDS, MODEL, PY, ROOT, child_env, emit, log, require_model, run_child

COMMAND = "python -m bench --only incremental"
CHANGED, DELETED, ADDED = 0.01, 0.001, 0.001
TARGET_SHARE = 0.05


def measure(quick: bool) -> dict:
    require_model()
    return run_child("bench.incremental", *(["--limit", "8000"] if quick else []), threads=None, timeout=7200)


def _records(limit: int | None) -> list[dict]:
    out = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                break
            out.append(json.loads(line))
    return out


def _write(path: Path, records: list[dict]) -> Path:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(body, compresslevel=1, mtime=0))  # same bytes every run: the cache holds
    return path


def edited(records: list[dict], seed: int = 17) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    n = len(records)
    picks = rng.sample(range(n), int(n * (CHANGED + DELETED)))
    changed, deleted = set(picks[: int(n * CHANGED)]), set(picks[int(n * CHANGED) :])
    out = []
    for i, r in enumerate(records):
        if i in deleted:
            continue
        out.append(dict(r, text=f"{r.get('text', '')} (revised {seed})") if i in changed else r)
    donors = rng.sample(range(n), int(n * ADDED))
    for k, i in enumerate(donors):
        r = records[i]
        out.append(dict(r, id=f"{r['id']}-new-{k}", title=f"{r.get('title', '')} (fork {k})"))
    return out, {"changed": len(changed), "deleted": len(deleted), "added": len(donors)}


def _build(corpus: Path, out: Path, *extra: str) -> tuple[float, dict]:
    cmd = [PY, "-m", "search", "build", "--corpus", str(corpus), "--model", str(MODEL), "--out", str(out)]
    cmd += ["--fields", FIELDS, "--skip-bad", "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(None), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed: {done.stderr.strip()[-1500:]}")
    return wall, json.loads((out / "manifest.json").read_text())


def _child(args) -> None:
    from search.fileutil import sha256_file

    records = _records(args.limit)
    work = BUILD / ("incremental-quick" if args.limit else "incremental")
    work.mkdir(parents=True, exist_ok=True)
    base_corpus = _write(work / "yesterday.jsonl.gz", records)
    base = work / "base"
    manifest = json.loads((base / "manifest.json").read_text()) if (base / "manifest.json").is_file() else {}
    wanted = json.loads((MODEL / "manifest.json").read_text())["fingerprint"]
    fresh = bool(manifest) and (
        manifest["corpus"]["sha256"] == sha256_file(base_corpus)
        and manifest["model"]["fingerprint"] == wanted
        and "text-hashes.npy" in manifest["files"]
        and bool(manifest.get("titles"))  # yesterday's index built as today's is: title vectors on by default
    )
    if not fresh:
        # Yesterday's vectors may come from the bench's 64k index (reuse is byte-identical to a full build,
        # tests/index/test_incremental.py): that saves one full build; the two timed builds are unaffected.
        donor = BUILD / "debian-64k"
        source = ("--reuse", str(donor)) if not args.limit and (donor / "manifest.json").is_file() else ("--no-reuse",)
        log(f"building yesterday's index {base} ({len(records)} records, {' '.join(source)})")
        shutil.rmtree(base, ignore_errors=True)
        _build(base_corpus, base, *source)
    today, counts = edited(records)
    corpus = _write(work / "today.jsonl.gz", today)

    full_dir, inc_dir = work / "full", work / "incremental"
    shutil.rmtree(full_dir, ignore_errors=True)
    shutil.rmtree(inc_dir, ignore_errors=True)
    shutil.copytree(base, inc_dir)
    log(f"incremental build of {len(today)} records ({counts})")
    inc_wall, inc = _build(corpus, inc_dir)
    log(f"full build of {len(today)} records")
    full_wall, full = _build(corpus, full_dir, "--no-reuse")
    same = all(
        (inc_dir / name).read_bytes() == (full_dir / name).read_bytes()
        for name in full["files"]
        if name in inc["files"]
    ) and set(inc["files"]) == set(full["files"])
    share = inc_wall / full_wall
    emit(
        {
            "incremental.records": len(today),
            "incremental.changed": counts["changed"],
            "incremental.deleted": counts["deleted"],
            "incremental.added": counts["added"],
            "incremental.reused": inc["build"]["reused"],
            "incremental.embedded": inc["build"]["embedded"],
            "incremental.rebuild_s": round(inc_wall, 1),
            "incremental.full_s": round(full_wall, 1),
            "incremental.rebuild_build_seconds": inc["build_seconds"],
            "incremental.full_build_seconds": full["build_seconds"],
            "incremental.share": round(share, 4),
            "incremental.target_share": TARGET_SHARE,
            "incremental.byte_identical": bool(same),
        }
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help="only the first N records (quick runs)")
    _child(p.parse_args())
