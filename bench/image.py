"""The container image, built and run here (deploy/image.py): sizes, build time, cold start, contents.

* sizes: every layer of the function image (`docker history`), grouped as base / dependencies /
  model / index / code, against the task root's own size (/var/task in the image, and build/task
  from `make task-root` when it is there);
* build: the real Dockerfile, offline, from scratch (`--no-cache`) against the cached stand-in bases;
* cold start, through AWS's emulator in the container (host network, 127.0.0.1): `docker run` to the
  first answered invocation (an HTTP API search), the emulator's INIT REPORT (the init phase alone)
  and Lambda's REPORT line (Duration, Max Memory Used), with the container's real peak memory from
  its cgroup beside it (the emulator reports the memory size there, not a measurement);
* the same cp312 task root run by the same emulator on the host, outside any container, for what
  the container itself adds;
* contents: nothing in the image imports torch, holds a compiler or carries tests, and the code in it
  is exactly deploy/files.txt's files.

    python -m bench --only image [--quick]
"""

from __future__ import annotations

import json
import statistics
import time

from bench.common import ROOT, log

COMMAND = "python -m bench --only image"
FORBIDDEN = ("torch", "transformers", "sentence_transformers", "pytest", "moto", "onnx", "huggingface_hub")
EVENT = ROOT / "events" / "http-api-get-search.json"
ENV = {"SEARCH_THREADS": "1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048"}


def _layer_groups(layers: list[tuple[int, str]], base_layers: int) -> dict[str, int]:
    """Bytes per part: the base image's layers, then the final stage's COPY layers in Dockerfile order
    (the legacy builder names a COPY --from layer only by its content hash, so order is the key)."""
    groups = {"base": sum(size for size, _ in layers[:base_layers])}
    copies = [(size, created) for size, created in layers[base_layers:] if " COPY " in created]
    for name, (size, _) in zip(("deps", "model", "index", "code"), copies):
        groups[name] = size
    groups["other"] = sum(size for size, _ in layers[base_layers:]) - sum(
        groups.get(k, 0) for k in groups if k != "base"
    )
    return groups


def _cold_start(engine, tag: str) -> dict:
    from deploy import image

    port, api_port = image.free_port(), image.free_port()
    body = EVENT.read_bytes()
    t0 = time.monotonic()
    with image.Container(engine, tag, env={**ENV, **image.rie_env(port, api_port)}) as box:
        status, raw = image.invoke_rie(port, body)
        first = time.monotonic() - t0
        assert status == 200 and json.loads(raw)["statusCode"] == 200, raw[:300]
        warm = []
        for _ in range(5):
            t1 = time.monotonic()
            image.invoke_rie(port, body)
            warm.append(time.monotonic() - t1)
        peak = box.peak_memory_bytes()
    reports = image.parse_reports(box.output)
    return {
        "first_answer_s": first,
        "init_ms": image.init_report_ms(box.output),
        "report_duration_ms": reports[0].get("Duration") if reports else None,
        "report_max_memory_mb": reports[0].get("Max Memory Used") if reports else None,
        "report_memory_size_mb": reports[0].get("Memory Size") if reports else None,
        "warm_invoke_ms": statistics.median(warm) * 1000,
        "peak_memory_mb": peak / 2**20 if peak else None,
    }


def _host_cold(runs: int) -> list[dict]:
    """The same cp312 task root (build/task, by deploy/taskroot.py) run by the same RIE on the host,
    outside any container: what the container itself adds to the cold start."""
    import os
    import subprocess
    import tempfile

    from deploy import image

    tr = image.taskroot()
    python = tr.find_python("3.12")
    if python is None:
        return []
    tree = ROOT / "build" / "task"
    tr.deps(tree, python_version="3.12", wheel_dir=image.WHEELS / "cp312")
    tr.code(tree, python_version="3.12")
    tr.data(tree, model=ROOT / "build" / "model", index=ROOT / "build" / "index")
    ric = image.runtime_client()
    results = []
    for _ in range(runs):
        port, api_port = image.free_port(), image.free_port()
        with tempfile.TemporaryDirectory() as tmp:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": tmp,
                   "LAMBDA_TASK_ROOT": str(tree), "PYTHONPATH": f"{tree}:{ric}", "PYTHONDONTWRITEBYTECODE": "1",
                   "SEARCH_MODEL_DIR": str(tree / "model"), "SEARCH_INDEX_URI": str(tree / "index"),
                   "SEARCH_CACHE_DIR": f"{tmp}/cache", "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", **ENV}  # fmt: skip
            cmd = [str(image.find_rie()), "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
                   "--runtime-api-address", f"127.0.0.1:{api_port}", python, "-S", "-s", "-m", "awslambdaric",
                   "handler.handler"]  # fmt: skip
            with open(f"{tmp}/out.log", "wb") as out:
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
                try:
                    status, _ = image.invoke_rie(port, EVENT.read_bytes())
                    first = time.monotonic() - t0
                finally:
                    proc.terminate()
                    proc.wait(30)
            logs = open(f"{tmp}/out.log", encoding="utf-8", errors="replace").read()
        if status == 200:
            results.append({"first_answer_s": first, "init_ms": image.init_report_ms(logs)})
    return results


def measure(quick: bool = False) -> dict:
    from deploy import image

    reason = image.unavailable_reason()
    if reason:
        log(f"image: skipped: {reason}")
        return {"image.skipped": reason}
    with image.Engine() as engine:
        t0 = time.monotonic()
        bases = image.base_images(engine)
        bases_s = time.monotonic() - t0
        built = image.build_function_image(engine, ROOT / "build" / "model", bases=bases, no_cache=not quick)
        layers = image.layer_sizes(engine, built["tag"])
        base_layers = len(image.layer_sizes(engine, bases["lambda"]))
        groups = _layer_groups(layers, base_layers)
        total = json.loads(engine.docker("image", "inspect", built["tag"]).stdout)[0]["Size"]
        seen = image.inspect_contents(engine, built["tag"], FORBIDDEN)
        code_roots = tuple(r.rstrip("/") for r in image.taskroot().code_paths())
        code = {f for f in seen["files"] if f.startswith(code_roots) and "__pycache__" not in f} - {image.KERNEL}
        runs = [_cold_start(engine, built["tag"]) for _ in range(1 if quick else 3)]
    task = ROOT / "build" / "task"
    host_task = image.taskroot().tree_bytes(task) if (task / "index" / "manifest.json").is_file() else None
    mib = 2**20
    result = {
        "image.size_mib": round(total / mib, 1),
        "image.task_root_mib": round(seen["task_root_bytes"] / mib, 1),
        "image.host_task_root_mib": round(host_task / mib, 1) if host_task else None,
        "image.build_seconds": built["seconds"],
        "image.build_no_cache": not quick,
        "image.base_images_seconds": round(bases_s, 1),
        "image.imports_forbidden": seen["found"],
        "image.compilers": seen["compilers"],
        "image.tests_folders": seen["tests"],
        "image.code_equals_files_txt": code == set(built["code_files"]),
        "image.cold_runs": len(runs),
    }
    for name, size in groups.items():
        result[f"image.layer_{name}_mib"] = round(size / mib, 1)
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            result[f"image.cold_{key}_median"] = round(statistics.median(values), 3)
    result["image.cold_first_answer_s_all"] = [round(r["first_answer_s"], 3) for r in runs]
    host = _host_cold(len(runs))
    if host:
        result["image.host_cold_first_answer_s_median"] = round(statistics.median(r["first_answer_s"] for r in host), 3)
        inits = [r["init_ms"] for r in host if r["init_ms"] is not None]
        if inits:
            result["image.host_cold_init_ms_median"] = round(statistics.median(inits), 1)
    return result


if __name__ == "__main__":
    for key, value in measure().items():
        print(f"{key} = {value}")
