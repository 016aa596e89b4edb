#!/bin/sh
# Regenerate podresources_pb2.py and podresources_pb2_grpc.py from podresources.proto.
#
# Use grpcio-tools 1.62.x (protoc 25): its output has no runtime version check, so the committed stubs import
# under every protobuf runtime from 4.25 to 7.x and every grpcio >= 1.60. Newer grpcio-tools emit code that
# refuses to import unless protobuf >= the protoc version that generated it. For example:
#   python -m venv /tmp/grpc-tools && /tmp/grpc-tools/bin/pip install grpcio-tools==1.62.3
#   PYTHON=/tmp/grpc-tools/bin/python exporter/kubernetes/regen.sh
# The stubs import each other as exporter.kubernetes.*, so protoc runs from the repository root.
set -eu
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/../.."
version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
case "$version" in
    1.62.*) ;;
    *) echo "regen.sh: grpcio-tools $version found; 1.62.x keeps the stubs importable with protobuf 4.25-7.x" >&2
       [ "${FORCE:-0}" = 1 ] || exit 1 ;;
esac
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. exporter/kubernetes/podresources.proto
