#!/usr/bin/env bash
# Regenerates gateway/sparkplug/sparkplug_b_pb2.py (and its .pyi for mypy) from
# gateway/sparkplug/sparkplug_b.proto. Needs grpcio-tools (the `codegen` extra:
# pip install -e '.[codegen]'); the generated files are committed, so the gateway itself
# needs only the protobuf runtime. The runtime must be at least the protoc version printed
# below (same major): keep pyproject's protobuf floor in step when regenerating.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -m grpc_tools.protoc --version
"$PYTHON" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. \
    gateway/sparkplug/sparkplug_b.proto
echo "wrote gateway/sparkplug/sparkplug_b_pb2.py and sparkplug_b_pb2.pyi"
