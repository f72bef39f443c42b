# The Lambda container image (template.yaml's default PackageFormat=Image).
#
#   docker build -t search .                      # or: sam build
#   docker run -p 9000:8080 search                # Lambda's runtime interface emulator on :9000
#
# Stages: `inputs` holds the optional offline inputs; `model` exports the ONNX bundle with PyTorch
# (or takes a ready one) and `index` builds the demo index; `deps` installs the pruned runtime
# requirements and `code` picks the paths deploy/files.txt lists and compiles the int8 kernel; the
# final stage is the Lambda base image with the dependencies, the model, the index and the code --
# no torch, no compiler, no tests.  Its layers go from least to most often changed (requirements,
# model, index, code), so editing the code rebuilds only the last one.  `make task-root` assembles
# the same /var/task without Docker, with the same recipe (deploy/taskroot.py), for the tests.
# Plain Dockerfile syntax (no BuildKit mounts): `sam build` uses the classic builder.
#
# Build arguments (docs/container-image.md); the defaults are right for `sam build` with internet:
#   LAMBDA_BASE   the runtime base: AWS's Lambda Python 3.12 image, or any image keeping its contract
#   BUILDER_BASE  CPython 3.12 with pip and a C compiler, for the export, index and compile stages
#   WHEELS        a folder in the build context with every wheel pip needs (requirements.txt, and for
#                 the export also requirements-export.txt with the CPU torch wheel): pip then runs
#                 offline; the default (an empty placeholder) lets pip use its index
#   MODEL_BUNDLE  a folder in the build context holding an exported model bundle (manifest.json):
#                 the export stage copies it instead of running PyTorch
#   DEMO_INDEX    1 (default) bakes the demo index in; 0 leaves index/ empty (S3 or EFS instead)

ARG LAMBDA_BASE=public.ecr.aws/lambda/python:3.12
ARG BUILDER_BASE=python:3.12-bookworm
ARG WHEELS=deploy/offline
ARG MODEL_BUNDLE=deploy/offline

# ---- inputs: the offline folders, in one place the other stages copy from
FROM scratch AS inputs
ARG WHEELS
ARG MODEL_BUNDLE
COPY ${WHEELS} /in/wheels/
COPY ${MODEL_BUNDLE} /in/model/

# ---- model: export the ONNX bundle (PyTorch lives only in this stage) and the demo index
FROM ${BUILDER_BASE} AS model
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
COPY requirements.txt requirements-export.txt ./
COPY --from=inputs /in/ /in/
# The CPU build of torch: PyPI's default Linux wheel drags in several GB of CUDA libraries.  With a
# MODEL_BUNDLE only the runtime requirements are needed (to build the index); with WHEELS, no index.
RUN if [ -f /in/model/manifest.json ]; then reqs="-r requirements.txt"; \
    else reqs="-r requirements-export.txt -r requirements.txt"; fi; \
    if ls /in/wheels/*.whl >/dev/null 2>&1; then source="--no-index --find-links /in/wheels"; \
    else source="--extra-index-url https://download.pytorch.org/whl/cpu"; fi; \
    python3 -m pip install $source $reqs
COPY verification/ verification/
COPY export_onnx.py ./
COPY export/ export/
# Only the modules export_onnx.py imports, so a code change does not re-run the export
# (tests/test_template.py checks this list against the imports).
COPY search/__init__.py search/errors.py search/fileutil.py search/
COPY search/model/ search/model/
COPY search/index/__init__.py search/index/format.py search/index/
RUN if [ -f /in/model/manifest.json ]; then mkdir -p /out && cp -r /in/model /out/model; \
    else python3 export_onnx.py --out /out/model; fi

FROM model AS index
ARG DEMO_INDEX=1
COPY data/demo-games.jsonl data/
COPY search/ search/
RUN mkdir -p /out/index && if [ "$DEMO_INDEX" = "1" ]; then \
      python3 -m search build --corpus data/demo-games.jsonl --model /out/model --out /out/index \
        --fields section,version,homepage; \
    fi

# ---- deps: the pruned runtime requirements, byte-compiled by the runtime's own Python
FROM ${LAMBDA_BASE} AS deps
COPY requirements.txt /tmp/build/
COPY deploy/taskroot.py deploy/pipdeps.py /tmp/build/deploy/
COPY --from=inputs /in/wheels/ /tmp/wheels/
RUN python3 /tmp/build/deploy/taskroot.py deps --target /deps --python-version 3.12 --wheel-dir /tmp/wheels

# ---- code: the paths deploy/files.txt lists, byte-compiled for CPython 3.12, and the int8 scoring
# kernel (search/scoring/native/int8dot.c) compiled by the builder base's own C compiler (no package
# manager: Amazon Linux's is dnf, Debian's apt); the compiler stays in this stage.
FROM ${BUILDER_BASE} AS code
COPY . /src
RUN python3 /src/deploy/taskroot.py code --target /task --python-version 3.12

# ---- the function
FROM ${LAMBDA_BASE}
COPY --from=deps /deps/ ${LAMBDA_TASK_ROOT}/
COPY --from=model /out/model ${LAMBDA_TASK_ROOT}/model
COPY --from=index /out/index ${LAMBDA_TASK_ROOT}/index
COPY --from=code /task/ ${LAMBDA_TASK_ROOT}/
ENV SEARCH_MODEL_DIR=/var/task/model \
    SEARCH_INDEX_URI=/var/task/index \
    SEARCH_CACHE_DIR=/tmp/search \
    POWERTOOLS_SERVICE_NAME=search \
    POWERTOOLS_METRICS_NAMESPACE=Search \
    POWERTOOLS_LOGGER_LOG_EVENT=false \
    POWERTOOLS_TRACER_CAPTURE_RESPONSE=false
CMD ["handler.handler"]
