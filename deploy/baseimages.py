#!/usr/bin/env python3
"""Build and run the function's container image on this machine, with no image registry.

    python deploy/image.py build     # engine, base images, the real Dockerfile; prints the image tag
    python deploy/image.py bases     # only the two base images
    python deploy/image.py run       # build, then serve it through the emulator on 127.0.0.1:9000
    python deploy/image.py stop      # end an engine a crashed run left behind (by its pid file)

The pieces, each usable from the tests (tests/deploy/test_image.py) and the bench (bench/image.py):

* ``Engine``: Debian's Docker engine (package docker.io) started by this process with no bridge
  network (``--bridge=none --iptables=false --ip-forward=false --ip-masq=false``), its socket and
  data root under build/engine/, ended by its process id.  Containers run with ``--network host``
  (serving on 127.0.0.1) or ``--network none``; builds run with ``--network none``: every input
  is prepared on the host first.
* ``base_images()``: a stand-in for public.ecr.aws/lambda/python:3.12 (Debian bookworm from
  ``debootstrap --variant=minbase`` + this machine's pyenv CPython 3.12 at /var/lang, awslambdaric
  in /var/runtime, AWS's Runtime Interface Emulator from the SAM CLI wheel, /lambda-entrypoint.sh),
  and a builder base for the Dockerfile's export and compile stages (the same Debian plus gcc, and
  the same Python at /usr/local, as python:3.12-bookworm has it).  Both are tagged by a hash of
  everything they are made from and kept in the engine's data root, so a second run builds nothing.
* ``build_function_image()``: the repo's Dockerfile, unchanged, through its build arguments only
  (LAMBDA_BASE, BUILDER_BASE, WHEELS, MODEL_BUNDLE), with the legacy builder that `sam build` uses.

Not the Lambda service: see docs/container-image.md for what differs (glibc, package manager, ...).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
ENGINE_HOME = BUILD / "engine"
CACHE = BUILD / "image-cache"
INPUTS = BUILD / "image-inputs"  # the offline build inputs (re-included by .dockerignore)
STANDIN = ROOT / "deploy" / "standin"
WHEELS = BUILD / ".wheels"

PYTHON_VERSION = "3.12"
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
FUNCTION_TAG = "search-function:image-test"
START_TIMEOUT = 90.0
DOCKER_CLIENTS = ("/usr/bin/docker", "docker")  # Debian's client first: the same version as its engine


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says why (the tests skip with it)."""


class ImageError(Exception):
    """A step of the image build failed; the message names the step and ends with its output."""


def unmount_under(top: Path) -> None:
    """Unmount whatever is still mounted below ``top`` (deepest first): dockerd leaves its network
    namespace under its exec root, and debootstrap can leave the target's /proc mounted when its
    exit trap fails to resolve the path."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(top).rstrip("/") + "/"
    for point in sorted((m.split()[1] for m in mounts if len(m.split()) > 1), reverse=True):
        if point.startswith(prefix):
            subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def log(msg: str) -> None:
    print(f"image: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ what is needed, and why not


def unavailable_reason(
    *, euid: int | None = None, which=shutil.which, sam_rie: Path | None | bool = True, python: str | None | bool = True
) -> str | None:
    """None when the engine and the base images can be made here, else one sentence saying what is missing."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return "the Docker engine needs root (dockerd, debootstrap): run as root, e.g. in CI"
    missing = [tool for tool in ("dockerd", "debootstrap") if which(tool) is None]
    if missing:
        if which("apt-get") is None:
            return f"{' and '.join(missing)} missing and no apt-get to install them (Debian's docker.io, debootstrap)"
        return f"{' and '.join(missing)} missing: `make image-engine` installs Debian's docker.io and debootstrap"
    if not any(which(c) for c in DOCKER_CLIENTS):
        return "no docker client on PATH (Debian's docker.io provides /usr/bin/docker)"
    rie = find_rie() if sam_rie is True else sam_rie
    if not rie:
        return "AWS's Runtime Interface Emulator not found in .venv-sam (samcli/local/rapid/): run `make sam`"
    py = find_python() if python is True else python
    if not py:
        return (
            f"no CPython {PYTHON_VERSION} here (pyenv's /root/.pyenv/versions/{PYTHON_VERSION}.*) for the base images"
        )
    return None


def find_rie() -> Path | None:
    hits = sorted(glob.glob(str(ROOT / ".venv-sam/lib/python*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64")))
    return Path(hits[0]) if hits else None


def find_python() -> Path | None:
    """The prefix of a relocatable-enough CPython 3.12 (pyenv's), whose tree is copied into the images."""
    for exe in sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{PYTHON_VERSION}.*/bin/python{PYTHON_VERSION}"))
    ):
        if Path(exe).is_file():
            return Path(exe).parent.parent
    return None


def install_engine() -> None:
    """apt-get install docker.io debootstrap, when root with apt-get and they are missing (best effort)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    log("installing Debian's docker.io and debootstrap")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io", "debootstrap"]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------ the engine


class Engine:
    """One dockerd started by this process; ``stop()`` ends it by its pid and waits for it."""

    def __init__(self, home: Path = ENGINE_HOME):
        self.home = Path(home)
        self.socket = self.home / "docker.sock"
        self.pidfile = self.home / "dockerd.pid"
        self.logfile = self.home / "dockerd.log"
        exec_root = self.home / "exec"
        if len(str(exec_root / "containerd" / "containerd.sock")) > 100:  # unix socket paths are short
            exec_root = Path("/run") / f"search-engine-{digest(str(self.home))}"
        self.exec_root = exec_root
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self.client = next((c for c in DOCKER_CLIENTS if shutil.which(c)), "docker")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env.update(
            DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(self.home / "client-config")
        )

    def flags(self) -> list[str]:
        return [
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--host",
            f"unix://{self.socket}",
            "--data-root",
            str(self.home / "data"),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
        ]

    def start(self, timeout: float = START_TIMEOUT) -> Engine:
        if len(str(self.socket)) > 100:
            raise EngineUnavailable(f"{self.socket}: path too long for a unix socket; use a shorter checkout path")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "client-config").mkdir(exist_ok=True)
        self._clear_stale_pidfile()
        self._log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                ["dockerd", *self.flags()],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise EngineUnavailable(f"cannot start dockerd: {exc}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise EngineUnavailable(f"dockerd exited at start ({tail.strip().splitlines()[-1:] or '?'})")
            if self.ping():
                return self
            time.sleep(0.3)
        self.stop()
        raise EngineUnavailable(f"dockerd did not answer on {self.socket} within {timeout:.0f} s")

    def _clear_stale_pidfile(self) -> None:
        """A run that was killed leaves its pid file; dockerd refuses to start while it names a live dockerd."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            self.pidfile.unlink(missing_ok=True)
            return
        if cmdline and cmdline[0].endswith(b"dockerd") and str(self.socket).encode() in b" ".join(cmdline):
            log(f"ending dockerd {pid} left by an earlier run (same socket)")
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.2)

    def ping(self) -> bool:
        try:
            out = subprocess.run(
                [self.client, "version", "--format", "{{.Server.Version}}"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and bool(out.stdout.strip())

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.logfile.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def docker(
        self, *args: str, check: bool = True, timeout: float = 1800, input: bytes | None = None, capture: bool = True
    ) -> subprocess.CompletedProcess:
        """One docker CLI call against this engine; ImageError with its output when it fails and ``check``."""
        done = subprocess.run([self.client, *args], env=self.env, input=input, timeout=timeout, capture_output=capture)
        if check and done.returncode != 0:
            out = (done.stdout or b"")[-3000:].decode("utf-8", "replace") + (done.stderr or b"")[-3000:].decode(
                "utf-8", "replace"
            )
            raise ImageError(f"docker {' '.join(args[:3])} ... exited with {done.returncode}:\n{out}")
        return done

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def stop(self) -> None:
        """SIGTERM to our dockerd (it stops its containers and its containerd), then wait; SIGKILL after 60 s."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
            else:
                proc.wait()
            self._unmount_leftovers()
        self._close_log()

    def _unmount_leftovers(self) -> None:
        unmount_under(self.exec_root)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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


# ------------------------------------------------------------------ the function image


def _link_tree(src: Path, dst: Path, names=None) -> None:
    """Mirror ``src`` into ``dst`` with hard links (copies across file systems), replacing ``dst``."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if names is not None and rel.parts[0] not in names:
            continue
        if path.name.startswith(".") or "__pycache__" in rel.parts:
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def runtime_wheels(python_version: str = PYTHON_VERSION) -> Path:
    """build/.wheels/cp312 holding every wheel requirements.txt needs, downloaded by taskroot's pip arguments."""
    tr = taskroot()
    wheel_dir = WHEELS / f"cp{python_version.replace('.', '')}"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "download",
        "--quiet",
        "--dest",
        str(wheel_dir),
        *tr.pip_args(python_version),
        "-r",
        str(tr.REQUIREMENTS),
    ]
    if (
        subprocess.run(
            pip + ["--no-index", "--find-links", str(wheel_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        != 0
    ):
        log(f"downloading the runtime wheels for cp{python_version.replace('.', '')} into {wheel_dir}")
        subprocess.run(pip, check=True)
    return wheel_dir


def prepare_inputs(model: Path) -> dict[str, str]:
    """The offline inputs under build/image-inputs/ (hard links), as build arguments relative to the context."""
    wheels = runtime_wheels()
    _link_tree(wheels, INPUTS / "wheels")
    if not (model / "manifest.json").is_file():
        raise ImageError(f"{model}: no model bundle (manifest.json missing): run `make model`")
    _link_tree(model, INPUTS / "model")
    return {"WHEELS": "build/image-inputs/wheels", "MODEL_BUNDLE": "build/image-inputs/model"}


def code_files(source: Path = ROOT) -> list[str]:
    """The files deploy/files.txt's paths hold, as deploy/taskroot.py code copies them (no caches, no .so)."""
    tr = taskroot()
    files = set()
    for rel in tr.code_paths():
        path = source / rel
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in candidates:
            name = f.name
            if (
                "__pycache__" in f.parts
                or name.endswith((".pyc", ".so"))
                or (name.startswith(".") and name.endswith(".tmp"))
            ):
                continue
            files.add(f.relative_to(source).as_posix())
    return sorted(files)


def build_function_image(
    engine: Engine, model: Path, *, tag: str = FUNCTION_TAG, bases: dict | None = None, no_cache: bool = False
) -> dict:
    """docker build of the repo's Dockerfile against the stand-ins, offline. Returns tag, args, seconds."""
    bases = bases or base_images(engine)
    args = {"LAMBDA_BASE": bases["lambda"], "BUILDER_BASE": bases["builder"], **prepare_inputs(model)}
    cmd = ["build", "--network", "none", "--pull=false", "--force-rm", "-t", tag, "-f", str(ROOT / "Dockerfile")]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if no_cache:
        cmd.append("--no-cache")
    expected = code_files()  # the working tree as sent to the build, for the file-list check
    start = time.monotonic()
    log(f"docker build {' '.join(cmd[1:])} {ROOT}")
    logfile = BUILD / "image-build.log"
    with open(logfile, "wb") as out:
        done = subprocess.run(
            [engine.client, *cmd, str(ROOT)], env=engine.env, stdout=out, stderr=subprocess.STDOUT, timeout=3600
        )
    if done.returncode != 0:
        raise ImageError(f"docker build failed (exit {done.returncode}), {logfile}:\n{logfile.read_text()[-4000:]}")
    return {
        "tag": tag,
        "build_args": args,
        "seconds": round(time.monotonic() - start, 1),
        "log": str(logfile),
        "code_files": expected,
    }


# ------------------------------------------------------------------ running containers

# What Lambda sets for a python3.12 function beyond the image's own environment (names from the
# Lambda docs); credentials are invalid on purpose: the demo index is local, nothing may call AWS.
FUNCTION_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "search-image-test",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "SEARCH_THREADS": "1",
}
INVOKE_PATH = "/2015-03-31/functions/function/invocations"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Container:
    """``docker run -d`` of one container, removed (with its logs read first) on ``close()``."""

    def __init__(
        self,
        engine: Engine,
        image: str,
        *,
        env: dict[str, str] | None = None,
        network: str = "host",
        mounts: Sequence[tuple[Path, str]] = (),
        entrypoint: str | None = None,
        args: Sequence[str] = (),
        read_only: bool = True,
    ):
        self.engine = engine
        cmd = ["run", "-d", "--network", network, "--label", "search-image-test=1"]
        if read_only:  # as in Lambda: everything read-only but /tmp
            cmd += ["--read-only", "--tmpfs", "/tmp"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        for src, dst in mounts:
            cmd += ["-v", f"{src}:{dst}:ro"]
        if entrypoint is not None:
            cmd += ["--entrypoint", entrypoint]
        self.started = time.monotonic()
        self.id = engine.docker(*cmd, image, *args).stdout.decode().strip()
        self.output = ""

    def logs(self) -> str:
        done = self.engine.docker("logs", self.id, check=False)
        return (done.stdout + done.stderr).decode("utf-8", "replace")

    def wait(self, timeout: float = 90) -> int:
        """The exit code once the container stops (ImageError if it is still running after ``timeout``)."""
        try:
            done = self.engine.docker("wait", self.id, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ImageError(f"container {self.id[:12]} still running after {timeout:.0f} s") from None
        return int(done.stdout.decode().strip() or -1)

    def peak_memory_bytes(self) -> int | None:
        """The container's peak memory from its cgroup (v1 memory.max_usage_in_bytes, v2 memory.peak)."""
        for path in (
            f"/sys/fs/cgroup/memory/docker/{self.id}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/system.slice/docker-{self.id}.scope/memory.peak",
            f"/sys/fs/cgroup/docker/{self.id}/memory.peak",
        ):
            try:
                return int(Path(path).read_text().strip())
            except (OSError, ValueError):
                continue
        return None

    def close(self) -> None:
        if self.id:
            self.output = self.logs()
            self.engine.docker("rm", "-f", self.id, check=False)
            self.id = ""

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rie_env(port: int, api_port: int) -> dict[str, str]:
    """The stand-in entrypoint's switches that keep the emulator on 127.0.0.1 (host network)."""
    return {"RIE_ADDRESS": f"127.0.0.1:{port}", "RIE_RUNTIME_API_ADDRESS": f"127.0.0.1:{api_port}"}


def invoke_rie(port: int, event: bytes, *, timeout: float = 120.0, wait_up: float = 120.0) -> tuple[int, bytes]:
    """POST one event to the emulator's invoke URL (retrying while the container starts); (status, body)."""
    import http.client

    deadline = time.monotonic() + wait_up
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", INVOKE_PATH, body=event, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def parse_reports(logs: str) -> list[dict[str, float]]:
    """Lambda's REPORT lines (the emulator prints them as Lambda does): their fields, in ms or MB."""
    import re

    reports = []
    for line in logs.splitlines():
        if line.startswith("REPORT RequestId:"):
            fields = dict(re.findall(r"([A-Z][A-Za-z ]+): ([0-9.]+) (?:ms|MB)", line))
            reports.append({k.strip(): float(v) for k, v in fields.items()})
    return reports


def init_report_ms(logs: str) -> float | None:
    """The emulator's own log of the init phase: "INIT REPORT(durationMs: 1626.05)"."""
    import re

    hit = re.search(r"INIT REPORT\(durationMs: ([0-9.]+)\)", logs)
    return float(hit.group(1)) if hit else None


INSPECT_SCRIPT = r"""
import importlib.util, json, os, shutil, sys
sys.path[:0] = ["/var/task", "/var/runtime"]
files = sorted(os.path.relpath(os.path.join(d, f), "/var/task") for d, _, fs in os.walk("/var/task") for f in fs)
tests = [d for top in ("/var/task", "/var/runtime", "/opt") for d, subdirs, _ in os.walk(top)
         if os.path.basename(d) in ("tests", "test")]
size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk("/var/task") for f in fs)
print(json.dumps({"files": files, "tests": tests, "task_root_bytes": size,
                  "found": [m for m in sys.argv[1:] if importlib.util.find_spec(m)],
                  "compilers": [c for c in ("cc", "gcc", "c++", "clang", "ld", "as", "make") if shutil.which(c)]}))
"""
KERNEL = "search/scoring/native/_int8dot.so"


def inspect_contents(engine: Engine, tag: str, forbidden: tuple[str, ...]) -> dict:
    """The image's /var/task file list and size, which of ``forbidden`` import, compilers on PATH, tests folders."""
    out = engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", tag, "-c", INSPECT_SCRIPT, *forbidden
    )
    return json.loads(out.stdout)


def copy_out(engine: Engine, tag: str, path: str, dest: Path) -> Path:
    box = engine.docker("create", "--network", "none", tag).stdout.decode().strip()
    try:
        engine.docker("cp", f"{box}:{path}", str(dest))
    finally:
        engine.docker("rm", "-f", box)
    return dest


def glibc_versions(path: Path) -> list[tuple[int, int]]:
    """GLIBC_x.y versions a shared object needs (readelf's version sections)."""
    import re

    out = subprocess.run(["readelf", "--version-info", "--wide", str(path)], capture_output=True, text=True, check=True)
    return sorted({(int(a), int(b)) for a, b in re.findall(r"GLIBC_(\d+)\.(\d+)", out.stdout)})


def layer_sizes(engine: Engine, tag: str) -> list[tuple[int, str]]:
    """(bytes, instruction) per layer, oldest first, from `docker history`."""
    out = engine.docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", tag)
    rows = []
    for line in out.stdout.decode().splitlines():
        size, _, created = line.partition("\t")
        rows.append((int(size), created))
    return rows[::-1]


# ------------------------------------------------------------------ command line


def serve(engine: Engine, tag: str, port: int) -> None:
    """Run the image through the emulator on 127.0.0.1:``port`` until Ctrl-C, then remove it."""
    with Container(engine, tag, env={**FUNCTION_ENV, **rie_env(port, free_port())}) as box:
        print(
            f"serving: curl -s http://127.0.0.1:{port}{INVOKE_PATH} -d @events/http-api-get-search.json"
            f"   (Ctrl-C stops the container and the engine)",
            file=sys.stderr,
            flush=True,
        )
        try:
            while engine.docker("inspect", "--format", "{{.State.Running}}", box.id).stdout.strip() == b"true":
                time.sleep(1)
            print(box.logs()[-3000:], file=sys.stderr)
        except KeyboardInterrupt:
            pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="deploy/image.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["build", "bases", "run", "stop"])
    p.add_argument("--model", type=Path, default=BUILD / "model")
    p.add_argument("--port", type=int, default=9000, help="run: the emulator's port on 127.0.0.1")
    args = p.parse_args(argv)
    if args.command == "stop":
        Engine()._clear_stale_pidfile()
        return 0
    install_engine()
    reason = unavailable_reason()
    if reason:
        print(f"image: cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        with Engine() as engine:
            bases = base_images(engine)
            print(json.dumps(bases))
            if args.command in ("build", "run"):
                built = build_function_image(engine, args.model, bases=bases)
                print(json.dumps({k: v for k, v in built.items() if k != "code_files"}))
            if args.command == "run":
                serve(engine, built["tag"], args.port)
    except (EngineUnavailable, ImageError) as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
