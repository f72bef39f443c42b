"""Build eval/corpora/npm.jsonl.gz: the 20,000 most-downloaded npm packages with a summary.

Source: the npm registry list in the env entry's packages folder (``npm.tsv``:
name, version, downloads_a_month, summary). A leading ``[tested here: ...]``
bracket is removed from each summary first: it was written by whoever tested
the package on this kind of machine, not by the package's authors. Packages
whose summary is then empty are left out.

Records: ``{"id": name, "title": name, "text": summary}``, sorted by monthly
downloads (most first), ties by name. The output is byte-for-byte
deterministic (gzip mtime 0, no file name in the header).

    python eval/corpora/make_npm.py [--source PATH] [--out PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/work/.library/env/packages/npm.tsv")
DEFAULT_OUT = HERE / "npm.jsonl.gz"
LIMIT = 20_000
HEADER = ("name", "version", "downloads_a_month")
TESTED_HERE = re.compile(r"^\s*\[tested here:")


class SourceError(ValueError):
    """The source list is not what this script expects (names the file and line)."""


def strip_tested_here(summary: str) -> str:
    """Drop a leading ``[tested here: ...]`` bracket (brackets inside it may nest)."""
    if not TESTED_HERE.match(summary):
        return summary.strip()
    depth = 0
    for i, ch in enumerate(summary):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return summary[i + 1 :].strip()
    return ""  # an unclosed bracket: nothing from the authors is left


def read_rows(source: Path) -> list[tuple[int, str, str]]:
    rows: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    with source.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, start=1):
            if lineno == 1:
                if tuple(c.strip() for c in row[:3]) != HEADER:
                    raise SourceError(f"{source}:1: unexpected header {row[:3]!r}")
                continue
            if len(row) != 4:
                raise SourceError(f"{source}:{lineno}: expected 4 columns, got {len(row)}")
            name, _version, downloads, summary = row
            downloads = downloads.strip() or "0"  # a few rows have no count: unknown = 0
            if not downloads.isdigit():
                raise SourceError(f"{source}:{lineno}: downloads_a_month is not a number")
            if name in seen:
                raise SourceError(f"{source}:{lineno}: duplicate package name")
            seen.add(name)
            text = " ".join(strip_tested_here(summary).split())
            if text:
                rows.append((int(downloads), name, text))
    return rows


def build(source: Path, limit: int = LIMIT) -> bytes:
    rows = read_rows(source)
    rows.sort(key=lambda r: (-r[0], r[1]))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for _downloads, name, text in rows[:limit]:
            line = json.dumps({"id": name, "title": name, "text": text}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=int, default=LIMIT)
    args = ap.parse_args(argv)
    try:
        data = build(args.source, args.limit)
    except (OSError, SourceError) as exc:
        print(f"make_npm: {exc}", file=sys.stderr)
        return 1
    args.out.write_bytes(data)
    n = gzip.decompress(data).count(b"\n")
    print(f"{args.out}: {n} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
