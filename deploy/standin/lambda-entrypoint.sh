#!/bin/sh
# The stand-in base image's entrypoint, as public.ecr.aws/lambda/python:3.12 has it: CMD is the
# handler; inside Lambda (AWS_LAMBDA_RUNTIME_API set) the runtime client talks to Lambda's Runtime
# API, elsewhere AWS's Runtime Interface Emulator serves it and posts events to it.
# Stand-in only: RIE_ADDRESS / RIE_RUNTIME_API_ADDRESS move the emulator off 0.0.0.0:8080 and
# 127.0.0.1:9001, so a container on the host network can serve on a free 127.0.0.1 port.
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi
export _HANDLER="$1"

RUNTIME_ENTRYPOINT=/var/runtime/bootstrap
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ]; then
  exec /usr/local/bin/aws-lambda-rie \
    --runtime-interface-emulator-address "${RIE_ADDRESS:-0.0.0.0:8080}" \
    --runtime-api-address "${RIE_RUNTIME_API_ADDRESS:-127.0.0.1:9001}" \
    "$RUNTIME_ENTRYPOINT"
else
  exec "$RUNTIME_ENTRYPOINT"
fi
