"""gRPC against REST on the same server: perf_analyzer over both, and typed against raw gRPC.

    bash scripts/install_perf_analyzer.sh && python bench/grpc_bench.py     # about 5 min

One sync worker pinned to core 0 serves HTTP and gRPC (as ``bench/run.py``); the clients run on
core 1. Two tables go into docs/benchmarks.md:

- perf_analyzer (the same C++ client for both) over HTTP, V2 binary tensors, and over gRPC, raw
  tensors, for iris, the MLP with 1 sample and with 32, at concurrency 1, 8 and 32;
- a Python grpc.aio client sending the same requests with typed ``contents`` and with
  ``raw_input_contents`` (what typed values cost; this client is slower than perf_analyzer,
  so compare its rows with each other only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf_analyzer import TOOLS  # noqa: E402
from bench.run import BATCH, Server, bench_models, free_port, pinned, write_section  # noqa: E402

BEGIN, END = "<!-- grpc: written by bench/grpc_bench.py -->", "<!-- /grpc -->"
CASES = (("iris", "input", 4, 1), ("mlp", "X", 784, 1), ("mlp", "X", 784, BATCH))


def perf_analyzer(binary: str, env: dict, protocol: str, url: str, model: str, batch: int, levels: str, seconds: int) -> dict:
    command = pinned([binary, "-m", model, "-b", str(batch), "-u", url, "-i", protocol, "--concurrency-range", levels,
                      "--measurement-interval", str(seconds * 1000)], 1)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=True)
    return {int(c): (float(rate), int(latency) / 1000) for c, rate, latency in
            re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec", done.stdout)}


async def _drive(address: str, request, level: int, seconds: float) -> tuple[float, float]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request)  # warm
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await stub.ModelInfer(request)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(level)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, float(np.median(latencies)) * 1000


def typed_and_raw(address: str, levels: list[int], seconds: float) -> list[str]:
    """Rows of the Python client: typed contents against raw contents, requests per second (p50 ms)."""
    from tritonclient.grpc import service_pb2

    rows = []
    rng = np.random.default_rng(3)
    for model, name, width, batch in CASES:
        x = rng.random((batch, width), dtype=np.float32)
        cells = []
        for typed in (True, False):
            request = service_pb2.ModelInferRequest(model_name=model)
            tensor = request.inputs.add(name=name, datatype="FP32", shape=[batch, width])
            if typed:
                tensor.contents.fp32_contents.extend(x.ravel().tolist())
            else:
                request.raw_input_contents.append(x.tobytes())
            for level in levels:
                rate, p50 = asyncio.run(_drive(address, request, level, seconds))
                cells.append(f"{rate * batch:,.0f} ({p50:.2f} ms)")
                print(f"python client {model} b{batch} {'typed' if typed else 'raw'} c={level}: {rate:,.0f} req/s", flush=True)
        label = "MLP 784-256-10" if model == "mlp" else model
        rows.append(f"| {label}, batch {batch} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the tables without writing docs/benchmarks.md")
    parser.add_argument("--seconds", type=int, default=3, help="measurement interval per level")
    args = parser.parse_args()
    binary = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer") or str(TOOLS / "bin" / "perf_analyzer")
    if not Path(binary).exists():
        raise SystemExit("no perf_analyzer: run scripts/install_perf_analyzer.sh")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(TOOLS / "lib"), os.environ.get("LD_LIBRARY_PATH")) if p)}
    levels = [1, 8, 32]
    work = Path(tempfile.mkdtemp(prefix="nexus-grpc-bench-"))
    model_dir = bench_models(work)
    grpc_port = free_port()
    server = Server("wsgi:app", ROOT, {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": "1",
                                       "NEXUS_GRPC_PORT": str(grpc_port)},
                    argparse.Namespace(workers=1, worker_class="sync", threads=1), work / "server.log")
    pa_rows, python_rows = [], []
    try:
        with open(work / "mlp.onnx", "rb") as model:
            requests.post(f"{server.url}/models/upload", files={"file": ("mlp.onnx", model)},
                          data={"id": "mlp", "name": "MLP 784-256-10", "version": "1"}, timeout=60).raise_for_status()
        time.sleep(2.5)
        for model, _, _, batch in CASES:
            spread = ":".join(map(str, (1, 32, 31)))  # 1 and 32; 8 below
            rest = {**perf_analyzer(binary, env, "http", f"127.0.0.1:{server.port}", model, batch, spread, args.seconds),
                    **perf_analyzer(binary, env, "http", f"127.0.0.1:{server.port}", model, batch, "8:8:1", args.seconds)}
            grpc = {**perf_analyzer(binary, env, "grpc", f"127.0.0.1:{grpc_port}", model, batch, spread, args.seconds),
                    **perf_analyzer(binary, env, "grpc", f"127.0.0.1:{grpc_port}", model, batch, "8:8:1", args.seconds)}
            label = "MLP 784-256-10" if model == "mlp" else model
            for level in levels:
                (r_rate, r_ms), (g_rate, g_ms) = rest[level], grpc[level]
                pa_rows.append(f"| {label}, batch {batch} | {level} | {r_rate:,.0f} ({r_ms:.2f} ms) | {g_rate:,.0f} ({g_ms:.2f} ms) "
                               f"| {g_rate / r_rate:.2f}× |")
                print(pa_rows[-1], flush=True)
        python_rows = typed_and_raw(f"127.0.0.1:{grpc_port}", levels, args.seconds)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    section = "\n".join([
        BEGIN, "## gRPC", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/grpc_bench.py`: one sync worker "
        "on one core serving HTTP and gRPC, the client on the other core.", "",
        "perf_analyzer 2.51 over HTTP (V2 binary tensors) and over gRPC (raw tensors); samples per second (average latency):",
        "", "| model | concurrency | V2 binary over HTTP | gRPC raw | gRPC ÷ HTTP |", "|---|---|---|---|---|", *pa_rows, "",
        "A Python grpc.aio client (slower than perf_analyzer: compare these rows with each other), samples per second "
        "(p50 latency):", "",
        "| model | typed, c=1 | typed, c=8 | typed, c=32 | raw, c=1 | raw, c=8 | raw, c=32 |", "|---|---|---|---|---|---|---|",
        *python_rows, END,
    ])
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
