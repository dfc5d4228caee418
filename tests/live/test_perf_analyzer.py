"""Triton's perf_analyzer against the real server (4 gunicorn workers), as the README promises.

perf_analyzer reads the model's metadata and configuration (GET /v2/models/<id> and .../config),
then measures. It is a native binary: ``PERF_ANALYZER`` names it, else the one on PATH, else the
one ``scripts/install_perf_analyzer.sh`` puts in ``.tools/perf_analyzer`` (``.ci/run`` runs it).
Where none can run on this machine, the tests are skipped with the exact reason.

Getting one: ``pip install perf-analyzer`` (2.58 and later) needs glibc 2.38; on an older glibc
pip settles for the 0.1.0 placeholder, which has no binary. tritonclient 2.48 to 2.51 (the
``tritonclient-*.data/data/bin/perf_analyzer`` in their wheel) needs only glibc 2.34 but loads
``libb64.so.0d`` (Debian's libb64-0d) and ``libcudart.so.12`` (the nvidia-cuda-runtime-cu12
wheel): put their directories in ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

import pytest
import requests

from tests import models
from tests.live.server import CLOSE, ROOT, upload

TOOLS = ROOT / ".tools" / "perf_analyzer"
# The libraries the installed binary loads (libb64, libcudart) sit beside it, not on the system.
RUN_ENV = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(TOOLS / "lib"), os.environ.get("LD_LIBRARY_PATH")) if p)}

WHEEL_GLIBC = "2.38"  # perf-analyzer's PyPI wheels are manylinux_2_38
RUN_TIMEOUT_S = 240


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _glibc() -> str:
    libc, version = platform.libc_ver()
    return version if libc == "glibc" else "no glibc"


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    """The path of a perf_analyzer that runs here, or a skip that says why there is none."""
    installed = TOOLS / "bin" / "perf_analyzer"
    path = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer") or (str(installed) if installed.exists() else None)
    glibc = _glibc()
    if path is None:
        if glibc == "no glibc" or _version(glibc) < _version(WHEEL_GLIBC):
            pytest.skip(f"perf_analyzer needs glibc {WHEEL_GLIBC}, this machine has {glibc} "
                        "(pip install perf-analyzer gives only its 0.1.0 placeholder here, without the binary)")
        pytest.skip("perf_analyzer is not installed (pip install perf-analyzer, or set PERF_ANALYZER to the binary)")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False, env=RUN_ENV)
    except OSError as exc:
        pytest.skip(f"perf_analyzer at {path} cannot start: {exc}")
    if done.returncode != 0:
        needs_glibc = re.search(r"version `GLIBC_([\d.]+)' not found", done.stderr)
        if needs_glibc:
            pytest.skip(f"perf_analyzer needs glibc {needs_glibc.group(1)}, this machine has {glibc}")
        missing = re.search(r"error while loading shared libraries: ([^:]+):", done.stderr)
        if missing:
            pytest.skip(f"perf_analyzer at {path} needs {missing.group(1)}, which is not found here (see LD_LIBRARY_PATH)")
        pytest.skip(f"perf_analyzer at {path} does not run here: {(done.stderr or done.stdout).strip().splitlines()[:1]}")
    return path


def run(perf_analyzer: str, server, *args: str, protocol: str = "http", interval_ms: int = 1000) -> str:
    """Run perf_analyzer over HTTP (or gRPC) against ``server``; return its output, failing the test if it fails."""
    address = server.grpc_address if protocol == "grpc" else f"127.0.0.1:{server.port}"
    command = [perf_analyzer, "-u", address, "-i", protocol, "--measurement-interval", str(interval_ms),
               # the test checks that it works, not how steady this machine is: accept max/min up to 2
               "--stability-percentage", "100", "--max-trials", "10", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False, env=RUN_ENV)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"perf_analyzer ran longer than {RUN_TIMEOUT_S} s:\n{exc.stdout}\n{exc.stderr}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def throughputs(output: str) -> dict[int, float]:
    return {int(c): float(t) for c, t in re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", output)}


def test_perf_analyzer_measures_the_demo_model(perf_analyzer, live):
    output = run(perf_analyzer, live, "-m", "iris", "--concurrency-range", "1:2")
    measured = throughputs(output)
    assert set(measured) == {1, 2}, output
    assert all(value > 0 for value in measured.values()), output
    # Every request perf_analyzer counted in its windows was a successful prediction on the server.
    client_requests = sum(int(n) for n in re.findall(r"Request count: (\d+)", output))
    stats = requests.get(live.url("/v2/models/iris/stats"), headers=CLOSE, timeout=5).json()["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] >= client_requests > 0
    assert stats["fail"]["count"] == 0


def test_perf_analyzer_sends_batches_to_a_batching_model(perf_analyzer, live):
    """max_batch_size > 0 in the config: perf_analyzer sends [batch, 16] for the input [-1, 16]."""
    assert upload(live, models.mlp(seed=3), "mlp").status_code == 201
    output = run(perf_analyzer, live, "-m", "mlp", "-b", "4", "--concurrency-range", "1:1")
    assert "Batch size: 4" in output
    assert throughputs(output).get(1, 0) > 0, output
