"""The committed gRPC stubs are what scripts/generate_grpc.sh makes of nexus/rpc/inference.proto.

The stubs are compared as files, never imported here: tritonclient.grpc, which other tests
load into this process, defines messages of the same protobuf package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"]


def test_the_committed_stubs_are_generated_from_the_proto(tmp_path):
    (tmp_path / "nexus" / "rpc").mkdir(parents=True)
    shutil.copy(ROOT / "nexus" / "rpc" / "inference.proto", tmp_path / "nexus" / "rpc")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
                    "nexus/rpc/inference.proto"], cwd=tmp_path, check=True, timeout=60)
    for name in GENERATED:
        fresh = (tmp_path / "nexus" / "rpc" / name).read_text()
        assert fresh == (ROOT / "nexus" / "rpc" / name).read_text(), f"{name} is stale: run scripts/generate_grpc.sh"


def test_the_generation_script_makes_what_the_test_checks():
    script = (ROOT / "scripts" / "generate_grpc.sh").read_text()
    assert "--python_out=. --pyi_out=. --grpc_python_out=. nexus/rpc/inference.proto" in script


def test_the_service_keeps_the_names_and_numbers_clients_call():
    """tritonclient.grpc and KServe's clients call /inference.GRPCInferenceService/<method>."""
    proto = (ROOT / "nexus" / "rpc" / "inference.proto").read_text()
    assert "package inference;" in proto and "service GRPCInferenceService {" in proto
    for method in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                   "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
        assert f"rpc {method}(" in proto
    assert "repeated bytes raw_input_contents = 7;" in proto and "repeated bytes raw_output_contents = 6;" in proto
