"""The task root and the zip variant invoked through AWS's own Runtime Interface Emulator, on the host.

The RIE ships in the SAM CLI wheel (`make sam` installs it into .venv-sam).  It is started as
``aws-lambda-rie --runtime-interface-emulator-address 127.0.0.1:P --runtime-api-address 127.0.0.1:P2
python -S -s -m awslambdaric handler.handler`` with only the tree on the path, and every event in
events/ is POSTed to its invoke URL; its REPORT lines are read back.  No Docker needed.

What stays on the tests' own Runtime API (tests/deploy/test_runtime_api.py), because the RIE does not
show it: the /runtime/init/error request itself (its error-type header, and that no /next follows),
SnapStart's restore phase (/runtime/restore/next, the after-restore hooks), and the X-Ray segments.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from deploy import image
from tests.deploy.test_image import check_answer
from tests.deploy.test_runtime_api import EVENTS, TREE_PY311, template_environment
from tests.lambda_runtime import base_python, runtime_client_dir, task_root, taskroot, zip_parts

pytestmark = pytest.mark.slow


class _Address:
    address = "unused"  # the RIE sets AWS_LAMBDA_RUNTIME_API for the runtime it starts


class RieProcess:
    """aws-lambda-rie serving one execution environment on 127.0.0.1; output collected, closed and waited."""

    def __init__(self, python: str, path: list[Path], cwd: Path, env: dict[str, str]):
        from tests.lambda_runtime import lambda_environment

        rie = image.find_rie()
        assert rie is not None
        self.port, api_port = image.free_port(), image.free_port()
        full = lambda_environment(_Address(), cwd, {**template_environment(), **env})  # type: ignore[arg-type]
        full.pop("AWS_LAMBDA_RUNTIME_API")
        full.update(PYTHONPATH=":".join(str(p) for p in path), PYTHONDONTWRITEBYTECODE="1")
        cmd = [str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
               "--runtime-api-address", f"127.0.0.1:{api_port}",
               python, "-S", "-s", "-m", "awslambdaric", "handler.handler"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self.output += chunk

    def text(self) -> str:
        return bytes(self.output).decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def rie() -> Path:
    found = image.find_rie()
    if found is None:
        pytest.skip("AWS's Runtime Interface Emulator not found in .venv-sam: run `make sam`")
    return found


def every_event(proc: RieProcess) -> int:
    for path in EVENTS:
        try:
            status, raw = image.invoke_rie(proc.port, path.read_bytes())
        except OSError as exc:
            raise AssertionError(f"{path.name}: {exc}\n--- output ---\n{proc.text()[-3000:]}") from None
        assert status == 200, f"{path.name}: {status} {raw[:500]!r}\n{proc.text()[-3000:]}"
        check_answer(path.name, json.loads(raw))
    return len(EVENTS)


def test_task_root_py311_through_the_emulator(rie, model_dir, demo_index, tmp_path):
    tree = task_root(TREE_PY311, "3.11", model_dir, demo_index, with_ric=True)
    env = {"SEARCH_MODEL_DIR": str(tree / "model"), "SEARCH_INDEX_URI": str(tree / "index"),
           "SEARCH_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    proc = RieProcess(base_python(), [tree], tree, env)
    try:
        count = every_event(proc)
    finally:
        proc.close()
    output = proc.text()
    assert len(image.parse_reports(output)) == count, output[-3000:]
    assert output.count('"message":"loaded"') == 1 and "Traceback" not in output, output[-3000:]


def test_zip_variant_py312_through_the_emulator(rie, model_dir, demo_index, tmp_path):
    python312 = taskroot().find_python("3.12")
    if python312 is None:
        pytest.skip("no python3.12 on this machine for the cp312 zip variant")
    parts = zip_parts(model_dir, demo_index)
    function, layer_python = parts["function"], parts["runtime-layer"] / "python"
    env = {"SEARCH_MODEL_DIR": str(parts["model-layer"] / "model"), "SEARCH_INDEX_URI": str(function / "index"),
           "SEARCH_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    proc = RieProcess(python312, [function, layer_python, runtime_client_dir("3.12")], function, env)
    try:
        count = every_event(proc)
    finally:
        proc.close()
    output = proc.text()
    assert len(image.parse_reports(output)) == count and "Traceback" not in output, output[-3000:]
