"""Validate the judged query sets under eval/.

    python eval/check_sets.py [--allow-missing-corpus]

Each set is a TSV file: an optional first line ``# description``, then one query a
line, ``query<TAB>accepted ids, comma-separated<TAB>kind``. Checked for each set:

- format: three tab-separated fields, no blank lines, no stray spaces, no comment
  line after the first;
- kinds: each one of descriptive, keyword, name, paraphrase, with exactly 25, 15, 10
  and 10 queries of them (60 in all);
- accepted ids: 1 to 12 per query, none repeated, every one an id of the set's corpus;
- no query twice in a set (compared lowercased, punctuation ignored);
- name queries: the query is one of its accepted ids, up to case, spaces and
  punctuation (``python3 requests`` for ``python3-requests``);
- descriptive and paraphrase queries do not contain an accepted id as whole words
  (for the Python docs, not its last dotted part either: ``dumps`` of ``json.dumps``);
- no query of a TUNING set appears, or nearly appears, in a HELD-OUT set of the same
  corpus (same words, one inside the other, or 80% of the words in common).

Prints one summary line a set; on a problem prints ``file:line: problem`` lines and
exits 1. A missing corpus is a problem unless ``--allow-missing-corpus`` is given
(then that set's id check is reported as skipped).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

EVAL = Path(__file__).resolve().parent
ROOT = EVAL.parent
DEBIAN = ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz"
NPM = EVAL / "corpora" / "npm.jsonl.gz"
PYDOCS = EVAL / "corpora" / "pydocs.jsonl.gz"

KIND_COUNTS = {"descriptive": 25, "keyword": 15, "name": 10, "paraphrase": 10}
MAX_ACCEPTED = 12
NEAR_OVERLAP = 0.8
TUNING, HELD_OUT = "TUNING", "HELD-OUT"


@dataclass(frozen=True)
class SetSpec:
    path: Path
    corpus: Path
    role: str  # TUNING or HELD-OUT
    dotted_names: bool = False  # ids are dotted Python names (check the last part too)


def _spec(name: str, role: str) -> SetSpec:
    corpus = name.split("-", 1)[0]  # a set is named after its corpus: debian-tune, npm-fresh2, ...
    paths = {"debian": DEBIAN, "npm": NPM, "pydocs": PYDOCS}
    return SetSpec(EVAL / f"{name}.tsv", paths[corpus], role, dotted_names=corpus == "pydocs")


# rounds 4-9's fresh sets, in order
FRESH_ROUNDS = (
    "fresh",
    "fresh2",
    "fresh3",
    "fresh4",
    "fresh5",
    "fresh6",
    "fresh7",
    "fresh8",
    "fresh9",
    "fresh10",
    "fresh11",
    "fresh12",
    "fresh13",
)
HELD_OUT_ROUND = "fresh13"  # the newest fresh sets are the held-out ones; each earlier round was held
# out for its first run and then tuned on, like debian/npm/pydocs (eval/README.md; their files still
# say HELD-OUT on their first line)
SETS = tuple(
    [_spec(n, TUNING) for n in ("debian-tune", "npm-tune", "debian-tune2", "pydocs-tune", "debian", "npm", "pydocs")]
    + [
        _spec(f"{corpus}-{fresh}", HELD_OUT if fresh == HELD_OUT_ROUND else TUNING)
        for fresh in FRESH_ROUNDS
        for corpus in ("debian", "npm", "pydocs")
    ]
)
# The first round run, as held-out sets, with the ranking that ships now: it and every later round
# were run once each, before any tuning on them, with today's settings, so `make bench` pools them
# per corpus ("the held-out rounds together").  Set it to the new held-out round when a change to
# the ranking ships.
SETTINGS_ROUND = "fresh7"
SETTINGS_ROUNDS = FRESH_ROUNDS[FRESH_ROUNDS.index(SETTINGS_ROUND) :]


@dataclass(frozen=True)
class Query:
    lineno: int
    text: str
    accepted: tuple[str, ...]
    kind: str


class Problems(list):
    """``file:line: message`` strings."""

    def add(self, path: Path, lineno: int, message: str) -> None:
        self.append(f"{display(path)}:{lineno}: {message}")


def display(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def squash(text: str) -> str:
    """Lowercase letters and digits only: ``Python3 Requests`` == ``python3-requests``."""
    return "".join(words(text))


def contains_run(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


_corpus_cache: dict[Path, frozenset[str]] = {}


def corpus_ids(path: Path) -> frozenset[str]:
    """Every ``id`` of a JSON-lines corpus (gzipped or not); cached per path."""
    if path not in _corpus_cache:
        opener = gzip.open if path.suffix == ".gz" else open
        ids = set()
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{display(path)}:{lineno}: not a record with an id") from exc
        _corpus_cache[path] = frozenset(ids)
    return _corpus_cache[path]


def parse_set(path: Path, problems: Problems) -> list[Query]:
    """Read one TSV set; format problems go to ``problems``."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, 0, f"cannot read: {exc.__class__.__name__}")
        return []
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    queries: list[Query] = []
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("#"):
            if lineno != 1:
                problems.add(path, lineno, "a comment line is allowed only as the first line")
            continue
        if not line.strip():
            problems.add(path, lineno, "blank line")
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            problems.add(path, lineno, f"expected 3 tab-separated fields, got {len(fields)}")
            continue
        text, ids_field, kind = fields
        if not text.strip() or text != text.strip() or "  " in text:
            problems.add(path, lineno, "query is empty or has stray spaces")
        if kind not in KIND_COUNTS:
            problems.add(path, lineno, f"unknown kind {kind!r} (one of {', '.join(KIND_COUNTS)})")
        accepted = tuple(ids_field.split(","))
        if any(not i or i != i.strip() for i in accepted):
            problems.add(path, lineno, "empty accepted id or stray spaces in the id list")
        if len(set(accepted)) != len(accepted):
            problems.add(path, lineno, "an accepted id is listed twice")
        if not 1 <= len(accepted) <= MAX_ACCEPTED:
            problems.add(path, lineno, f"{len(accepted)} accepted ids (1 to {MAX_ACCEPTED})")
        queries.append(Query(lineno, text, accepted, kind))
    return queries


def check_queries(spec: SetSpec, queries: list[Query], problems: Problems, ids) -> None:
    """Counts, duplicates, names, ids in the corpus (``ids`` None: corpus not checked)."""
    counts = Counter(q.kind for q in queries)
    for kind, want in KIND_COUNTS.items():
        if counts[kind] != want:
            problems.add(spec.path, 0, f"{counts[kind]} {kind} queries, want {want}")
    seen: dict[str, int] = {}
    for q in queries:
        key = " ".join(words(q.text))
        if key in seen:
            problems.add(spec.path, q.lineno, f"same query as line {seen[key]}")
        seen.setdefault(key, q.lineno)
        if ids is not None:
            for i in q.accepted:
                if i not in ids:
                    problems.add(spec.path, q.lineno, f"accepted id {i!r} is not in the corpus")
        if q.kind == "name" and squash(q.text) not in {squash(i) for i in q.accepted}:
            problems.add(spec.path, q.lineno, "name query is not one of its accepted ids")
        if q.kind in ("descriptive", "paraphrase"):
            qwords = words(q.text)
            for i in q.accepted:
                named = contains_run(qwords, words(i))
                if spec.dotted_names and "." in i:
                    last = i.rsplit(".", 1)[1]
                    named = named or contains_run(qwords, words(last))
                if named:
                    problems.add(spec.path, q.lineno, f"{q.kind} query names the item {i!r}")


def near(a: str, b: str) -> bool:
    wa, wb = words(a), words(b)
    if wa == wb or (len(wa) >= 2 and contains_run(wb, wa)) or (len(wb) >= 2 and contains_run(wa, wb)):
        return True
    sa, sb = set(wa), set(wb)
    return bool(sa and sb) and len(sa & sb) / len(sa | sb) >= NEAR_OVERLAP


def check_overlap(parsed: dict[SetSpec, list[Query]], problems: Problems) -> None:
    tuning = [(s, q) for s, qs in parsed.items() if s.role == TUNING for q in qs]
    for spec, queries in parsed.items():
        if spec.role != HELD_OUT:
            continue
        for q in queries:
            for tspec, tq in tuning:
                # within a corpus only: a need may recur on another corpus, whose items and ranking
                # differ ("static site generator" of Debian packages and of npm packages)
                if tspec.corpus == spec.corpus and near(q.text, tq.text):
                    problems.add(
                        spec.path,
                        q.lineno,
                        f"held-out query nearly repeats tuning {display(tspec.path)}:{tq.lineno}",
                    )


def check_all(specs=SETS, allow_missing_corpus: bool = False) -> tuple[list[str], Problems]:
    """(one summary line a set, problems) for the given sets."""
    problems = Problems()
    summaries: list[str] = []
    parsed: dict[SetSpec, list[Query]] = {}
    for spec in specs:
        before = len(problems)
        queries = parse_set(spec.path, problems)
        parsed[spec] = queries
        ids = None
        if spec.corpus.is_file():
            try:
                ids = corpus_ids(spec.corpus)
            except (OSError, ValueError) as exc:
                problems.add(spec.corpus, 0, f"corpus unreadable: {exc}")
        elif not allow_missing_corpus:
            problems.add(spec.path, 0, f"corpus {display(spec.corpus)} not found")
        check_queries(spec, queries, problems, ids)
        counts = Counter(q.kind for q in queries)
        n_ids = sum(len(q.accepted) for q in queries)
        corpus = f"all in {display(spec.corpus)}" if ids is not None else "corpus check SKIPPED"
        status = "ok" if len(problems) == before else f"{len(problems) - before} problem(s)"
        summaries.append(
            f"{display(spec.path)}: {spec.role}, {len(queries)} queries ("
            + ", ".join(f"{k} {counts[k]}" for k in KIND_COUNTS)
            + f"), {n_ids} accepted ids, {corpus}: {status}"
        )
    check_overlap(parsed, problems)
    return summaries, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-missing-corpus", action="store_true")
    args = ap.parse_args(argv)
    summaries, problems = check_all(SETS, allow_missing_corpus=args.allow_missing_corpus)
    for line in summaries:
        print(line)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
