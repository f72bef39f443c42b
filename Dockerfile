# The Lambda container image (template.yaml's default PackageFormat=Image).
#
#   docker build -t search .                      # or: sam build
#   docker run -p 9000:8080 search                # Lambda's runtime interface emulator on :9000
#
# Stages: `model` exports the ONNX bundle with PyTorch and builds the demo index; `code` picks the
# paths deploy/files.txt lists; the final stage is the Lambda base image with the pruned runtime
# requirements, the model, the index and the code -- no torch, no compiler, no tests.  Its layers
# go from least to most often changed (requirements, model, index, code), so editing the code
# rebuilds only the last one.  `make task-root` assembles the same /var/task without Docker, with
# the same recipe (deploy/taskroot.py), for the tests.
# Plain Dockerfile syntax (no BuildKit mounts): `sam build` uses the classic builder.

ARG LAMBDA_BASE=public.ecr.aws/lambda/python:3.12

# ---- model: export the ONNX bundle (PyTorch lives only in this stage) and the demo index
FROM python:3.12-slim AS model
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
COPY requirements.txt requirements-export.txt ./
# The CPU build of torch: PyPI's default Linux wheel drags in several GB of CUDA libraries.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-export.txt -r requirements.txt
COPY verification/ verification/
COPY export_onnx.py ./
COPY export/ export/
# Only the modules export_onnx.py imports, so a code change does not re-run the export
# (tests/test_template.py checks this list against the imports).
COPY search/__init__.py search/errors.py search/fileutil.py search/
COPY search/model/ search/model/
RUN python export_onnx.py --out /out/model

FROM model AS index
ARG DEMO_INDEX=1
COPY data/demo-games.jsonl data/
COPY search/ search/
RUN mkdir -p /out/index && if [ "$DEMO_INDEX" = "1" ]; then \
      python -m search build --corpus data/demo-games.jsonl --model /out/model --out /out/index \
        --fields section,version,homepage; \
    fi

# ---- code: the paths deploy/files.txt lists, byte-compiled by the runtime's own Python, and the
# int8 scoring kernel (search/native/int8dot.c) compiled here; the compiler stays in this stage.
FROM ${LAMBDA_BASE} AS code
RUN dnf install -y gcc && dnf clean all
COPY . /src
RUN python3 /src/deploy/taskroot.py code --target /task --python-version 3.12

# ---- the function
FROM ${LAMBDA_BASE}
COPY requirements.txt /tmp/build/
COPY deploy/taskroot.py /tmp/build/deploy/
RUN python3 /tmp/build/deploy/taskroot.py deps --target ${LAMBDA_TASK_ROOT} --python-version 3.12 \
    && rm -rf /tmp/build /root/.cache
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
