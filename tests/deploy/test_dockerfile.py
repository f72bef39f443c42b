"""The Dockerfile and .dockerignore, read as text (no Docker needed): each stage copies what its step
imports, the runtime stage is ordered from least to most often changed, and the build context keeps
everything the image needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined); the last stage is "final"."""
    lines = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text()).splitlines()
    stages: dict[str, list[str]] = {}
    current = None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else "final"
            stages[current] = []
        if current:
            stages[current].append(line)
    return stages


def _module_file(name: str) -> Path | None:
    """The repo file of a dotted module name (a module or a package's __init__.py), None if not ours."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _run_time_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def local_imports(path: Path, seen: set[str] | None = None) -> set[str]:
    """Repo files (relative paths) a script needs, following absolute and relative imports (also inside
    functions) and every enclosing package's __init__.py."""
    seen = set() if seen is None else seen
    package = path.relative_to(ROOT).parent.parts
    for node in _run_time_nodes(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(package[: len(package) - node.level + 1])
                module = ".".join(filter(None, [stem, node.module]))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the module and every package above it
                found = _module_file(".".join(parts[:depth]))
                if found is None:
                    continue
                rel = found.relative_to(ROOT).as_posix()
                if rel not in seen:
                    seen.add(rel)
                    local_imports(found, seen)
    return seen


def copied_paths(stage: list[str]) -> set[str]:
    """Repo paths a stage COPYs from the build context, each checked to land where it came from."""
    copied = set()
    for line in stage:
        parts = line.split()
        if parts[0] != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        *sources, dest = parts[1:]
        for src in sources:
            if src.endswith("/"):
                assert dest == src, f"{line!r}: a directory lands at its own path"
            else:
                landed = Path(dest.rstrip("/") or ".") / Path(src).name if dest.endswith("/") else Path(dest)
                assert landed == Path(src), f"{line!r}: {src} lands at {landed}"
            copied.add(src)
    return copied


def test_dockerfile_export_stage_copies_what_the_export_imports():
    needed = local_imports(ROOT / "export_onnx.py")
    assert "search/model/bundle.py" in needed and len(needed) > 3, needed  # the walk follows imports
    copied = copied_paths(dockerfile_stages()["model"])
    missing = sorted(
        rel for rel in needed if not any(rel == src or (src.endswith("/") and rel.startswith(src)) for src in copied)
    )
    assert not missing, f"add {missing} to the model stage's COPY lines"


def test_dockerfile_runtime_stage():
    stages = dockerfile_stages()
    final = stages["final"]
    assert final[0] == "FROM ${LAMBDA_BASE}"
    assert "ARG LAMBDA_BASE=public.ecr.aws/lambda/python:3.12" in DOCKERFILE.read_text()
    assert final[-1] == 'CMD ["handler.handler"]'
    text = "\n".join(final)
    assert "torch" not in text and "requirements-export" not in text and "tests" not in text
    # Layers from least to most often changed: requirements, model, index, code.
    order = [
        next(i for i, line in enumerate(final) if marker in line)
        for marker in ("--from=deps", "--from=model", "--from=index", "--from=code")
    ]
    assert order == sorted(order), order
    assert "taskroot.py deps" in "\n".join(stages["deps"]) and stages["deps"][0] == "FROM ${LAMBDA_BASE} AS deps"
    assert "taskroot.py code" in "\n".join(stages["code"])
    # No step depends on a base image's package manager (the stand-in base is Debian, AWS's is dnf).
    runs = [line for stage in stages.values() for line in stage if line.startswith("RUN ")]
    assert not [r for r in runs if re.search(r"\b(dnf|yum|microdnf|apt-get|apt|apk)\b", r)], runs
    assert "export_onnx.py" in "\n".join(stages["model"])
    env = text[text.index("ENV ") :]
    assert "SEARCH_MODEL_DIR=/var/task/model" in env and "SEARCH_INDEX_URI=/var/task/index" in env


def test_dockerfile_deps_stage_copies_the_recipe_modules():
    """The deps stage copies deploy/taskroot.py alone, without the repository, and runs it as a script:
    every sibling module it imports (``from deploy.x import``) must be copied beside it."""
    recipe = (ROOT / "deploy" / "taskroot.py").read_text()
    siblings = sorted(set(re.findall(r"^\s*from deploy\.(\w+) import", recipe, re.M)))
    assert siblings == ["pipdeps"], siblings  # the walk finds the imports
    for name in siblings:
        assert f"from {name} import" in recipe, f"taskroot.py run as a script must import {name} as a sibling"
    copies = [
        line.split()[1:] for line in dockerfile_stages()["deps"] if line.startswith("COPY ") and "--from" not in line
    ]
    copied = {src for *sources, dest in copies if dest == "/tmp/build/deploy/" for src in sources}
    assert {"deploy/taskroot.py", *(f"deploy/{name}.py" for name in siblings)} <= copied, copied


def test_dockerignore_keeps_the_context_small_but_complete():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in ("build", ".venv", "tests", "data", ".git"):
        assert excluded in rules, excluded
    assert "!data/demo-games.jsonl" in rules
    from deploy import taskroot

    needed = taskroot.code_paths() + [
        "requirements.txt",
        "requirements-export.txt",
        "export_onnx.py",
        "export",
        "verification",
        "deploy",
    ]
    for rel in needed:
        top = rel.split("/")[0]
        assert top not in rules, f"{rel} is needed in the image but .dockerignore drops {top}"
