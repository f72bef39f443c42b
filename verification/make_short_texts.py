#!/usr/bin/env python3
"""Write verification/short-texts.txt, the export's short-text gate set (deterministic).

    python verification/make_short_texts.py [--packages FILE] [--out FILE]

The set is what a search box sees: one-line texts of at most 12 words.  It holds

* ``SYNOPSES`` Debian package synopses (the ``title`` field of the bookworm package list
  in shared/data), drawn with a fixed seed from the distinct synopses of <= 12 words, and
* every line of ``verification/short-queries.txt``: short queries written by hand
  (needs, names, keyword-style, a few in other languages),

minus anything already in ``verification/sentences.txt`` (the long gate set), so the two
gates measure different texts.  Run it again and the file comes out byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PACKAGES = HERE.parents[1] / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"
HAND = HERE / "short-queries.txt"
LONG_SET = HERE / "sentences.txt"
OUT = HERE / "short-texts.txt"
SYNOPSES, SEED, MAX_WORDS = 500, 20261201, 12


def lines(path: Path) -> list[str]:
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


def synopses(packages: Path) -> list[str]:
    """Distinct synopses of <= MAX_WORDS words, in file order."""
    seen: dict[str, None] = {}
    with gzip.open(packages, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                title = " ".join(str(json.loads(line).get("title") or "").split())
            except (json.JSONDecodeError, AttributeError):
                raise SystemExit(f"error: {packages}:{number}: not a JSON object") from None
            if title and len(title.split()) <= MAX_WORDS:
                seen.setdefault(title)
    return list(seen)


def short_texts(packages: Path) -> list[str]:
    taken = set(lines(LONG_SET))
    pool = [t for t in synopses(packages) if t not in taken]
    drawn = random.Random(SEED).sample(pool, SYNOPSES)
    hand = [t for t in lines(HAND) if t not in taken]
    return list(dict.fromkeys(drawn + hand))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packages", type=Path, default=DEFAULT_PACKAGES, help="the Debian package list (jsonl.gz)")
    p.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.relative_to(HERE.parent)})")
    args = p.parse_args(argv)
    if not args.packages.is_file():
        print(f"error: {args.packages}: no such file", file=sys.stderr)
        return 2
    texts = short_texts(args.packages)
    long_ones = [t for t in texts if len(t.split()) > MAX_WORDS]
    if long_ones:
        print(f"error: {HAND}: more than {MAX_WORDS} words: {long_ones[0][:60]!r}", file=sys.stderr)
        return 2
    args.out.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    print(f"{args.out}: {len(texts)} texts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
