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

The parts live beside this file: deploy/engine.py (the engine), deploy/baseimages.py (the stand-in
bases), deploy/imagerun.py (the function image and its containers); every name is importable from
here too (``from deploy import image``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # python deploy/image.py: the repository root, for the deploy.* modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.baseimages import (  # noqa: F401
    BUILDER_ENV,
    BUILDER_PACKAGES,
    BUILDER_TAG,
    DEBOOTSTRAP_ATTEMPTS,
    LAMBDA_ENV,
    LAMBDA_TAG,
    PYTHON_EXCLUDE_BIN,
    PYTHON_EXCLUDE_DIRS,
    RUNTIME_PACKAGES,
    SITE_PACKAGES_KEEP,
    SUITE,
    apt_mirror,
    base_images,
    base_recipe,
    debootstrap,
    python_version_of,
    runtime_client,
    taskroot,
)
from deploy.engine import (  # noqa: F401
    BUILD,
    CACHE,
    DOCKER_CLIENTS,
    ENGINE_HOME,
    INPUTS,
    PYTHON_VERSION,
    ROOT,
    STANDIN,
    START_TIMEOUT,
    WHEELS,
    Engine,
    EngineUnavailable,
    ImageError,
    digest,
    find_python,
    find_rie,
    install_engine,
    log,
    sha256_file,
    unavailable_reason,
    unmount_under,
)
from deploy.imagerun import (  # noqa: F401
    FUNCTION_ENV,
    FUNCTION_TAG,
    INSPECT_SCRIPT,
    INVOKE_PATH,
    KERNEL,
    Container,
    build_function_image,
    code_files,
    copy_out,
    free_port,
    glibc_versions,
    init_report_ms,
    inspect_contents,
    invoke_rie,
    layer_sizes,
    parse_reports,
    prepare_inputs,
    rie_env,
    runtime_wheels,
)

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
