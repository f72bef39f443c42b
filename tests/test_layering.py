"""The package's layering, read from the imports themselves (ast, every import, also inside functions):

* nothing under search/ imports torch, transformers (export and reference only) or bench;
* the index and scoring layers never import serving;
* serving never imports the index builder (a server only reads indexes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "search"
NEVER_IN_SEARCH = ("torch", "transformers", "sentence_transformers", "bench")
RULES = [  # (modules under this prefix, may not import this prefix)
    ("search.index", "search.serve"),
    ("search.scoring", "search.serve"),
    ("search.serve", "search.index.builder"),
]


def module_name(path: Path) -> str:
    parts = (path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(path.name)).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [*package[: len(package) - node.level + 1], base]))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from search.index import builder`
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_package():
    names = {module_name(p) for p in MODULES}
    assert {"search.searcher", "search.index.reader", "search.scoring.kernels", "search.serve.app"} <= names
    assert "search.scoring.kernels" in imports_of(PACKAGE / "index" / "reader.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path):
    name, imported = module_name(path), imports_of(path)
    for banned in NEVER_IN_SEARCH:
        hits = sorted(i for i in imported if within(i, banned))
        assert not hits, f"{name} imports {hits}: search/ never imports {banned}"
    for layer, banned in RULES:
        if within(name, layer):
            hits = sorted(i for i in imported if within(i, banned))
            assert not hits, f"{name} imports {hits}: {layer} never imports {banned}"


def test_the_rules_catch_a_violation(tmp_path):
    """The checks above would fail on the imports they forbid (not vacuous)."""
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from search.index import builder\n    import torch\n")
    found = imports_of(fake)
    assert any(within(i, "search.index.builder") for i in found) and "torch" in found
