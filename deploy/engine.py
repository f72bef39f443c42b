"""Debian's Docker engine for deploy/image.py: what it needs here (and one sentence when something is
missing), one dockerd started by this process with no bridge network, its socket and data root under
build/engine/, ended by its process id; and the paths and small helpers the image modules share
(deploy/baseimages.py, deploy/imagerun.py)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
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
