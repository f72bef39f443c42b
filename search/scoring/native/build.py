"""Compile int8dot.c into a shared object.  Standard library only: ``deploy/taskroot.py`` runs this
file as a script inside the Docker build, where numpy is not installed.

    python search/scoring/native/build.py [--out PATH] [--optional]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "int8dot.c"
LIBRARY_NAME = "_int8dot.so"
# -O3 vectorises the plain-C path; the SIMD paths carry their own target attributes, so the
# object runs on any x86-64 CPU and picks its path at run time.  No -march: that would tie the
# object to the build machine's CPU.
CFLAGS = ["-O3", "-fPIC", "-shared", "-std=c11", "-Wall", "-Wextra"]


def build(target: Path | None = None, *, compiler: str | None = None) -> Path:
    """Compile into ``target`` (default: beside the source), atomically; RuntimeError on failure."""
    target = Path(target or HERE / LIBRARY_NAME)
    cc = compiler or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        result = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    except OSError as exc:
        raise RuntimeError(f"cannot run {cc}: {exc}") from None
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{cc} failed on {SOURCE.name}: {result.stderr.strip()[:2000]}")
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile search/scoring/native/int8dot.c into _int8dot.so")
    parser.add_argument("--out", type=Path, default=None, help="where to write the shared object")
    parser.add_argument("--optional", action="store_true", help="exit 0 with a warning when no compiler works")
    args = parser.parse_args(argv)
    try:
        print(f"built {build(args.out)}", file=sys.stderr)
    except RuntimeError as exc:
        level = "warning" if args.optional else "error"
        print(f"{level}: {exc}; int8 indexes will use onnxruntime's kernel", file=sys.stderr)
        return 0 if args.optional else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
