"""The runtime dependencies of a Lambda task root, for deploy/taskroot.py: pip installs requirements.txt
for Linux x86_64 and the target CPython (whatever machine this runs on), then prunes what the run
time never imports (tests, type stubs, onnxruntime's model-conversion tools, botocore models of
services we do not call, the Hugging Face download client).  Standard library only, like
taskroot.py: the Dockerfile's deps stage copies both files alone and runs taskroot.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Wheels for glibc up to 2.28: Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34), and
# numpy 2.3+ publishes no manylinux2014 (glibc 2.17) wheels any more.
__all__ = [  # what deploy/taskroot.py takes over, in both ways it is run
    "BOTOCORE_SERVICES",
    "DROP_DISTRIBUTIONS",
    "MAX_GLIBC_MINOR",
    "PLATFORMS",
    "PRUNE_DIR_NAMES",
    "PRUNE_PATHS",
    "PRUNE_SUFFIXES",
    "RecipeError",
    "droppable",
    "installed_distributions",
    "log",
    "normalize",
    "pip_args",
    "pip_install",
    "prune",
    "remove_distribution",
    "remove_empty_dirs",
    "requirement_lines",
]

MAX_GLIBC_MINOR = 28
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{minor}_x86_64" for minor in range(17, MAX_GLIBC_MINOR + 1)]

# Distributions installed as dependencies but never imported at run time, and why.  Whatever
# only they require goes too (computed from the installed metadata, never guessed).
DROP_DISTRIBUTIONS = {
    "huggingface-hub": "tokenizers requires it for Tokenizer.from_pretrained() downloads; "
    "the model bundle ships tokenizer.json",
}
# Folders inside packages that the run time never imports.
PRUNE_DIR_NAMES = {"__pycache__", "tests"}
PRUNE_PATHS = [
    "bin",  # console scripts with this machine's interpreter path
    "onnxruntime/transformers",  # model conversion and optimisation tools
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
]
PRUNE_SUFFIXES = (".pyi",)
# botocore ships the API model of every AWS service (~28 MB); keep the ones the code calls.
BOTOCORE_SERVICES = {"s3", "sts"}


class RecipeError(Exception):
    """A bad input: printed as one line, exit 2."""


def log(msg: str) -> None:
    print(f"taskroot: {msg}", file=sys.stderr, flush=True)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_args(python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def pip_install(requirements: list[str], target: Path, python_version: str, wheel_dir: Path | None) -> None:
    """Install for Linux x86_64 + CPython ``python_version``; wheels cached in ``wheel_dir`` when given."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    common = pip_args(python_version)
    install = (
        pip + ["install", "--quiet", "--no-compile", "--no-warn-script-location", "--target", str(target)] + common
    )
    if wheel_dir is None:
        subprocess.run(install + requirements, check=True)
        return
    wheel_dir.mkdir(parents=True, exist_ok=True)
    offline = install + ["--no-index", "--find-links", str(wheel_dir)] + requirements
    if subprocess.run(offline, stderr=subprocess.DEVNULL).returncode == 0:
        return
    log(f"downloading wheels for cp{python_version.replace('.', '')} into {wheel_dir}")
    subprocess.run(pip + ["download", "--quiet", "--dest", str(wheel_dir)] + common + requirements, check=True)
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(offline, check=True)


def requirement_lines(path: Path) -> list[str]:
    """Requirement lines of a flat requirements file (``-r`` includes are not followed)."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise RecipeError(f"{path}: option lines such as {line!r} are not supported in the runtime requirements")
        lines.append(line)
    return lines


def installed_distributions(target: Path) -> dict[str, dict]:
    """name -> {"dist_info", "requires"} read from the METADATA files pip wrote."""
    dists = {}
    for info in target.glob("*.dist-info"):
        name, requires = None, []
        for line in (info / "METADATA").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                break  # headers end at the first blank line
            key, _, value = line.partition(":")
            if key == "Name":
                name = normalize(value.strip())
            elif key == "Requires-Dist" and "extra ==" not in value:
                # Markers other than extras are kept, so a requirement counts even if its marker
                # is false here: that can only keep more, never drop something needed.
                match = re.match(r"\s*([A-Za-z0-9._-]+)", value)
                if match is None:
                    raise RecipeError(f"{info}/METADATA: unreadable Requires-Dist {value.strip()!r}")
                requires.append(normalize(match.group(1)))
        if name:
            dists[name] = {"dist_info": info, "requires": requires}
    return dists


def droppable(dists: dict[str, dict], roots: set[str], wanted: set[str]) -> set[str]:
    """``roots`` plus every distribution required only by dropped ones (never a requested one)."""
    dropped = {r for r in roots if r in dists}
    changed = True
    while changed:
        changed = False
        for name, _info in dists.items():
            if name in dropped or name in wanted:
                continue
            requirers = {other for other, o in dists.items() if name in o["requires"]}
            if requirers and requirers <= dropped:
                dropped.add(name)
                changed = True
    return dropped


def remove_distribution(target: Path, dist_info: Path) -> None:
    record = dist_info / "RECORD"
    for row in record.read_text(encoding="utf-8").splitlines():
        rel = row.rsplit(",", 2)[0].strip('"')
        path = (target / rel).resolve()
        if rel and path.is_relative_to(target.resolve()) and path.is_file():
            path.unlink()
    shutil.rmtree(dist_info, ignore_errors=True)
    remove_empty_dirs(target)


def remove_empty_dirs(top: Path) -> None:
    for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
        if Path(dirpath) != top and not os.listdir(dirpath):
            os.rmdir(dirpath)


def prune(target: Path, wanted: set[str]) -> dict:
    """Remove what the run time never imports; returns what went, for the stamp."""
    dists = installed_distributions(target)
    dropped = sorted(droppable(dists, set(DROP_DISTRIBUTIONS), wanted))
    for name in dropped:
        remove_distribution(target, dists[name]["dist_info"])
    for rel in PRUNE_PATHS:
        shutil.rmtree(target / rel, ignore_errors=True)
    data = target / "botocore" / "data"
    if data.is_dir():
        for service in data.iterdir():
            if service.is_dir() and service.name not in BOTOCORE_SERVICES:
                shutil.rmtree(service)
    for dirpath, dirnames, filenames in os.walk(target):
        for d in [d for d in dirnames if d in PRUNE_DIR_NAMES]:
            shutil.rmtree(Path(dirpath, d))
            dirnames.remove(d)
        for f in filenames:
            if f.endswith(PRUNE_SUFFIXES):
                os.unlink(Path(dirpath, f))
    return {"dropped_distributions": dropped}
