"""The function image of deploy/image.py and the containers run from it: the repo's Dockerfile built
through its build arguments only, then run through AWS's Runtime Interface Emulator, invoked,
inspected (contents, glibc, layer sizes) and removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.baseimages import base_images, taskroot
from deploy.engine import BUILD, INPUTS, PYTHON_VERSION, ROOT, WHEELS, Engine, ImageError, log

FUNCTION_TAG = "search-function:image-test"


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
