"""The zip variant, built and packaged by the SAM CLI itself, fits Lambda's 250 MB limit.

`sam build --config-env zip` runs the recipes (layers/*/Makefile, deploy/zip/Makefile) the way a
user's build does; `sam package` then zips and uploads the parts to S3 -- here moto's S3 server
on 127.0.0.1, so no AWS account is involved.  Lambda counts the function and all its layers
unzipped together (at most 262,144,000 bytes).  These are the limits; the sizes themselves are
a benchmark figure: `python -m bench --only package` (bench/package.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from tests.deploy.test_template import SAM, CfnLoader
from tests.lambda_runtime import ROOT, taskroot

pytestmark = pytest.mark.slow

BUILD_DIR = ROOT / "build" / "sam-zip"
PARTS = {"function": "SearchZipFunction", "runtime-layer": "RuntimeLayer", "model-layer": "ModelLayer"}


def sam(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    if not SAM.exists():
        pytest.fail("the SAM CLI is missing: run `make sam` (make test does it)", pytrace=False)
    done = subprocess.run([str(SAM), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"sam {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def sam_env(model_dir, demo_index) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        MODEL=str(model_dir),
        INDEX=str(demo_index),
        # the recipes run `python3`: the test's interpreter, which has pip
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="module")
def built(sam_env) -> Path:
    sam("build", "--config-env", "zip", "--build-dir", str(BUILD_DIR), env=sam_env)
    return BUILD_DIR


def tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def test_zip_variant_fits_lambdas_unzipped_limit(built):
    # Each part holds what its mount point expects: /var/task, /opt/python, /opt/model.
    assert (built / "SearchZipFunction" / "handler.py").is_file()
    assert not (built / "SearchZipFunction" / "numpy").exists()
    assert {p.name for p in (built / "RuntimeLayer").iterdir()} == {"python"}
    assert {p.name for p in (built / "ModelLayer").iterdir()} == {"model"}
    total = sum(tree_size(built / logical_id)[0] for logical_id in PARTS.values())
    limit = taskroot().LAMBDA_UNZIPPED_LIMIT
    assert total <= limit, f"{total / 2**20:.1f} MiB unzipped is over Lambda's {limit / 2**20:.0f} MiB"


def test_runtime_layer_is_pruned_and_compiled(built):
    layer = built / "RuntimeLayer" / "python"
    tr = taskroot()
    stamp = json.loads((layer / tr.DEPS_STAMP).read_text())
    assert "huggingface-hub" in stamp["dropped_distributions"]
    assert not (layer / "huggingface_hub").exists() and not (layer / "hf_xet").exists()
    assert not list(layer.glob("*/tests")) and not (layer / "onnxruntime" / "transformers").exists()
    assert {p.name for p in (layer / "botocore" / "data").iterdir() if p.is_dir()} == tr.BOTOCORE_SERVICES
    if stamp["compiled_with"]:  # .pyc for the target Python, valid whatever the zip does to timestamps
        assert stamp["compiled_with"].startswith("3.12.")
        assert list((layer / "numpy").glob("__pycache__/*.cpython-312.pyc"))
    assert not list(layer.rglob("*.cpython-311.pyc")), "bytecode of the build machine's Python"
    for line in tr.requirement_lines(ROOT / "requirements.txt"):
        name, version = line.split("==")
        assert stamp["versions"][tr.normalize(name)] == version, line


def test_sam_package_uploads_the_three_parts(built, sam_env, tmp_path):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="artifacts")
        out = tmp_path / "packaged.yaml"
        # The image function is not built in the zip variant: its ImageUri stays a reference and
        # `sam package` leaves it alone (the repository named here is never pushed to).
        sam(
            "package",
            "--template-file",
            str(built / "template.yaml"),
            "--s3-bucket",
            "artifacts",
            "--image-repository",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/search",
            "--output-template-file",
            str(out),
            env={**sam_env, **creds, "AWS_ENDPOINT_URL": endpoint},
        )
        objects = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]}
    finally:
        server.stop()
    packaged = yaml.load(out.read_text(), Loader=CfnLoader)["Resources"]
    uris = {"function": packaged["SearchZipFunction"]["Properties"]["CodeUri"]}
    for name in ("runtime-layer", "model-layer"):
        (resource,) = [r for key, r in packaged.items() if key.startswith(PARTS[name])]
        uris[name] = resource["Properties"]["ContentUri"]
    keys = {name: uri.removeprefix("s3://artifacts/") for name, uri in uris.items()}
    assert set(keys.values()) <= set(objects), (keys, objects)
    assert packaged["SearchImageFunction"]["Properties"]["ImageUri"] == {"Ref": "PrebuiltImageUri"}
