#!/bin/sh
# Generate the gRPC stubs (nexus/rpc/inference_pb2*.py) from nexus/rpc/inference.proto.
# Needs the test extras (grpcio-tools); run from anywhere. tests/rpc/test_stubs.py checks that the
# committed stubs are what this produces.
set -eu
cd "$(dirname "$0")/.."
python3 -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. nexus/rpc/inference.proto
