"""Package sizes of the zip variant, built and packaged by the SAM CLI itself.

``sam build --config-env zip`` runs the recipes (layers/*/Makefile, deploy/zip/Makefile) the way a
user's build does; ``sam package`` then zips and uploads the parts to moto's S3 server on 127.0.0.1
(no AWS account).  Lambda counts the function and all its layers unzipped together, at most
``deploy.taskroot.LAMBDA_UNZIPPED_LIMIT``.  tests/deploy/test_package_size.py checks the limits;
this module reports the figures (``python -m bench --only package``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.common import MODEL, ROOT, log

SAM = ROOT / ".venv-sam" / "bin" / "sam"
BUILD_DIR = ROOT / "build" / "sam-zip"
INDEX = ROOT / "build" / "index"  # the demo index (make index): what the zip variant ships
PARTS = {"function": "SearchZipFunction", "runtime_layer": "RuntimeLayer", "model_layer": "ModelLayer"}
MIB = 2**20


def sam_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        MODEL=str(MODEL),
        INDEX=str(INDEX),
        # the recipes run `python3`: this interpreter, which has pip
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def sam(*args: str, env: dict[str, str]) -> None:
    if not SAM.exists():
        raise RuntimeError("the SAM CLI is missing: run `make sam`")
    done = subprocess.run([str(SAM), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"sam {args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def zipped_sizes(built: Path, env: dict[str, str]) -> dict[str, int]:
    """``sam package`` into a moto S3 bucket: the size of each uploaded zip."""
    import boto3
    import yaml
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_lower(creds))
        s3.create_bucket(Bucket="artifacts")
        out = built / "packaged.yaml"
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
            env={**env, **creds, "AWS_ENDPOINT_URL": endpoint},
        )
        objects = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]}
    finally:
        server.stop()
    packaged = yaml.load(out.read_text(), Loader=_cfn_loader(yaml))["Resources"]
    uris = {"function": packaged["SearchZipFunction"]["Properties"]["CodeUri"]}
    for name in ("runtime_layer", "model_layer"):
        (resource,) = [r for key, r in packaged.items() if key.startswith(PARTS[name])]
        uris[name] = resource["Properties"]["ContentUri"]
    return {name: objects[uri.removeprefix("s3://artifacts/")] for name, uri in uris.items()}


def _cfn_loader(yaml):
    """YAML with CloudFormation's short tags (!Ref, !Sub ...) read as plain values: only the URIs matter."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", tag)
    return Loader


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": creds["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"]}


def measure(quick: bool) -> dict:
    from deploy.taskroot import LAMBDA_UNZIPPED_LIMIT

    env = sam_env()
    log("sam build --config-env zip")
    sam("build", "--config-env", "zip", "--build-dir", str(BUILD_DIR), env=env)
    result: dict = {"package.limit_unzipped_mib": round(LAMBDA_UNZIPPED_LIMIT / MIB, 1)}
    total = 0
    for name, logical_id in PARTS.items():
        size, count = tree_size(BUILD_DIR / logical_id)
        total += size
        result[f"package.{name}.unzipped_mib"] = round(size / MIB, 1)
        result[f"package.{name}.files"] = count
    result["package.total_unzipped_mib"] = round(total / MIB, 1)
    log("sam package (to moto's S3 server)")
    for name, size in zipped_sizes(BUILD_DIR, env).items():
        result[f"package.{name}.zipped_mib"] = round(size / MIB, 1)
    return result
