"""Build eval/corpora/pydocs.jsonl.gz: Python 3.11 standard library documentation records.

For each module named in ``pydocs-modules.txt`` (one a line, ``#`` comments),
one record for the module itself, one for each public function and class, and
one for each public method or property of those classes, all with a docstring
of their own (inherited docstrings are not used; a class without one is
described by its own ``__init__`` docstring, and its members are listed even
when neither has one).

Public names: the module's ``__all__`` where it has one; otherwise every name
without a leading underscore whose object was defined in that module, in one of
its submodules, or in its C accelerator (``bisect`` -> ``_bisect``). Class
members: the names in the class's own ``__dict__`` without a leading
underscore. An object reachable under several names is kept once, under the
first name met (modules in file order, names sorted).

Records: ``{"id": qualified name, "title": qualified name, "text": first
paragraph of the docstring}`` (``json.dumps``, ``pathlib.Path.glob``); a first
paragraph that is only a call signature (``dumps(obj, ...) -> str``) is
skipped in favour of the next one; reST roles and double backquotes are
dropped (``:func:`x``` -> ``x``); whitespace is collapsed and the text cut at
a word boundary to at most 600 characters. Sorted by id; gzip mtime 0, so the
output is byte-for-byte deterministic for one Python version (run on 3.11).

    python3.11 eval/corpora/make_pydocs.py [--modules FILE] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import io
import json
import re
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODULES = HERE / "pydocs-modules.txt"
DEFAULT_OUT = HERE / "pydocs.jsonl.gz"
MAX_CHARS = 600
# "name(args)", "S.name(args) -> str", "chain(*iterables) --> chain object"
SIGNATURE = re.compile(r"^[\w.]+\s*\(.*\)\s*(--?>.*)?$", re.S)
ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`x` -> x


class ModulesError(ValueError):
    """The module list names something unusable (names the file and line)."""


def read_modules(path: Path) -> list[str]:
    names: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not re.fullmatch(r"[A-Za-z_][\w.]*", line):
            raise ModulesError(f"{path}:{lineno}: not a module name")
        if line in names:
            raise ModulesError(f"{path}:{lineno}: module listed twice")
        names.append(line)
    return names


def first_paragraph(doc: str | None) -> str:
    """The docstring's first descriptive paragraph, whitespace collapsed, <= MAX_CHARS."""
    if not isinstance(doc, str):
        return ""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", inspect.cleandoc(doc))]
    paragraphs = [p for p in paragraphs if p]
    text = ""
    for para in paragraphs:
        flat = " ".join(para.split())
        if SIGNATURE.match(flat) and len(flat) < 200:
            continue  # a call signature line, not a description
        text = ROLE.sub(r"\1", flat).replace("``", "")
        break
    if len(text) > MAX_CHARS:
        cut = text[: MAX_CHARS + 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > MAX_CHARS // 2 else cut[:MAX_CHARS]).rstrip(" ,;:")
    return text


def own_doc(obj: object) -> str | None:
    """The object's own docstring; for a class without one, its own __init__'s."""
    doc = getattr(obj, "__doc__", None)
    if inspect.isclass(obj):
        # only the class's own __dict__: some C types would report type.__doc__
        doc = obj.__dict__.get("__doc__")
        init = obj.__dict__.get("__init__")
        if not isinstance(doc, str) and inspect.isfunction(init):
            doc = init.__doc__  # e.g. ProcessPoolExecutor, PrettyPrinter
    return doc if isinstance(doc, str) else None


def public_names(mod: object) -> list[str]:
    declared = getattr(mod, "__all__", None)
    if declared is not None:
        return sorted({n for n in declared if not n.startswith("_") and hasattr(mod, n)})
    own = mod.__name__
    accelerator = "_" + own.rsplit(".", 1)[-1]  # bisect -> _bisect, sqlite3 -> _sqlite3
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or not (inspect.isclass(obj) or callable(obj)):
            continue
        where = getattr(obj, "__module__", None) or ""
        if where in (own, accelerator) or where.startswith(own + "."):
            out.append(name)
    return sorted(out)


def member(obj: object) -> tuple[object, str | None] | None:
    """(object, docstring) for a class attribute that is a method or property."""
    if isinstance(obj, (classmethod, staticmethod)):
        return obj.__func__, own_doc(obj.__func__)
    if isinstance(obj, property):
        return obj, obj.__doc__ or own_doc(obj.fget)
    if inspect.isclass(obj):
        return None
    if inspect.isroutine(obj) or inspect.isdatadescriptor(obj):
        return obj, own_doc(obj)
    return None


def records_for(modname: str, seen: set[int]) -> list[dict[str, str]]:
    mod = importlib.import_module(modname)
    out: list[dict[str, str]] = []

    def add(qualname: str, obj: object, doc: str | None) -> bool:
        if id(obj) in seen:
            return False
        text = first_paragraph(doc)
        if not text:
            return False
        seen.add(id(obj))
        out.append({"id": qualname, "title": qualname, "text": text})
        return True

    add(modname, mod, own_doc(mod))
    for name in public_names(mod):
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if inspect.ismodule(obj):
            continue
        qual = f"{modname}.{name}"
        first = id(obj) not in seen
        add(qual, obj, own_doc(obj))
        if not (first and inspect.isclass(obj)):
            continue
        seen.add(id(obj))  # members once, under the first name, documented class or not
        for mname in sorted(obj.__dict__):
            if mname.startswith("_"):
                continue
            found = member(obj.__dict__[mname])
            if found is not None:
                add(f"{qual}.{mname}", found[0], found[1])
    return out


def build(modules: list[str]) -> bytes:
    seen: set[int] = set()
    keep_alive: list[object] = []  # ids stay unique only while the objects live
    records: dict[str, dict[str, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn on import
        for modname in modules:
            keep_alive.append(importlib.import_module(modname))
            for rec in records_for(modname, seen):
                records.setdefault(rec["id"], rec)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for key in sorted(records):
            gz.write(json.dumps(records[key], ensure_ascii=False).encode("utf-8") + b"\n")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        print("make_pydocs: run on Python 3.11 (docstrings differ between versions)", file=sys.stderr)
        return 1
    try:
        data = build(read_modules(args.modules))
    except (OSError, ImportError, ModulesError) as exc:
        print(f"make_pydocs: {exc}", file=sys.stderr)
        return 1
    args.out.write_bytes(data)
    count = gzip.decompress(data).count(b"\n")
    print(f"{args.out}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
