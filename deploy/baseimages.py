"""The two stand-in base images of deploy/image.py: public.ecr.aws/lambda/python:3.12 (Debian bookworm
from debootstrap + this machine's pyenv CPython 3.12 at /var/lang, awslambdaric in /var/runtime,
AWS's Runtime Interface Emulator) and a builder base (the same Debian plus gcc, the same Python at
/usr/local), tagged by a hash of everything they are made from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.engine import (
    CACHE,
    PYTHON_VERSION,
    ROOT,
    STANDIN,
    WHEELS,
    Engine,
    EngineUnavailable,
    ImageError,
    digest,
    find_python,
    find_rie,
    log,
    sha256_file,
    unavailable_reason,
    unmount_under,
)

SUITE = "bookworm"
# What pyenv's CPython and its extension modules link against, beyond debootstrap's minbase
# (ldd on bin/python3.12 and lib-dynload/*.so); tkinter is left out of the copy, so no Tk/X11.
RUNTIME_PACKAGES = (
    "libssl3",
    "libffi8",
    "libsqlite3-0",
    "libncursesw6",
    "libreadline8",
    "libbz2-1.0",
    "liblzma5",
    "zlib1g",
    "libexpat1",
    "libnsl2",
    "ca-certificates",
)
BUILDER_PACKAGES = RUNTIME_PACKAGES + ("gcc", "libc6-dev")
# Left out of the Python copy: the stdlib's own tests, IDLE/Tk, the static library and headers,
# and whatever this machine installed into site-packages (pip stays: the Dockerfile runs it).
PYTHON_EXCLUDE_DIRS = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "config-3.12-x86_64-linux-gnu",
    "include",
    "pkgconfig",
}
PYTHON_EXCLUDE_BIN = (
    "idle",
    "2to3",
    "pydoc",
    "python-config",
    "python3-config",
    "python3.12-config",
    "python3.12-gdb.py",
)
SITE_PACKAGES_KEEP = ("pip",)
# The AWS base image's environment (docs: "Defined runtime environment variables").
LAMBDA_ENV = {
    "LANG": "en_US.UTF-8",
    "TZ": ":/etc/localtime",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    "LAMBDA_TASK_ROOT": "/var/task",
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
}
BUILDER_ENV = {"LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin", "LD_LIBRARY_PATH": "/usr/local/lib"}
LAMBDA_TAG = "search-standin/lambda-python"
BUILDER_TAG = "search-standin/builder-python"


# ------------------------------------------------------------------ the base images


def apt_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (so debootstrap goes where apt goes), or None for its default."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if path.suffix == ".sources" and words[:1] == ["URIs:"] and len(words) > 1:
                if "security" not in words[1]:
                    return words[1]
            elif words[:1] == ["deb"]:
                uri = next((w for w in words[1:] if "://" in w), None)
                if uri and "security" not in uri:
                    return uri
    return None


DEBOOTSTRAP_ATTEMPTS = 3


def debootstrap(kind: str, packages: tuple[str, ...]) -> Path:
    """A cached Debian root filesystem (minbase + ``packages``), stripped of docs and apt lists."""
    key = digest({"suite": SUITE, "variant": "minbase", "packages": sorted(packages)})
    rootfs = CACHE / f"rootfs-{kind}-{key}"
    if (rootfs / ".complete").is_file():
        unmount_under(rootfs)
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    # One package cache per kind: the two debootstraps run side by side, and sharing one made
    # each validate the other's half-written .deb ("Retrying failed download of adduser").
    debs = CACHE / f"debs-{kind}"
    debs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--cache-dir={debs}",
        f"--include={','.join(packages)}",
        SUITE,
        str(rootfs),
    ]
    mirror = apt_mirror()
    if mirror:
        cmd.append(mirror)
    logfile = CACHE / f"debootstrap-{kind}.log"
    for attempt in range(1, DEBOOTSTRAP_ATTEMPTS + 1):  # a mirror hiccup should not fail a test run
        log(f"debootstrap {SUITE} minbase + {len(packages)} packages -> {rootfs.name} (attempt {attempt})")
        try:
            with open(logfile, "wb") as out:
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
        finally:
            unmount_under(rootfs)
        if done.returncode == 0:
            break
        shutil.rmtree(rootfs, ignore_errors=True)
        time.sleep(5 * attempt)
    if done.returncode != 0:
        raise ImageError(f"debootstrap failed (exit {done.returncode}):\n{logfile.read_text()[-3000:]}")
    for rel in (
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ):
        for child in (rootfs / rel).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    (rootfs / ".complete").write_text(key + "\n")
    return rootfs


def _python_ignore(prefix: Path):
    stdlib = prefix / "lib" / f"python{PYTHON_VERSION}"

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        skip = {n for n in names if n in PYTHON_EXCLUDE_DIRS and (here / n).is_dir()}
        if here == prefix / "bin":
            skip |= {n for n in names if n.startswith(PYTHON_EXCLUDE_BIN)}
        if here == stdlib / "lib-dynload":
            skip |= {n for n in names if n.startswith("_tkinter")}
        if here == stdlib / "site-packages":
            skip |= {n for n in names if not n.startswith(SITE_PACKAGES_KEEP)}
        if here == prefix / "lib":
            skip |= {n for n in names if n.endswith(".a")}
        return skip

    return ignore


def _relocate_scripts(bin_dir: Path, old_prefix: Path, new_prefix: str) -> None:
    """pip's console scripts name the interpreter by its path here; point them at the image's."""
    old = f"#!{old_prefix}/bin/".encode()
    for path in bin_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            head = path.read_bytes()
            if head.startswith(old):
                path.write_bytes(f"#!{new_prefix}/bin/".encode() + head[len(old) :])


def python_version_of(prefix: Path) -> str:
    return subprocess.run(
        [str(prefix / "bin" / f"python{PYTHON_VERSION}"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def runtime_client(python_version: str = PYTHON_VERSION) -> Path:
    """awslambdaric (and what it needs) for CPython 3.12 Linux x86_64, by deploy/taskroot.py's pip recipe."""
    tr = taskroot()
    pin = tr.pinned_requirement("awslambdaric")
    target = CACHE / f"runtime-{digest([pin, 'no-tests', 'pyc'])}"
    if not (target / "awslambdaric").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        tr.pip_install([pin], target, python_version, WHEELS / f"cp{python_version.replace('.', '')}")
        for extra in [*target.glob("bin"), *target.rglob("tests")]:  # console scripts, simplejson's tests
            shutil.rmtree(extra)
        tr.compile_pyc([target], python_version)
    return target


def taskroot():
    sys.path.insert(0, str(ROOT))
    from deploy import taskroot as module

    return module


def base_recipe() -> dict:
    """Everything the two base images are made from; its hash is their tag."""
    prefix, rie = find_python(), find_rie()
    if prefix is None or rie is None:
        raise EngineUnavailable(unavailable_reason() or "base image inputs missing")
    files = {p.name: sha256_file(p) for p in sorted(STANDIN.iterdir()) if p.is_file()}
    return {
        "suite": SUITE,
        "runtime_packages": RUNTIME_PACKAGES,
        "builder_packages": BUILDER_PACKAGES,
        "python": {
            "prefix": str(prefix),
            "version": python_version_of(prefix),
            "exclude": sorted(PYTHON_EXCLUDE_DIRS),
            "exclude_bin": PYTHON_EXCLUDE_BIN,
            "keep_site_packages": SITE_PACKAGES_KEEP,
        },
        "rie_sha256": sha256_file(rie),
        "awslambdaric": [taskroot().pinned_requirement("awslambdaric"), "no-tests", "pyc"],
        "standin_files": files,
        "lambda_env": LAMBDA_ENV,
        "scripts_relocated": True,
        "builder_env": BUILDER_ENV,
    }


def _import(engine: Engine, rootfs: Path, extra: Path, tag: str, changes: list[str]) -> None:
    """tar the root filesystem, then the extra tree over it (minus folders both have: the engine
    refuses a tar with a path twice), into ``docker import``."""
    members = []
    for dirpath, dirnames, filenames in os.walk(extra):
        here = Path(dirpath).relative_to(extra)
        for name in dirnames:
            if not (rootfs / here / name).is_dir() or (rootfs / here / name).is_symlink():
                members.append(str(here / name))
        members += [str(here / name) for name in filenames]
    listing = CACHE / f".members-{os.getpid()}.txt"
    listing.write_text("\n".join(f"./{m}" for m in sorted(members)) + "\n")
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    tar = subprocess.Popen(
        [
            "tar",
            "--numeric-owner",
            "--one-file-system",
            "--exclude=./.complete",
            "-c",
            "-f",
            "-",
            "-C",
            str(rootfs),
            ".",
            "-C",
            str(extra),
            "--no-recursion",
            "-T",
            str(listing),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        done = subprocess.run(
            [engine.client, *args, "-", tag], env=engine.env, stdin=tar.stdout, capture_output=True, timeout=600
        )
    finally:
        assert tar.stdout is not None and tar.stderr is not None
        tar.stdout.close()
        tar_err = tar.stderr.read()
        tar.stderr.close()
        tar.wait()
        listing.unlink(missing_ok=True)
    if tar.returncode != 0 or done.returncode != 0:
        raise ImageError(f"docker import {tag} failed: {tar_err[-1000:]!r} {done.stderr[-2000:]!r}")


def _env_changes(env: dict[str, str]) -> list[str]:
    return [f"ENV {k}={v}" for k, v in env.items()]


def _remove_other_tags(engine: Engine, keep: dict[str, str]) -> None:
    """Stand-in images of an older recipe, so the data root does not keep every version."""
    for repo in (LAMBDA_TAG, BUILDER_TAG):
        listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False).stdout
        for tag in listed.decode().split():
            if tag not in keep.values():
                engine.docker("image", "rm", tag, check=False)


def base_images(engine: Engine) -> dict[str, str]:
    """{"lambda": tag, "builder": tag}: built once per recipe hash, then found in the engine's data root."""
    recipe = base_recipe()
    key = digest(recipe)
    tags = {"lambda": f"{LAMBDA_TAG}:{PYTHON_VERSION}-{key}", "builder": f"{BUILDER_TAG}:{PYTHON_VERSION}-{key}"}
    missing = {kind: tag for kind, tag in tags.items() if not engine.has_image(tag)}
    if not missing:
        return tags
    _remove_other_tags(engine, tags)
    prefix = Path(recipe["python"]["prefix"])
    # The two debootstraps are mostly downloads and dpkg: run them side by side.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futures = {
            kind: pool.submit(debootstrap, kind, RUNTIME_PACKAGES if kind == "lambda" else BUILDER_PACKAGES)
            for kind in missing
        }
        roots = {kind: f.result() for kind, f in futures.items()}
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="extra-") as tmp:
        if "lambda" in missing:
            extra = Path(tmp) / "lambda"
            shutil.copytree(prefix, extra / "var" / "lang", symlinks=True, ignore=_python_ignore(prefix))
            _relocate_scripts(extra / "var" / "lang" / "bin", prefix, "/var/lang")
            shutil.copytree(runtime_client(), extra / "var" / "runtime", symlinks=True)
            shutil.copy2(STANDIN / "bootstrap", extra / "var" / "runtime" / "bootstrap")
            shutil.copy2(STANDIN / "lambda-entrypoint.sh", extra / "lambda-entrypoint.sh")
            (extra / "usr" / "local" / "bin").mkdir(parents=True)
            shutil.copy2(str(find_rie()), extra / "usr" / "local" / "bin" / "aws-lambda-rie")
            (extra / "var" / "task").mkdir(parents=True)
            (extra / "opt").mkdir()
            for path in (
                extra / "var" / "runtime" / "bootstrap",
                extra / "lambda-entrypoint.sh",
                extra / "usr" / "local" / "bin" / "aws-lambda-rie",
            ):
                path.chmod(0o755)
            log(f"importing {tags['lambda']}")
            _import(
                engine,
                roots["lambda"],
                extra,
                tags["lambda"],
                _env_changes(LAMBDA_ENV) + ["WORKDIR /var/task", 'ENTRYPOINT ["/lambda-entrypoint.sh"]'],
            )
        if "builder" in missing:
            extra = Path(tmp) / "builder"
            shutil.copytree(prefix, extra / "usr" / "local", symlinks=True, ignore=_python_ignore(prefix))
            _relocate_scripts(extra / "usr" / "local" / "bin", prefix, "/usr/local")
            log(f"importing {tags['builder']}")
            _import(engine, roots["builder"], extra, tags["builder"], _env_changes(BUILDER_ENV) + ['CMD ["python3"]'])
    return tags
