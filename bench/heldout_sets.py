"""The judged query sets of bench/heldout.py: where they are, which corpus each ranks, and each
one's role (TUNING or HELD-OUT) as eval/check_sets.py registers it."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT
from bench.heldout_report import ENV_SETS

EVAL_DIR = ROOT / "eval"
CORPORA = {
    "npm": ROOT / "eval" / "corpora" / "npm.jsonl.gz",
    "pydocs": ROOT / "eval" / "corpora" / "pydocs.jsonl.gz",
    "debian": ROOT.parent / "shared" / "data" / "debian-bookworm-packages.jsonl.gz",
}


@dataclass(frozen=True)
class QuerySet:
    name: str  # file stem: npm-tune, debian, ...
    path: Path
    corpus: str  # key of CORPORA
    corpus_path: Path
    role: str  # "tuning" or "held-out"


@functools.cache
def _registry():
    """eval/check_sets.py, loaded once: the one list of the sets and their roles."""
    name = "eval_check_sets"
    spec = importlib.util.spec_from_file_location(name, ROOT / "eval" / "check_sets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def registered_roles() -> dict[str, str]:
    """Each set's role as eval/check_sets.py registers it, by name: the one list of which sets are
    held out.  A set held out once and then tuned on is tuning there, whatever its first line says
    (held-out files are never edited; eval/README.md)."""
    module = _registry()
    return {s.path.stem: "held-out" if s.role == module.HELD_OUT else "tuning" for s in module.SETS}


def settings_round_sets() -> frozenset[str]:
    """The sets of the rounds first run, held out, with the ranking that ships now
    (check_sets.SETTINGS_ROUNDS): the report pools them per corpus."""
    module = _registry()
    rounds = set(module.SETTINGS_ROUNDS)
    return frozenset(s.path.stem for s in module.SETS if s.path.stem.split("-", 1)[-1] in rounds)


def role_of(path: Path) -> str:
    """TUNING or HELD-OUT: as eval/check_sets.py registers the set; else as its first comment line
    says (eval/README.md); else by name."""
    registered = registered_roles().get(path.stem)
    if registered is not None:
        return registered
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    if first.startswith("#"):
        head = first.upper()
        if "HELD-OUT" in head or "HELD OUT" in head:  # first: a held-out note may mention tuning sets
            return "held-out"
        if "TUNING" in head:
            return "tuning"
    return "tuning" if path.stem.endswith("-tune") else "held-out"


def discover(
    eval_dir: Path | None = None, wanted: Sequence[str] | None = None, corpora: dict[str, Path] | None = None
) -> list[QuerySet]:
    """The sets under ``eval_dir`` (default EVAL_DIR; ``wanted`` names a subset, in that order)."""
    eval_dir = EVAL_DIR if eval_dir is None else eval_dir
    corpora = CORPORA if corpora is None else corpora
    found = {p.stem: p for p in sorted(Path(eval_dir).glob("*.tsv"))}
    names = list(wanted) if wanted else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise RuntimeError(f"no query set {', '.join(unknown)} under {eval_dir} (have: {', '.join(found) or 'none'})")
    out = []
    for name in names:
        corpus = name.split("-", 1)[0]
        if corpus not in corpora:
            raise RuntimeError(f"{found[name]}: no corpus for {corpus!r} (known: {', '.join(corpora)})")
        out.append(QuerySet(name, found[name], corpus, Path(corpora[corpus]), role_of(found[name])))
    return out


def selected_sets(eval_dir: Path | None = None) -> list[QuerySet]:
    wanted = [s.strip() for s in os.environ.get(ENV_SETS, "").split(",") if s.strip()]
    return discover(eval_dir, wanted or None)


def result_prefixes() -> tuple[str, ...]:
    """What a run replaces in latest.json: only the sets it ran, so a tuning run keeps the
    held-out figures and the other way round."""
    try:
        return tuple(f"heldout.{s.name}." for s in selected_sets())
    except (RuntimeError, OSError):
        return ("heldout.",)
