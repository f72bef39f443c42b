#!/usr/bin/env python3
"""Assemble a Lambda task root: the one recipe behind the Dockerfile, `make task-root` and the layers.

    python deploy/taskroot.py all  --target build/task --model build/model --index build/index
    python deploy/taskroot.py deps --target DIR [--python-version 3.12] [--with-ric]
    python deploy/taskroot.py code --target DIR
    python deploy/taskroot.py data --target DIR --model build/model [--index build/index]

What goes in comes from two files only: requirements.txt (installed with pip for Linux
x86_64 and the given CPython, whatever machine this runs on) and deploy/files.txt (the
repo paths that are the function's code).  Dependencies are pruned of what the run time
never imports (tests, type stubs, onnxruntime's model-conversion tools, botocore models of
services we do not call, the Hugging Face download client) and compiled to .pyc for the
target Python, because /var/task is read-only and Python would otherwise compile every
module again on every cold start.  Standard library only: it runs inside the Docker build
and on a developer's machine alike.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

# The dependencies half of the recipe (pip install and pruning).  Imported in both ways this file
# is used; every name of pipdeps stays readable here (deploy/image.py, bench/image.py, the tests).
if TYPE_CHECKING or __package__:  # imported: `from deploy import taskroot` (tests, deploy/image.py, bench/image.py)
    from deploy.pipdeps import (  # noqa: F401
        BOTOCORE_SERVICES,
        DROP_DISTRIBUTIONS,
        MAX_GLIBC_MINOR,
        PLATFORMS,
        PRUNE_DIR_NAMES,
        PRUNE_PATHS,
        PRUNE_SUFFIXES,
        RecipeError,
        droppable,
        installed_distributions,
        log,
        normalize,
        pip_args,
        pip_install,
        prune,
        remove_distribution,
        remove_empty_dirs,
        requirement_lines,
    )
else:  # run as a script: python3 deploy/taskroot.py (the Dockerfile's deps stage copies both files)
    from pipdeps import *  # noqa: F403 (the same names: pipdeps.__all__)

ROOT = Path(__file__).resolve().parent.parent
FILES_LIST = ROOT / "deploy" / "files.txt"
REQUIREMENTS = ROOT / "requirements.txt"
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
RECIPE_FILES = (__file__, str(Path(__file__).with_name("pipdeps.py")))  # a change reinstalls the deps

LAMBDA_PYTHON = "3.12"  # the python3.12 runtime and public.ecr.aws/lambda/python:3.12
MODEL_DIR, INDEX_DIR = "model", "index"  # beside the code: /var/task/model, /var/task/index
NATIVE_BUILD_SCRIPT, NATIVE_LIBRARY = "search/scoring/native/build.py", "_int8dot.so"
DEPS_STAMP = ".taskroot-deps.json"
CODE_STAMP = ".taskroot-code.json"
ZIP_LEVEL = 6
# Lambda's limit for a zip function plus all its layers, unzipped (image functions have 10 GB).
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ dependencies


def pinned_requirement(name: str, path: Path = DEV_REQUIREMENTS) -> str:
    """The exact pin of ``name`` in a requirements file (awslambdaric comes from requirements-dev.txt)."""
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and normalize(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]) == normalize(name):
            return line
    raise RecipeError(f"{path}: no pin for {name}")


def find_python(version: str) -> str | None:
    """An interpreter of exactly ``version`` to compile .pyc files with, or None."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None


def compile_pyc(paths: list[Path], python_version: str) -> str | None:
    """Byte-compile for the target Python; unchecked-hash .pyc files stay valid in a zip or image
    whatever the files' timestamps become.  Returns the interpreter's version, or None if none found."""
    exe = find_python(python_version)
    if exe is None:
        log(
            f"no python{python_version} here: .pyc files not written (the function works, its cold "
            f"start compiles every module); install python{python_version} to add them"
        )
        return None
    subprocess.run(
        [exe, "-m", "compileall", "-q", "-j", "1", "--invalidation-mode", "unchecked-hash"] + [str(p) for p in paths],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return subprocess.run(
        [exe, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True, check=True
    ).stdout.strip()


def deps(
    target: Path,
    *,
    python_version: str = LAMBDA_PYTHON,
    with_ric: bool = False,
    wheel_dir: Path | None = None,
    compile_: bool = True,
    force: bool = False,
) -> bool:
    """Install the pruned runtime dependencies into ``target``; False when already up to date.

    ``with_ric`` adds awslambdaric (what the Lambda base image provides) for running the tree
    here the way Lambda runs it.  A new install empties ``target`` first.
    """
    requirements = requirement_lines(REQUIREMENTS)
    if with_ric:
        requirements.append(pinned_requirement("awslambdaric"))
    stamp = {
        "python_version": python_version,
        "platforms": PLATFORMS,
        "requirements": requirements,
        "recipe_sha256": sha256_bytes(b"".join(Path(f).read_bytes() for f in RECIPE_FILES)),
        "compile": compile_,
    }
    stamp_path = target / DEPS_STAMP
    if not force and stamp_path.is_file():
        try:
            old = json.loads(stamp_path.read_text())
        except ValueError:
            old = {}
        if {k: old.get(k) for k in stamp} == stamp:
            log(f"{target}: dependencies up to date")
            return False
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    log(f"{target}: installing {len(requirements)} requirements for CPython {python_version}, Linux x86_64")
    pip_install(requirements, target, python_version, wheel_dir)
    wanted = {normalize(re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0]) for r in requirements}
    stamp.update(prune(target, wanted))
    stamp["compiled_with"] = compile_pyc([target], python_version) if compile_ else None
    versions = {name: _version(info["dist_info"]) for name, info in sorted(installed_distributions(target).items())}
    stamp["versions"] = versions
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    log(f"{target}: {len(versions)} distributions, {tree_bytes(target) / 1e6:.1f} MB")
    return True


def _version(dist_info: Path) -> str:
    return dist_info.name[: -len(".dist-info")].rpartition("-")[2]


# ------------------------------------------------------------------ code and data


def code_paths(files_list: Path = FILES_LIST) -> list[str]:
    paths = []
    for number, line in enumerate(files_list.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        rel = line.rstrip("/")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise RecipeError(f"{files_list}:{number}: {line!r} must be a path inside the repo")
        if not (ROOT / rel).exists():
            raise RecipeError(f"{files_list}:{number}: {line!r} does not exist in {ROOT}")
        paths.append(rel)
    return paths


def code(target: Path, *, python_version: str = LAMBDA_PYTHON, source: Path = ROOT, compile_: bool = True) -> list[str]:
    """Copy the paths listed in deploy/files.txt into ``target`` (replacing the previous copy)."""
    target.mkdir(parents=True, exist_ok=True)
    stamp_path = target / CODE_STAMP
    if stamp_path.is_file():  # remove the previous copy, so a deleted module does not linger
        for rel in json.loads(stamp_path.read_text()).get("paths", []):
            path = target / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    paths = code_paths()
    # a shared object built on this machine is never copied: it is compiled for the target below
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", ".*.tmp")
    for rel in paths:
        src, dst = source / rel, target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=ignore) if src.is_dir() else shutil.copy2(src, dst)
    compiled = compile_pyc([target / p for p in paths], python_version) if compile_ else None
    native = build_native_kernel(target)
    stamp_path.write_text(
        json.dumps({"paths": paths, "compiled_with": compiled, "native_kernel": native}, indent=2) + "\n"
    )
    log(f"{target}: code {', '.join(paths)}")
    return paths


def build_native_kernel(target: Path) -> str | None:
    """Compile search/scoring/native/int8dot.c into the task root (x86-64 Linux, no libc dependency).

    Without a compiler the function still works: int8 indexes use onnxruntime's kernel, slower
    for single queries.  The Dockerfile installs gcc in the stage that runs this."""
    build_script = target / NATIVE_BUILD_SCRIPT
    if not build_script.is_file():
        return None
    result = subprocess.run([sys.executable, str(build_script), "--optional"], capture_output=True, text=True)
    out = build_script.with_name(NATIVE_LIBRARY)
    if result.returncode != 0 or not out.is_file():
        log(f"warning: native int8 kernel not built ({result.stderr.strip()[-300:]})")
        return None
    return str(out.relative_to(target))


def copy_bundle(src: Path, dst: Path, what: str) -> None:
    """Copy a model bundle or index folder (both have a manifest.json); skipped when identical."""
    manifest = src / "manifest.json"
    if not manifest.is_file():
        raise RecipeError(f"{src}: no {what} here (manifest.json missing)")
    if (dst / "manifest.json").is_file() and (dst / "manifest.json").read_bytes() == manifest.read_bytes():
        return
    shutil.rmtree(dst, ignore_errors=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
    os.replace(tmp, dst)
    log(f"{dst}: {what} copied from {src}")


def data(target: Path, *, model: Path | None, index: Path | None) -> None:
    if model is not None:
        copy_bundle(model, target / MODEL_DIR, "model bundle")
    if index is not None:
        copy_bundle(index, target / INDEX_DIR, "index")


def tree_bytes(top: Path) -> int:
    return sum(p.stat().st_size for p in Path(top).rglob("*") if p.is_file() and not p.is_symlink())


def make_zip(source: Path, out: Path, *, level: int = ZIP_LEVEL) -> tuple[int, int]:
    """Zip ``source``'s contents (sorted, so the same tree gives the same listing); returns
    (bytes unzipped, bytes zipped).  Unzipped is what Lambda's 250 MB limit counts."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    unzipped = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(source).as_posix())
            unzipped += path.stat().st_size
    os.replace(tmp, out)
    return unzipped, out.stat().st_size


def zip_packages(pairs: list[str]) -> int:
    """Zip each FOLDER=ZIP pair; 1 if the parts together pass Lambda's unzipped limit."""
    total = 0
    for pair in pairs:
        folder, sep, out = pair.partition("=")
        if not sep or not Path(folder).is_dir():
            raise RecipeError(f"{pair!r}: expected FOLDER=ZIP with an existing folder")
        unzipped, zipped = make_zip(Path(folder), Path(out))
        total += unzipped
        print(f"{out}: {unzipped / 2**20:7.1f} MiB unzipped, {zipped / 2**20:6.1f} MiB zipped")
    verdict = "within" if total <= LAMBDA_UNZIPPED_LIMIT else "OVER"
    print(f"total: {total / 2**20:.1f} MiB unzipped, {verdict} Lambda's {LAMBDA_UNZIPPED_LIMIT / 2**20:.0f} MiB limit")
    return 0 if total <= LAMBDA_UNZIPPED_LIMIT else 1


# ------------------------------------------------------------------ command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="taskroot", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, *, with_deps: bool):
        sp.add_argument("--target", required=True, type=Path, help="folder to fill, e.g. build/task")
        sp.add_argument(
            "--python-version",
            default=LAMBDA_PYTHON,
            help=f"CPython the tree is for (default {LAMBDA_PYTHON}, Lambda's)",
        )
        sp.add_argument("--no-compile", action="store_true", help="do not write .pyc files")
        if with_deps:
            sp.add_argument(
                "--with-ric",
                action="store_true",
                help="add awslambdaric (provided by Lambda itself) to run the tree locally",
            )
            sp.add_argument("--wheel-dir", type=Path, help="cache of downloaded wheels (default: pip's own cache)")
            sp.add_argument("--force", action="store_true", help="reinstall even if up to date")

    common(sub.add_parser("deps", help="install the pruned runtime dependencies"), with_deps=True)
    common(sub.add_parser("code", help="copy the paths listed in deploy/files.txt"), with_deps=False)
    d = sub.add_parser("data", help="copy the model bundle and the optional index")
    d.add_argument("--target", required=True, type=Path)
    for sp in (d, a := sub.add_parser("all", help="deps + code + data: a complete task root")):
        sp.add_argument("--model", type=Path, help="model bundle folder, copied to TARGET/model")
        sp.add_argument("--index", type=Path, help="index folder, copied to TARGET/index (optional)")
    common(a, with_deps=True)
    z = sub.add_parser("zip", help="zip folders as Lambda packages and print their sizes against the 250 MB limit")
    z.add_argument(
        "pairs", nargs="+", metavar="FOLDER=ZIP", help="e.g. build/layers/runtime=build/zip/runtime-layer.zip"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        compile_ = not getattr(args, "no_compile", False)
        if args.command in ("deps", "all"):
            deps(
                args.target,
                python_version=args.python_version,
                with_ric=args.with_ric,
                wheel_dir=args.wheel_dir,
                compile_=compile_,
                force=args.force,
            )
        if args.command in ("code", "all"):
            code(args.target, python_version=args.python_version, compile_=compile_)
        if args.command in ("data", "all"):
            data(args.target, model=args.model, index=args.index)
        if args.command == "zip":
            return zip_packages(args.pairs)
    except RecipeError as exc:
        print(f"taskroot: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"taskroot: error: {' '.join(map(str, exc.cmd[:4]))} ... exited with {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
